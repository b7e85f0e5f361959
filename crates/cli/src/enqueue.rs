//! `warren enqueue`: publish one job, or many copies of it, each confirmed by RabbitMQ.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::value::RawValue;
use warren_client::{Client, NewJob};
use warren_core::duration::parse_duration;
use warren_core::message::{MAX_ATTEMPTS_LIMIT, check_payload, check_storable};
use warren_core::{DEFAULT_QUEUE, JobId, QueueName, TaskName};

use crate::connection::ConnectionArgs;
use crate::exit::{Interrupted, Usage};
use crate::output::{emit, emit_json, printable_line, printable_width};

/// Jobs handed to `enqueue_many` at once: enough to keep the publisher's confirm window full,
/// few enough that progress moves and a run that starts failing stops soon.
const CHUNK: u64 = 1_000;

/// Up to this many jobs the JSON output lists every id; beyond it only the first and the last,
/// so the output stays proportionate to what a script can use.
const ID_LIST_LIMIT: u64 = 1_000;

const ENQUEUE_HELP: &str = "\
Examples:
  warren enqueue warren.echo --payload '{\"hello\": \"world\"}'
  warren enqueue email.send --payload '{\"to\": \"a@example.com\"}' --queue emails --delay 30s
  warren enqueue report.build --payload '{}' --delay 1m --idempotency-key report-2026-12
  warren enqueue warren.noop --count 1000 --json
  warren enqueue warren.echo --payload '{}' --traceparent 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01

