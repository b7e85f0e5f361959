//! Scenario 2: PostgreSQL is stopped for 10 s mid-run, then started. Workers stop acking,
//! hold their deliveries without running them over and over, do not exit, and resume by
//! themselves.

use std::time::{Duration, Instant};

use warren_core::JobState;
use warren_testkit::{DisposablePostgres, TestEnv};

use super::{LabWorker, Load, assert_logged_degraded, log_dir, wait_degraded, wait_ready};
use crate::support::wait_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_ten_seconds_loses_no_job() -> anyhow::Result<()> {
    let mut pg = DisposablePostgres::start().await?;
    let env = TestEnv::with_services(None, Some(&pg.admin_url()), &["default"]).await?;
    let logs = log_dir("postgres-stop")?;
    let url = env.amqp_url.clone();
    let mut w1 = LabWorker::spawn(&env, "p1", &url, &logs.join("p1.log"))?;
    let mut w2 = LabWorker::spawn(&env, "p2", &url, &logs.join("p2.log"))?;
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let load = Load::start(&env);
    wait_count(&env.store, JobState::Succeeded, 1_000).await?;

    let began = Instant::now();
    pg.stop().await?;
    let said = wait_degraded(&w1, &["database down"]).await?;
    eprintln!("FAULT-LAB postgres-stop-10s: /readyz during the outage: {said}");
    let started_early = w1.started().await? + w2.started().await?;
    tokio::time::sleep_until((began + Duration::from_secs(10)).into()).await;
    let started_late = w1.started().await? + w2.started().await?;
    // Without a database no job can be claimed: a worker that spun its deliveries would
    // start executions all along (each a delivery spent).
    assert!(
        started_late - started_early <= 32,
        "{} executions began while the database was down",
        started_late - started_early
    );
    for w in [&mut w1, &mut w2] {
        assert!(
            w.process.child.try_wait()?.is_none(),
            "a worker exited during the outage"
        );
    }
    pg.restart().await?;
    let over = Instant::now();
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let settled = load.settle(&env.store).await?;
    let started = w1.started().await? + w2.started().await?;
    settled.report("postgres-stop-10s", started, began, over);
    assert_logged_degraded(&logs.join("p1.log"), "database down")?;
    w1.stop().await?;
    w2.stop().await?;
    env.cleanup().await
}
