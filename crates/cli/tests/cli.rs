//! The real `warren` binary against the real RabbitMQ and PostgreSQL: each test gets its own
//! database and namespace from the testkit and checks what a user sees, stdout, stderr and the
//! exit status.
//!
//! Test bodies use `ensure!` rather than `assert!` so that a failure still reaches the cleanup
//! that drops the test's database and deletes its queues.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use tokio::process::Command;
use warren_core::{JobId, JobState};
use warren_runtime::{JobContext, JobError, Worker};
use warren_store::provision;
use warren_testkit::{TestEnv, wait_until};

mod support;

use support::*;

#[tokio::test]
async fn migrate_creates_and_migrates_a_fresh_database() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let fresh = format!("{}_m", env.name);
        let url = provision::url_for_database(&env.admin_database_url, &fresh)?;
        let result = async {
            // Given as a flag this time, to cover both ways of passing the URL.
            let run = warren_with(
                &[],
                &["--database-url", &url, "migrate", "--create-database"],
            )
            .await?;
            ensure!(run.code == Some(0), "{run:?}");
            ensure!(
                run.stdout.contains(&format!("database `{fresh}` exists")),
                "{run:?}"
            );
            let version = format!("is at version {}\n", warren_store::SCHEMA_VERSION);
            ensure!(run.stdout.contains(&version), "{run:?}");

            let again = warren_with(&[], &["--database-url", &url, "migrate"]).await?;
            ensure!(
                again.code == Some(0),
                "migrating twice is harmless: {again:?}"
            );
            let summary =
                warren_with(&[], &["--database-url", &url, "jobs", "summary", "--json"]).await?;
            ensure!(summary.code == Some(0), "the schema is usable: {summary:?}");
            Ok(())
        }
        .await;
        provision::drop_database(&env.admin_database_url, &fresh).await?;
        result?;

        let missing =
            provision::url_for_database(&env.admin_database_url, &format!("{}_x", env.name))?;
        let run = warren_with(&[], &["--database-url", &missing, "migrate"]).await?;
        ensure!(run.code == Some(1), "{run:?}");
        ensure!(
            run.stderr.starts_with("warren: connecting to PostgreSQL: "),
            "{run:?}"
        );
        ensure!(run.stderr.contains("does the database exist?"), "{run:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn enqueued_jobs_wait_in_the_queue_until_a_worker_runs_them() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        enqueue_reports_what_it_sent(env).await?;
        let summary = warren(env, &["jobs", "summary", "--json"]).await?;
        ensure!(summary.code == Some(0), "{summary:?}");
        let summary = summary.json()?;
        ensure!(summary["finished"] == 0, "no worker ran them: {summary}");
        let states = summary["states"]
            .as_object()
            .context("states is an object")?;
        ensure!(states.len() == JobState::ALL.len(), "{summary}");
        ensure!(
            states.values().all(|n| *n == 0),
            "queued jobs have no row yet: {summary}"
        );
        nine_jobs_wait_in_the_declared_queue(env).await
    })
    .await
}

/// Enqueues nine jobs in three ways (five as JSON, one by id, three as text) and checks what
/// each form prints.
async fn enqueue_reports_what_it_sent(env: &TestEnv) -> anyhow::Result<()> {
    let run = warren(
        env,
        &[
            "enqueue",
            "warren.noop",
            "--payload",
            "{}",
            "--count",
            "5",
            "--json",
        ],
    )
    .await?;
    ensure!(run.code == Some(0), "{run:?}");
    let report = run.json()?;
    ensure!(report["enqueued"] == 5 && report["failed"] == 0, "{report}");
    ensure!(
        report["ids"].as_array().map(Vec::len) == Some(5),
        "{report}"
    );

    let one = [
        "warren.noop",
        "--payload",
        r#"{"n": 1}"#,
        "--max-attempts",
        "2",
    ];
    enqueue_one(env, &one).await?;

    let text = warren(
        env,
        &["enqueue", "warren.noop", "--payload", "{}", "--count", "3"],
    )
    .await?;
    ensure!(text.code == Some(0), "{text:?}");
    ensure!(
        text.stdout
            .starts_with("enqueued 3 jobs to queue default in "),
        "{text:?}"
    );
    ensure!(text.stdout.trim_end().ends_with(" jobs/s)"), "{text:?}");
    Ok(())
}

