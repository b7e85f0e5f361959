//! Fleet-wide limits across two real worker processes: a concurrency limit is never exceeded
//! (checked from the recorded start and finish times) and costs no attempt, a rate limit
//! holds every one-second window to the rate plus its bursts, a keyed limit limits each key
//! on its own, and a killed worker's slots are held until its lease expires, then come back.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState};
use warren_store::{Limit, Rate, Store};
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

use crate::support::{enqueue_all, wait_all_terminal};

/// Starts two worker processes and waits until both consume.
async fn two_workers(env: &TestEnv, tag: &str) -> anyhow::Result<Vec<WorkerProcess>> {
    let procs = (0..2)
        .map(|i| WorkerProcess::spawn(env, &format!("{tag}{i}"), &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_until(Duration::from_secs(30), "two workers consuming", || async {
        let depth = env.broker.queue_depth(&env.queues[0]).await?;
        let consumers = depth.map_or(0, |d| d.consumers);
        Ok(if consumers >= 2 {
            Ok(())
        } else {
            Err(format!("{consumers} consumers"))
        })
    })
    .await?;
    Ok(procs)
}

async fn stop(procs: Vec<WorkerProcess>) -> anyhow::Result<()> {
    for mut p in procs {
        p.signal("TERM").await?;
        p.wait(Duration::from_secs(30)).await?;
    }
    Ok(())
}

fn limit(target: &str) -> Limit {
    Limit {
        target: target.to_owned(),
        concurrency: None,
        rate: None,
        key_from: None,
        updated_at: Utc::now(),
    }
}

/// Sets `limit` and waits until it is stored (workers read it at start, so it is set before
/// they are).
async fn set(store: &Store, limit: &Limit) -> anyhow::Result<()> {
    store.set_limit(limit).await?;
    Ok(())
}

/// The most jobs running at one instant, from their recorded [started, finished) times.
fn max_overlap(spans: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    let mut events: Vec<(DateTime<Utc>, i32)> = spans
        .iter()
        .flat_map(|(s, f)| [(*s, 1), (*f, -1)])
        .collect();
    // At the same instant a finish comes before a start: the span is half-open.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

fn spans(rows: &HashMap<JobId, warren_store::JobRecord>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    rows.values()
        .filter_map(|r| r.started_at.zip(r.finished_at))
        .collect()
}

/// Checks the jobs all succeeded on their first attempt: waiting for a limit is no attempt.
fn all_succeeded_once(rows: &HashMap<JobId, warren_store::JobRecord>) {
    for r in rows.values() {
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
        assert_eq!(r.attempt, 1, "waiting for a limit spent an attempt: {r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
    }
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_two_workers() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        set(
            &env.store,
            &Limit {
                concurrency: Some(2),
                ..limit("warren.sleep")
            },
        )
        .await?;
        let procs = two_workers(&env, "conc").await?;
        let client = Client::from_broker(env.broker.clone()).await?;
        let jobs = (0..10)
            .map(|_| NewJob::new("warren.sleep", &json!({"ms": 500})))
            .collect();
        let ids = enqueue_all(&client, jobs).await?;
        let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(120)).await?;
        all_succeeded_once(&rows);
        let spans = spans(&rows);
        assert_eq!(spans.len(), 10);
        assert_eq!(max_overlap(&spans), 2, "{spans:?}");
        // Ten jobs against two slots: most of them waited, and that wait is on record.
        let waits = env
            .store
            .limit_waits(Utc::now() - TimeDelta::hours(1))
            .await?;
        let sleep = waits.iter().find(|w| w.task == "warren.sleep");
        assert!(
            sleep.is_some_and(|w| w.deferred_jobs > 0 && w.max_wait_ms > 0),
            "{waits:?}"
        );
        stop(procs).await
    }
    .await;
    env.cleanup().await?;
    result
}

#[tokio::test]
async fn a_rate_limit_holds_every_second_to_the_rate_plus_its_burst() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        let rate = Rate {
            count: 20,
            period_ms: 1000,
        };
        set(
            &env.store,
            &Limit {
                rate: Some(rate),
                ..limit("warren.echo")
            },
        )
        .await?;
        let procs = two_workers(&env, "rate").await?;
        let client = Client::from_broker(env.broker.clone()).await?;
        let jobs = (0..100)
            .map(|i| NewJob::new("warren.echo", &json!(i)))
            .collect();
        let ids = enqueue_all(&client, jobs).await?;
        let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(120)).await?;
        all_succeeded_once(&rows);
        let mut starts: Vec<DateTime<Utc>> = rows.values().filter_map(|r| r.started_at).collect();
        starts.sort();
        assert_eq!(starts.len(), 100);
        // The documented bound (docs/limits.md): the rate, plus the burst (a tenth of a
        // second's worth of tokens, at least one: 2 here), plus the jobs that came back for
        // their reserved tokens within the grace (another burst's worth).
        let bound = 20 + 2 + 2;
        for (i, first) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .take_while(|t| **t - *first < TimeDelta::seconds(1))
                .count();
            assert!(
                in_window <= bound,
                "{in_window} starts in the second from {first}: {starts:?}"
            );
        }
        stop(procs).await
    }
    .await;
    env.cleanup().await?;
    result
}

