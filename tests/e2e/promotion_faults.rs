//! Messages published from Postgres rows (delayed jobs, retries) carry `warren-has-row`, and
//! a worker reads the row before running one: a job cancelled while queued does not run, and
//! the second copy a promoter publishes after dying between publish and commit does not run
//! again. Duplicate runs that still happen (two copies running at once) are counted on the
//! job's row instead of being hidden by the fence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState};
use warren_runtime::{JobContext, JobError, Promoter, PromoterConfig, Worker};
use warren_store::CancelOutcome;
use warren_testkit::{TestEnv, wait_until};

use crate::support::wait_all_terminal;

type Runs = Arc<Mutex<HashMap<JobId, u32>>>;

#[derive(Deserialize)]
struct Sleep {
    ms: u64,
}

/// A worker whose `test.count` task counts its runs per job, with no promoter of its own
/// (the test promotes by hand), running `concurrency` jobs at once.
async fn counting_worker(
    env: &TestEnv,
    runs: &Runs,
    concurrency: usize,
) -> anyhow::Result<warren_testkit::RunningWorker> {
    let runs = runs.clone();
    let builder = Worker::builder().register("test.count", move |ctx: JobContext, p: Sleep| {
        let runs = runs.clone();
        async move {
            *runs.lock().expect("lock").entry(ctx.id).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok::<_, JobError>(())
        }
    });
    let mut config = env.worker_config("w1");
    config.promoter = None;
    config.concurrency = concurrency;
    config.prefetch = concurrency as u16;
    env.start_worker(builder, config).await
}

/// `n` jobs due now, as rows only (written in a transaction, as a transactional enqueue
/// does): nothing is published until a promoter runs.
async fn due_jobs(env: &TestEnv, n: usize, ms: u64) -> anyhow::Result<Vec<JobId>> {
    let client = Client::from_broker(env.broker.clone()).await?;
    let mut tx = env.store.begin().await?;
    let mut ids = Vec::new();
    for _ in 0..n {
        let job = NewJob::new("test.count", &json!({ "ms": ms }));
        ids.push(client.enqueue_tx(&mut tx, job).await?);
    }
    tx.commit().await?;
    Ok(ids)
}

async fn promoter(env: &TestEnv) -> anyhow::Result<Promoter> {
    Ok(Promoter::new(
        env.store.clone(),
        env.broker.publisher().await?,
        PromoterConfig::default(),
    ))
}

