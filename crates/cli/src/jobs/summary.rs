//! `warren jobs summary`: jobs per state, and the latency and throughput of recent ones.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use warren_core::duration::parse_duration;
use warren_core::{JobState, QueueName};
use warren_store::{LatencySummary, StateTotal};

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::output::{emit, emit_json, timestamp};

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren jobs summary\n  warren jobs summary --since 15m --queue emails --json"
)]
pub struct SummaryArgs {
    /// How far back the latency and throughput figures look, e.g. 15m or 1d: they cover
    /// finished jobs enqueued since then.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration, allow_hyphen_values = true)]
    pub since: Duration,

    /// Count only this queue's jobs per state (the latency figures cover every queue).
    #[arg(long)]
    pub queue: Option<QueueName>,

    /// Print the summary as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `jobs summary` prints, in the shape `--json` prints it: flat, so that a shell
/// script can pick `"finished": N` out of it without a JSON parser (the demo does).
#[derive(Debug, Serialize)]
struct Summary {
    /// The queue the state counts are limited to; `None` is every queue.
    queue: Option<String>,
    /// Jobs with a row, per state, over all time.
    states: StateTotals,
    /// The states whose count is the planner statistics' estimate, not a count: on a large
    /// table, those with more than a million rows (`warren_store::EXACT_UP_TO`).
    approximate: Vec<JobState>,
    since: DateTime<Utc>,
    #[serde(flatten)]
    finished: Finished,
}

/// One field per state, in lifecycle order, so every state shows even at zero.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct StateTotals {
    scheduled: i64,
    queued: i64,
    running: i64,
    succeeded: i64,
    dead: i64,
    cancelled: i64,
}

impl StateTotals {
    fn from_counts(counts: &[StateTotal]) -> Self {
        let mut totals = StateTotals::default();
        for c in counts {
            *totals.slot(c.state) += c.count;
        }
        totals
    }

    fn slot(&mut self, state: JobState) -> &mut i64 {
        match state {
            JobState::Scheduled => &mut self.scheduled,
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
        }
    }

    fn rows(&self) -> [(JobState, i64); 6] {
        [
            (JobState::Scheduled, self.scheduled),
            (JobState::Queued, self.queued),
            (JobState::Running, self.running),
            (JobState::Succeeded, self.succeeded),
            (JobState::Dead, self.dead),
            (JobState::Cancelled, self.cancelled),
        ]
    }
}

/// Jobs that finished (succeeded or dead) among those enqueued since the cut-off, in every
/// queue: the store does not break latencies down by queue, so `--queue` does not apply here
/// and the text output says so.
#[derive(Debug, Serialize)]
struct Finished {
    #[serde(rename = "finished")]
    count: i64,
    first_enqueued: Option<DateTime<Utc>>,
    last_finished: Option<DateTime<Utc>>,
    /// Finished jobs per second from the first enqueue to the last finish.
    throughput_per_s: Option<f64>,
    enqueue_to_start_ms: Percentiles,
    enqueue_to_recorded_ms: Percentiles,
}

#[derive(Debug, PartialEq, Serialize)]
struct Percentiles {
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Finished {
    fn from_latency(l: LatencySummary) -> Self {
        let throughput = match (l.first_enqueued, l.last_finished) {
            (Some(first), Some(last)) if last > first && l.finished > 0 => Some(
                l.finished as f64
                    / ((last - first).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6),
            ),
            _ => None,
        };
        Finished {
            count: l.finished,
            first_enqueued: l.first_enqueued,
            last_finished: l.last_finished,
            throughput_per_s: throughput,
            enqueue_to_start_ms: Percentiles {
                p50: l.start_p50_ms,
                p99: l.start_p99_ms,
            },
            enqueue_to_recorded_ms: Percentiles {
                p50: l.recorded_p50_ms,
                p99: l.recorded_p99_ms,
            },
        }
    }
}

pub(super) async fn run(args: SummaryArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let since = TimeDelta::from_std(args.since)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| Usage(format!("--since {:?} reaches too far back", args.since)))?;
    let queue = args.queue.as_ref().map(QueueName::as_str);
    let store = connection.store("jobs summary").await?;
    let counts = store.state_totals(queue).await.map_err(anyhow::Error::from);
    let latency = store
        .latency_summary(since)
        .await
        .map_err(anyhow::Error::from);
    store.close().await;
    let counts = counts?;
    let summary = Summary {
        queue: queue.map(str::to_owned),
        states: StateTotals::from_counts(&counts),
        approximate: counts
            .iter()
            .filter(|c| c.approximate)
            .map(|c| c.state)
            .collect(),
        since,
        finished: Finished::from_latency(latency?),
    };
    if args.json {
        emit_json(&summary)
    } else {
        emit(&render(&summary, args.since))
    }
}

