//! Periodic jobs across several real worker processes: one job per tick, none missing, and
//! the catch-up policy after every worker was down.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use warren_core::cron::{CatchUp, CronSchedule};
use warren_store::{NewSchedule, ScheduleTick};
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

const EVERY_2S: &str = "*/2 * * * * *";

fn every_2s(name: &str, catch_up: CatchUp) -> NewSchedule {
    NewSchedule {
        name: name.to_owned(),
        cron: EVERY_2S.to_owned(),
        timezone: "UTC".to_owned(),
        task: "warren.echo".to_owned(),
        payload: format!(r#"{{"schedule": "{name}"}}"#),
        queue: "default".to_owned(),
        catch_up,
    }
}

fn workers(env: &TestEnv, tag: &str) -> anyhow::Result<Vec<WorkerProcess>> {
    (0..3)
        .map(|i| WorkerProcess::spawn(env, &format!("{tag}{i}"), &[]))
        .collect()
}

/// Waits until schedule `name` has made at least `n` jobs, all succeeded.
async fn wait_for_ticks(env: &TestEnv, name: &str, n: usize) -> anyhow::Result<Vec<ScheduleTick>> {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} succeeded jobs of schedule {name}"),
        || async {
            let ticks = env.store.schedule_ticks(name, 10_000).await?;
            let done = ticks.iter().filter(|t| t.state == "succeeded").count();
            Ok(if ticks.len() >= n && done == ticks.len() {
                Ok(ticks)
            } else {
                Err(format!("{} jobs, {done} succeeded", ticks.len()))
            })
        },
    )
    .await
}

/// Consecutive ticks are exactly 2 s apart: distinct, and none missing.
fn assert_contiguous(ticks: &[DateTime<Utc>]) {
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], TimeDelta::seconds(2), "{ticks:?}");
    }
}

#[tokio::test]
async fn three_workers_make_exactly_one_job_per_tick() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        let mut procs = workers(&env, "cron")?;
        let (created, paused) = env
            .store
            .upsert_schedule(&every_2s("tick", CatchUp::Last))
            .await?;
        assert!(created && !paused);
        let schedule = env
            .store
            .schedule_named("tick")
            .await?
            .ok_or_else(|| anyhow::anyhow!("schedule missing"))?;
        // Six ticks span 11 s of three schedulers racing.
        wait_for_ticks(&env, "tick", 6).await?;
        env.store.set_schedule_paused("tick", true).await?;
        let ticks = env.store.schedule_ticks("tick", 10_000).await?;
        let at: Vec<DateTime<Utc>> = ticks.iter().map(|t| t.tick).collect();
        assert_contiguous(&at);
        // The first job is for the first tick after the schedule was added.
        let cron = CronSchedule::parse(EVERY_2S, "UTC")?;
        assert_eq!(at.first().copied(), cron.next_after(schedule.created_at));
        // Each job ran once: one attempt each, and every job id distinct.
        let mut ids: Vec<_> = ticks.iter().map(|t| t.job_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ticks.len());
        assert!(ticks.iter().all(|t| t.attempt == 1), "{ticks:?}");
        let row = env.store.schedule_named("tick").await?;
        let row = row.ok_or_else(|| anyhow::anyhow!("schedule missing"))?;
        assert_eq!(row.last_fired_at, at.last().copied());
        assert_eq!(row.last_job_id, ticks.last().map(|t| t.job_id));
        for p in &mut procs {
            p.signal("TERM").await?;
            p.wait(Duration::from_secs(30)).await?;
        }
        anyhow::Ok(())
    }
    .await;
    env.cleanup().await?;
    result
}

#[tokio::test]
async fn after_every_worker_was_down_last_fires_one_catch_up_and_all_fires_each()
-> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        env.store
            .upsert_schedule(&every_2s("last", CatchUp::Last))
            .await?;
        env.store
            .upsert_schedule(&every_2s("all", CatchUp::All))
            .await?;
        let mut procs = workers(&env, "before")?;
        wait_for_ticks(&env, "last", 2).await?;
        wait_for_ticks(&env, "all", 2).await?;
        for p in &mut procs {
            p.signal("KILL").await?;
            p.wait(Duration::from_secs(10)).await?;
        }
        let before_last = env.store.schedule_ticks("last", 10_000).await?;
        let before_all = env.store.schedule_ticks("all", 10_000).await?;
        // The outage itself: nothing is waited for, time has to pass.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _procs = workers(&env, "after")?;
        let after_last = wait_for_ticks(&env, "last", before_last.len() + 3).await?;
        let after_all = wait_for_ticks(&env, "all", before_all.len() + 3).await?;

        // `last`: the ticks of the outage are skipped but for the most recent one.
        let last_before = before_last.last().map(|t| t.tick);
        let new: Vec<DateTime<Utc>> = after_last
            .iter()
            .map(|t| t.tick)
            .filter(|t| Some(*t) > last_before)
            .collect();
        let gap = new[0] - last_before.unwrap_or(new[0]);
        assert!(
            gap >= TimeDelta::seconds(10),
            "catch-up tick {gap} after the last one: {new:?}"
        );
        assert_contiguous(&new);

        // `all`: every tick of the outage has its job.
        let all: Vec<DateTime<Utc>> = after_all.iter().map(|t| t.tick).collect();
        assert_contiguous(&all);
        assert!(all.len() >= before_all.len() + 5, "{all:?}");
        anyhow::Ok(())
    }
    .await;
    env.cleanup().await?;
    result
}

#[tokio::test]
async fn a_schedule_declared_in_code_is_saved_at_start_and_fires() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = async {
        let builder = warren_worker::tasks::register_builtins(warren_runtime::Worker::builder())
            .schedule(
                warren_runtime::PeriodicJob::new("from-code", EVERY_2S, "warren.echo")
                    .payload(serde_json::json!({"from": "code"}))
                    .catch_up(CatchUp::None),
            );
        let worker = env.start_worker(builder, env.worker_config("code")).await?;
        let ticks = wait_for_ticks(&env, "from-code", 2).await;
        worker.stop().await?;
        let ticks: Vec<DateTime<Utc>> = ticks?.iter().map(|t| t.tick).collect();
        assert_contiguous(&ticks);
        let row = env.store.schedule_named("from-code").await?;
        let row = row.ok_or_else(|| anyhow::anyhow!("the declared schedule was not saved"))?;
        assert_eq!(
            (row.cron.as_str(), row.catch_up.as_str(), &row.payload),
            (EVERY_2S, "none", &serde_json::json!({"from": "code"}))
        );
        anyhow::Ok(())
    }
    .await;
    env.cleanup().await?;
    result
}
