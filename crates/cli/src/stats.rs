//! `warren stats`: per task and queue, how many jobs succeeded, were retried and died, and how
//! long they waited and ran.

use std::time::Duration;

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use warren_core::duration::parse_duration;
use warren_store::TaskStats;

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::output::{Align, Table, emit, emit_json, printable_line};

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren stats\n  warren stats --since 24h --json\n\n\
Covers the jobs that ended (succeeded, dead or cancelled) in the window. WAIT is the time from \
enqueue to the start of the last attempt, RUN that attempt's run time; both are p50 / p95 / p99."
)]
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
    let stats = store.task_stats(since).await;
    store.close().await;
    let stats = stats.context("reading the statistics")?;
    if args.json {
        emit_json(&stats)
    } else {
        emit(&render(&stats))
    }
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