/// `queues declare` names the AMQP queue and counts the nine jobs waiting there, and
/// declaring again, with another queue besides, is harmless.
async fn nine_jobs_wait_in_the_declared_queue(env: &TestEnv) -> anyhow::Result<()> {
    let declared = warren(env, &["queues", "declare", "default", "--json"]).await?;
    ensure!(declared.code == Some(0), "{declared:?}");
    let declared = declared.json()?;
    let amqp_name = format!("{}.q.default", env.namespace());
    ensure!(
        declared[0]["amqp_queue"] == amqp_name.as_str(),
        "{declared}"
    );
    ensure!(
        declared[0]["ready"] == 9,
        "all nine jobs are waiting: {declared}"
    );

    let table = warren(env, &["queues", "declare", "default", "extra"]).await?;
    ensure!(table.code == Some(0), "declaring is idempotent: {table:?}");
    ensure!(table.stdout.contains(&amqp_name), "{table:?}");
    let extra = warren_core::QueueName::new("extra")?;
    env.broker.delete_topology(&[extra]).await?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_job_is_not_found_and_a_malformed_id_is_bad_usage() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let id = JobId::new();
        let run = warren(env, &["jobs", "show", &id.to_string()]).await?;
        ensure!(run.code == Some(3), "{run:?}");
        let expected = format!(
            "warren: no job {id} in the database (it may still be queued: rows are written when a \
             worker records the outcome)\n"
        );
        ensure!(run.stderr == expected, "{run:?}");
        ensure!(run.stdout.is_empty(), "{run:?}");

        let bad = warren(env, &["jobs", "show", "not-a-uuid"]).await?;
        ensure!(bad.code == Some(2), "{bad:?}");
        ensure!(
            bad.stderr.contains("`not-a-uuid` is not a job id"),
            "{bad:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bad_input_is_refused_with_status_2_before_any_connection() -> anyhow::Result<()> {
    // No service is named at all: these must fail on the input alone.
    let run = warren_with(&[], &["enqueue", "email.send", "--payload", r#"{"to": }"#]).await?;
    ensure!(run.code == Some(2), "{run:?}");
    ensure!(
        run.stderr
            .contains("not valid JSON: expected value at line 1 column 8"),
        "{run:?}"
    );
    ensure!(
        run.stderr.contains("  {\"to\": }\n         ^"),
        "the caret points at the spot: {run:?}"
    );

    let run = warren_with(&[], &["workers"]).await?;
    ensure!(run.code == Some(2), "{run:?}");
    ensure!(
        run.stderr.contains("--database-url") && run.stderr.contains("WARREN_DATABASE_URL"),
        "{run:?}"
    );

    let run = warren_with(&[], &["enqueue", "t", "--payload", "{}"]).await?;
    ensure!(run.code == Some(2), "{run:?}");
    ensure!(
        run.stderr.contains("--amqp-url") && run.stderr.contains("WARREN_AMQP_URL"),
        "{run:?}"
    );

    let run = warren_with(
        &[("WARREN_AMQP_URL", "amqp://127.0.0.1:1")],
        &[
            "enqueue",
            "t",
            "--payload",
            "{}",
            "--count",
            "2",
            "--idempotency-key",
            "k",
        ],
    )
    .await?;
    ensure!(run.code == Some(2), "{run:?}");
    ensure!(
        run.stderr
            .contains("--idempotency-key cannot be combined with --count 2"),
        "{run:?}"
    );
    Ok(())
}

#[tokio::test]
async fn enqueueing_to_an_undeclared_queue_fails_as_unroutable() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let run = warren(
            env,
            &[
                "enqueue",
                "warren.noop",
                "--payload",
                "{}",
                "--queue",
                "nowhere",
            ],
        )
        .await?;
        ensure!(run.code == Some(1), "{run:?}");
        ensure!(
            run.stderr
                .starts_with("warren: the job was not enqueued: job "),
            "{run:?}"
        );
        ensure!(run.stderr.contains("is unroutable"), "{run:?}");
        ensure!(
            run.stderr.contains("`warren queues declare nowhere`"),
            "{run:?}"
        );
        ensure!(
            run.stdout.is_empty(),
            "no id for a job that was not enqueued: {run:?}"
        );

        let many = warren(
            env,
            &[
                "enqueue",
                "warren.noop",
                "--payload",
                "{}",
                "--queue",
                "nowhere",
                "--count",
                "3",
                "--json",
            ],
        )
        .await?;
        ensure!(many.code == Some(1), "{many:?}");
        let report = many.json()?;
        ensure!(report["enqueued"] == 0 && report["failed"] == 3, "{report}");
        ensure!(
            many.stderr.contains("3 of 3 jobs were not enqueued"),
            "{many:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_finished_job_shows_in_show_summary_and_workers() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = Worker::builder()
            .register("echo", |_ctx: JobContext, payload: Value| async move {
                Ok::<_, JobError>(payload)
            });
        with_worker(env, builder, async || {
            let args = [
                "echo",
                "--payload",
                r#"{"x": 1}"#,
                "--idempotency-key",
                "k-1",
            ];
            let id = enqueue_one(env, &args).await?;
            wait_for_state(env, id, JobState::Succeeded).await?;
            show_has_the_finished_job(env, id).await?;
            summary_counts_the_finished_job(env).await?;
            workers_lists_the_worker(env).await
        })
        .await
    })
    .await
}

async fn show_has_the_finished_job(env: &TestEnv, id: JobId) -> anyhow::Result<()> {
    let show = warren(env, &["jobs", "show", &id.to_string()]).await?;
    ensure!(show.code == Some(0), "{show:?}");
    for line in [
        format!("id           {id}\n"),
        "task         echo\n".to_owned(),
        "state        succeeded\n".to_owned(),
        "attempt      1 of ".to_owned(),
        "took         queued ".to_owned(),
        "idempotency  k-1\n".to_owned(),
        "payload      {\"x\":1}\n".to_owned(),
        "result       {\"x\":1}\n".to_owned(),
        "errors       none\n".to_owned(),
    ] {
        ensure!(
            show.stdout.contains(&line),
            "missing {line:?} in:\n{}",
            show.stdout
        );
    }
    let json = warren(env, &["jobs", "show", &id.to_string(), "--json"])
        .await?
        .json()?;
    ensure!(
        json["state"] == "succeeded" && json["id"] == id.to_string().as_str(),
        "{json}"
    );
    Ok(())
}

async fn summary_counts_the_finished_job(env: &TestEnv) -> anyhow::Result<()> {
    let summary = warren(env, &["jobs", "summary", "--queue", "default", "--json"])
        .await?
        .json()?;
    ensure!(
        summary["states"]["succeeded"] == 1 && summary["finished"] == 1,
        "{summary}"
    );
    ensure!(
        summary["enqueue_to_start_ms"]["p50"].is_number(),
        "{summary}"
    );
    let text = warren(env, &["jobs", "summary", "--since", "10m"]).await?;
    ensure!(
        text.code == Some(0) && text.stdout.contains("  succeeded           1\n"),
        "{text:?}"
    );
    Ok(())
}

async fn workers_lists_the_worker(env: &TestEnv) -> anyhow::Result<()> {
    let workers = warren(env, &["workers", "--json"]).await?.json()?;
    let expected_id = format!("{}-w", env.name);
    ensure!(workers[0]["id"] == expected_id.as_str(), "{workers}");
    let table = warren(env, &["workers"]).await?;
    ensure!(table.stdout.starts_with("ID "), "{table:?}");
    ensure!(
        table.stdout.contains(&expected_id)
            && (table.stdout.contains(" ago\n") || table.stdout.contains(" just now\n")),
        "{table:?}"
    );
    Ok(())
}

#[tokio::test]
async fn jobs_are_cancelled_and_retried_from_the_command_line() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        // The worker binary's own tasks: `warren.sleep` stops when its job is cancelled.
        let builder = warren_worker::tasks::register_builtins(Worker::builder()).register(
            "doomed",
            |_ctx: JobContext, _p: Value| async move {
                Err::<(), _>(JobError::permanent("never works"))
            },
        );
        with_worker(env, builder, async || {
            a_running_job_is_cancelled_by_its_worker(env).await?;
            a_delayed_job_is_cancelled_in_postgres(env).await?;
            a_dead_job_is_retried(env).await?;
            let unknown = warren(env, &["jobs", "retry", &JobId::new().to_string()]).await?;
            ensure!(unknown.code == Some(3), "{unknown:?}");
            // The hint is a retry's, not a cancel's.
            ensure!(
                unknown.stderr.contains("only a dead job can be retried")
                    && !unknown.stderr.contains("cancelled"),
                "{unknown:?}"
            );
            Ok(())
        })
        .await
    })
    .await
}