#[tokio::test]
async fn a_keyed_limit_limits_each_key_on_its_own() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        // `warren.sleep` takes only `ms`, so the two keys are two durations.
        set(
            &env.store,
            &Limit {
                concurrency: Some(1),
                key_from: Some("/ms".to_owned()),
                ..limit("warren.sleep")
            },
        )
        .await?;
        let procs = two_workers(&env, "keyed").await?;
        let client = Client::from_broker(env.broker.clone()).await?;
        let keys = [600u64, 601];
        let jobs = (0..8)
            .map(|i| NewJob::new("warren.sleep", &json!({"ms": keys[i % 2]})))
            .collect();
        let ids = enqueue_all(&client, jobs).await?;
        let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(120)).await?;
        all_succeeded_once(&rows);
        let mut by_key: HashMap<u64, HashMap<JobId, warren_store::JobRecord>> = HashMap::new();
        for (id, r) in &rows {
            let ms = r
                .payload
                .as_ref()
                .and_then(|p| p["ms"].as_u64())
                .unwrap_or(0);
            by_key.entry(ms).or_default().insert(*id, r.clone());
        }
        for key in keys {
            let spans = spans(&by_key[&key]);
            assert_eq!(spans.len(), 4);
            assert_eq!(max_overlap(&spans), 1, "key {key}: {spans:?}");
        }
        // Each key had its own slot: jobs of the two keys ran side by side.
        assert_eq!(max_overlap(&spans(&rows)), 2);
        stop(procs).await
    }
    .await;
    env.cleanup().await?;
    result
}

#[tokio::test]
async fn a_killed_workers_slots_come_back_when_its_lease_expires() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        set(
            &env.store,
            &Limit {
                concurrency: Some(1),
                ..limit("warren.sleep")
            },
        )
        .await?;
        let mut first = WorkerProcess::spawn(&env, "lease-a", &[])?;
        let client = Client::from_broker(env.broker.clone()).await?;
        let long = client
            .enqueue(NewJob::new("warren.sleep", &json!({"ms": 3_000})))
            .await?;
        wait_until(Duration::from_secs(30), "the long job running", || async {
            let state = env.store.job(long).await?.map(|r| r.state);
            Ok(if state == Some(JobState::Running) {
                Ok(())
            } else {
                Err(format!("{state:?}"))
            })
        })
        .await?;
        // Killed holding the only slot: its lease stays in Postgres until it expires.
        first.signal("KILL").await?;
        first.wait(Duration::from_secs(10)).await?;
        let killed_at = Utc::now();
        let second = WorkerProcess::spawn(&env, "lease-b", &[])?;
        let short = client
            .enqueue(NewJob::new("warren.sleep", &json!({"ms": 10})))
            .await?;
        let rows = wait_all_terminal(&env.store, &[long, short], Duration::from_secs(120)).await?;
        for r in rows.values() {
            assert_eq!(r.state, JobState::Succeeded, "{r:?}");
        }
        // Leases live 15 s past their last renewal, renewed every 5 s: the dead worker's slot
        // was held at least 10 s after the kill, and no job under the limit started before.
        let first_start = rows
            .values()
            .filter_map(|r| r.started_at)
            .min()
            .context("no start recorded")?;
        assert!(
            first_start >= killed_at + TimeDelta::seconds(9),
            "a job started at {first_start}, while the killed worker's lease (killed at \
             {killed_at}) still held the only slot"
        );
        stop(vec![second]).await
    }
    .await;
    env.cleanup().await?;
    result
}
