//! `warren jobs show ID`: one job's row in full.

use std::fmt::Write;

use anyhow::Context;
use warren_core::{FailureKind, JobId};
use warren_store::JobRecord;

use crate::connection::ConnectionArgs;
use crate::exit::NotFound;
use crate::output::{delta, duration, emit, emit_json, printable_line, printable_text, timestamp};

/// JSON values up to this long are printed on the label's line; longer ones are indented
/// below it, pretty-printed, so that nesting stays readable.
const INLINE_JSON: usize = 80;

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren jobs show 01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d\n  warren jobs show 01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d --json"
)]
pub struct ShowArgs {
    /// The job id (a UUID), as `warren enqueue` printed it.
    pub id: JobId,

    /// Print the job's row as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(args: ShowArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("jobs show").await?;
    let found = store.job(args.id).await;
    store.close().await;
    let Some(record) = found.with_context(|| format!("reading job {}", args.id))? else {
        return Err(NotFound(format!(
            "no job {} in the database (it may still be queued: rows are written when a worker \
             records the outcome)",
            args.id
        ))
        .into());
    };
    if args.json {
        emit_json(&record)
    } else {
        emit(&render(&record))
    }
}

/// Most characters of a raw body printed for people; the row keeps up to 64 KiB and `--json`
/// shows all of that.
const RAW_SHOWN: usize = 2_000;

fn raw_body_line(job: &JobRecord, raw: &str) -> String {
    let shown: String = raw.chars().take(RAW_SHOWN).collect();
    let cut = shown.len() < raw.len();
    let mut text = format!("(not readable as JSON, shown as text) {shown}");
    if cut {
        text.push_str(" …");
    }
    if let (Some(size), Some(digest)) = (job.body_size, &job.body_sha256) {
        let _ = write!(text, " [whole body: {size} bytes, sha256 {digest}]");
    }
    text
}

/// The human form: one `label  value` line per field, then the error history. Everything
/// from job data is escaped for the terminal (see `output::printable_line`).
fn render(job: &JobRecord) -> String {
    let mut out = Lines::default();
    identity(&mut out, job);
    timing(&mut out, job);
    provenance(&mut out, job);
    data(&mut out, job);
    error_history(&mut out, job);
    out.0
}

/// The text being rendered, written one labelled field at a time.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn line(&mut self, label: &str, value: &str) {
        // A value that starts on its own line (long JSON) leaves no blanks after the label,
        // and keeps its newlines; any other value is one line, whatever it contains.
        let _ = if value.starts_with('\n') {
            writeln!(self.0, "{label}{}", printable_text(value))
        } else {
            writeln!(self.0, "{label:<12} {}", printable_line(value))
        };
    }
}

/// Which job it is and where it stands.
fn identity(out: &mut Lines, job: &JobRecord) {
    out.line("id", &job.id.to_string());
    out.line("task", &job.task);
    out.line("queue", &job.queue);
    out.line("state", job.state.as_str());
    // A duplicate was recorded when a worker took it, and never started: its row's attempt
    // and start time say when it was checked, not that it ran.
    let attempt = match job.duplicate_of {
        Some(original) => format!("not run (duplicate of {original})"),
        None => format!("{} of {}", job.attempt, job.max_attempts),
    };
    out.line("attempt", &attempt);
}

/// When it was due, queued, started and finished, how long that took, and its time limit.
fn timing(out: &mut Lines, job: &JobRecord) {
    if let Some(run_at) = job.run_at {
        out.line("run at", &timestamp(run_at));
    }
    out.line("enqueued", &timestamp(job.enqueued_at));
    let started = job.started_at.filter(|_| job.duplicate_of.is_none());
    out.line(
        "started",
        &started.map_or_else(|| "-".to_owned(), timestamp),
    );
    out.line(
        "finished",
        &job.finished_at.map_or_else(|| "-".to_owned(), timestamp),
    );
    if let Some(took) = timings(job) {
        out.line("took", &took);
    }
    if let Some(ms) = job.timeout_ms {
        let timeout = u64::try_from(ms).map_or_else(
            |_| format!("{ms}ms"),
            |ms| duration(std::time::Duration::from_millis(ms)),
        );
        out.line("timeout", &timeout);
    }
}

