//! `warren` on a real terminal (tmux): what only happens when a person is at the keyboard, the
//! confirmation of bulk commands, the throughput sparkline of `warren stats`, colour.

use anyhow::{Context, ensure};
use serde_json::Value;
use warren_core::JobState;
use warren_runtime::Worker;

mod support;
#[path = "support/tmux.rs"]
mod tmux;

use support::*;
use tmux::{Tmux, vars};

/// How many jobs `jobs list --state STATE --json` finds.
async fn count(env: &warren_testkit::TestEnv, state: &str) -> anyhow::Result<usize> {
    let run = warren(env, &["jobs", "list", "--state", state, "--json"]).await?;
    ensure!(run.code == Some(0), "{run:?}");
    let json = run.json()?;
    json["jobs"]
        .as_array()
        .map(Vec::len)
        .with_context(|| format!("no jobs array: {json}"))
}

/// `warren jobs cancel --state scheduled` without `--yes` asks on a terminal: `n` leaves the
/// jobs scheduled and exits 2, `y` cancels them.
#[tokio::test]
async fn a_bulk_cancel_asks_and_only_yes_cancels() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let run = warren(
            env,
            &[
                "enqueue",
                "warren.noop",
                "--payload",
                "{}",
                "--delay",
                "1h",
                "--count",
                "3",
            ],
        )
        .await?;
        ensure!(run.code == Some(0), "{run:?}");
        ensure!(count(env, "scheduled").await? == 3);

        let no = Tmux::warren(&vars(env), &["jobs", "cancel", "--state", "scheduled"])?;
        let question = no
            .wait_for("the confirmation question", |s| s.contains("[y/N]"))
            .await?;
        ensure!(question.contains("cancel 3 jobs?"), "{question}");
        no.send_keys(&["n", "Enter"])?;
        let (status, screen) = no.wait_for_exit().await?;
        ensure!(status == 2, "{screen}");
        ensure!(
            screen.contains("not confirmed; nothing was done"),
            "{screen}"
        );
        ensure!(count(env, "scheduled").await? == 3, "n cancels nothing");
        ensure!(count(env, "cancelled").await? == 0);

        let yes = Tmux::warren(&vars(env), &["jobs", "cancel", "--state", "scheduled"])?;
        yes.wait_for("the confirmation question", |s| s.contains("[y/N]"))
            .await?;
        yes.send_keys(&["y", "Enter"])?;
        let (status, screen) = yes.wait_for_exit().await?;
        ensure!(status == 0, "{screen}");
        ensure!(screen.contains("cancelled 3"), "{screen}");
        ensure!(count(env, "scheduled").await? == 0);
        ensure!(count(env, "cancelled").await? == 3, "y cancels them");
        Ok(())
    })
    .await
}

/// `warren stats --json` gives the jobs finished per minute, one entry for every minute of
/// the window; on a terminal the table is followed by their sparkline (and in a pipe it is
/// not).
#[tokio::test]
async fn stats_show_throughput_per_minute() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            let mut ids = Vec::new();
            for _ in 0..4 {
                ids.push(enqueue_one(env, &["warren.noop", "--payload", "{}"]).await?);
            }
            let dead =
                enqueue_one(env, &["warren.fail", "--payload", r#"{"permanent": true}"#]).await?;
            for id in ids {
                wait_for_state(env, id, JobState::Succeeded).await?;
            }
            wait_for_state(env, dead, JobState::Dead).await
        })
        .await?;

        let run = warren(env, &["stats", "--since", "10m", "--json"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        let stats = run.json()?;
        let minutes = stats["throughput"]
            .as_array()
            .with_context(|| format!("no throughput: {stats}"))?;
        // From the minute ten minutes ago to this one (eleven, or twelve across a minute).
        ensure!((11..=12).contains(&minutes.len()), "{stats}");
        let sum = |field: &str| {
            minutes
                .iter()
                .filter_map(|m| m[field].as_i64())
                .sum::<i64>()
        };
        ensure!(sum("succeeded") == 4 && sum("dead") == 1, "{stats}");
        ensure!(sum("retried") == 0 && sum("cancelled") == 0, "{stats}");
        let times: Vec<&str> = minutes
            .iter()
            .filter_map(|m| m["minute"].as_str())
            .collect();
        ensure!(times.len() == minutes.len() && times.is_sorted(), "{stats}");
        ensure!(
            stats["tasks"].as_array().is_some_and(|t| t.len() == 2),
            "{stats}"
        );
        ensure!(matches!(stats["since"], Value::String(_)), "{stats}");

        let piped = warren(env, &["stats"]).await?;
        ensure!(!piped.stdout.contains("finished per"), "{piped:?}");

        let tty = Tmux::warren(&vars(env), &["stats"])?;
        let (status, screen) = tty.wait_for_exit().await?;
        ensure!(status == 0, "{screen}");
        ensure!(
            screen.contains("jobs finished per minute (max "),
            "{screen}"
        );
        let spark = screen
            .lines()
            .find(|l| l.starts_with(['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█']))
            .with_context(|| format!("no sparkline:\n{screen}"))?;
        ensure!(
            spark.contains('█') && spark.chars().count() == 61,
            "{spark:?}"
        );
        Ok(())
    })
    .await
}

/// On a terminal, state words are coloured and headers bold; NO_COLOR and `--color never`
/// turn that off, and a pipe never gets colour unless `--color always` asks for it.
#[tokio::test]
async fn states_are_coloured_on_a_terminal_only() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            let id = enqueue_one(env, &["warren.noop", "--payload", "{}"]).await?;
            wait_for_state(env, id, JobState::Succeeded).await
        })
        .await?;
        let list = ["jobs", "list"];

        let coloured = Tmux::warren(&vars(env), &list)?;
        coloured.wait_for_exit().await?;
        let screen = coloured.screen(true)?;
        ensure!(screen.contains("\u{1b}[32msucceeded"), "{screen:?}");
        ensure!(screen.contains("\u{1b}[1mID"), "{screen:?}");

        let mut no_color = vars(env);
        no_color.push(("NO_COLOR", "1"));
        for (vars, args) in [
            (no_color, &list[..]),
            (vars(env), &["--color", "never", "jobs", "list"][..]),
        ] {
            let plain = Tmux::warren(&vars, args)?;
            let (status, _) = plain.wait_for_exit().await?;
            let screen = plain.screen(true)?;
            ensure!(status == 0 && screen.contains("succeeded"), "{screen:?}");
            ensure!(!screen.contains("\u{1b}["), "{args:?}: {screen:?}");
        }

        let piped = warren(env, &list).await?;
        ensure!(!piped.stdout.contains('\u{1b}'), "{piped:?}");
        let forced = warren(env, &["--color", "always", "jobs", "list"]).await?;
        ensure!(forced.stdout.contains("\u{1b}[32msucceeded"), "{forced:?}");
        Ok(())
    })
    .await
}
