//! Snapshot tests of every read command of the real `warren` binary, against one environment
//! seeded with jobs in every state: what people read (the text) and what scripts rely on (the
//! shape of the `--json`).
//!
//! Each command's output is compared with `tests/snapshots/<name>.txt` after what changes from
//! run to run is normalised: ids become `<ID>`, times `<TIME>`, durations and ages `<DUR>`,
//! rates `<RATE>`, the test's database and namespace `<DB>` and `<NS>`, the host's name and the
//! in-process worker's pid `<HOST>` and `<PID>`, Warren's version `<VERSION>`, and runs of spaces (column padding, which depends on those widths) two spaces. For
//! `--json` the snapshot is the shape: every key path with the types of its values
//! (`jobs[].finished_at: null|string`), so renaming or removing a field fails the test while the
//! values may change.
//!
//! To accept a deliberate change, write the files instead of comparing, then review the diff:
//!
//! ```sh
//! WARREN_UPDATE_SNAPSHOTS=1 cargo nextest run -p warren-cli --test snapshots
//! git diff crates/cli/tests/snapshots/
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use regex::Regex;
use serde_json::Value;
use warren_core::{JobId, JobState, QueueName};
use warren_runtime::Worker;
use warren_testkit::{TestEnv, wait_until};

mod support;

use support::*;

/// Set to `1` to write the snapshot files instead of comparing with them.
const UPDATE_VAR: &str = "WARREN_UPDATE_SNAPSHOTS";

/// Jobs the in-process worker has recorded by the time the commands run (three succeeded,
/// three dead, and the message it dead-lettered for want of a job id), and its failed attempts
/// (the four dead): its heartbeat must show them all before its row is snapshotted.
const PROCESSED: i64 = 7;
const FAILED: i64 = 4;

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

#[allow(
    clippy::disallowed_methods,
    reason = "test-only: a developer's switch to rewrite the snapshots"
)]
fn updating() -> bool {
    std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1")
}