/// Who ran it, and what else touched it: its idempotency key and duplicates, a cancel
/// request, and the trace it belongs to.
fn provenance(out: &mut Lines, job: &JobRecord) {
    out.line("worker", job.worker_id.as_deref().unwrap_or("-"));
    out.line("idempotency", job.idempotency_key.as_deref().unwrap_or("-"));
    if let Some(original) = job.duplicate_of {
        out.line(
            "duplicate of",
            &format!("{original} (it held the same idempotency key, so this job was not run)"),
        );
    }
    if job.duplicate_runs > 0 {
        out.line(
            "duplicates",
            &format!(
                "{} run(s) of an attempt the job had already moved past; their outcomes were discarded",
                job.duplicate_runs
            ),
        );
    }
    if let Some(at) = job.cancel_requested_at {
        out.line("cancel asked", &timestamp(at));
    }
    if let Some(trace) = &job.traceparent {
        out.line("traceparent", trace);
    }
}

/// What went in and what came out: the payload (or the raw body, when it was not JSON) and
/// the result.
fn data(out: &mut Lines, job: &JobRecord) {
    match (&job.payload, &job.raw_body) {
        (Some(payload), _) => out.line("payload", &json_value(payload)),
        (None, Some(raw)) => out.line("payload", &raw_body_line(job, raw)),
        (None, None) => out.line("payload", "-"),
    }
    out.line(
        "result",
        &job.result
            .as_ref()
            .map_or_else(|| "-".to_owned(), json_value),
    );
}

/// The count of failures, then each on two lines: when and where, then its message indented
/// so that a message of several lines stays visibly one entry.
fn error_history(out: &mut Lines, job: &JobRecord) {
    if job.errors.is_empty() {
        out.line("errors", "none");
        return;
    }
    out.line("errors", &job.errors.len().to_string());
    for e in &job.errors {
        let _ = writeln!(
            out.0,
            "  attempt {}  {}  {}  on {}\n    {}",
            e.attempt,
            kind(e.kind),
            timestamp(e.at),
            printable_line(&e.worker),
            printable_text(&e.message).replace('\n', "\n    ")
        );
    }
}

/// `queued 12ms, ran 3ms`: the time waiting for a worker and the time running, as far as the
/// job got. Both refer to the last attempt, since `started_at` is overwritten per attempt.
///
/// A duplicate's row has a start time (when a worker took it and found its key held) but it
/// never ran: `queued 12ms, not run`.
fn timings(job: &JobRecord) -> Option<String> {
    let started = job.started_at?;
    let queued = format!("queued {}", delta(started - job.enqueued_at));
    Some(match job.finished_at {
        _ if job.duplicate_of.is_some() => format!("{queued}, not run"),
        Some(finished) => format!("{queued}, ran {}", delta(finished - started)),
        None => queued,
    })
}

fn json_value(value: &serde_json::Value) -> String {
    let compact = value.to_string();
    if compact.chars().count() <= INLINE_JSON {
        return compact;
    }
    let pretty = serde_json::to_string_pretty(value).unwrap_or(compact);
    format!("\n  {}", pretty.replace('\n', "\n  "))
}