/// The CLI signals the job's worker, which records it cancelled; a second cancel says so.
async fn a_running_job_is_cancelled_by_its_worker(env: &TestEnv) -> anyhow::Result<()> {
    let running = enqueue_one(env, &["warren.sleep", "--payload", r#"{"ms": 60000}"#]).await?;
    wait_for_state(env, running, JobState::Running).await?;
    let cancel = warren(env, &["jobs", "cancel", &running.to_string()]).await?;
    ensure!(
        cancel.code == Some(0) && cancel.stdout.contains("told to cancel it"),
        "{cancel:?}"
    );
    wait_for_state(env, running, JobState::Cancelled).await?;
    let again = warren(env, &["jobs", "cancel", &running.to_string()]).await?;
    ensure!(
        again.code == Some(4) && again.stderr.contains("already cancelled"),
        "{again:?}"
    );
    Ok(())
}

/// A delayed job waits in Postgres, and is cancelled there.
async fn a_delayed_job_is_cancelled_in_postgres(env: &TestEnv) -> anyhow::Result<()> {
    let args = ["warren.sleep", "--payload", r#"{"ms": 1}"#, "--delay", "1h"];
    let later = enqueue_one(env, &args).await?;
    let waiting = env.store.job(later).await?.map(|j| j.state);
    ensure!(waiting == Some(JobState::Scheduled), "{waiting:?}");
    let cancel = warren(env, &["jobs", "cancel", &later.to_string(), "--json"])
        .await?
        .json()?;
    ensure!(
        cancel["outcome"] == "cancelled" && cancel["previous"] == "scheduled",
        "{cancel}"
    );
    Ok(())
}

/// A dead job, retried, runs again as attempt 2 and dies again.
async fn a_dead_job_is_retried(env: &TestEnv) -> anyhow::Result<()> {
    let dead = enqueue_one(env, &["doomed", "--payload", "{}"]).await?;
    wait_for_state(env, dead, JobState::Dead).await?;
    let retry = warren(env, &["jobs", "retry", &dead.to_string()]).await?;
    ensure!(
        retry.code == Some(0) && retry.stdout.contains("runs as attempt 2"),
        "{retry:?}"
    );
    wait_until(
        Duration::from_secs(30),
        "the retried job to die again",
        || async {
            let job = env.store.job(dead).await?.context("row")?;
            Ok(if job.state == JobState::Dead && job.attempt == 2 {
                Ok(())
            } else {
                Err(format!("{} {}", job.state, job.attempt))
            })
        },
    )
    .await
}

#[tokio::test]
async fn payloads_no_worker_can_read_and_endless_delays_are_bad_usage() -> anyhow::Result<()> {
    // A broker address is given but nothing listens there: the input must be refused first.
    let amqp = [("WARREN_AMQP_URL", "amqp://127.0.0.1:1")];
    let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
    for (payload, reason) in [
        (r#"{"n":1e400}"#, "number out of range"),
        (r#"{"s":"\ud800"}"#, "surrogate"),
        (deep.as_str(), "nested deeper than 127"),
    ] {
        let run = warren_with(&amqp, &["enqueue", "t", "--payload", payload]).await?;
        ensure!(run.code == Some(2), "{payload:.40}: {run:?}");
        ensure!(
            run.stderr
                .starts_with("warren: --payload: JSON that no worker can read: ")
                && run.stderr.contains(reason)
                && run.stderr.contains("at line 1, column "),
            "{run:?}"
        );
        ensure!(run.stderr.len() < 400, "the payload is not echoed: {run:?}");
    }

    let run = warren_with(
        &amqp,
        &["enqueue", "t", "--payload", "{}", "--delay", "100000000d"],
    )
    .await?;
    ensure!(run.code == Some(2), "a panic exits 101: {run:?}");
    ensure!(
        run.stderr.starts_with("warren: --delay: ") && run.stderr.contains("reaches past 2200"),
        "{run:?}"
    );
    let run = warren_with(
        &amqp,
        &[
            "enqueue",
            "t",
            "--payload",
            "{}",
            "--delay",
            "213503982334602d",
        ],
    )
    .await?;
    ensure!(
        run.code == Some(2) && run.stderr.contains("too long"),
        "{run:?}"
    );
    Ok(())
}

/// A scheduled row written straight to the store, as a producer in another language could.
fn scheduled(task: &str, payload: &str) -> warren_store::ScheduledJob {
    let now = chrono::Utc::now();
    warren_store::ScheduledJob {
        id: JobId::new(),
        queue: "default".into(),
        task: task.into(),
        payload: payload.into(),
        max_attempts: 1,
        timeout_ms: None,
        // Far enough ahead that no promoter touches it during the test.
        run_at: now + chrono::Duration::hours(1),
        enqueued_at: now,
        idempotency_key: None,
        traceparent: None,
    }
}

#[tokio::test]
async fn show_prints_a_stored_payload_serde_json_cannot_read() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let row = scheduled("t", r#"{"n":1e400}"#);
        env.store.schedule(std::slice::from_ref(&row)).await?;
        let show = warren(env, &["jobs", "show", &row.id.to_string()]).await?;
        ensure!(show.code == Some(0), "{show:?}");
        ensure!(
            show.stdout
                .contains("payload      (not readable as JSON, shown as text) {\"n\": 1000"),
            "{show:?}"
        );
        let json = warren(env, &["jobs", "show", &row.id.to_string(), "--json"]).await?;
        ensure!(json.code == Some(0), "{json:?}");
        let json = json.json()?;
        ensure!(json["payload"].is_null(), "{json}");
        ensure!(
            json["raw_body"]
                .as_str()
                .is_some_and(|t| t.starts_with("{\"n\": 1000")),
            "{json}"
        );
        Ok(())
    })
    .await
}

/// Bytes a terminal would obey: ESC, BEL, CR, and the C1 CSI.
fn has_terminal_controls(text: &str) -> bool {
    text.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}'])
}

#[tokio::test]
async fn job_data_is_shown_with_its_control_characters_escaped() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let hostile = "boom\u{1b}]0;pwned\u{7}\u{1b}[2J\rspoof\u{9b}";
        let builder = Worker::builder()
            .register("hostile", move |_ctx: JobContext, _p: Value| async move {
                Err::<(), _>(JobError::permanent(hostile))
            });
        with_worker(env, builder, async || {
            // JSON escapes in the argument become real control characters in the payload.
            let payload = r#"{"s":"\u001b[2J\u009b\u0007"}"#;
            let id = enqueue_one(env, &["hostile", "--payload", payload]).await?;
            wait_for_state(env, id, JobState::Dead).await?;

            let show = warren(env, &["jobs", "show", &id.to_string()]).await?;
            ensure!(show.code == Some(0), "{show:?}");
            ensure!(!has_terminal_controls(&show.stdout), "{show:?}");
            ensure!(
                show.stdout
                    .contains("payload      {\"s\":\"\\u001b[2J\\u{9b}\\u0007\"}\n"),
                "{show:?}"
            );
            ensure!(
                show.stdout
                    .contains("    boom\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\rspoof\\u{9b}\n"),
                "{show:?}"
            );
            let json = warren(env, &["jobs", "show", &id.to_string(), "--json"]).await?;
            ensure!(!has_terminal_controls(&json.stdout), "{json:?}");
            let json = json.json()?;
            ensure!(json["payload"]["s"] == "\u{1b}[2J\u{9b}\u{7}", "{json}");
            ensure!(json["errors"][0]["message"] == hostile, "{json}");

            // A task name no Warren producer would accept, written by one that skipped the
            // checks.
            let row = scheduled("evil\u{1b}]0;owned\u{7}\nstate        succeeded", "{}");
            env.store.schedule(std::slice::from_ref(&row)).await?;
            let show = warren(env, &["jobs", "show", &row.id.to_string()]).await?;
            ensure!(show.code == Some(0), "{show:?}");
            ensure!(!has_terminal_controls(&show.stdout), "{show:?}");
            ensure!(
                show.stdout
                    .contains("task         evil\\u{1b}]0;owned\\u{7}\\nstate        succeeded\n")
                    && show.stdout.contains("state        scheduled\n"),
                "a newline in a name cannot forge a field: {show:?}"
            );
            let json = warren(env, &["jobs", "show", &row.id.to_string(), "--json"]).await?;
            ensure!(!has_terminal_controls(&json.stdout), "{json:?}");
            ensure!(json.json()?["task"] == row.task.as_str(), "{json:?}");
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test]
async fn concurrent_create_database_all_succeed() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let fresh = format!("{}_c", env.name);
        let url = provision::url_for_database(&env.admin_database_url, &fresh)?;
        let runs = futures_join_all((0..5).map(|_| {
            let url = url.clone();
            async move {
                warren_with(
                    &[],
                    &["--database-url", &url, "migrate", "--create-database"],
                )
                .await
            }
        }))
        .await;
        provision::drop_database(&env.admin_database_url, &fresh).await?;
        for run in runs {
            let run = run?;
            ensure!(run.code == Some(0), "{run:?}");
            ensure!(
                run.stdout.contains(&format!("database `{fresh}` exists")),
                "{run:?}"
            );
        }
        Ok(())
    })
    .await
}