One job prints its id. A delayed job whose idempotency key another live or succeeded job
holds is not added: it prints `duplicate of ID` (that job's id) instead, and its payload is
dropped. An immediate job's key is checked when a worker takes it, so such a duplicate is
published, then recorded cancelled with `warren jobs show` saying `duplicate of ID`.
--count N prints a summary line. Ctrl-C stops after the current batch of 1000 and prints
what was enqueued so far (exit 130).

--json prints {\"queue\", \"requested\", \"enqueued\", \"duplicates\", \"failed\", \"skipped\",
\"interrupted\", \"seconds\"}; \"enqueued\" counts new jobs only, \"duplicates\" jobs whose
key was already held, \"skipped\" jobs never attempted. Up to 1000 jobs it adds \"ids\" (the
new jobs' ids, in order); beyond, \"first_id\" and \"last_id\". With duplicates it adds
\"duplicate_of\": the ids of the jobs holding their keys.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = ENQUEUE_HELP)]
pub struct EnqueueArgs {
    /// Task to run, e.g. email.send.
    pub task: TaskName,

    /// The job's payload as JSON, e.g. '{"to": "a@example.com"}'. It must be JSON a worker
    /// can read: numbers within a 64-bit float, no lone \uD800-style surrogate escapes, at
    /// most 127 levels of nesting.
    // Checked in `plan`, not by clap: clap would repeat the whole value in its error, and a
    // payload can be megabytes.
    #[arg(long, value_name = "JSON")]
    pub payload: String,

    /// Queue to publish to. It must exist: a worker declares its queues when it starts, or run
    /// `warren queues declare`.
    #[arg(long, default_value = DEFAULT_QUEUE)]
    pub queue: QueueName,

    /// Identical jobs to enqueue, each with its own id. Published in batches of 1000; the
    /// first batch in which a job fails is the last one attempted, and Ctrl-C stops after
    /// the current batch (exit 130).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Attempts in total, 1 to 1000; the task's retry policy decides when unset.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS_LIMIT)))]
    pub max_attempts: Option<u32>,

    /// Per-attempt timeout, e.g. 30s or 500ms; the task's default when unset.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,

    /// Idempotency key: at most one live or succeeded job holds it, and a job whose key is
    /// held is a duplicate and does not run. Only with --count 1, since copies sharing a key
    /// would be duplicates of the first.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Run no earlier than this from now, e.g. 30s or 2h. Delayed jobs are written to
    /// PostgreSQL (so this needs --database-url too) and published by a worker when due.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub delay: Option<Duration>,

    /// W3C trace context of the caller (00-<32 hex>-<16 hex>-<2 hex>), so the job's span
    /// joins the caller's trace; TRACEPARENT is the variable tracing-aware scripts export.
    /// Without it every job gets a fresh trace id of its own.
    #[arg(long, env = "TRACEPARENT", value_name = "TRACEPARENT")]
    pub traceparent: Option<String>,

    /// Print the outcome as JSON: counts, and "ids" up to 1000 jobs or "first_id" and
    /// "last_id" beyond (see below).
    #[arg(long)]
    pub json: bool,
}

/// Parses `--payload` and checks it exactly as a worker will read it
/// (`warren_core::message::check_payload`, shared with `warren-client` and the workers'
/// decoding). When it is not JSON, or JSON no worker can read, says what and where, pointing
/// at the spot.
fn parse_payload(input: &str) -> Result<Box<RawValue>, String> {
    let payload: Box<RawValue> = serde_json::from_str(input).map_err(|e| {
        format!(
            "not valid JSON: {e}\n{}",
            point_at(input, e.line(), e.column())
        )
    })?;
    check_payload(input).map_err(|e| {
        format!(
            "JSON that no worker can read: {e}\n{}",
            point_at(input, e.line, e.column)
        )
    })?;
    check_storable(input).map_err(|e| {
        format!(
            "JSON that PostgreSQL cannot store: {e}\n{}",
            point_at(input, e.line, e.column)
        )
    })?;
    Ok(payload)
}

/// The text around `line`:`column` (both 1-based, as serde_json counts them) with a caret
/// under the column. Long lines are cut to a window around the spot; control characters are
/// shown escaped, and the caret counts them as printed.
fn point_at(input: &str, line: usize, column: usize) -> String {
    const CONTEXT: usize = 30;
    let text = input.lines().nth(line.saturating_sub(1)).unwrap_or("");
    // serde_json counts columns in bytes; the caret is placed in characters.
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = chars
        .iter()
        .position(|(byte, _)| *byte + 1 >= column)
        .unwrap_or(chars.len());
    let start = at.saturating_sub(CONTEXT);
    let end = (at + CONTEXT).min(chars.len());
    let snippet: String = chars[start..end].iter().map(|(_, c)| c).collect();
    let lead = if start > 0 { "…" } else { "" };
    let tail = if end < chars.len() { "…" } else { "" };
    let caret_at = lead.chars().count()
        + chars[start..at]
            .iter()
            .map(|(_, c)| printable_width(*c))
            .sum::<usize>();
    let snippet = printable_line(&snippet);
    format!("  {lead}{snippet}{tail}\n  {}^", " ".repeat(caret_at))
}

/// An enqueue request, checked: the job every copy is cloned from (each clone gets its own
/// id when published), and how many.
/// The flag that sets a job option, for errors about it.
fn flag_of(field: &str) -> String {
    match field {
        "task" => "TASK".to_owned(),
        "max_attempts" => "--max-attempts".to_owned(),
        "idempotency_key" => "--idempotency-key".to_owned(),
        "run_at" => "--delay".to_owned(),
        "trace" => "--traceparent".to_owned(),
        other => format!("--{other}"),
    }
}

#[derive(Debug)]
struct Plan {
    /// The job waits in PostgreSQL first, so the client needs the database.
    delayed: bool,
    job: NewJob,
    queue: QueueName,
    count: u64,
    json: bool,
}

impl EnqueueArgs {
    fn plan(self) -> Result<Plan, Usage> {
        let payload = parse_payload(&self.payload).map_err(|e| Usage(format!("--payload: {e}")))?;
        if self.count > 1 && self.idempotency_key.is_some() {
            return Err(Usage(format!(
                "--idempotency-key cannot be combined with --count {}: every copy would carry the same key",
                self.count
            )));
        }
        let mut job = NewJob::new(self.task.as_str(), &payload).queue(self.queue.as_str());
        if let Some(n) = self.max_attempts {
            job = job.max_attempts(n);
        }
        if let Some(timeout) = self.timeout {
            job = job.timeout(timeout);
        }
        if let Some(key) = self.idempotency_key {
            job = job.idempotency_key(key);
        }
        if let Some(tp) = &self.traceparent {
            job = job.trace(tp.trim(), None);
        }
        let delayed = self.delay.is_some_and(|d| !d.is_zero());
        if let Some(delay) = self.delay {
            job = job.delay(delay);
        }
        // Every problem at once, each under the flag that set it.
        if let Err(warren_client::Error::Invalid { problems, .. }) = job.validate() {
            let lines: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", flag_of(p.field), p.text))
                .collect();
            return Err(Usage(lines.join("\n")));
        }
        Ok(Plan {
            delayed,
            job,
            queue: self.queue,
            count: self.count,
            json: self.json,
        })
    }
}

pub(crate) async fn run(args: EnqueueArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let broker = connection.broker("enqueue").await?;
    let mut client = Client::from_broker(broker)
        .await
        .context("opening a publisher channel")?;
    if plan.delayed {
        client = client.with_store(connection.store("enqueue --delay").await?);
    }
    let report = publish(&client, &plan).await;
    client.broker().close().await;
    // What did get enqueued is printed even when something failed, so a script can still
    // pick up the ids; the failure itself is the error.
    if plan.json {
        emit_json(&report.json())?;
    } else {
        emit(&report.text())?;
    }
    report.into_result()
}

/// Publishes the plan's jobs in batches, stopping after the first batch with a failure:
/// whatever refused one job (a missing queue, a full one) would most likely refuse the rest.
///
/// Ctrl-C stops it after the current batch: the batch's confirms are awaited (what the broker
/// took is enqueued whether or not we wait), so the report counts every job that is in the
/// queue.
async fn publish(client: &Client, plan: &Plan) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
            }
        })
    };
    let progress = Progress::new(plan.count);
    let mut report = Report::new(plan.queue.clone(), plan.count);
    let started = Instant::now();
    let mut left = plan.count;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        // Each copy gets its id here, so that an id coming back different says the job was
        // a duplicate of the job holding its idempotency key.
        let ids: Vec<JobId> = (0..n).map(|_| JobId::new()).collect();
        let batch = ids.iter().map(|id| plan.job.clone().id(*id));
        for (id, outcome) in ids.iter().zip(client.enqueue_many(batch).await) {
            report.record(*id, outcome);
        }
        progress.show(&report);
        if report.failed > 0 {
            break;
        }
        if left > 0 && stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
    }
    watcher.abort();
    report.elapsed = started.elapsed();
    progress.finish();
    report
}

