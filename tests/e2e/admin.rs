//! Admin operations against a live system: cancel and retry.

use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::{FailureKind, JobState};
use warren_store::{CancelOutcome, RetryOutcome};
use warren_testkit::{TestEnv, wait_until};

use crate::support::{builtin_worker, wait_all_terminal, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_scheduled_job_never_runs_and_running_job_stops() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    let client = Client::from_broker(env.broker.clone())
        .await?
        .with_store(env.store.clone());

    let later = client
        .enqueue(NewJob::new("warren.echo", &json!(1)).delay(Duration::from_secs(2)))
        .await?;
    assert_eq!(
        env.store.cancel_job(later).await?,
        CancelOutcome::Cancelled {
            previous: JobState::Scheduled
        }
    );

    let long = client
        .enqueue(NewJob::new("warren.sleep", &json!({ "ms": 60_000 })))
        .await?;
    wait_state(&env.store, long, JobState::Running).await?;
    let outcome = env.store.cancel_job(long).await?;
    assert!(
        matches!(outcome, CancelOutcome::Signalled { worker: Some(_) }),
        "{outcome:?}"
    );
    let rows = wait_all_terminal(&env.store, &[long], Duration::from_secs(20)).await?;
    let row = &rows[&long];
    assert_eq!(row.state, JobState::Cancelled);
    assert_eq!(
        row.errors.last().map(|e| e.kind),
        Some(FailureKind::Cancelled)
    );

    // Past its time, the cancelled scheduled job has still not run: a marker due just after
    // it has been promoted and run, so the promoter has gone past its due time.
    let due = env
        .store
        .job(later)
        .await?
        .and_then(|r| r.run_at)
        .expect("run_at");
    let until_due = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    let marker = client
        .enqueue(
            NewJob::new("warren.echo", &json!("marker"))
                .delay(until_due + Duration::from_millis(100)),
        )
        .await?;
    let rows = wait_all_terminal(&env.store, &[marker], Duration::from_secs(20)).await?;
    assert_eq!(rows[&marker].state, JobState::Succeeded);
    assert!(rows[&marker].started_at.expect("started") > due);
    let row = env.store.job(later).await?.expect("row");
    assert_eq!(row.state, JobState::Cancelled);
    assert!(row.started_at.is_none(), "it never started");
    assert_eq!(
        env.store.cancel_job(later).await?,
        CancelOutcome::AlreadyFinal {
            state: JobState::Cancelled
        }
    );
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_dead_job_runs_it_again_with_its_history() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    let client = Client::from_broker(env.broker.clone()).await?;

    let job = client
        .enqueue(NewJob::new("warren.fail", &json!({ "permanent": true })))
        .await?;
    let rows = wait_all_terminal(&env.store, &[job], Duration::from_secs(30)).await?;
    assert_eq!((rows[&job].state, rows[&job].attempt), (JobState::Dead, 1));

    let outcome = env.store.retry_job(job).await?;
    assert_eq!(
        outcome,
        RetryOutcome::Scheduled {
            attempt: 1,
            max_attempts: 5
        }
    );
    wait_until(
        Duration::from_secs(30),
        "the retried job to die again",
        || async {
            let row = env.store.job(job).await?.expect("row");
            Ok(if row.state == JobState::Dead && row.attempt == 2 {
                Ok(row)
            } else {
                Err(format!("{} attempt {}", row.state, row.attempt))
            })
        },
    )
    .await
    .map(|row| {
        assert_eq!(
            row.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
            [1, 2]
        )
    })?;

    let ok = client
        .enqueue(NewJob::new("warren.noop", &json!({})))
        .await?;
    wait_all_terminal(&env.store, &[ok], Duration::from_secs(30)).await?;
    assert_eq!(
        env.store.retry_job(ok).await?,
        RetryOutcome::NotRetryable {
            state: JobState::Succeeded
        }
    );
    worker.stop().await?;
    env.cleanup().await
}
