//! `warren top` on a real terminal (tmux), against a test's own RabbitMQ and Postgres.

use anyhow::ensure;
use warren_core::JobState;
use warren_runtime::Worker;

mod support;
#[path = "support/tmux.rs"]
mod tmux;

use support::*;
use tmux::{Tmux, vars};

/// `warren top` draws a queue with its depth from RabbitMQ, the task that ran with its limit
/// and the worker, and `q` ends it with status 0, leaving the terminal as it was.
#[tokio::test]
async fn top_shows_a_queue_with_its_depth_and_q_quits() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            let id = enqueue_one(env, &["warren.noop", "--payload", "{}"]).await?;
            wait_for_state(env, id, JobState::Succeeded).await
        })
        .await?;
        // The worker has stopped: these wait in RabbitMQ.
        let run = warren(
            env,
            &["enqueue", "warren.noop", "--payload", "{}", "--count", "7"],
        )
        .await?;
        ensure!(run.code == Some(0), "{run:?}");
        let run = warren(env, &["limits", "set", "warren.noop", "--concurrency", "3"]).await?;
        ensure!(run.code == Some(0), "{run:?}");

        let top = Tmux::warren(&vars(env), &["top"])?;
        let screen = top
            .wait_for("the default queue with 7 ready messages", |screen| {
                screen.lines().any(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    words.first() == Some(&"default") && words.get(2) == Some(&"7")
                })
            })
            .await?;
        ensure!(screen.contains("warren top"), "{screen}");
        ensure!(
            screen
                .lines()
                .any(|l| l.contains("warren.noop") && l.contains("3 at once")),
            "the task that ran, with its limit: {screen}"
        );
        ensure!(screen.contains("stopped"), "the worker, stopped: {screen}");
        ensure!(
            screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80),
            "{screen}"
        );

        top.send_keys(&["q"])?;
        let (status, screen) = top.wait_for_exit().await?;
        ensure!(status == 0, "{screen}");
        // The alternate screen is gone: only the status line is left.
        ensure!(!screen.contains("warren top"), "{screen}");
        Ok(())
    })
    .await
}

/// Without a terminal `warren top` refuses with the usage status and names the commands to
/// use instead.
#[tokio::test]
async fn top_without_a_terminal_points_to_the_json_commands() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let run = warren(env, &["top"]).await?;
        ensure!(run.code == Some(2), "{run:?}");
        ensure!(
            run.stderr.contains("stdout is not one")
                && run.stderr.contains("warren queues list --json")
                && run.stderr.contains("warren stats --json"),
            "{run:?}"
        );
        Ok(())
    })
    .await
}