/// One job of each kind the seeding made, to name in `jobs show`.
struct Seeded {
    scheduled: JobId,
    /// A row the promoter published to `idle`, where no worker consumes it.
    promoted: JobId,
    /// A job in RabbitMQ only (`idle`): it has no row yet.
    in_broker: JobId,
    running: JobId,
    succeeded: JobId,
    dead_failed: JobId,
    dead_bad_input: JobId,
    dead_unknown_task: JobId,
    cancelled: JobId,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_matches_its_snapshot_with_jobs_in_every_state() -> anyhow::Result<()> {
    with_env(&["default", "held", "idle"], async |env| {
        // `held` is paused before the worker starts, so it never consumes from it.
        let paused = warren(env, &["queues", "pause", "held"]).await?;
        ensure!(paused.code == Some(0), "{paused:?}");
        let builder = warren_worker::tasks::register_builtins(Worker::builder());
        let mut config = env.worker_config("w");
        config.queues = vec![QueueName::new("default")?, QueueName::new("held")?];
        // Should the test fail before it cancels the sleeping job, the worker stops soon
        // anyway.
        config.shutdown_grace = Duration::from_secs(1);
        let worker = env.start_worker(builder, config).await?;
        let result = async {
            let seeded = seed(env).await?;
            let failures = check_commands(env, &seeded).await?;
            // The sleeping job is cancelled so that the worker stops at once.
            let cancel = warren(env, &["jobs", "cancel", &seeded.running.to_string()]).await?;
            ensure!(cancel.code == Some(0), "{cancel:?}");
            wait_for_state(env, seeded.running, JobState::Cancelled).await?;
            if !failures.is_empty() {
                bail!(
                    "{} snapshot(s) differ (run with {UPDATE_VAR}=1 to accept the new output, \
                     then review `git diff crates/cli/tests/snapshots/`):\n\n{}",
                    failures.len(),
                    failures.join("\n")
                );
            }
            Ok(())
        }
        .await;
        worker.stop().await?;
        result
    })
    .await
}

/// Enqueues one after another (so the newest-first order is fixed) and waits for each job to
/// settle before the next, so every run seeds the same rows.
async fn seed(env: &TestEnv) -> anyhow::Result<Seeded> {
    let succeeded = enqueue_one(
        env,
        &[
            "warren.echo",
            "--payload",
            r#"{"n": 1}"#,
            "--idempotency-key",
            "invoice-1",
        ],
    )
    .await?;
    wait_for_state(env, succeeded, JobState::Succeeded).await?;
    let echo = enqueue_one(env, &["warren.echo", "--payload", r#"{"n": 2}"#]).await?;
    wait_for_state(env, echo, JobState::Succeeded).await?;
    let noop = enqueue_one(env, &["warren.noop", "--payload", "{}"]).await?;
    wait_for_state(env, noop, JobState::Succeeded).await?;

    let dead_failed =
        enqueue_one(env, &["warren.fail", "--payload", r#"{"permanent": true}"#]).await?;
    wait_for_state(env, dead_failed, JobState::Dead).await?;
    let dead_bad_input =
        enqueue_one(env, &["warren.sleep", "--payload", r#"{"ms": "soon"}"#]).await?;
    wait_for_state(env, dead_bad_input, JobState::Dead).await?;
    let dead_unknown_task = enqueue_one(env, &["no.such.task", "--payload", "{}"]).await?;
    wait_for_state(env, dead_unknown_task, JobState::Dead).await?;

    let cancelled = enqueue_one(env, &["warren.noop", "--payload", "{}", "--delay", "2h"]).await?;
    wait_for_state(env, cancelled, JobState::Scheduled).await?;
    let cancel = warren(env, &["jobs", "cancel", &cancelled.to_string()]).await?;
    ensure!(cancel.code == Some(0), "{cancel:?}");

    let scheduled = enqueue_one(
        env,
        &["warren.sleep", "--payload", r#"{"ms": 1}"#, "--delay", "1h"],
    )
    .await?;
    wait_for_state(env, scheduled, JobState::Scheduled).await?;

    // Waiting in RabbitMQ on `idle`, which no worker consumes: three published directly (no
    // row) and one row due now that the worker's promoter publishes and marks `queued`.
    let mut in_broker = Vec::new();
    for n in 0..3 {
        let payload = format!(r#"{{"n": {n}}}"#);
        let args = ["warren.echo", "--payload", &payload, "--queue", "idle"];
        in_broker.push(enqueue_one(env, &args).await?);
    }
    let now = chrono::Utc::now();
    let row = warren_store::ScheduledJob {
        id: JobId::new(),
        queue: "idle".into(),
        task: "warren.echo".into(),
        payload: r#"{"promoted": true}"#.into(),
        max_attempts: 3,
        timeout_ms: None,
        run_at: now,
        enqueued_at: now,
        idempotency_key: None,
        traceparent: None,
    };
    env.store.schedule(std::slice::from_ref(&row)).await?;
    wait_for_state(env, row.id, JobState::Queued).await?;
    let promoted = row.id;

    // Two waiting on the paused `held`.
    for _ in 0..2 {
        enqueue_one(env, &["warren.noop", "--payload", "{}", "--queue", "held"]).await?;
    }
    wait_ready(env, "idle", 4).await?;
    wait_ready(env, "held", 2).await?;

    let running = enqueue_one(env, &["warren.sleep", "--payload", r#"{"ms": 600000}"#]).await?;
    wait_for_state(env, running, JobState::Running).await?;

    park_a_dead_letter(env).await?;
    stopped_worker_row(env).await?;
    wait_for_heartbeat(env).await?;

    Ok(Seeded {
        scheduled,
        promoted,
        in_broker: in_broker[0],
        running,
        succeeded,
        dead_failed,
        dead_bad_input,
        dead_unknown_task,
        cancelled,
    })
}

async fn wait_ready(env: &TestEnv, queue: &str, n: u32) -> anyhow::Result<()> {
    let name = QueueName::new(queue)?;
    wait_until(
        Duration::from_secs(30),
        &format!("{n} ready messages in `{queue}`"),
        || async {
            let ready = env.broker.queue_depth(&name).await?.map(|d| d.ready);
            Ok(if ready == Some(n) {
                Ok(())
            } else {
                Err(format!("{ready:?} ready"))
            })
        },
    )
    .await
}

/// A message with no job id, published to `default`: the worker dead-letters it and the
/// reconciler parks it, as it parks any message it cannot turn into a row.
async fn park_a_dead_letter(env: &TestEnv) -> anyhow::Result<()> {
    use warren_core::HeaderValue;
    use warren_core::message::{HEADER_ATTEMPT, HEADER_TASK};
    let mut headers = BTreeMap::new();
    headers.insert(
        HEADER_TASK.to_owned(),
        HeaderValue::Str("warren.echo".to_owned()),
    );
    headers.insert(HEADER_ATTEMPT.to_owned(), HeaderValue::Int(1));
    let message = warren_core::RawMessage {
        message_id: None,
        content_type: Some("application/json".to_owned()),
        timestamp: None,
        headers,
        body: br#"{"parked": true}"#.to_vec(),
    };
    env.broker
        .publisher()
        .await?
        .publish("default", &message)
        .await?;
    wait_until(
        Duration::from_secs(30),
        "one parked dead letter",
        || async {
            let depth = env.broker.parked_depth().await?.map_or(0, |d| d.ready);
            Ok(if depth == 1 {
                Ok(())
            } else {
                Err(format!("{depth} parked"))
            })
        },
    )
    .await
}

/// A worker that stopped cleanly earlier, as its own shutdown leaves its row.
async fn stopped_worker_row(env: &TestEnv) -> anyhow::Result<()> {
    let id = format!("{}-old", env.name);
    env.store
        .register_worker(&warren_store::WorkerInfo {
            id: id.clone(),
            hostname: "old-host".into(),
            pid: 4242,
            queues: vec!["default".into()],
            concurrency: 8,
            version: "0.0.9".into(),
        })
        .await?;
    env.store.heartbeat(&id, "stopped", 0, 17, 2).await?;
    Ok(())
}

/// Waits until the running worker's row shows the sleeping job in flight and every job it
/// recorded, so that its counters are the same in every run.
async fn wait_for_heartbeat(env: &TestEnv) -> anyhow::Result<()> {
    let id = format!("{}-w", env.name);
    wait_until(
        Duration::from_secs(30),
        &format!("worker {id} to report 1 in flight, {PROCESSED} processed, {FAILED} failed"),
        || async {
            let rows = env.store.workers().await?;
            let row = rows.iter().find(|w| w.id == id);
            Ok(match row {
                Some(w) if w.in_flight == 1 && w.processed == PROCESSED && w.failed == FAILED => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await
}

/// Runs every command, text and `--json`, and returns one readable diff per snapshot that
/// differs (or, when updating, writes them all).
async fn check_commands(env: &TestEnv, seeded: &Seeded) -> anyhow::Result<Vec<String>> {
    let id = |id: JobId| id.to_string();
    let commands: Vec<(&str, Vec<String>)> = vec![
        ("jobs-list", args(&["jobs", "list"])),
        (
            "jobs-list-state-dead",
            args(&["jobs", "list", "--state", "dead"]),
        ),
        (
            "jobs-list-waiting",
            args(&["jobs", "list", "--state", "scheduled,queued,running"]),
        ),
        (
            "jobs-list-queue-idle",
            args(&["jobs", "list", "--queue", "idle"]),
        ),
        (
            "jobs-list-task-page",
            args(&["jobs", "list", "--task", "warren.sleep", "--limit", "1"]),
        ),
        (
            "jobs-list-error-contains",
            args(&["jobs", "list", "--error-contains", "HANDLER"]),
        ),
        (
            "jobs-show-scheduled",
            args(&["jobs", "show", &id(seeded.scheduled)]),
        ),
        (
            "jobs-show-queued",
            args(&["jobs", "show", &id(seeded.promoted)]),
        ),
        (
            "jobs-show-queued-no-row",
            args(&["jobs", "show", &id(seeded.in_broker)]),
        ),
        (
            "jobs-show-running",
            args(&["jobs", "show", &id(seeded.running)]),
        ),
        (
            "jobs-show-succeeded",
            args(&["jobs", "show", &id(seeded.succeeded)]),
        ),
        (
            "jobs-show-dead",
            args(&["jobs", "show", &id(seeded.dead_failed)]),
        ),
        (
            "jobs-show-dead-bad-input",
            args(&["jobs", "show", &id(seeded.dead_bad_input)]),
        ),
        (
            "jobs-show-dead-unknown-task",
            args(&["jobs", "show", &id(seeded.dead_unknown_task)]),
        ),
        (
            "jobs-show-cancelled",
            args(&["jobs", "show", &id(seeded.cancelled)]),
        ),
        ("jobs-summary", args(&["jobs", "summary"])),
        (
            "jobs-summary-queue",
            args(&["jobs", "summary", "--queue", "default"]),
        ),
        ("dead", args(&["dead"])),
        ("stats", args(&["stats"])),
        ("queues-list", args(&["queues", "list"])),
        ("queues-show-paused", args(&["queues", "show", "held"])),
        ("workers", args(&["workers"])),
        ("dlq-list", args(&["dlq", "list"])),
        ("dlq-show", args(&["dlq", "show", "1"])),
        (
            "prune-dry-run",
            args(&[
                "prune",
                "--state",
                "succeeded,dead,cancelled",
                "--older-than",
                "0s",
                "--dry-run",
            ]),
        ),
        (
            "jobs-retry-dry-run",
            args(&["jobs", "retry", "--state", "dead,cancelled", "--dry-run"]),
        ),
        (
            "jobs-cancel-dry-run",
            args(&["jobs", "cancel", "--queue", "default", "--dry-run"]),
        ),
        (
            "dead-retry-dry-run",
            args(&["dead", "retry", "--task", "warren.fail", "--dry-run"]),
        ),
    ];

    let normaliser = Normaliser::new(env)?;
    let mut produced = BTreeMap::new();
    for (name, command) in &commands {
        let mut json = command.clone();
        json.push("--json".to_owned());
        for (file, argv, as_json) in [
            (format!("{name}.txt"), command, false),
            (format!("{name}.json.txt"), &json, true),
        ] {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let run = warren(env, &argv).await?;
            let text = snapshot_text(&normaliser, &argv, &run, as_json)
                .with_context(|| format!("snapshot {file}"))?;
            produced.insert(file, text);
        }
    }
    compare_or_write(&produced)
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The command, its exit status, then its normalised stdout (or the JSON shape) and stderr.
fn snapshot_text(
    normaliser: &Normaliser,
    argv: &[&str],
    run: &Run,
    as_json: bool,
) -> anyhow::Result<String> {
    let mut out = format!("$ warren {}\n", argv.join(" "));
    writeln!(
        out,
        "[exit {}]",
        run.code.map_or("signal".into(), |c| c.to_string())
    )?;
    if as_json && !run.stdout.is_empty() {
        out.push_str("--- JSON shape\n");
        out.push_str(&json_shape(&run.json()?));
    } else if !run.stdout.is_empty() {
        out.push_str("--- stdout\n");
        out.push_str(&run.stdout);
    }
    if !run.stderr.is_empty() {
        out.push_str("--- stderr\n");
        out.push_str(&run.stderr);
    }
    Ok(normaliser.apply(&out))
}

/// What differs from run to run, replaced by placeholders.
struct Normaliser {
    /// The test's own names (database, namespace, host), as whole words.
    names: Vec<(Regex, &'static str)>,
}

/// Patterns applied in order: ids before anything that could match inside them, and padding
/// last, since every replacement changes a width.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "<ID>",
        ),
        // A W3C traceparent: every job has one, generated at enqueue when none was given.
        (r"\b00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\b", "<TRACEPARENT>"),
        // A `jobs list` cursor: microseconds, then the id.
        (r"\b[0-9]{13,}-<ID>", "<CURSOR>"),
        (
            r"\b[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})",
            "<TIME>",
        ),
        (r"\b[0-9]+[smhd] ago\b|\bjust now\b", "<DUR>"),
        (r"\bin [0-9]+[smhd]\b", "<DUR>"),
        // `1h02m`, `2m03s`, `7d00h`, `1.25s`, `12ms`, `3.2ms`, `850µs`, `14.1 ms`.
        (
            r"\b[0-9]+(\.[0-9]+)?(µs|ms|s|m|h|d)([0-9]{2}[smh])?\b|\b[0-9]+(\.[0-9]+)? ms\b",
            "<DUR>",
        ),
        (r"\b[0-9]+(\.[0-9]+)? jobs/s\b", "<RATE> jobs/s"),
        (r" {2,}", "  "),
        (r"(?m) +$", ""),
    ]
    .into_iter()
    .map(|(pattern, with)| (Regex::new(pattern).expect("the pattern compiles"), with))
    .collect()
});

impl Normaliser {
    fn new(env: &TestEnv) -> anyhow::Result<Normaliser> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name")?
            .trim()
            .to_owned();
        // The in-process worker's pid is this process's.
        let pid = std::process::id().to_string();
        // The database name contains the namespace's random part: it goes first.
        let mut names = vec![
            (env.name.as_str(), "<DB>"),
            (env.namespace(), "<NS>"),
            (pid.as_str(), "<PID>"),
            // The workers' version: a release changes it, not the output's form.
            (env!("CARGO_PKG_VERSION"), "<VERSION>"),
        ];
        if !host.is_empty() {
            names.push((host.as_str(), "<HOST>"));
        }
        let names = names
            .into_iter()
            .map(|(name, with)| {
                let re = Regex::new(&format!(r"\b{}\b", regex::escape(name)))?;
                Ok((re, with))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Normaliser { names })
    }

    fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        // Ids first: the random tail of a name could in principle appear inside one.
        let (ids, rest) = PATTERNS.split_at(1);
        for (re, with) in ids {
            out = re.replace_all(&out, *with).into_owned();
        }
        for (re, with) in self.names.iter().chain(rest) {
            out = re.replace_all(&out, *with).into_owned();
        }
        out
    }
}

/// Every key path of `value` with the sorted types found there, one per line, sorted:
/// `jobs[].finished_at: null|string`. Containers are listed too, so an empty list still shows.
fn json_shape(value: &Value) -> String {
    fn walk(value: &Value, path: &str, out: &mut BTreeMap<String, BTreeSet<&'static str>>) {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let shown = if path.is_empty() { "(root)" } else { path };
        out.entry(shown.to_owned()).or_default().insert(kind);
        match value {
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{path}[]"), out);
                }
            }
            Value::Object(fields) => {
                for (key, field) in fields {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(field, &child, out);
                }
            }
            _ => {}
        }
    }
    let mut paths = BTreeMap::new();
    walk(value, "", &mut paths);
    paths
        .into_iter()
        .map(|(path, kinds)| {
            format!(
                "{path}: {}\n",
                kinds.into_iter().collect::<Vec<_>>().join("|")
            )
        })
        .collect()
}

/// Compares each produced snapshot with its file (or writes it, when updating); a file that
/// no command produced is an error too, so a removed command leaves no stale snapshot behind.
fn compare_or_write(produced: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
    let dir = snapshot_dir();
    let existing: BTreeSet<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let stale = existing.iter().filter(|f| !produced.contains_key(*f));
    if updating() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in stale {
            std::fs::remove_file(dir.join(file))?;
        }
        for (file, text) in produced {
            std::fs::write(dir.join(file), text)?;
        }
        return Ok(Vec::new());
    }
    let mut failures: Vec<String> = stale
        .map(|f| format!("{f}: a snapshot file that no command produces\n"))
        .collect();
    for (file, actual) in produced {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == *actual => {}
            Ok(expected) => failures.push(format!("{file}:\n{}", diff(&expected, actual))),
            Err(e) => failures.push(format!("{file}: cannot read {}: {e}\n", path.display())),
        }
    }
    Ok(failures)
}

/// A line diff of `expected` (`-`) and `actual` (`+`) around the first differences, with two
/// lines of context, at most 30 lines.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // Longest common subsequence table, from the ends: the files are a few dozen lines.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(('-', a[i]));
            i += 1;
        } else {
            lines.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].0 != ' ').collect();
    let mut out = "  (- the snapshot, + this run)\n".to_owned();
    let Some(&first) = changed.first() else {
        // Only a trailing newline differs.
        return "  (the files differ only in their final newline)\n".to_owned();
    };
    let mut shown = 0;
    let mut last = None;
    for (k, (mark, line)) in lines.iter().enumerate().skip(first.saturating_sub(2)) {
        if !changed.iter().any(|&c| c.abs_diff(k) <= 2) {
            continue;
        }
        if shown == 30 || last.is_some_and(|l| l + 1 < k) {
            out.push_str("  ...\n");
        }
        if shown == 30 {
            break;
        }
        let _ = writeln!(out, "  {mark} {line}");
        shown += 1;
        last = Some(k);
    }
    out
}
