//! `warren stats`: per task and queue, how many jobs succeeded, were retried and died, and how
//! long they waited and ran; and per minute, how many jobs finished (a sparkline on a
//! terminal).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use warren_core::duration::parse_duration;
use warren_store::{LimitWait, MinuteCounts, TaskStats};

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::output::{Align, Table, emit, emit_json, printable_line};

const STATS_HELP: &str = "\
Examples:
  warren stats
  warren stats --since 24h --json

Covers the jobs that ended (succeeded, dead or cancelled) in the window. WAIT is the time from
enqueue to the start of the last attempt, RUN that attempt's run time; both are p50 / p95 / p99.
On a terminal a sparkline under the table shows the jobs finished per minute.

--json prints {\"since\", \"tasks\": [{\"task\", \"queue\", \"succeeded\", \"retried\", \"dead\",
\"wait_p50_ms\", ..., \"run_p99_ms\"}], \"throughput\": [{\"minute\", \"succeeded\", \"retried\",
\"dead\", \"cancelled\"}], \"limit_waits\": [{\"task\", \"deferred_jobs\", \"deferrals\",
\"avg_wait_ms\", \"max_wait_ms\"}]}, one throughput entry per minute of the window, oldest first;
limit_waits lists the tasks whose jobs (enqueued in the window) waited for a fleet-wide limit
(`warren limits`), with the time the limits deferred them by.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = STATS_HELP)]
pub struct StatsArgs {
    /// How far back to look, e.g. 15m, 1h or 7d.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,

    /// Print the statistics as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: StatsArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let since = TimeDelta::from_std(args.since)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| {
            Usage(format!(
                "--since {:?} reaches before the calendar",
                args.since
            ))
        })?;
    let store = connection.store("stats").await?;
    let stats = async {
        let tasks = store
            .task_stats(since)
            .await
            .context("reading the statistics")?;
        let throughput = store
            .throughput(since)
            .await
            .context("reading the throughput per minute")?;
        let limit_waits = store
            .limit_waits(since)
            .await
            .context("reading the waits for limits")?;
        anyhow::Ok(Stats {
            since,
            tasks,
            throughput,
            limit_waits,
        })
    }
    .await;
    store.close().await;
    let stats = stats?;
    if args.json {
        return emit_json(&stats);
    }
    let mut text = render(&stats.tasks);
    text.push_str(&render_limit_waits(&stats.limit_waits));
    // A sparkline is for a person looking at a terminal; a pipe gets the table alone.
    if std::io::stdout().is_terminal()
        && let Some(line) = throughput_line(&stats.throughput, SPARKLINE_WIDTH)
    {
        text.push_str(&line);
        text.push('\n');
    }
    emit(&text)
}

/// What `warren stats --json` prints.
#[derive(Debug, Serialize)]
struct Stats {
    /// The start of the window.
    since: DateTime<Utc>,
    tasks: Vec<TaskStats>,
    /// One entry per minute from `since` to now, oldest first.
    throughput: Vec<MinuteCounts>,
    /// Per task, how its jobs enqueued in the window waited for limits (tasks with a wait).
    limit_waits: Vec<LimitWait>,
}

/// The tasks whose jobs waited for a fleet-wide limit, and how long; nothing when none did.
fn render_limit_waits(waits: &[LimitWait]) -> String {
    if waits.is_empty() {
        return String::new();
    }
    let mut table = Table::new(&[
        ("LIMITED TASK", Align::Left),
        ("JOBS WAITED", Align::Right),
        ("DEFERRALS", Align::Right),
        ("WAIT avg/max", Align::Right),
    ]);
    for w in waits {
        table.row(vec![
            printable_line(&w.task).into_owned(),
            w.deferred_jobs.to_string(),
            w.deferrals.to_string(),
            format!("{}ms/{}ms", w.avg_wait_ms, w.max_wait_ms),
        ]);
    }
    format!("\n{}", table.render())
}

/// Blocks in the sparkline at most, so that it fits an 80-column terminal with room to spare;
/// an hour (the default window, 61 minutes counting the partial first one) is one block per
/// minute.
const SPARKLINE_WIDTH: usize = 64;

