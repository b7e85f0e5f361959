//! `warren prune` against the real binary and PostgreSQL: it deletes the finished jobs of the
//! named states that are old enough, and nothing else; it counts first and prints what it
//! removed; a dry run removes nothing; a state that has not finished is refused.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

mod support;

use std::time::Duration;

use anyhow::ensure;
use chrono::Utc;
use serde_json::value::RawValue;
use warren_core::{JobId, JobState};
use warren_store::{RecordRow, Recorder, RecorderConfig, ScheduledJob, Store};
use warren_testkit::TestEnv;

use support::*;

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

/// `n` scheduled jobs, due in an hour.
async fn scheduled(env: &TestEnv, n: usize) -> Vec<JobId> {
    let rows: Vec<ScheduledJob> = (0..n)
        .map(|_| ScheduledJob {
            id: JobId::new(),
            queue: "default".to_owned(),
            task: "t".to_owned(),
            payload: "{}".to_owned(),
            max_attempts: 3,
            timeout_ms: None,
            run_at: Utc::now() + chrono::Duration::hours(1),
            enqueued_at: Utc::now() - chrono::Duration::days(30),
            idempotency_key: None,
            traceparent: None,
        })
        .collect();
    env.store.schedule(&rows).await.unwrap();
    rows.iter().map(|r| r.id).collect()
}

async fn exists(env: &TestEnv, ids: &[JobId]) -> usize {
    env.store.jobs(ids).await.unwrap().len()
}

#[tokio::test]
async fn prune_removes_only_old_finished_jobs_of_the_named_states() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let store = &env.store;
        let old = jobs(store, JobState::Succeeded, 3 * HOUR, 5).await;
        let young = jobs(store, JobState::Succeeded, HOUR / 6, 2).await;
        let dead = jobs(store, JobState::Dead, 3 * HOUR, 3).await;
        let cancelled = jobs(store, JobState::Cancelled, 3 * HOUR, 2).await;
        let running = jobs(store, JobState::Running, 3 * HOUR, 2).await;
        let waiting = scheduled(env, 2).await;
        let all = [&old, &young, &dead, &cancelled, &running, &waiting].map(|v| v.len());
        let total: usize = all.iter().sum();

        // A dry run counts per state and removes nothing.
        let dry = warren(
            env,
            &[
                "prune",
                "--state",
                "succeeded,dead",
                "--older-than",
                "1h",
                "--dry-run",
                "--json",
            ],
        )
        .await?;
        ensure!(dry.code == Some(0), "{dry:?}");
        let report = dry.json()?;
        ensure!(
            report["dry_run"] == true && report["matched"] == 8 && report["removed"] == 0,
            "{report}"
        );
        ensure!(report["states"][0]["state"] == "succeeded" && report["states"][0]["matched"] == 5);
        ensure!(report["states"][1]["state"] == "dead" && report["states"][1]["matched"] == 3);
        let text = warren(
            env,
            &[
                "prune",
                "--state",
                "dead",
                "--older-than",
                "1h",
                "--dry-run",
            ],
        )
        .await?;
        ensure!(
            text.code == Some(0)
                && text.stdout.contains("WOULD REMOVE")
                && text.stdout.contains("dead"),
            "{text:?}"
        );
        let all_ids: Vec<JobId> = [&old, &young, &dead, &cancelled, &running, &waiting]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        ensure!(
            exists(env, &all_ids).await == total,
            "a dry run removed jobs"
        );

        // Without --yes and without a terminal, nothing is done.
        let refused = warren(
            env,
            &["prune", "--state", "succeeded", "--older-than", "1h"],
        )
        .await?;
        ensure!(
            refused.code == Some(2) && refused.stderr.contains("stdin is not a terminal"),
            "{refused:?}"
        );
        ensure!(exists(env, &all_ids).await == total);

        // Repeated --state, batches of two: the counts printed are what was deleted.
        let run = warren(
            env,
            &[
                "prune",
                "--state",
                "succeeded",
                "--state",
                "dead",
                "--older-than",
                "1h",
                "--batch-size",
                "2",
                "--yes",
                "--json",
            ],
        )
        .await?;
        ensure!(run.code == Some(0), "{run:?}");
        let report = run.json()?;
        ensure!(
            report["dry_run"] == false && report["interrupted"] == false && report["removed"] == 8,
            "{report}"
        );
        ensure!(
            report["states"][0]["removed"] == 5 && report["states"][1]["removed"] == 3,
            "{report}"
        );
        ensure!(exists(env, &old).await == 0 && exists(env, &dead).await == 0);
        ensure!(
            exists(env, &young).await == 2,
            "young succeeded jobs are kept"
        );
        ensure!(
            exists(env, &cancelled).await == 2,
            "cancelled was not named"
        );

        // --older-than 0s: every job of the state, young ones included; the table for people.
        let zero = warren(
            env,
            &[
                "prune",
                "--state",
                "succeeded,cancelled",
                "--older-than",
                "0s",
                "--yes",
            ],
        )
        .await?;
        ensure!(zero.code == Some(0), "{zero:?}");
        ensure!(
            zero.stdout.contains("REMOVED")
                && zero
                    .stdout
                    .lines()
                    .any(|l| l.starts_with("total") && l.ends_with(" 4")),
            "{}",
            zero.stdout
        );
        ensure!(exists(env, &young).await == 0 && exists(env, &cancelled).await == 0);

        // Live jobs are still there, however old.
        ensure!(exists(env, &running).await == 2 && exists(env, &waiting).await == 2);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn prune_refuses_a_state_that_has_not_finished() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let running = jobs(&env.store, JobState::Running, 3 * HOUR, 1).await;
        let waiting = scheduled(env, 1).await;
        for state in ["running", "scheduled", "queued", "succeeded,running"] {
            let run = warren(
                env,
                &["prune", "--state", state, "--older-than", "0s", "--yes"],
            )
            .await?;
            ensure!(
                run.code == Some(2) && run.stderr.contains("never pruned"),
                "{state}: {run:?}"
            );
        }
        let bogus = warren(
            env,
            &["prune", "--state", "done", "--older-than", "1d", "--yes"],
        )
        .await?;
        ensure!(
            bogus.code == Some(2) && bogus.stderr.contains("unknown job state"),
            "{bogus:?}"
        );
        let no_age = warren(env, &["prune", "--state", "dead", "--yes"]).await?;
        ensure!(
            no_age.code == Some(2) && no_age.stderr.contains("--older-than"),
            "{no_age:?}"
        );
        // An age reaching before the calendar is bad usage, not a failed DELETE.
        for args in [
            &[
                "prune",
                "--state",
                "dead",
                "--older-than",
                "99999999d",
                "--yes",
            ][..],
            &["workers", "prune", "--older-than", "99999999d", "--yes"],
        ] {
            let run = warren(env, args).await?;
            ensure!(
                run.code == Some(2) && run.stderr.contains("too long"),
                "{args:?}: {run:?}"
            );
        }
        ensure!(exists(env, &running).await == 1 && exists(env, &waiting).await == 1);
        Ok(())
    })
    .await
}