/// A counter on stderr redrawn after every batch, only for a person at a terminal: in a pipe
/// or a log file it would be noise. Writing it is best effort.
#[derive(Debug)]
struct Progress {
    enabled: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self {
            enabled: total > 1 && std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, report: &Report) {
        if self.enabled {
            let failed = match report.failed {
                0 => String::new(),
                n => format!(", {n} failed"),
            };
            let _ = write!(
                std::io::stderr(),
                "\renqueued {}/{}{failed}",
                report.enqueued,
                report.requested
            );
        }
    }

    fn finish(&self) {
        if self.enabled {
            // Return to the line start and erase it, so the summary is not mixed with it.
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// What happened to the jobs of one `warren enqueue`.
#[derive(Debug)]
struct Report {
    queue: QueueName,
    requested: u64,
    /// New jobs, confirmed by the broker or committed to Postgres.
    enqueued: u64,
    /// Jobs not added because another job held their idempotency key.
    duplicates: u64,
    failed: u64,
    /// Ctrl-C stopped the run before every batch was attempted.
    interrupted: bool,
    /// Every new job's id, kept only while `requested` is within [`ID_LIST_LIMIT`].
    ids: Vec<JobId>,
    /// The ids of the jobs holding the duplicates' keys, within the same limit.
    duplicate_of: Vec<JobId>,
    first: Option<JobId>,
    last: Option<JobId>,
    first_error: Option<warren_client::Error>,
    elapsed: Duration,
}

/// The `--json` form of a [`Report`].
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    queue: &'a str,
    requested: u64,
    /// New jobs only.
    enqueued: u64,
    /// Jobs whose idempotency key another job held: not added.
    duplicates: u64,
    failed: u64,
    /// Jobs never attempted, because an earlier batch had a failure or Ctrl-C stopped the run.
    skipped: u64,
    interrupted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<&'a [JobId]>,
    #[serde(skip_serializing_if = "<[JobId]>::is_empty")]
    duplicate_of: &'a [JobId],
    #[serde(skip_serializing_if = "Option::is_none")]
    first_id: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_id: Option<JobId>,
    seconds: f64,
}

impl Report {
    fn new(queue: QueueName, requested: u64) -> Self {
        Self {
            queue,
            requested,
            enqueued: 0,
            duplicates: 0,
            failed: 0,
            interrupted: false,
            ids: Vec::new(),
            duplicate_of: Vec::new(),
            first: None,
            last: None,
            first_error: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Counts the outcome of the job that was given id `sent`.
    fn record(&mut self, sent: JobId, outcome: Result<JobId, warren_client::Error>) {
        match outcome {
            Ok(holder) if holder != sent => {
                self.duplicates += 1;
                if self.requested <= ID_LIST_LIMIT {
                    self.duplicate_of.push(holder);
                }
            }
            Ok(id) => {
                self.enqueued += 1;
                self.first.get_or_insert(id);
                self.last = Some(id);
                if self.requested <= ID_LIST_LIMIT {
                    self.ids.push(id);
                }
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn skipped(&self) -> u64 {
        self.requested - self.enqueued - self.duplicates - self.failed
    }

    fn rate(&self) -> f64 {
        self.enqueued as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }

    fn json(&self) -> JsonReport<'_> {
        let listed = self.requested <= ID_LIST_LIMIT;
        JsonReport {
            queue: self.queue.as_str(),
            requested: self.requested,
            enqueued: self.enqueued,
            duplicates: self.duplicates,
            failed: self.failed,
            skipped: self.skipped(),
            interrupted: self.interrupted,
            ids: listed.then_some(self.ids.as_slice()),
            duplicate_of: &self.duplicate_of,
            first_id: if listed { None } else { self.first },
            last_id: if listed { None } else { self.last },
            seconds: self.elapsed.as_secs_f64(),
        }
    }

    /// One job: its id alone, so `id=$(warren enqueue ...)` works, or `duplicate of ID` when
    /// another job held its key. Many: a summary line.
    fn text(&self) -> String {
        if self.requested == 1 {
            if let Some(holder) = self.duplicate_of.first() {
                return format!("duplicate of {holder}\n");
            }
            return self.first.map(|id| format!("{id}\n")).unwrap_or_default();
        }
        let secs = self.elapsed.as_secs_f64();
        let rate = self.rate();
        let mut text = if self.enqueued == self.requested {
            format!(
                "enqueued {} jobs to queue {} in {secs:.2} s ({rate:.0} jobs/s)",
                self.enqueued, self.queue
            )
        } else {
            let mut text = format!(
                "enqueued {} of {} jobs to queue {} in {secs:.2} s ({rate:.0} jobs/s)",
                self.enqueued, self.requested, self.queue,
            );
            if self.duplicates > 0 {
                text.push_str(&format!("; {} duplicates not added", self.duplicates));
            }
            if self.failed > 0 || self.skipped() > 0 {
                text.push_str(&format!(
                    "; {} failed, {} not attempted",
                    self.failed,
                    self.skipped()
                ));
            }
            text
        };
        if self.interrupted {
            text.push_str("; interrupted by Ctrl-C");
        }
        text.push('\n');
        text
    }

    /// The first failure, if any, as the command's error; else an interruption.
    fn into_result(self) -> anyhow::Result<()> {
        let Some(error) = self.first_error else {
            if self.interrupted {
                return Err(Interrupted(format!(
                    "interrupted by Ctrl-C after {} of {} jobs were enqueued; the other {} were not",
                    self.enqueued,
                    self.requested,
                    self.skipped()
                ))
                .into());
            }
            return Ok(());
        };
        let lost = self.requested - self.enqueued - self.duplicates;
        let what = if self.requested == 1 {
            "the job was not enqueued".to_owned()
        } else {
            format!(
                "{lost} of {} jobs were not enqueued; the first error",
                self.requested
            )
        };
        Err(anyhow::Error::new(error).context(what))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: EnqueueArgs,
    }

    fn parse(argv: &[&str]) -> Result<EnqueueArgs, String> {
        let argv = std::iter::once("enqueue").chain(argv.iter().copied());
        Wrapper::try_parse_from(argv)
            .map(|w| w.args)
            .map_err(|e| e.to_string())
    }

    fn plan_error(argv: &[&str]) -> String {
        parse(argv).unwrap().plan().unwrap_err().0
    }

    #[test]
    fn bad_json_says_where() {
        let err = plan_error(&["t", "--payload", r#"{"to": "x",}"#]);
        assert!(
            err.contains("not valid JSON") && err.contains("line 1 column 12"),
            "{err}"
        );
        assert!(err.contains("  {\"to\": \"x\",}\n             ^"), "{err}");
    }

    #[test]
    fn json_no_worker_can_read_is_refused_with_the_spot() {
        let err = plan_error(&["t", "--payload", r#"{"n":1e400}"#]);
        assert!(
            err.starts_with("--payload: JSON that no worker can read: number out of range")
                && err.contains("at line 1, column 10"),
            "{err}"
        );
        assert!(err.ends_with("  {\"n\":1e400}\n           ^"), "{err}");
        let err = plan_error(&["t", "--payload", r#"["\ud800"]"#]);
        assert!(err.contains("surrogate"), "{err}");
        let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        let err = plan_error(&["t", "--payload", &deep]);
        assert!(err.contains("nested deeper than 127"), "{err}");
        assert!(err.len() < 300, "the payload is not repeated: {err}");
    }

    #[test]
    fn the_caret_counts_escaped_control_characters() {
        // ESC shows as `\u{1b}`, six characters: the caret moves along with it.
        assert_eq!(point_at("\u{1b}[}", 1, 3), "  \\u{1b}[}\n         ^");
    }

    #[test]
    fn the_caret_follows_the_line_and_long_lines_are_cut() {
        assert_eq!(point_at("[1,\n 2,,3]", 2, 4), "   2,,3]\n     ^");
        let long = format!("[{}x]", "1,".repeat(40));
        let shown = point_at(&long, 1, 82);
        let (text, caret) = shown.split_once('\n').unwrap();
        assert!(text.starts_with("  …") && !text.ends_with('…'), "{shown}");
        assert_eq!(text.chars().nth(caret.len() - 1), Some('x'), "{shown}");
    }

    #[test]
    fn options_are_checked_before_connecting() {
        let plan = parse(&[
            "email.send",
            "--payload",
            "{}",
            "--max-attempts",
            "3",
            "--timeout",
            "30s",
        ])
        .unwrap()
        .plan()
        .unwrap();
        assert_eq!((plan.queue.as_str(), plan.count), (DEFAULT_QUEUE, 1));

        assert!(
            parse(&["bad task", "--payload", "{}"])
                .unwrap_err()
                .contains("invalid task name")
        );
        assert!(parse(&["t", "--payload", "{}", "--count", "0"]).is_err());
        assert!(parse(&["t", "--payload", "{}", "--max-attempts", "1001"]).is_err());
        assert!(
            parse(&["t", "--payload", "{}", "--timeout", "30"])
                .unwrap_err()
                .contains("no unit")
        );
        // The value reaches the duration parser, which says what is wrong with it, instead
        // of clap taking `-5s` for an unknown flag.
        let negative = parse(&["t", "--payload", "{}", "--timeout", "-5s"]).unwrap_err();
        assert!(
            negative.contains("a duration cannot be negative"),
            "{negative}"
        );
        let negative = parse(&["t", "--payload", "{}", "--delay", "-1m"]).unwrap_err();
        assert!(
            negative.contains("a duration cannot be negative"),
            "{negative}"
        );
        let twice = parse(&["t", "--payload", "{}", "--timeout", "1h1h"]).unwrap_err();
        assert!(twice.contains("repeats the unit `h`"), "{twice}");
        let zero = parse(&["t", "--payload", "{}", "--timeout", "0s"])
            .unwrap()
            .plan()
            .unwrap_err();
        assert!(zero.0.starts_with("--timeout:"), "{zero}");
        let shared = parse(&[
            "t",
            "--payload",
            "{}",
            "--count",
            "2",
            "--idempotency-key",
            "k",
        ])
        .unwrap()
        .plan()
        .unwrap_err();
        assert!(shared.0.contains("--idempotency-key"), "{shared}");
        let trace = parse(&["t", "--payload", "{}", "--traceparent", "00-abc-01"])
            .unwrap()
            .plan()
            .unwrap_err();
        assert!(trace.0.starts_with("--traceparent:"), "{trace}");
    }

    fn report(requested: u64, enqueued: u64, failed: bool) -> Report {
        let mut r = Report::new(QueueName::new("emails").unwrap(), requested);
        for _ in 0..enqueued {
            let id = JobId::new();
            r.record(id, Ok(id));
        }
        if failed {
            r.record(
                JobId::new(),
                Err(warren_client::Error::Invalid {
                    task: "t".into(),
                    problems: vec![warren_client::Problem {
                        field: "queue",
                        text: "refused".into(),
                    }],
                }),
            );
        }
        r.elapsed = Duration::from_millis(500);
        r
    }

    #[test]
    fn one_job_prints_its_id_and_many_a_summary() {
        let one = report(1, 1, false);
        assert_eq!(one.text(), format!("{}\n", one.ids[0]));
        assert_eq!(
            report(10, 10, false).text(),
            "enqueued 10 jobs to queue emails in 0.50 s (20 jobs/s)\n"
        );
        assert_eq!(
            report(3000, 999, true).text(),
            "enqueued 999 of 3000 jobs to queue emails in 0.50 s (1998 jobs/s); 1 failed, 2000 not attempted\n"
        );
    }

    #[test]
    fn json_lists_ids_only_for_small_runs() {
        let small = serde_json::to_value(report(3, 3, false).json()).unwrap();
        assert_eq!(
            (small["enqueued"].as_u64(), small["failed"].as_u64()),
            (Some(3), Some(0))
        );
        assert_eq!(small["ids"].as_array().map(Vec::len), Some(3));
        assert!(small.get("first_id").is_none());

        let big = report(2000, 1500, true);
        let (first, last) = (big.first, big.last);
        let big = serde_json::to_value(big.json()).unwrap();
        assert!(big.get("ids").is_none());
        assert_eq!(big["first_id"], serde_json::to_value(first).unwrap());
        assert_eq!(big["last_id"], serde_json::to_value(last).unwrap());
        assert_eq!(
            (big["failed"].as_u64(), big["skipped"].as_u64()),
            (Some(1), Some(499))
        );
    }

    #[test]
    fn a_failure_is_the_error_with_the_count_lost() {
        assert!(report(5, 5, false).into_result().is_ok());
        let err = format!("{:#}", report(5, 2, true).into_result().unwrap_err());
        assert!(
            err.starts_with("3 of 5 jobs were not enqueued; the first error: "),
            "{err}"
        );
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn a_duplicate_is_named_and_counted_apart_from_new_jobs() {
        let holder = JobId::new();
        let mut r = Report::new(QueueName::new("emails").unwrap(), 1);
        r.record(JobId::new(), Ok(holder));
        assert_eq!(r.text(), format!("duplicate of {holder}\n"));
        let json = serde_json::to_value(r.json()).unwrap();
        assert_eq!(
            (
                json["enqueued"].as_u64(),
                json["duplicates"].as_u64(),
                json["skipped"].as_u64()
            ),
            (Some(0), Some(1), Some(0))
        );
        assert_eq!(json["ids"], serde_json::json!([]));
        assert_eq!(json["duplicate_of"], serde_json::json!([holder]));
        assert!(r.into_result().is_ok());
    }

    #[test]
    fn an_interrupted_run_reports_what_it_enqueued_and_exits_130() {
        let mut r = report(5000, 2000, false);
        r.interrupted = true;
        assert_eq!(
            r.text(),
            "enqueued 2000 of 5000 jobs to queue emails in 0.50 s (4000 jobs/s); 0 failed, \
             3000 not attempted; interrupted by Ctrl-C\n"
        );
        let json = serde_json::to_value(r.json()).unwrap();
        assert_eq!(json["interrupted"], true);
        assert_eq!(json["skipped"].as_u64(), Some(3000));
        assert!(json.get("duplicate_of").is_none());
        let err = r.into_result().unwrap_err();
        assert_eq!(
            crate::exit::Status::of(&err),
            crate::exit::Status::Interrupted
        );
        assert!(err.to_string().contains("after 2000 of 5000"), "{err}");
    }

    #[test]
    fn the_help_names_every_json_field_printed() {
        let big = serde_json::to_value(report(2000, 2000, false).json()).unwrap();
        let mut small = report(3, 2, false);
        small.record(JobId::new(), Ok(JobId::new()));
        let small = serde_json::to_value(small.json()).unwrap();
        for json in [big, small] {
            for field in json.as_object().unwrap().keys() {
                assert!(
                    ENQUEUE_HELP.contains(&format!("\"{field}\"")),
                    "{field} is not in the help"
                );
            }
        }
    }
}
