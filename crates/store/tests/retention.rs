//! Retention against the real PostgreSQL: a prune deletes finished jobs of the named state
//! that finished long enough ago, and nothing else; and the prune lock lets one pruner work
//! at a time. Each test has a database of its own (see warren-testkit).

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

use std::time::Duration;

use chrono::Utc;
use serde_json::value::RawValue;
use warren_core::{JobId, JobState};
use warren_store::{
    Error, PRUNE_LOCK, PruneBatch, PruneLock, RecordRow, Recorder, RecorderConfig, Store,
};
use warren_testkit::TestEnv;

const HOUR: Duration = Duration::from_secs(3_600);

/// Writes `n` jobs in `state` that finished `ago` ago (running ones started then).
async fn jobs(store: &Store, state: JobState, ago: Duration, n: usize) -> Vec<JobId> {
    let (recorder, task) = Recorder::spawn(store.clone(), RecorderConfig::default());
    let at = Utc::now() - chrono::Duration::from_std(ago).unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = JobId::new();
        let row = RecordRow {
            id,
            queue: "default".into(),
            task: "t".into(),
            payload: Some(RawValue::from_string("{}".into()).unwrap()),
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
        };
        recorder.record(row).await.unwrap();
        ids.push(id);
    }
    drop(recorder);
    task.await.unwrap();
    ids
}

async fn exists(store: &Store, ids: &[JobId]) -> usize {
    store.jobs(ids).await.unwrap().len()
}

#[tokio::test]
async fn a_prune_deletes_only_old_jobs_of_its_state() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let old = jobs(store, JobState::Succeeded, 3 * HOUR, 7).await;
    let young = jobs(store, JobState::Succeeded, HOUR / 2, 2).await;
    let old_dead = jobs(store, JobState::Dead, 3 * HOUR, 2).await;
    let running = jobs(store, JobState::Running, 3 * HOUR, 2).await;

    assert_eq!(store.count_prunable(JobState::Succeeded, HOUR).await?, 7);
    // Batches of 3: 3, 3, 1, and a short batch says none are left.
    let mut deleted = Vec::new();
    loop {
        match store
            .prune_batch(JobState::Succeeded, HOUR, 3, PruneLock::Skip)
            .await?
        {
            PruneBatch::Deleted(n) => {
                deleted.push(n);
                if n < 3 {
                    break;
                }
            }
            PruneBatch::Busy => panic!("nobody else holds the lock"),
        }
    }
    assert_eq!(deleted, [3, 3, 1]);
    assert_eq!(exists(store, &old).await, 0);
    assert_eq!(exists(store, &young).await, 2);
    assert_eq!(exists(store, &old_dead).await, 2);
    assert_eq!(exists(store, &running).await, 2);

    // A state that has not finished is refused before any SQL runs.
    for state in [JobState::Running, JobState::Scheduled, JobState::Queued] {
        let err = store
            .prune_batch(state, Duration::ZERO, 10, PruneLock::Wait)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotPrunable { .. }), "{err}");
        assert!(store.count_prunable(state, Duration::ZERO).await.is_err());
    }
    assert_eq!(exists(store, &running).await, 2);
    env.cleanup().await
}

#[tokio::test]
async fn one_pruner_at_a_time_holds_the_lock() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let old = jobs(store, JobState::Cancelled, 2 * HOUR, 4).await;

    // Another pruner's batch in progress: a transaction holding the lock.
    let other = sqlx::PgPool::connect(&env.database_url).await?;
    let mut tx = other.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK)
        .execute(&mut *tx)
        .await?;

    // A cleaner gives way at once and deletes nothing.
    let skipped = store
        .prune_batch(JobState::Cancelled, HOUR, 100, PruneLock::Skip)
        .await?;
    assert_eq!(skipped, PruneBatch::Busy);
    assert_eq!(exists(store, &old).await, 4);

    // `warren prune` waits for the lock, and goes ahead once the other batch commits.
    let waiting = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .prune_batch(JobState::Cancelled, HOUR, 100, PruneLock::Wait)
                .await
        }
    });
    warren_testkit::wait_until(
        Duration::from_secs(10),
        "the waiting prune to block on the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&other)
            .await?;
            Ok(if waiting == 1 {
                Ok(())
            } else {
                Err(format!("{waiting} waiting"))
            })
        },
    )
    .await?;
    assert!(!waiting.is_finished());
    assert_eq!(
        exists(store, &old).await,
        4,
        "nothing deleted while waiting"
    );
    tx.commit().await?;
    assert_eq!(waiting.await??, PruneBatch::Deleted(4));
    assert_eq!(exists(store, &old).await, 0);
    other.close().await;
    env.cleanup().await
}
