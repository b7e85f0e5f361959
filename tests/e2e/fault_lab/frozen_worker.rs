//! Scenario 3: a connection cut without a close. One worker is frozen with SIGSTOP past its
//! AMQP heartbeat timeout, so the broker drops its connection and hands its deliveries to
//! the other worker; resumed with SIGCONT, it finds its connection gone, and consumes again
//! by itself.

use std::time::{Duration, Instant};

use warren_core::JobState;
use warren_testkit::{TestEnv, wait_until};

use super::{LabWorker, Load, log_dir, wait_ready};
use crate::support::wait_count;

/// The frozen worker's AMQP heartbeat: the broker gives up on it after about two of these.
const HEARTBEAT_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_heartbeat_consumes_again_when_resumed() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let logs = log_dir("frozen-worker")?;
    let url = env.amqp_url.clone();
    let sep = if url.contains('?') { '&' } else { '?' };
    let short = format!("{url}{sep}heartbeat={HEARTBEAT_SECS}");
    let frozen = LabWorker::spawn(&env, "f1", &short, &logs.join("f1.log"))?;
    let other = LabWorker::spawn(&env, "f2", &url, &logs.join("f2.log"))?;
    wait_ready(&frozen).await?;
    wait_ready(&other).await?;
    let consumers = || async {
        Ok::<_, anyhow::Error>(
            env.broker
                .queue_depth(&env.queues[0])
                .await?
                .map_or(0, |d| d.consumers),
        )
    };

    let load = Load::start(&env);
    wait_count(&env.store, JobState::Succeeded, 500).await?;

    let began = Instant::now();
    frozen.process.signal("STOP").await?;
    // The broker notices the silence and drops the frozen worker's consumer.
    wait_until(
        Duration::from_secs(60),
        "the broker to drop the frozen consumer",
        || async {
            let n = consumers().await?;
            Ok(if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} consumers"))
            })
        },
    )
    .await?;
    frozen.process.signal("CONT").await?;
    let over = Instant::now();
    let before = frozen.started().await?;
    wait_until(
        Duration::from_secs(60),
        "the resumed worker to subscribe again",
        || async {
            let n = consumers().await?;
            Ok(if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} consumers"))
            })
        },
    )
    .await?;
    wait_ready(&frozen).await?;

    let settled = load.settle(&env.store).await?;
    let after = frozen.started().await?;
    let started = after + other.started().await?;
    settled.report("frozen-worker", started, began, over);
    eprintln!(
        "FAULT-LAB frozen-worker: the resumed worker ran {} jobs after SIGCONT",
        after - before
    );
    frozen.stop().await?;
    other.stop().await?;
    env.cleanup().await
}
