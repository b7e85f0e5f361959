//! Worker ids: one live process per id. Two processes started with the same `--worker-id`
//! used to share one `warren_workers` row, the first one's pid, queues and concurrency kept,
//! its state flipping between the two processes' heartbeats.

use std::time::Duration;

use warren_runtime::Worker;
use warren_store::{WorkerInfo, WorkerRecord, provision};
use warren_testkit::TestEnv;
use warren_worker::tasks::register_builtins;

/// What another process, elsewhere, registered under `id`.
fn elsewhere(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.to_owned(),
        hostname: "elsewhere".to_owned(),
        pid: std::process::id() + 1,
        queues: vec!["other".to_owned()],
        concurrency: 99,
        version: "0.0.0-elsewhere".to_owned(),
    }
}

async fn row(env: &TestEnv, id: &str) -> anyhow::Result<WorkerRecord> {
    let rows = env.store.workers().await?;
    rows.into_iter()
        .find(|w| w.id == id)
        .ok_or_else(|| anyhow::anyhow!("no row for worker {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_id_held_by_a_live_process_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let config = env.worker_config("w");
    let id = config.worker_id.clone();
    env.store.register_worker(&elsewhere(&id)).await?;

    let worker = env
        .start_worker(register_builtins(Worker::builder()), config)
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(30), worker.handle).await??;
    let err = ended.expect_err("a second live worker with the same id must not start");
    let text = format!("{:#}", anyhow::Error::new(err));
    let pid = std::process::id() + 1;
    for part in [
        format!("cannot register the worker: worker id `{id}` is in use by a live worker"),
        format!("pid {pid} on elsewhere, last heartbeat at "),
        "give this worker another id (--worker-id".to_owned(),
        "no heartbeat for 30s".to_owned(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    // The holder's row is left as it was.
    let held = row(&env, &id).await?;
    assert_eq!(
        (held.hostname.as_str(), held.pid, held.concurrency),
        ("elsewhere", pid as i32, 99)
    );
    assert_eq!(held.state, "running");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_lost_workers_id_is_taken_over_with_every_column() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let config = env.worker_config("w");
    let id = config.worker_id.clone();
    for gone in [
        // Stopped: its last heartbeat said so.
        "UPDATE warren_workers SET state = 'stopped', stopped_at = now(), processed = 7",
        // Lost: still `running`, but silent for longer than LOST_AFTER.
        "UPDATE warren_workers SET last_seen_at = now() - interval '1 minute', processed = 7",
    ] {
        env.store.register_worker(&elsewhere(&id)).await?;
        provision::execute_script(&env.database_url, gone).await?;
        let before = row(&env, &id).await?;

        let worker = env
            .start_worker(register_builtins(Worker::builder()), config.clone())
            .await?;
        warren_testkit::wait_until(
            Duration::from_secs(30),
            "the worker to take its row over",
            || async {
                let now = row(&env, &id).await?;
                Ok(if now.pid == std::process::id() as i32 {
                    Ok(())
                } else {
                    Err(format!("{now:?}"))
                })
            },
        )
        .await?;
        let now = row(&env, &id).await?;
        assert_ne!(now.hostname, "elsewhere", "{gone}");
        assert_eq!(now.queues, ["default"], "{gone}");
        assert_eq!(now.concurrency, config.concurrency as i32, "{gone}");
        assert_eq!(now.state, "running", "{gone}");
        assert!(now.started_at > before.started_at, "{gone}: {now:?}");
        assert!(now.stopped_at.is_none(), "{gone}");
        assert_eq!(now.processed, 0, "{gone}");
        // Whether the stop gets to mark the row `stopped` depends on its grace period, which
        // a loaded machine can use up; the next round starts from a clean table either way.
        worker.stop().await?;
        provision::execute_script(&env.database_url, "DELETE FROM warren_workers").await?;
    }
    env.cleanup().await
}
