//! Retention inside the workers: the cleaner deletes finished jobs past their retention and
//! keeps everything else, and two cleaners at once share the work without both pruning.

use std::time::Duration;

use chrono::Utc;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use warren_core::{JobId, JobState};
use warren_runtime::{Cleaner, RetentionConfig, Worker};
use warren_store::{RecordRow, Recorder, RecorderConfig, Store};
use warren_testkit::{TestEnv, wait_until};

const HOUR: Duration = Duration::from_secs(3_600);

/// Writes `n` jobs in `state` that finished `ago` ago (running ones started then).
async fn jobs(
    store: &Store,
    state: JobState,
    ago: Duration,
    n: usize,
) -> anyhow::Result<Vec<JobId>> {
    let (recorder, task) = Recorder::spawn(store.clone(), RecorderConfig::default());
    let at = Utc::now() - chrono::Duration::from_std(ago)?;
    let rows: Vec<RecordRow> = (0..n)
        .map(|_| {
            Ok(RecordRow {
                id: JobId::new(),
                queue: "default".into(),
                task: "t".into(),
                payload: Some(RawValue::from_string("{}".into())?),
                raw_body: None,
                state,
                attempt: 1,
                max_attempts: 3,
                timeout_ms: None,
                run_at: None,
                enqueued_at: at,
                started_at: Some(at),
                finished_at: state.is_terminal().then_some(at),
                result: None,
                error: None,
                worker_id: "w".into(),
                idempotency_key: None,
                traceparent: None,
                duplicate_of: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let ids = rows.iter().map(|r| r.id).collect();
    // Concurrently, so that the recorder writes them in a few batches.
    let mut set = tokio::task::JoinSet::new();
    for row in rows {
        let recorder = recorder.clone();
        set.spawn(async move { recorder.record(row).await });
    }
    while let Some(written) = set.join_next().await {
        written??;
    }
    drop(recorder);
    task.await?;
    Ok(ids)
}

async fn exists(store: &Store, ids: &[JobId]) -> anyhow::Result<usize> {
    Ok(store.jobs(ids).await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_cleaner_deletes_old_succeeded_jobs_and_keeps_the_rest() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let store = &env.store;
    let old = jobs(store, JobState::Succeeded, 3 * HOUR, 5).await?;
    let young = jobs(store, JobState::Succeeded, HOUR / 6, 2).await?;
    let dead = jobs(store, JobState::Dead, 3 * HOUR, 2).await?;
    let cancelled = jobs(store, JobState::Cancelled, 3 * HOUR, 2).await?;
    let running = jobs(store, JobState::Running, 3 * HOUR, 1).await?;

    let mut config = env.worker_config("cleaner");
    config.retention = RetentionConfig {
        succeeded: Some(HOUR),
        cancelled: None,
        dead: None,
        interval: Duration::from_millis(100),
        batch: 2,
    };
    let builder = warren_worker::tasks::register_builtins(Worker::builder());
    let worker = env.start_worker(builder, config).await?;
    let pruned = wait_until(
        Duration::from_secs(30),
        "the cleaner to delete the old succeeded jobs",
        || async {
            let left = exists(store, &old).await?;
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            })
        },
    )
    .await;
    let stopped = worker.stop().await;
    pruned?;
    stopped?;
    assert_eq!(
        exists(store, &young).await?,
        2,
        "young succeeded jobs are kept"
    );
    assert_eq!(
        exists(store, &dead).await?,
        2,
        "dead jobs have no retention here"
    );
    assert_eq!(exists(store, &cancelled).await?, 2);
    assert_eq!(
        exists(store, &running).await?,
        1,
        "a live job is never pruned"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cleaners_at_once_delete_each_job_once_and_never_both_give_way() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    const JOBS: u64 = 1_000;
    let old = jobs(store, JobState::Dead, 3 * HOUR, JOBS as usize).await?;
    let young = jobs(store, JobState::Dead, HOUR / 6, 3).await?;
    let config = RetentionConfig {
        dead: Some(HOUR),
        batch: 20,
        ..RetentionConfig::keep_everything()
    };
    let (a, b) = (
        Cleaner::new(store.clone(), config),
        Cleaner::new(store.clone(), config),
    );
    let stop = CancellationToken::new();
    let (a, b) = tokio::join!(a.clean_once(&stop), b.clean_once(&stop));
    let (a, b) = (a?, b?);
    let removed = |p: &warren_runtime::CleanerPass| p.removed.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(removed(&a) + removed(&b), JOBS, "{a:?} {b:?}");
    // One that found the lock held gave way; the holder went on to the end.
    assert!(!(a.busy && b.busy), "{a:?} {b:?}");
    assert_eq!(exists(store, &old).await?, 0);
    assert_eq!(exists(store, &young).await?, 3);
    env.cleanup().await
}
