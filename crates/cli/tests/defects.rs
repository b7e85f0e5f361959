//! Defects found when `warren` was tried from outside (issue 8), each pinned by a test that
//! runs the real binary against the real RabbitMQ and PostgreSQL.
//!
//! Test bodies use `ensure!` rather than `assert!` so that a failure still reaches the cleanup
//! that drops the test's database and deletes its queues.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use tokio::process::Command;
use warren_core::{JobState, QueueName};
use warren_runtime::{JobContext, JobError, Worker};
use warren_store::provision;
use warren_testkit::{TestEnv, wait_until};

mod support;

use support::*;

/// A Postgres error printed by `warren` says each cause once: sqlx's errors print their cause
/// in their message and return it as their source too, and the chain used to say both.
#[tokio::test]
async fn a_postgres_error_says_each_cause_once() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let missing = format!("{}_missing", env.name);
        let url = provision::url_for_database(&env.admin_database_url, &missing)?;
        let run = warren_with(&[("WARREN_DATABASE_URL", &url)], &["jobs", "summary"]).await?;
        ensure!(run.code == Some(1), "{run:?}");
        let quoted = format!("database \"{missing}\" does not exist");
        ensure!(run.stderr.matches(&quoted).count() == 1, "{run:?}");
        ensure!(run.stderr.contains("(SQLSTATE 3D000)"), "{run:?}");

        // A database without Warren's tables: the query fails on the server.
        let empty = format!("{}_empty", env.name);
        provision::create_database(&env.admin_database_url, &empty).await?;
        let url = provision::url_for_database(&env.admin_database_url, &empty)?;
        let run = warren_with(&[("WARREN_DATABASE_URL", &url)], &["jobs", "summary"]).await;
        provision::drop_database(&env.admin_database_url, &empty).await?;
        let run = run?;
        ensure!(run.code == Some(1), "{run:?}");
        ensure!(
            run.stderr
                == "warren: counting jobs per state failed: relation \"warren_jobs\" does not \
                    exist (SQLSTATE 42P01)\n",
            "{run:?}"
        );
        Ok(())
    })
    .await
}

/// Ready messages in `queue`, as a passive declare reports them.
async fn ready(env: &TestEnv, queue: &str) -> anyhow::Result<u64> {
    let depth = env
        .broker
        .queue_depth(&QueueName::new(queue)?)
        .await?
        .context("the queue exists")?;
    Ok(u64::from(depth.ready))
}

/// Ctrl-C during a long `enqueue --count` stops after the current batch, prints what was
/// enqueued (the queue holds exactly that many) and exits 130. It used to die at once with
/// nothing printed, although thousands of jobs were in the queue.
#[tokio::test]
async fn ctrl_c_stops_a_long_enqueue_and_reports_what_is_in_the_queue() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .env("WARREN_AMQP_URL", &env.amqp_url)
            .env("WARREN_NAMESPACE", env.namespace())
            .env_remove("WARREN_DATABASE_URL")
            .env_remove("RUST_LOG")
            .args(["enqueue", "warren.noop", "--payload", "{}"])
            .args(["--count", "10000000", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting warren")?;
        let pid = child.id().context("pid")?;
        // The handler is installed before the first batch, so it is in place once the queue
        // holds messages.
        wait_until(
            Duration::from_secs(30),
            "the first jobs to reach the queue",
            || async {
                let n = ready(env, "default").await?;
                Ok(if n > 0 { Ok(()) } else { Err(n.to_string()) })
            },
        )
        .await?;
        let kill = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await?;
        ensure!(kill.success(), "kill -INT {pid}");
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(130),
            "{:?}\n{stdout}\n{stderr}",
            output.status
        );
        let report: Value = serde_json::from_str(&stdout)
            .with_context(|| format!("stdout is the JSON report: {stdout:?} {stderr:?}"))?;
        ensure!(report["interrupted"] == true, "{report}");
        let enqueued = report["enqueued"].as_u64().context("enqueued")?;
        ensure!(
            enqueued > 0 && enqueued < 10_000_000 && report["failed"] == 0,
            "{report}"
        );
        ensure!(
            report["skipped"].as_u64() == Some(10_000_000 - enqueued),
            "{report}"
        );
        ensure!(
            report["first_id"].is_string() && report["last_id"].is_string(),
            "{report}"
        );
        ensure!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");
        // No worker runs: every job reported enqueued is ready in the queue, and no other.
        wait_until(
            Duration::from_secs(30),
            "the queue to hold exactly the jobs reported",
            || async {
                let n = ready(env, "default").await?;
                Ok(if n == enqueued {
                    Ok(())
                } else {
                    Err(format!("{n} ready, {enqueued} reported"))
                })
            },
        )
        .await
    })
    .await
}