/// Waits until every message published so far has been taken and started: the queue is
/// empty, and a sentinel job published after that has finished. The worker's consume loop
/// starts deliveries in order, so by then every earlier one has started, and a graceful stop
/// lets them finish and counts them.
async fn drain(env: &TestEnv) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        "the work queue to drain",
        || async {
            let depth = env.broker.queue_depth(&env.queues[0]).await?;
            Ok(match depth {
                Some(d) if d.ready == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let sentinel = client
        .enqueue(NewJob::new("test.count", &json!({ "ms": 0 })))
        .await?;
    wait_all_terminal(&env.store, &[sentinel], Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn a_job_cancelled_while_queued_never_runs() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let ids = due_jobs(&env, 1, 0).await?;
    assert_eq!(promoter(&env).await?.promote_once().await?, 1);
    assert_eq!(
        env.store.cancel_job(ids[0]).await?,
        CancelOutcome::Cancelled {
            previous: JobState::Queued
        }
    );

    // A worker started after the cancel never saw its NOTIFY: only the row can tell it.
    let runs: Runs = Arc::default();
    let worker = counting_worker(&env, &runs, 8).await?;
    let marker = due_jobs(&env, 1, 0).await?;
    promoter(&env).await?.promote_once().await?;
    wait_all_terminal(&env.store, &marker, Duration::from_secs(30)).await?;
    drain(&env).await?;
    let stats = worker.stop().await?;

    assert_eq!(
        runs.lock().expect("lock").get(&ids[0]),
        None,
        "the cancelled job ran"
    );
    let row = env.store.job(ids[0]).await?.expect("row");
    assert_eq!(row.state, JobState::Cancelled);
    assert_eq!(stats.skipped, 1);
    env.cleanup().await
}

/// A promoter publishes a batch and dies before committing: its claim rolls back, the rows
/// stay due, and the next promoter publishes every one of them again.
async fn published_twice(env: &TestEnv, n: usize, ms: u64) -> anyhow::Result<Vec<JobId>> {
    let ids = due_jobs(env, n, ms).await?;
    let dying = promoter(env).await?;
    let claim = env.store.claim_due(500).await?;
    let (published, _) = dying.publish_due(&claim.jobs).await;
    assert_eq!(published.len(), n);
    drop(claim);
    // Dropping the claim rolls its transaction back in the background (sqlx finishes it
    // when the connection is next used), and until then its rows stay locked, which the
    // next claim skips. So the next promoter gets them within moments, not at once: seen
    // once in CI as a first `promote_once` of 0.
    let next = promoter(env).await?;
    let promoted = AtomicUsize::new(0);
    wait_until(
        Duration::from_secs(10),
        "the next promoter to publish the dead one's batch",
        || {
            let (next, promoted) = (&next, &promoted);
            async move {
                let now = next.promote_once().await?;
                let total = promoted.fetch_add(now, Ordering::Relaxed) + now;
                Ok(if total >= n {
                    Ok(())
                } else {
                    Err(format!("{total} of {n} promoted"))
                })
            }
        },
    )
    .await?;
    assert_eq!(promoted.into_inner(), n, "each due job promoted once");
    Ok(ids)
}

/// One job at a time: each second copy arrives after the first copy's outcome is committed,
/// finds the job finished in its row, and is acked without running.
#[tokio::test]
async fn the_second_copy_from_a_dead_promoter_does_not_run_again() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let ids = published_twice(&env, 20, 0).await?;
    let runs: Runs = Arc::default();
    let worker = counting_worker(&env, &runs, 1).await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(30)).await?;
    drain(&env).await?;
    let stats = worker.stop().await?;
    let runs = runs.lock().expect("lock").clone();
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&1),
            "job {id} ran {:?} times",
            runs.get(id)
        );
        assert_eq!(rows[id].state, JobState::Succeeded);
        assert_eq!(rows[id].duplicate_runs, 0);
    }
    assert_eq!(stats.skipped, 20, "every second copy was skipped, not run");
    env.cleanup().await
}

/// Many jobs at once: copies of the same job may run side by side, before either outcome is
/// committed. Those extra runs still happen (handlers run at least once), but every one is
/// on the record: the job's `duplicate_runs` and the worker's `duplicates` count exactly the
/// runs beyond the first.
#[tokio::test]
async fn duplicate_runs_that_still_happen_are_counted_on_the_row() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    // Two copies of a slow job, first in the queue, are sure to run at once.
    let slow = published_twice(&env, 1, 2_000).await?;
    let mut ids = published_twice(&env, 50, 0).await?;
    ids.extend(&slow);

    let runs: Runs = Arc::default();
    let worker = counting_worker(&env, &runs, 64).await?;
    wait_all_terminal(&env.store, &ids, Duration::from_secs(30)).await?;
    drain(&env).await?;
    let stats = worker.stop().await?;
    let rows = env.store.jobs(&ids).await?;

    let runs = runs.lock().expect("lock").clone();
    let extra_runs: u32 = ids
        .iter()
        .map(|id| runs.get(id).copied().unwrap_or(0) - 1)
        .sum();
    let recorded: u32 = rows.iter().map(|r| r.duplicate_runs).sum();
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    assert_eq!(extra_runs, recorded, "every extra run is on a row");
    assert_eq!(u64::from(recorded), stats.duplicates);
    assert_eq!(
        stats.skipped + stats.duplicates,
        51,
        "each second copy was skipped or counted"
    );
    assert_eq!(
        runs.get(&slow[0]),
        Some(&2),
        "both copies of the slow job ran"
    );
    let slow_row = rows.iter().find(|r| r.id == slow[0]).expect("row");
    assert_eq!(slow_row.duplicate_runs, 1, "the extra run is on the record");
    env.cleanup().await
}
