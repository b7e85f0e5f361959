//! `warren-worker --metrics-addr`: the endpoints answer, and the counters it exports while
//! jobs run match the rows those jobs left in Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

use crate::support::{free_port, get, wait_all_terminal};

/// The samples of the Prometheus text format: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` whose labels contain each of `labels`.
fn total(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_counters_match_the_recorded_jobs() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut worker = WorkerProcess::spawn(&env, "m", &["--metrics-addr", &addr])?;
    wait_until(Duration::from_secs(60), "/readyz to answer 200", || async {
        Ok(match get(port, "/readyz").await {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        })
    })
    .await
    .map(|body| assert!(body.contains("\"consuming\":true"), "{body}"))?;
    let (status, body) = get(port, "/healthz").await?;
    assert_eq!((status, body.trim()), (200, "ok"));

    let client = Client::from_broker(env.broker.clone()).await?;
    let mut jobs = Vec::new();
    for i in 0..120 {
        let payload = match i % 6 {
            0 => json!({ "permanent": true }),
            1 => json!({ "times": 1 }),
            _ => json!({}),
        };
        jobs.push(NewJob::new("warren.fail", &payload));
    }
    let ids: Vec<_> = client
        .enqueue_many(jobs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    // Scraped while the jobs run, too: the endpoint answers under load.
    let (status, _) = get(port, "/metrics").await?;
    assert_eq!(status, 200);
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(120)).await?;

    let count = |state| rows.values().filter(|r| r.state == state).count() as f64;
    let attempts: f64 = rows.values().map(|r| f64::from(r.attempt)).sum();
    let retried: f64 = rows
        .values()
        .map(|r| f64::from(r.attempt.saturating_sub(1)))
        .sum();
    assert_eq!(count(JobState::Dead), 20.0);
    assert_eq!(retried, 20.0, "each `times: 1` job retried once");
    // The outcome counters move once each outcome is committed; wait for the last.
    let metrics = wait_until(
        Duration::from_secs(30),
        "the counters to reach the recorded totals",
        || async {
            let (_, text) = get(port, "/metrics").await?;
            let s = samples(&text);
            let finished = total(&s, "warren_jobs_finished_total", &[]);
            Ok(if finished == attempts {
                Ok(s)
            } else {
                Err(format!("{finished} finished of {attempts}"))
            })
        },
    )
    .await?;
    let task = "task=\"warren.fail\"";
    let queue = "queue=\"default\"";
    let finished = |outcome: &str| {
        total(
            &metrics,
            "warren_jobs_finished_total",
            &[task, queue, &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(finished("succeeded"), count(JobState::Succeeded));
    assert_eq!(finished("dead"), count(JobState::Dead));
    assert_eq!(finished("retried"), retried);
    assert_eq!(
        total(&metrics, "warren_jobs_started_total", &[task, queue]),
        attempts
    );
    assert_eq!(
        total(&metrics, "warren_job_run_seconds_count", &[task, queue]),
        attempts
    );
    assert_eq!(
        total(&metrics, "warren_job_wait_seconds_count", &[task, queue]),
        attempts
    );
    assert_eq!(total(&metrics, "warren_jobs_in_flight", &[]), 0.0);
    assert_eq!(total(&metrics, "warren_broker_connected", &[]), 1.0);
    assert_eq!(total(&metrics, "warren_database_connected", &[]), 1.0);
    // The 20 retries went through Postgres and the promoter.
    assert_eq!(
        total(&metrics, "warren_promoter_published_total", &[]),
        20.0
    );
    assert!(total(&metrics, "warren_recorder_batch_size_count", &[]) > 0.0);

    // The only worker holds the fleet lock and exports the queue gauges.
    let fleet = wait_until(Duration::from_secs(30), "the fleet gauges", || async {
        let (_, text) = get(port, "/metrics").await?;
        let s = samples(&text);
        Ok(
            if total(&s, "warren_fleet_exporter", &[]) == 1.0
                && total(&s, "warren_queue_dead_24h", &[queue]) == 20.0
            {
                Ok(s)
            } else {
                Err(text)
            },
        )
    })
    .await?;
    assert_eq!(total(&fleet, "warren_queue_ready", &[queue]), 0.0);
    assert_eq!(total(&fleet, "warren_queue_running", &[queue]), 0.0);

    worker.signal("TERM").await?;
    assert_eq!(worker.wait(Duration::from_secs(30)).await?, Some(0));
    env.cleanup().await
}
