//! Killing processes for real: nothing a confirmed enqueue accepted may be lost.

use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_testkit::{TestEnv, WorkerProcess};

use crate::support::{count_state, enqueue_all, wait_all_terminal, wait_count};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_under_load_loses_no_job() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let jobs = (0..300)
        .map(|i| NewJob::new("warren.sleep", &json!({ "ms": 20 + i % 30 })))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;

    let mut victim = WorkerProcess::spawn(&env, "victim", &["--concurrency", "16"])?;
    wait_count(&env.store, JobState::Succeeded, 50).await?;
    victim.signal("KILL").await?;
    let code = victim.wait(Duration::from_secs(10)).await?;
    assert_eq!(code, None, "killed by a signal, no exit code");

    // Whatever it held unacked, running or merely prefetched, comes back from the broker.
    let mut survivor = WorkerProcess::spawn(&env, "survivor", &["--concurrency", "16"])?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(120)).await?;
    survivor.signal("TERM").await?;
    survivor.wait(Duration::from_secs(30)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 300, "no job lost");
    // Killed mid-attempt, a job runs again as the same attempt: never counted as a failure.
    assert!(rows.values().all(|r| r.attempt == 1 && r.errors.is_empty()));
    env.cleanup().await
}