/// The sparkline of jobs finished per minute under its caption, e.g.
/// `jobs finished per minute (max 214):\n▁▁▃▅█▇▅▃`; `None` when nothing finished. A window
/// longer than `width` minutes is shown in blocks of several minutes each, and the caption
/// says so.
pub(crate) fn throughput_line(minutes: &[MinuteCounts], width: usize) -> Option<String> {
    let finished: Vec<i64> = minutes.iter().map(MinuteCounts::finished).collect();
    let per_block = finished.len().div_ceil(width.max(1)).max(1);
    let blocks: Vec<i64> = finished.chunks(per_block).map(|c| c.iter().sum()).collect();
    let max = blocks.iter().copied().max().filter(|&m| m > 0)?;
    let unit = if per_block == 1 {
        "minute".to_owned()
    } else {
        format!("{per_block} minutes")
    };
    Some(format!(
        "jobs finished per {unit} (max {max}):\n{}",
        sparkline(&blocks)
    ))
}

/// One block per value, from ▁ (zero) to █ (the largest); any value above zero shows at
/// least ▂, so that a trickle is not mistaken for nothing.
pub(crate) fn sparkline(values: &[i64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    values
        .iter()
        .map(|&v| {
            let v = v.clamp(0, max);
            // 0 maps to the lowest block, (0, max] to the seven above it, rounding up.
            let level = (v * 7 + max - 1) / max;
            BLOCKS[usize::try_from(level).unwrap_or(0).min(7)]
        })
        .collect()
}

fn render(stats: &[TaskStats]) -> String {
    if stats.is_empty() {
        return "no job ended in this window\n".to_owned();
    }
    let mut table = Table::new(&[
        ("TASK", Align::Left),
        ("QUEUE", Align::Left),
        ("SUCCEEDED", Align::Right),
        ("RETRIED", Align::Right),
        ("DEAD", Align::Right),
        ("WAIT p50/p95/p99", Align::Right),
        ("RUN p50/p95/p99", Align::Right),
    ]);
    for s in stats {
        table.row(vec![
            printable_line(&s.task).into_owned(),
            printable_line(&s.queue).into_owned(),
            s.succeeded.to_string(),
            s.retried.to_string(),
            s.dead.to_string(),
            percentiles([s.wait_p50_ms, s.wait_p95_ms, s.wait_p99_ms]),
            percentiles([s.run_p50_ms, s.run_p95_ms, s.run_p99_ms]),
        ]);
    }
    table.render()
}

fn percentiles(ms: [Option<f64>; 3]) -> String {
    ms.map(|m| m.map_or_else(|| "-".to_owned(), |m| format!("{m:.0}ms")))
        .join(" / ")
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    fn minutes(finished: &[i64]) -> Vec<MinuteCounts> {
        let start = DateTime::from_timestamp(1_796_106_960, 0).unwrap();
        finished
            .iter()
            .enumerate()
            .map(|(i, &n)| MinuteCounts {
                minute: start + TimeDelta::minutes(i as i64),
                succeeded: n - n / 4,
                retried: n / 10,
                dead: n / 4,
                cancelled: 0,
            })
            .collect()
    }

    #[test]
    fn a_sparkline_runs_from_nothing_to_the_busiest_minute() {
        assert_eq!(sparkline(&[0, 1, 7, 14, 28, 70, 100, 50]), "▁▂▂▂▃▆█▅");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn the_throughput_line_has_a_block_per_minute_and_says_its_scale() {
        assert_eq!(
            throughput_line(&minutes(&[0, 4, 8]), 60).unwrap(),
            "jobs finished per minute (max 8):\n▁▅█"
        );
        assert_eq!(throughput_line(&minutes(&[0, 0, 0]), 60), None);
    }

    #[test]
    fn a_long_window_is_summed_into_blocks_that_fit_the_width() {
        // 7 minutes into at most 3 blocks: 3 minutes each, the last one short.
        let line = throughput_line(&minutes(&[1, 1, 1, 0, 0, 0, 6]), 3).unwrap();
        assert_eq!(line, "jobs finished per 3 minutes (max 6):\n▅▁█");
        // A day is 1,441 minutes counting the partial first one: 63 blocks of 23 minutes,
        // the last of them 15 minutes long.
        let day = minutes(&vec![5; 1_441]);
        let line = throughput_line(&day, SPARKLINE_WIDTH).unwrap();
        assert_eq!(
            line,
            format!(
                "jobs finished per 23 minutes (max 115):\n{}▆",
                "█".repeat(62)
            )
        );
    }
}