/// The name of a failure kind as it is stored (snake case), for the error history.
fn kind(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Error => "error",
        FailureKind::Permanent => "permanent",
        FailureKind::Timeout => "timeout",
        FailureKind::Panic => "panic",
        FailureKind::BadInput => "bad_input",
        FailureKind::Cancelled => "cancelled",
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use chrono::{DateTime, TimeDelta, Utc};
    use serde_json::json;
    use warren_core::{FailureRecord, JobState};

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_738_314_900_000 + ms).unwrap()
    }

    fn job() -> JobRecord {
        JobRecord {
            id: "0194bbd6-9a40-7cc2-9d55-3b1f0c6a2e10".parse().unwrap(),
            queue: "default".into(),
            task: "email.send".into(),
            state: JobState::Succeeded,
            attempt: 2,
            max_attempts: 3,
            payload: Some(json!({"to": "a@example.com"})),
            raw_body: None,
            result: Some(json!({"sent": true})),
            errors: vec![FailureRecord {
                attempt: 1,
                kind: FailureKind::Timeout,
                message: "took too long".into(),
                worker: "w1".into(),
                at: at(5),
            }],
            timeout_ms: Some(30_000),
            run_at: None,
            enqueued_at: at(0),
            started_at: Some(at(12)),
            finished_at: Some(at(15)),
            updated_at: at(16),
            worker_id: Some("w2".into()),
            idempotency_key: None,
            traceparent: None,
            duplicate_of: None,
            duplicate_runs: 0,
            cancel_requested_at: None,
            body_size: None,
            body_sha256: None,
        }
    }

    #[test]
    fn a_job_reads_as_labelled_lines() {
        let text = render(&job());
        let expected = "\
id           0194bbd6-9a40-7cc2-9d55-3b1f0c6a2e10
task         email.send
queue        default
state        succeeded
attempt      2 of 3
enqueued     2025-01-31T09:15:00.000Z
started      2025-01-31T09:15:00.012Z
finished     2025-01-31T09:15:00.015Z
took         queued 12ms, ran 3ms
timeout      30s
worker       w2
idempotency  -
payload      {\"to\":\"a@example.com\"}
result       {\"sent\":true}
errors       1
  attempt 1  timeout  2025-01-31T09:15:00.005Z  on w1
    took too long
";
        assert_eq!(text, expected, "{text}");
    }

    #[test]
    fn an_unstarted_job_shows_dashes_and_raw_bodies_are_marked() {
        let mut j = job();
        j.started_at = None;
        j.finished_at = None;
        j.payload = None;
        j.raw_body = Some("not json".into());
        j.errors.clear();
        let text = render(&j);
        assert!(
            text.contains("started      -\n") && !text.contains("took"),
            "{text}"
        );
        assert!(
            text.contains("payload      (not readable as JSON, shown as text) not json\n"),
            "{text}"
        );
        assert!(text.contains("errors       none\n"), "{text}");
        let original = JobId::new();
        j.duplicate_of = Some(original);
        assert!(render(&j).contains(&format!("duplicate of {original} (")));
    }

    #[test]
    fn large_json_is_indented_below_its_label() {
        let value = json!({"items": (0..30).collect::<Vec<_>>()});
        let shown = json_value(&value);
        assert!(shown.starts_with("\n  {\n    \"items\": ["), "{shown}");
        let mut j = job();
        j.result = Some(value);
        assert!(
            render(&j).contains("\nresult\n  {\n"),
            "the label has no trailing blank"
        );
    }

    #[test]
    fn job_data_cannot_drive_the_terminal() {
        let mut j = job();
        j.task = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J".into();
        j.worker_id = Some("w\nstate        succeeded".into());
        j.payload = Some(json!({"k": "\u{1b}[31mred\u{9b}2J"}));
        j.errors[0].message = "line one\u{1b}[2J\nline two\r".into();
        let text = render(&j);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{9b}'),
            "{text:?}"
        );
        assert!(!text.contains('\r') && !text.contains('\u{7}'), "{text:?}");
        assert!(
            text.contains("task         evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\n"),
            "{text}"
        );
        assert!(
            text.contains("worker       w\\nstate        succeeded\n"),
            "a newline cannot forge a field: {text}"
        );
        assert!(
            text.contains("payload      {\"k\":\"\\u001b[31mred\\u{9b}2J\"}\n"),
            "{text}"
        );
        assert!(
            text.contains("    line one\\u{1b}[2J\n    line two\\r\n"),
            "error messages keep their lines: {text}"
        );
    }

    #[test]
    fn a_duplicate_shows_it_never_ran() {
        let mut j = job();
        let original = JobId::new();
        j.state = JobState::Cancelled;
        j.attempt = 1;
        j.duplicate_of = Some(original);
        let text = render(&j);
        assert!(
            text.contains(&format!("attempt      not run (duplicate of {original})\n")),
            "{text}"
        );
        assert!(text.contains("started      -\n"), "{text}");
        assert!(
            text.contains("took         queued 12ms, not run\n"),
            "{text}"
        );
        assert!(!text.contains("ran ") && !text.contains(" of 3"), "{text}");
    }

    #[test]
    fn a_running_job_has_only_its_queue_time() {
        let mut j = job();
        j.finished_at = None;
        j.started_at = Some(j.enqueued_at + TimeDelta::milliseconds(1_500));
        assert_eq!(timings(&j).as_deref(), Some("queued 1.50s"));
    }
}