/// A delayed job whose idempotency key is held says `duplicate of ID` and is counted as a
/// duplicate, not as enqueued; the holder keeps its payload. It used to print the holder's
/// id as if a new job had been added, dropping the new payload without a word.
#[tokio::test]
async fn a_delayed_duplicate_is_named_and_counted_apart() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let args = |payload: &'static str| {
            [
                "t",
                "--payload",
                payload,
                "--delay",
                "1m",
                "--idempotency-key",
                "report-2026-12",
            ]
        };
        let first = enqueue_one(env, &args(r#"{"v": 1}"#)).await?;

        let again = warren(env, &[&["enqueue"], &args(r#"{"v": 2}"#)[..]].concat()).await?;
        ensure!(again.code == Some(0), "{again:?}");
        ensure!(
            again.stdout == format!("duplicate of {first}\n"),
            "{again:?}"
        );
        let json = warren(
            env,
            &[&["enqueue"], &args(r#"{"v": 3}"#)[..], &["--json"]].concat(),
        )
        .await?
        .json()?;
        ensure!(
            json["enqueued"] == 0 && json["duplicates"] == 1 && json["skipped"] == 0,
            "{json}"
        );
        ensure!(json["ids"] == serde_json::json!([]), "{json}");
        ensure!(
            json["duplicate_of"] == serde_json::json!([first.to_string()]),
            "{json}"
        );
        let holder = env.store.job(first).await?.context("the holder's row")?;
        ensure!(
            holder.payload == Some(serde_json::json!({"v": 1})),
            "{holder:?}"
        );
        let listed = warren(env, &["jobs", "list", "--json"]).await?.json()?;
        let rows = listed["jobs"].as_array().map(Vec::len);
        ensure!(rows == Some(1), "one row, the holder's: {listed}");
        Ok(())
    })
    .await
}

/// `jobs cancel ID` and `jobs retry ID` end their line, like every other text output.
#[tokio::test]
async fn single_cancel_and_retry_end_with_a_newline() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let id = enqueue_one(env, &["t", "--payload", "{}", "--delay", "1h"]).await?;
        let cancel = warren(env, &["jobs", "cancel", &id.to_string()]).await?;
        ensure!(
            cancel.code == Some(0)
                && cancel.stdout
                    == format!("cancelled job {id} (it was scheduled; it will not run)\n"),
            "{cancel:?}"
        );
        let retry = warren(env, &["jobs", "retry", &id.to_string()]).await?;
        ensure!(
            retry.code == Some(0)
                && retry.stdout.starts_with(&format!("job {id} is due now: "))
                && retry.stdout.ends_with('\n')
                && retry.stdout.lines().count() == 1,
            "{retry:?}"
        );
        Ok(())
    })
    .await
}

/// A job recorded as a duplicate never ran: `jobs show` says so instead of a run time
/// (`ran 46ms`) and an attempt count (`attempt 1 of 5`).
#[tokio::test]
async fn show_says_a_duplicate_never_ran() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = Worker::builder().register("t", |_ctx: JobContext, _p: Value| async move {
            Ok::<_, JobError>(())
        });
        with_worker(env, builder, async || {
            let args = ["t", "--payload", "{}", "--idempotency-key", "once"];
            let original = enqueue_one(env, &args).await?;
            wait_for_state(env, original, JobState::Succeeded).await?;
            let duplicate = enqueue_one(env, &args).await?;
            wait_for_state(env, duplicate, JobState::Cancelled).await?;
            let show = warren(env, &["jobs", "show", &duplicate.to_string()]).await?;
            ensure!(show.code == Some(0), "{show:?}");
            for line in [
                format!("attempt      not run (duplicate of {original})\n"),
                "started      -\n".to_owned(),
                format!("duplicate of {original} ("),
            ] {
                ensure!(show.stdout.contains(&line), "{line:?} in:\n{}", show.stdout);
            }
            ensure!(
                show.stdout.contains(", not run\n") && !show.stdout.contains(", ran "),
                "{}",
                show.stdout
            );
            Ok(())
        })
        .await
    })
    .await
}

/// A stderr that is a closed pipe (`warren … 2>&1 | head -0`, a log shipper that died) does not
/// turn the command's own exit status into a panic's 101.
#[tokio::test]
async fn a_closed_stderr_keeps_the_exit_status() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .env("WARREN_AMQP_URL", &env.amqp_url)
            .env("WARREN_DATABASE_URL", &env.database_url)
            .env("WARREN_NAMESPACE", env.namespace())
            .env_remove("RUST_LOG")
            .args(["jobs", "show", "00000000-0000-0000-0000-000000000000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // The read end closes before the command has connected to anything, let alone
        // printed its error.
        drop(child.stderr.take());
        let status = tokio::time::timeout(COMMAND_TIMEOUT, child.wait())
            .await
            .context("warren did not finish")??;
        ensure!(status.code() == Some(3), "not found is 3, got {status:?}");

        // And a payload PostgreSQL cannot store is bad usage, said before anything is sent.
        let run = warren(
            env,
            &[
                "enqueue",
                "warren.echo",
                "--payload",
                r#"{"s":"a\u0000b"}"#,
                "--delay",
                "1s",
            ],
        )
        .await?;
        ensure!(run.code == Some(2), "{run:?}");
        ensure!(
            run.stderr.contains("PostgreSQL cannot store") && run.stderr.contains("column 8"),
            "{run:?}"
        );
        Ok(())
    })
    .await
}
