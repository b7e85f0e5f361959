//! Scenario 1: the broker is killed with `kill -9` mid-run and restarted, while the producer
//! keeps publishing (and retrying what is refused). Workers reconnect and consume again by
//! themselves.

use std::time::{Duration, Instant};

use warren_core::JobState;
use warren_testkit::{DisposableRabbit, TestEnv};

use super::{LabWorker, Load, assert_logged_degraded, log_dir, wait_degraded, wait_ready};
use crate::support::wait_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_run_loses_no_job() -> anyhow::Result<()> {
    let mut node = DisposableRabbit::start().await?;
    let url = node.amqp_url();
    let env = TestEnv::with_services(Some(&url), None, &["default"]).await?;
    let logs = log_dir("broker-restart")?;
    let w1 = LabWorker::spawn(&env, "b1", &url, &logs.join("b1.log"))?;
    let w2 = LabWorker::spawn(&env, "b2", &url, &logs.join("b2.log"))?;
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let load = Load::start(&env);
    wait_count(&env.store, JobState::Succeeded, 1_000).await?;

    let began = Instant::now();
    node.kill().await?;
    // /readyz says why the worker is not consuming.
    let said = wait_degraded(&w1, &["broker down", "consumer lost"]).await?;
    eprintln!("FAULT-LAB broker-kill-restart: /readyz during the outage: {said}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    node.restart().await?;
    let over = Instant::now();
    // Both workers recover without a restart by hand.
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let settled = load.settle(&env.store).await?;
    let started = w1.started().await? + w2.started().await?;
    settled.report("broker-kill-restart", started, began, over);
    assert_logged_degraded(&logs.join("b1.log"), "down")?;
    w1.stop().await?;
    w2.stop().await?;
    env.cleanup().await
}