fn render(s: &Summary, window: Duration) -> String {
    let mut out = String::new();
    let scope = s
        .queue
        .as_deref()
        .map_or_else(|| "all queues".to_owned(), |q| format!("queue {q}"));
    let _ = writeln!(
        out,
        "jobs by state, {scope}, all time (jobs still in RabbitMQ have no row yet)"
    );
    let rows = s.states.rows();
    // An estimated count reads `~9084666`, and so does a total that includes one.
    let mark = |approximate: bool| if approximate { "~" } else { "" };
    for (state, count) in rows {
        let approx = mark(s.approximate.contains(&state));
        let _ = writeln!(
            out,
            "  {:<11} {:>9}",
            state.as_str(),
            format!("{approx}{count}")
        );
    }
    let total: i64 = rows.iter().map(|(_, n)| n).sum();
    let approx = mark(!s.approximate.is_empty());
    let _ = writeln!(out, "  {:<11} {:>9}", "total", format!("{approx}{total}"));
    if !s.approximate.is_empty() {
        let _ = writeln!(
            out,
            "  (~ estimated from the table's statistics: exact counts of that many rows take \
             seconds)"
        );
    }

    let f = &s.finished;
    let _ = writeln!(
        out,
        "\nfinished jobs enqueued in the last {}, since {}, all queues",
        crate::output::duration(window),
        timestamp(s.since)
    );
    if f.count == 0 {
        let _ = writeln!(out, "  none");
        return out;
    }
    let throughput = f
        .throughput_per_s
        .map_or_else(|| "-".to_owned(), |t| format!("{t:.1} jobs/s"));
    let _ = writeln!(out, "  {:<20} {}", "finished", f.count);
    let _ = writeln!(out, "  {:<20} {throughput}", "throughput");
    for (label, p) in [
        ("enqueue to start", &f.enqueue_to_start_ms),
        ("enqueue to recorded", &f.enqueue_to_recorded_ms),
    ] {
        let _ = writeln!(
            out,
            "  {label:<20} p50 {}  p99 {}",
            millis(p.p50),
            millis(p.p99)
        );
    }
    out
}

fn millis(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_738_314_900 + secs, 0).unwrap()
    }

    fn latency(finished: i64) -> LatencySummary {
        LatencySummary {
            finished,
            first_enqueued: (finished > 0).then(|| at(0)),
            last_finished: (finished > 0).then(|| at(4)),
            start_p50_ms: (finished > 0).then_some(12.04),
            start_p99_ms: (finished > 0).then_some(40.0),
            recorded_p50_ms: (finished > 0).then_some(15.0),
            recorded_p99_ms: None,
        }
    }

    fn summary(finished: i64) -> Summary {
        let counts = [
            StateTotal {
                state: JobState::Succeeded,
                count: 7,
                approximate: false,
            },
            StateTotal {
                state: JobState::Dead,
                count: 1,
                approximate: false,
            },
        ];
        Summary {
            queue: Some("default".into()),
            states: StateTotals::from_counts(&counts),
            approximate: Vec::new(),
            since: at(-3600),
            finished: Finished::from_latency(latency(finished)),
        }
    }

    #[test]
    fn every_state_shows_even_when_absent() {
        let json = serde_json::to_value(summary(0)).unwrap();
        let states = json["states"].as_object().unwrap();
        assert_eq!(states.len(), JobState::ALL.len());
        assert_eq!(
            (states["queued"].as_i64(), states["succeeded"].as_i64()),
            (Some(0), Some(7))
        );
        assert_eq!(json["finished"], 0);
        assert!(json["throughput_per_s"].is_null());
    }

    #[test]
    fn throughput_spans_first_enqueue_to_last_finish() {
        let f = Finished::from_latency(latency(8));
        assert_eq!(f.throughput_per_s, Some(2.0));
    }

    #[test]
    fn the_text_form_lists_states_then_latencies() {
        let text = render(&summary(8), Duration::from_secs(3600));
        assert!(
            text.starts_with("jobs by state, queue default, all time"),
            "{text}"
        );
        assert!(text.contains("  scheduled           0\n"), "{text}");
        assert!(text.contains("  total               8\n"), "{text}");
        assert!(
            text.contains("in the last 1h00m, since 2025-01-31T08:15:00.000Z, all queues"),
            "{text}"
        );
        assert!(
            text.contains("  throughput           2.0 jobs/s\n"),
            "{text}"
        );
        assert!(
            text.contains("  enqueue to start     p50 12.0 ms  p99 40.0 ms\n"),
            "{text}"
        );
        assert!(
            text.contains("  enqueue to recorded  p50 15.0 ms  p99 -\n"),
            "{text}"
        );
        assert!(render(&summary(0), Duration::from_secs(60)).ends_with("all queues\n  none\n"));
        assert!(!text.contains('~'), "exact counts carry no mark: {text}");
    }

    #[test]
    fn an_estimated_count_is_marked_and_so_is_the_total() {
        let mut s = summary(8);
        s.approximate = vec![JobState::Succeeded];
        let text = render(&s, Duration::from_secs(3600));
        assert!(text.contains("  succeeded          ~7\n"), "{text}");
        assert!(text.contains("  dead                1\n"), "{text}");
        assert!(text.contains("  total              ~8\n"), "{text}");
        assert!(
            text.contains("estimated from the table's statistics"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["approximate"], serde_json::json!(["succeeded"]));
    }
}
