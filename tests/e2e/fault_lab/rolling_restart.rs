//! Scenario 4: a rolling restart. Each worker in turn gets SIGTERM while a new one starts;
//! every job any of them held is finished or handed back, none lost.

use std::time::Instant;

use warren_core::JobState;
use warren_testkit::TestEnv;

use super::{LabWorker, Load, log_dir, wait_ready};
use crate::support::wait_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_job() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let logs = log_dir("rolling-restart")?;
    let url = env.amqp_url.clone();
    let mut fleet = Vec::new();
    for i in 0..2 {
        let w = LabWorker::spawn(
            &env,
            &format!("r{i}"),
            &url,
            &logs.join(format!("r{i}.log")),
        )?;
        wait_ready(&w).await?;
        fleet.push(w);
    }

    let load = Load::start(&env);
    wait_count(&env.store, JobState::Succeeded, 500).await?;

    // Executions each retired worker began, read just before its SIGTERM (a graceful stop
    // starts no new job after it stops consuming, so at most its in-flight ones are missed).
    let mut started = 0;
    let began = Instant::now();
    for round in 0..4 {
        let id = format!("r{}", round + 2);
        let fresh = LabWorker::spawn(&env, &id, &url, &logs.join(format!("{id}.log")))?;
        wait_ready(&fresh).await?;
        let old = fleet.remove(0);
        started += old.started().await?;
        old.stop().await?;
        fleet.push(fresh);
    }
    let over = Instant::now();

    let settled = load.settle(&env.store).await?;
    for w in &fleet {
        started += w.started().await?;
    }
    settled.report("rolling-restart", started, began, over);
    for w in fleet {
        w.stop().await?;
    }
    env.cleanup().await
}