/// Runs all futures at once and returns their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("a spawned command panicked"));
    }
    outputs
}

/// Every way a secret can ride in a URL; none of these parts may ever be printed.
const SECRET: &str = "Hunter2Sekrit";

#[tokio::test]
async fn passwords_in_urls_are_never_printed() -> anyhow::Result<()> {
    // Dead ports: every command fails fast, and prints what it prints about the URL.
    let urls = [
        format!("postgres://warren@127.0.0.1:1/warren?password={SECRET}"),
        format!("postgres://warren:{SECRET}@127.0.0.1:1/warren"),
        format!("postgres://warren@127.0.0.1:1/warren?sslmode=disable&pass%77ord={SECRET}"),
        format!("postgres://warren@127.0.0.1:1/warren?sslpassword={SECRET}&sslmode=disable"),
        // Unparseable: a `/` in the password, a bad port.
        "postgres://warren:Hun/ter2Sekrit@127.0.0.1:1/warren".to_owned(),
        format!("postgres://warren@127.0.0.1:port/warren?password={SECRET}"),
    ];
    let leaks = |text: &str| text.contains(SECRET) || text.contains("ter2Sekrit");
    for url in &urls {
        for args in [
            vec!["--database-url", url, "migrate"],
            vec!["--database-url", url, "migrate", "--create-database"],
            vec!["--database-url", url, "jobs", "summary"],
        ] {
            let run = warren_with(&[("RUST_LOG", "debug")], &args).await?;
            // 2 for a URL that cannot be used, 1 for a server that does not answer.
            ensure!(matches!(run.code, Some(1 | 2)), "{args:?}: {run:?}");
            ensure!(
                !leaks(&run.stdout) && !leaks(&run.stderr),
                "{args:?}: {run:?}"
            );
        }
        // The same forms in a RabbitMQ URL.
        let amqp = url.replacen("postgres://warren", "amqp://guest", 1);
        for args in [
            vec!["--amqp-url", &amqp, "queues", "declare", "default"],
            vec!["--amqp-url", &amqp, "enqueue", "t", "--payload", "{}"],
        ] {
            let run = warren_with(&[("RUST_LOG", "debug")], &args).await?;
            // 2 for a URL that cannot be used, 1 for a server that does not answer.
            ensure!(matches!(run.code, Some(1 | 2)), "{args:?}: {run:?}");
            ensure!(
                !leaks(&run.stdout) && !leaks(&run.stderr),
                "{args:?}: {run:?}"
            );
        }
        // The worker logs its settings at start-up (info), then refuses a URL it cannot use,
        // or waits for a Postgres it cannot reach, saying why, until it is stopped.
        let log = std::env::temp_dir().join(format!("warren-leak-{}.log", std::process::id()));
        let file = std::fs::File::create(&log)?;
        let mut worker = Command::new(warren_testkit::bin_path("warren-worker")?)
            .args(["--database-url", url])
            .args([
                "--amqp-url",
                &format!("amqp://guest:{SECRET}@127.0.0.1:1/%2f?keyfile={SECRET}"),
            ])
            .env_remove("WARREN_AMQP_URL")
            .env_remove("WARREN_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        let waited =
            warren_testkit::wait_until(COMMAND_TIMEOUT, "the worker to exit or wait", || {
                let exited = worker.try_wait();
                let text = said();
                async move {
                    Ok(match exited? {
                        Some(status) => Ok(Some(status)),
                        None if text.contains("is not reachable; waiting for it") => Ok(None),
                        None => Err("neither".to_owned()),
                    })
                }
            })
            .await?;
        let status = match waited {
            Some(status) => status,
            None => {
                // Still waiting for Postgres: SIGTERM ends the wait with status 0.
                let pid = worker.id().context("worker pid")?;
                Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await?;
                tokio::time::timeout(COMMAND_TIMEOUT, worker.wait())
                    .await
                    .context("warren-worker did not stop on SIGTERM")??
            }
        };
        let stderr = said();
        let stdout = String::new();
        let _ = std::fs::remove_file(&log);
        ensure!(
            (status.code() == Some(2) && stderr.contains("invalid Postgres URL"))
                || (status.code() == Some(0) && stderr.contains("is not reachable")),
            "{url}: {status:?} {stderr}"
        );
        ensure!(
            stderr.contains("starting") || stderr.contains("invalid Postgres URL"),
            "the start-up line is there to check: {stderr}"
        );
        ensure!(!leaks(&stdout) && !leaks(&stderr), "{url}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn a_worker_refuses_an_unmigrated_database_and_says_what_to_run() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let fresh = format!("{}_u", env.name);
        provision::create_database(&env.admin_database_url, &fresh).await?;
        let url = provision::url_for_database(&env.admin_database_url, &fresh)?;
        let result = async {
            let mut worker = Command::new(warren_testkit::bin_path("warren-worker")?);
            worker
                .args(["--database-url", &url, "--amqp-url", &env.amqp_url])
                .args(["--namespace", env.namespace()])
                .env_remove("WARREN_MIGRATE")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .kill_on_drop(true);
            let output = tokio::time::timeout(COMMAND_TIMEOUT, worker.output())
                .await
                .context("warren-worker did not exit on an unmigrated database")??;
            let stderr = String::from_utf8_lossy(&output.stderr);
            ensure!(output.status.code() == Some(1), "{stderr}");
            ensure!(
                stderr.contains(
                    "warren-worker: connecting to PostgreSQL: the database has no Warren schema"
                ) && stderr.contains("run `warren migrate`"),
                "{stderr}"
            );
            ensure!(!stderr.contains("relation"), "no raw SQL error: {stderr}");

            // `--migrate` is the explicit opt-in: the same database is migrated, then served.
            let mut worker = warren_testkit::WorkerProcess::spawn_with_database(
                env,
                "migrating",
                &url,
                &["--migrate"],
            )?;
            let store = warren_store::Store::connect(&warren_store::StoreConfig::new(&url)).await?;
            let migrated = wait_until(
                Duration::from_secs(30),
                "the worker to migrate the database",
                || async { Ok(store.check_schema().await.map_err(|e| e.to_string())) },
            )
            .await;
            store.close().await;
            worker.signal("TERM").await?;
            let code = worker.wait(Duration::from_secs(30)).await?;
            migrated?;
            ensure!(code == Some(0), "clean shutdown: {code:?}");
            Ok(())
        }
        .await;
        provision::drop_database(&env.admin_database_url, &fresh).await?;
        result
    })
    .await
}

/// The broker dies (its connection is cut) while `warren enqueue --count 100000` has
/// thousands of confirms pending: the command returns promptly, prints how many jobs were
/// enqueued and how many failed, and exits 1. Before the fix it waited, silent, for good.
#[tokio::test]
async fn enqueue_reports_counts_and_exits_1_when_the_broker_dies_mid_publish() -> anyhow::Result<()>
{
    let env = TestEnv::new(&["default"]).await?;
    let proxy = warren_testkit::Proxy::start("127.0.0.1:5672").await?;
    let url = proxy.url_through(&env.amqp_url, "127.0.0.1:5672");
    let vars = [
        ("WARREN_AMQP_URL", url.as_str()),
        ("WARREN_NAMESPACE", env.namespace()),
        ("WARREN_CONFIRM_TIMEOUT", "3s"),
    ];
    let run = async {
        let enqueue = warren_with(
            &vars,
            &[
                "enqueue",
                "warren.noop",
                "--payload",
                "{}",
                "--count",
                "100000",
            ],
        );
        let cut = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            proxy.cut();
        };
        let (run, ()) = tokio::join!(enqueue, cut);
        let run = run?;
        ensure!(run.code == Some(1), "exit 1 expected: {run:?}");
        ensure!(
            run.stdout.contains("enqueued") && run.stdout.contains("failed"),
            "the counts are printed: {run:?}"
        );
        Ok(())
    }
    .await;
    env.cleanup().await?;
    run
}

