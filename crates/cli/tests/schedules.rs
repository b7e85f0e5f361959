//! `warren schedules` against the real binary, PostgreSQL and a running worker: bad input
//! exits 2 naming the flag and adds nothing; list and show report next and last fire time and
//! last job; a paused schedule fires nothing until resumed; a removed one fires nothing more.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

mod support;

use std::time::Duration;

use anyhow::ensure;
use warren_runtime::Worker;
use warren_testkit::{TestEnv, wait_until};

use support::*;

#[tokio::test]
async fn bad_input_exits_2_naming_the_flag_and_adds_nothing() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let add = |extra: &'static [&'static str]| {
            let mut args = vec!["schedules", "add", "s", "--task", "warren.echo"];
            args.extend_from_slice(extra);
            async move { warren(env, &args).await }
        };
        for (extra, flag, words) in [
            (&["--cron", "61 * * * * *"][..], "--cron", "is invalid"),
            (&["--cron", "every minute"][..], "--cron", "is invalid"),
            (&["--cron", "0 0 0 30 2 *"][..], "--cron", "never fires"),
            (
                &["--cron", "* * * * * *", "--timezone", "Mars/Olympus"][..],
                "--timezone",
                "unknown time zone 'Mars/Olympus'",
            ),
            (
                &["--cron", "* * * * * *", "--catch-up", "some"][..],
                "--catch-up",
                "expected none, last or all",
            ),
            (
                &["--cron", "* * * * * *", "--payload", "{nope"][..],
                "--payload",
                "not valid JSON",
            ),
        ] {
            let run = add(extra).await?;
            ensure!(run.code == Some(2), "{extra:?}: {run:?}");
            ensure!(
                run.stderr.contains(flag) && run.stderr.contains(words),
                "{extra:?}: {}",
                run.stderr
            );
            ensure!(!run.stderr.contains("panicked"), "{}", run.stderr);
        }
        let list = warren(env, &["schedules", "list", "--json"]).await?;
        ensure!(list.json()? == serde_json::json!([]), "{list:?}");
        for cmd in ["show", "remove", "pause", "resume"] {
            let run = warren(env, &["schedules", cmd, "nope"]).await?;
            ensure!(run.code == Some(3), "{cmd}: {run:?}");
            ensure!(
                run.stderr.contains("no schedule named 'nope'"),
                "{}",
                run.stderr
            );
        }
        Ok(())
    })
    .await
}

/// How many jobs schedule `name` has made.
async fn fired(env: &TestEnv, name: &str) -> anyhow::Result<usize> {
    Ok(env.store.schedule_ticks(name, 100_000).await?.len())
}

/// Waits until the `clock` schedule has made `more` jobs beyond what it has now: proof that
/// schedulers ran that many ticks, without sleeping.
async fn clock_ticks(env: &TestEnv, more: usize) -> anyhow::Result<()> {
    let target = fired(env, "clock").await? + more;
    wait_until(
        Duration::from_secs(30),
        "the clock schedule to tick",
        || async {
            let n = fired(env, "clock").await?;
            Ok(if n >= target {
                Ok(())
            } else {
                Err(format!("{n} of {target}"))
            })
        },
    )
    .await
}

#[tokio::test]
async fn pause_resume_and_remove_behave() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            for name in ["clock", "subject"] {
                let run = warren(
                    env,
                    &[
                        "schedules",
                        "add",
                        name,
                        "--cron",
                        "* * * * * *",
                        "--task",
                        "warren.echo",
                        "--payload",
                        r#"{"n": 1}"#,
                        "--json",
                    ],
                )
                .await?;
                ensure!(run.code == Some(0), "{run:?}");
                let added = run.json()?;
                ensure!(added["created"] == true && added["name"] == name, "{added}");
                ensure!(added["next_fire_at"].is_string(), "{added}");
            }
            clock_ticks(env, 2).await?;
            ensure!(fired(env, "subject").await? >= 1);

            // list and show: last job and both fire times.
            let list = warren(env, &["schedules", "list", "--json"])
                .await?
                .json()?;
            let subject = &list[1];
            ensure!(
                subject["name"] == "subject" && subject["paused"] == false,
                "{list}"
            );
            ensure!(subject["last_job_id"].is_string(), "{subject}");
            ensure!(subject["last_fired_at"].is_string(), "{subject}");
            ensure!(subject["next_fire_at"].is_string(), "{subject}");
            ensure!(
                subject["catch_up"] == "last" && subject["timezone"] == "UTC",
                "{subject}"
            );
            let table = warren(env, &["schedules", "list"]).await?;
            ensure!(
                table.stdout.starts_with("NAME ") && table.stdout.contains("NEXT FIRE"),
                "{}",
                table.stdout
            );

            // Paused: nothing fires while the clock ticks on.
            let run = warren(env, &["schedules", "pause", "subject", "--json"]).await?;
            ensure!(run.json()?["changed"] == true, "{run:?}");
            let again = warren(env, &["schedules", "pause", "subject"]).await?;
            ensure!(
                again.stdout == "schedule subject was already paused\n",
                "{again:?}"
            );
            let at_pause = fired(env, "subject").await?;
            clock_ticks(env, 3).await?;
            ensure!(
                fired(env, "subject").await? == at_pause,
                "a paused schedule fired"
            );
            let shown = warren(env, &["schedules", "show", "subject", "--json"])
                .await?
                .json()?;
            ensure!(
                shown["paused"] == true && shown["next_fire_at"].is_null(),
                "{shown}"
            );

            // Resumed: the missed ticks are caught up once (catch-up last), then it goes on.
            let run = warren(env, &["schedules", "resume", "subject"]).await?;
            ensure!(run.stdout == "resumed schedule subject\n", "{run:?}");
            wait_until(
                Duration::from_secs(30),
                "the resumed schedule to fire twice",
                || async {
                    let n = fired(env, "subject").await?;
                    Ok(if n >= at_pause + 2 {
                        Ok(())
                    } else {
                        Err(n.to_string())
                    })
                },
            )
            .await?;
            let ticks = env.store.schedule_ticks("subject", 100_000).await?;
            let resumed = &ticks[at_pause..];
            // The first tick after the pause skipped the paused seconds (at least three).
            let gap = resumed[0].tick - ticks[at_pause - 1].tick;
            ensure!(gap >= chrono::TimeDelta::seconds(3), "{ticks:?}");
            ensure!(
                resumed[1].tick - resumed[0].tick == chrono::TimeDelta::seconds(1),
                "{ticks:?}"
            );

            // Removed: nothing more, and it is gone from the list.
            let run = warren(env, &["schedules", "remove", "subject", "--json"]).await?;
            ensure!(run.json()?["removed"] == true, "{run:?}");
            let at_remove = fired(env, "subject").await?;
            clock_ticks(env, 3).await?;
            ensure!(
                fired(env, "subject").await? == at_remove,
                "a removed schedule fired"
            );
            let list = warren(env, &["schedules", "list", "--json"])
                .await?
                .json()?;
            ensure!(list.as_array().map(Vec::len) == Some(1), "{list}");
            let show = warren(env, &["schedules", "show", "subject"]).await?;
            ensure!(show.code == Some(3), "{show:?}");
            Ok(())
        })
        .await
    })
    .await
}