/// A message as the work queue would carry it: task `warren.echo`, attempt 1, and a job id
/// unless `id` is `None`.
fn echo_message(id: Option<JobId>) -> warren_core::RawMessage {
    use warren_core::HeaderValue;
    use warren_core::message::{HEADER_ATTEMPT, HEADER_TASK};
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        HEADER_TASK.to_owned(),
        HeaderValue::Str("warren.echo".to_owned()),
    );
    headers.insert(HEADER_ATTEMPT.to_owned(), HeaderValue::Int(1));
    warren_core::RawMessage {
        message_id: id.map(|id| id.to_string()),
        content_type: Some("application/json".to_owned()),
        timestamp: None,
        headers,
        body: br#"{"parked": true}"#.to_vec(),
    }
}

async fn wait_parked(env: &TestEnv, n: u32) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} parked dead letter(s)"),
        || async {
            let depth = env.broker.parked_depth().await?.map_or(0, |d| d.ready);
            Ok(if depth == n {
                Ok(())
            } else {
                Err(format!("{depth} parked"))
            })
        },
    )
    .await
}

/// A message without a job id travels worker → `<ns>.dead` → reconciler → parking queue;
/// `warren dlq list` shows it, twice (looking takes nothing); `replay` sends parked messages
/// back to their queue (a parked job then runs); `purge` empties the queue.
#[tokio::test]
async fn parked_dead_letters_are_listed_without_loss_replayed_and_purged() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            let publisher = env.broker.publisher().await?;
            publisher.publish("default", &echo_message(None)).await?;
            wait_parked(env, 1).await?;
            ensure!(
                env.broker.dead_letter_depth().await?.map(|d| d.ready) == Some(0),
                "the reconciler moved it out of the dead-letter queue"
            );

            for _ in 0..2 {
                let list = warren(env, &["dlq", "list"]).await?;
                ensure!(list.code == Some(0), "{list:?}");
                ensure!(
                    list.stdout.contains("(none)")
                        && list.stdout.contains("default")
                        && list.stdout.contains("no message_id")
                        && list.stdout.contains("{\"parked\": true}"),
                    "{list:?}"
                );
                let json = warren(env, &["dlq", "list", "--json"]).await?.json()?;
                ensure!(
                    json.as_array().map(Vec::len) == Some(1)
                        && json[0]["message_id"].is_null()
                        && json[0]["queue"] == "default"
                        && json[0]["size"] == 16,
                    "{json}"
                );
            }
            wait_parked(env, 1).await?;

            let show = warren(env, &["dlq", "show", "1"]).await?;
            ensure!(
                show.code == Some(0) && show.stdout.contains("warren-dead-reason"),
                "{show:?}"
            );
            let missing = warren(env, &["dlq", "show", "2"]).await?;
            ensure!(missing.code == Some(3), "{missing:?}");
            let unconfirmed = warren(env, &["dlq", "replay"]).await?;
            ensure!(
                unconfirmed.code == Some(2) && unconfirmed.stderr.contains("--yes"),
                "{unconfirmed:?}"
            );

            // A job parked (as the reconciler parks a dead letter it cannot record) runs
            // once replayed; the message without an id is replayed too, and is parked again.
            let job = JobId::new();
            publisher
                .publish_parked(&echo_message(Some(job)), "default", "parked by the test")
                .await?;
            wait_parked(env, 2).await?;
            let replay = warren(env, &["dlq", "replay", "--yes", "--json"]).await?;
            ensure!(replay.code == Some(0), "{replay:?}");
            ensure!(replay.json()?["replayed"] == 2, "{replay:?}");
            wait_for_state(env, job, JobState::Succeeded).await?;
            wait_parked(env, 1).await?;

            let purge = warren(env, &["dlq", "purge"]).await?;
            ensure!(purge.code == Some(2), "{purge:?}");
            let purge = warren(env, &["dlq", "purge", "--yes"]).await?;
            ensure!(
                purge.code == Some(0) && purge.stdout.contains("purged 1"),
                "{purge:?}"
            );
            wait_parked(env, 0).await?;
            let empty = warren(env, &["dlq", "list"]).await?;
            ensure!(
                empty.code == Some(0) && empty.stdout.contains("no parked dead letters"),
                "{empty:?}"
            );
            Ok(())
        })
        .await
    })
    .await
}

/// `count` scheduled rows of `task`, an hour out (no promoter touches them), enqueued a
/// second apart so that newest-first order is known: the first is the newest.
async fn seed(env: &TestEnv, task: &str, count: usize) -> anyhow::Result<Vec<JobId>> {
    let now = chrono::Utc::now();
    let rows: Vec<_> = (0..count)
        .map(|i| warren_store::ScheduledJob {
            enqueued_at: now - chrono::Duration::seconds(i as i64),
            ..scheduled(task, "{}")
        })
        .collect();
    env.store.schedule(&rows).await?;
    Ok(rows.iter().map(|r| r.id).collect())
}

fn ids_of(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .filter_map(|j| j["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn jobs_are_listed_page_by_page_and_cancelled_and_retried_in_bulk() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let a = seed(env, "a", 5).await?;
        seed(env, "b", 2).await?;
        let want: Vec<String> = a.iter().map(JobId::to_string).collect();

        // Pages of two, newest first, joined by the printed cursor: every job once.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..5 {
            let mut args = vec!["jobs", "list", "--task", "a", "--limit", "2", "--json"];
            if let Some(c) = &after {
                args.extend(["--after", c.as_str()]);
            }
            let run = warren(env, &args).await?;
            ensure!(run.code == Some(0), "{run:?}");
            let page = run.json()?;
            seen.extend(ids_of(&page));
            after = page["next"].as_str().map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        ensure!(seen == want, "pages gave {seen:?}, want {want:?}");

        let table = warren(env, &["jobs", "list", "--state", "scheduled"]).await?;
        ensure!(
            table.code == Some(0)
                && table.stdout.starts_with("ID ")
                && table.stdout.lines().count() == 1 + 7 + 1
                && table.stdout.ends_with("(last page)\n"),
            "{table:?}"
        );
        let bad = warren(env, &["jobs", "list", "--state", "nope"]).await?;
        ensure!(bad.code == Some(2), "{bad:?}");
        let bad = warren(env, &["jobs", "list", "--after", "garbage"]).await?;
        ensure!(
            bad.code == Some(2) && bad.stderr.contains("is not a cursor"),
            "{bad:?}"
        );

        // No terminal and no --yes: refused, and nothing changed.
        let refused = warren(env, &["jobs", "cancel", "--task", "a"]).await?;
        ensure!(
            refused.code == Some(2) && refused.stderr.contains("pass --yes"),
            "{refused:?}"
        );
        let dry = warren(env, &["jobs", "cancel", "--task", "a", "--dry-run", "--json"]).await?;
        let dry_json = dry.json()?;
        ensure!(
            dry_json["matched"] == 5 && dry_json["done"] == 5 && dry_json["dry_run"] == true,
            "{dry:?}"
        );
        ensure!(
            env.store.job(a[0]).await?.map(|j| j.state) == Some(JobState::Scheduled),
            "a dry run changed a job"
        );

        let done = warren(env, &["jobs", "cancel", "--task", "a", "--yes", "--json"]).await?;
        let done_json = done.json()?;
        ensure!(done_json["done"] == 5, "{done:?}");
        for id in &a {
            let state = env.store.job(*id).await?.map(|j| j.state);
            ensure!(state == Some(JobState::Cancelled), "{id}: {state:?}");
        }
        let others = warren(env, &["jobs", "list", "--task", "b", "--json"]).await?;
        ensure!(ids_of(&others.json()?).len() == 2, "{others:?}");

        // Again: each job is refused by its state, none is done twice.
        let again = warren(env, &["jobs", "cancel", "--task", "a", "--yes"]).await?;
        ensure!(
            again.code == Some(0)
                && again.stdout == "matched 5: cancelled 0, signalled 0 running, refused by state 5 (5 cancelled)\n",
            "{again:?}"
        );

        let retry = warren(
            env,
            &["jobs", "retry", "--task", "a", "--state", "cancelled", "--yes", "--json"],
        )
        .await?;
        ensure!(retry.json()?["done"] == 5, "{retry:?}");
        let both = warren(env, &["jobs", "retry", &want[0], "--task", "a"]).await?;
        ensure!(both.code == Some(2) && both.stderr.contains("not both"), "{both:?}");
        let neither = warren(env, &["jobs", "retry"]).await?;
        ensure!(
            neither.code == Some(2) && neither.stderr.contains("at least one filter"),
            "{neither:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn dead_jobs_are_grouped_and_retried_by_group() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = Worker::builder()
            .register("doomed", |_ctx: JobContext, _p: Value| async move {
                Err::<(), _>(JobError::permanent("never works\nsecond line"))
            })
            .register("other", |_ctx: JobContext, _p: Value| async move {
                Err::<(), _>(JobError::permanent("something else"))
            });
        with_worker(env, builder, async || {
            let mut doomed = Vec::new();
            for _ in 0..3 {
                doomed.push(enqueue_one(env, &["doomed", "--payload", "{}"]).await?);
            }
            let other = enqueue_one(env, &["other", "--payload", "{}"]).await?;
            for id in doomed.iter().chain([&other]) {
                wait_for_state(env, *id, JobState::Dead).await?;
            }

            let groups = warren(env, &["dead", "--json"]).await?;
            let groups = groups.json()?;
            let first = &groups[0];
            ensure!(
                first["task"] == "doomed"
                    && first["count"] == 3
                    && first["message"] == "never works"
                    && first["kind"] == "permanent"
                    && doomed
                        .iter()
                        .any(|id| first["example_id"] == id.to_string().as_str()),
                "{groups}"
            );
            ensure!(
                groups[1]["task"] == "other" && groups[1]["count"] == 1,
                "{groups}"
            );
            let table = warren(env, &["dead", "--since", "1h"]).await?;
            ensure!(
                table.code == Some(0)
                    && table.stdout.starts_with("COUNT  TASK")
                    && table.stdout.contains("never works\n"),
                "{table:?}"
            );

            let listed = warren(
                env,
                &["jobs", "list", "--error-contains", "NEVER", "--json"],
            )
            .await?;
            ensure!(ids_of(&listed.json()?).len() == 3, "{listed:?}");

            let unnamed = warren(env, &["dead", "retry", "--yes"]).await?;
            ensure!(unnamed.code == Some(2), "{unnamed:?}");
            let retry = warren(
                env,
                &[
                    "dead",
                    "retry",
                    "--task",
                    "doomed",
                    "--error-contains",
                    "never",
                    "--yes",
                ],
            )
            .await?;
            ensure!(
                retry.code == Some(0) && retry.stdout == "matched 3: retried 3\n",
                "{retry:?}"
            );
            // Each retried job runs once more (attempt 2) and dies again; the other is left.
            wait_until(
                Duration::from_secs(30),
                "the retried jobs to die again",
                || async {
                    let mut attempts = Vec::new();
                    for id in &doomed {
                        let job = env.store.job(*id).await?.context("row")?;
                        attempts.push((job.state, job.attempt));
                    }
                    Ok(if attempts.iter().all(|a| *a == (JobState::Dead, 2)) {
                        Ok(())
                    } else {
                        Err(format!("{attempts:?}"))
                    })
                },
            )
            .await?;
            let other_job = env.store.job(other).await?.context("row")?;
            ensure!(other_job.attempt == 1, "{other_job:?}");
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test]
async fn a_worker_killed_with_sigkill_shows_as_lost_and_is_pruned() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let info = |id: &str| warren_store::WorkerInfo {
            id: id.into(),
            hostname: "h".into(),
            pid: 1,
            queues: vec!["default".into()],
            concurrency: 1,
            version: "0.0.0-test".into(),
        };
        // A real worker process, killed with SIGKILL: it never says it stopped.
        let mut worker = warren_testkit::WorkerProcess::spawn(env, "silent", &[])?;
        let silent = format!("{}-silent", env.name);
        wait_until(
            Duration::from_secs(60),
            "the worker to register",
            || async {
                let rows = env.store.workers().await?;
                Ok(if rows.iter().any(|w| w.id == silent) {
                    Ok(())
                } else {
                    Err(format!("{rows:?}"))
                })
            },
        )
        .await?;
        env.store.register_worker(&info("done")).await?;
        env.store.heartbeat("done", "stopped", 0, 0, 0).await?;
        let early = warren(env, &["workers", "--json"]).await?;
        ensure!(early.json()?[0]["state"] == "running", "{early:?}");
        worker.signal("KILL").await?;
        ensure!(
            worker.wait(Duration::from_secs(10)).await?.is_none(),
            "killed by a signal"
        );
        wait_until(
            warren_store::LOST_AFTER + Duration::from_secs(15),
            "the killed worker to show as lost",
            || async {
                let run = warren(env, &["workers", "--json"]).await?;
                let rows = run.json()?;
                Ok(
                    if rows[0]["id"] == silent.as_str() && rows[0]["state"] == "lost" {
                        Ok(())
                    } else {
                        Err(run.stdout)
                    },
                )
            },
        )
        .await?;
        let table = warren(env, &["workers"]).await?;
        ensure!(
            table.stdout.contains(&format!("{silent}  lost")),
            "{table:?}"
        );
        let refused = warren(env, &["workers", "prune", "--older-than", "0s"]).await?;
        ensure!(refused.code == Some(2), "{refused:?}");
        let pruned = warren(
            env,
            &["workers", "prune", "--older-than", "0s", "--yes", "--json"],
        )
        .await?;
        let mut removed: Vec<String> = serde_json::from_value(pruned.json()?["removed"].clone())?;
        removed.sort();
        ensure!(removed == ["done".to_owned(), silent], "{pruned:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() -> anyhow::Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let run = warren_with(&[], &["completions", shell]).await?;
        ensure!(
            run.code == Some(0) && run.stdout.contains("dead") && run.stdout.contains("dry-run"),
            "{shell}: {run:?}"
        );
    }
    Ok(())
}

/// Jobs cancelled so far, as Postgres has them committed.
async fn cancelled_count(env: &TestEnv) -> anyhow::Result<i64> {
    let filter = warren_store::JobFilter {
        states: vec![JobState::Cancelled],
        ..Default::default()
    };
    Ok(env
        .store
        .count_matching(&filter)
        .await?
        .iter()
        .map(|c| c.count)
        .sum())
}

#[tokio::test]
async fn a_bulk_cancel_stopped_by_ctrl_c_and_run_again_cancels_each_job_once() -> anyhow::Result<()>
{
    with_env(&["default"], async |env| {
        const JOBS: i64 = 3_000;
        seed(env, "bulk", JOBS as usize).await?;
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .env("WARREN_DATABASE_URL", &env.database_url)
            .env_remove("RUST_LOG")
            .args(["jobs", "cancel", "--state", "scheduled", "--yes", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting warren")?;
        let pid = child.id().context("pid")?;
        // The signal goes in once a batch is committed: the handler is installed by then.
        wait_until(
            Duration::from_secs(30),
            "a first batch to commit",
            || async {
                let n = cancelled_count(env).await?;
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
        let after_first = cancelled_count(env).await?;
        if output.status.code() == Some(0) {
            // Finished before the signal arrived: nothing left to show, but nothing is wrong.
            ensure!(after_first == JOBS, "{stdout} {stderr}");
            return Ok(());
        }
        ensure!(
            output.status.code() == Some(130),
            "{:?} {stdout} {stderr}",
            output.status
        );
        ensure!(stderr.contains("interrupted after"), "{stderr}");
        let first: Value = serde_json::from_str(&stdout).context(stdout.to_string())?;
        ensure!(first["interrupted"] == true, "{first}");
        // What it reports is exactly what is committed: no batch half done.
        ensure!(
            first["done"] == after_first && after_first < JOBS,
            "{first} vs {after_first}"
        );

        let second = warren(
            env,
            &["jobs", "cancel", "--state", "scheduled", "--yes", "--json"],
        )
        .await?;
        ensure!(second.code == Some(0), "{second:?}");
        let second = second.json()?;
        ensure!(
            second["done"] == JOBS - after_first && second["matched"] == JOBS - after_first,
            "{second}"
        );
        ensure!(
            cancelled_count(env).await? == JOBS,
            "not every job is cancelled"
        );
        Ok(())
    })
    .await
}

/// `warren queues list` joins each queue's RabbitMQ depth with its counts in Postgres; `queues
/// show` does the same for one queue and exits 3 for a queue nobody knows.
#[tokio::test]
async fn queues_list_and_show_join_the_broker_and_the_database() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            let id = enqueue_one(env, &["warren.noop", "--payload", "{}"]).await?;
            wait_for_state(env, id, JobState::Succeeded).await?;
            let failed =
                enqueue_one(env, &["warren.fail", "--payload", r#"{"permanent": true}"#]).await?;
            wait_for_state(env, failed, JobState::Dead).await?;
            enqueue_one(env, &["warren.noop", "--payload", "{}", "--delay", "1h"]).await?;

            let list = warren(env, &["queues", "list", "--json"]).await?;
            ensure!(list.code == Some(0), "{list:?}");
            let lines = list.json()?;
            let default = lines
                .as_array()
                .and_then(|l| l.iter().find(|q| q["queue"] == "default"))
                .with_context(|| format!("the default queue is listed: {lines}"))?;
            ensure!(default["succeeded_1h"] == 1, "{default}");
            ensure!(default["dead_24h"] == 1, "{default}");
            ensure!(default["scheduled"] == 1, "{default}");
            ensure!(
                default["consumers"] == 1,
                "the worker consumes it: {default}"
            );
            ensure!(default["ready"] == 0, "{default}");

            let table = warren(env, &["queues", "show", "default"]).await?;
            ensure!(
                table.code == Some(0) && table.stdout.contains("SUCCEEDED 1H"),
                "{table:?}"
            );
            let unknown = warren(env, &["queues", "show", "nosuch"]).await?;
            ensure!(unknown.code == Some(3), "{unknown:?}");
            ensure!(unknown.stderr.contains("no queue `nosuch`"), "{unknown:?}");
            Ok(())
        })
        .await
    })
    .await
}

/// `warren stats` counts, per task and queue, the jobs that succeeded, the retries and the
/// dead, with wait and run percentiles from Postgres.
#[tokio::test]
async fn stats_count_outcomes_and_retries_per_task() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        with_worker(env, builder, async || {
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(enqueue_one(env, &["warren.noop", "--payload", "{}"]).await?);
            }
            let dead =
                enqueue_one(env, &["warren.fail", "--payload", r#"{"permanent": true}"#]).await?;
            let retried =
                enqueue_one(env, &["warren.fail", "--payload", r#"{"times": 1}"#]).await?;
            for id in ids {
                wait_for_state(env, id, JobState::Succeeded).await?;
            }
            wait_for_state(env, dead, JobState::Dead).await?;
            wait_for_state(env, retried, JobState::Succeeded).await?;

            let run = warren(env, &["stats", "--since", "1h", "--json"]).await?;
            ensure!(run.code == Some(0), "{run:?}");
            let stats = run.json()?;
            let of = |task: &str| {
                stats
                    .get("tasks")
                    .and_then(|t| t.as_array())
                    .and_then(|s| s.iter().find(|t| t["task"] == task).cloned())
                    .with_context(|| format!("{task} in {stats}"))
            };
            let noop = of("warren.noop")?;
            ensure!(noop["succeeded"] == 3 && noop["dead"] == 0, "{noop}");
            ensure!(noop["run_p50_ms"].is_number(), "{noop}");
            let fail = of("warren.fail")?;
            ensure!(
                fail["succeeded"] == 1 && fail["dead"] == 1 && fail["retried"] == 1,
                "{fail}"
            );
            let table = warren(env, &["stats"]).await?;
            ensure!(
                table.code == Some(0) && table.stdout.contains("WAIT p50/p95/p99"),
                "{table:?}"
            );
            Ok(())
        })
        .await
    })
    .await
}

/// A URL that cannot be used is bad configuration: exit 2, as for a bad flag, with the
/// reason; a service that does not answer stays a failure, exit 1.
#[tokio::test]
async fn an_unusable_url_is_bad_usage_and_an_unreachable_one_a_failure() -> anyhow::Result<()> {
    let database = "postgres://postgres@127.0.0.1:5432/postgres";
    for (amqp, db, args, reason) in [
        (
            "garbage",
            database,
            &["queues", "list"][..],
            "invalid AMQP URL",
        ),
        (
            "amqp://127.0.0.1:99999",
            database,
            &["queues", "list"],
            "invalid port",
        ),
        (
            "amqp://127.0.0.1:5672",
            "garbage",
            &["jobs", "summary"],
            "invalid Postgres URL",
        ),
        (
            "amqp://127.0.0.1:5672",
            "postgres://postgres@127.0.0.1/postgres?sslmode=bogus",
            &["jobs", "summary"],
            "bogus",
        ),
    ] {
        let run = warren_with(
            &[("WARREN_AMQP_URL", amqp), ("WARREN_DATABASE_URL", db)],
            args,
        )
        .await?;
        ensure!(
            run.code == Some(2) && run.stderr.contains(reason),
            "{amqp} {db}: {run:?}"
        );
    }
    let run = warren_with(
        &[
            ("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("WARREN_DATABASE_URL", database),
        ],
        &["queues", "list"],
    )
    .await?;
    ensure!(run.code == Some(1), "{run:?}");
    Ok(())
}
