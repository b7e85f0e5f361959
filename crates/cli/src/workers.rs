//! `warren workers`: the workers table, as each worker last reported itself, with workers
//! that stopped sending heartbeats shown as `lost`; `warren workers prune` clears old rows.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_core::duration::parse_age;
use warren_store::{LOST_AFTER, WorkerRecord};

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::output::{Align, Table, age, emit, emit_json};

const WORKERS_HELP: &str = "\
A `running` or `stopping` worker not heard from for 30 s (six default heartbeat intervals)
is shown as `lost`: it died without stopping (kill -9, a crash, a lost host) or cannot reach
Postgres.

Examples:
  warren workers
  warren workers --json
  warren workers prune --older-than 1d --yes

--json prints [{\"id\", \"hostname\", \"pid\", \"queues\", \"concurrency\", \"state\" (running,
stopping, stopped or lost), \"started_at\", \"last_seen_at\", \"stopped_at\", \"in_flight\",
\"processed\", \"failed\", \"version\", \"paused_queues\"}]. A queue paused by `warren queues pause` shows as
QUEUE(paused): the worker takes no new jobs from it.";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, after_long_help = WORKERS_HELP)]
pub struct WorkersArgs {
    #[command(subcommand)]
    pub command: Option<WorkersCommand>,

    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkersCommand {
    /// Delete the rows of stopped and lost workers last seen more than --older-than ago.
    Prune(PruneArgs),
}

const PRUNE_HELP: &str = "\
Live workers are never removed, however old their row. Needs DELETE on warren_workers.

Examples:
  warren workers prune --older-than 7d --yes
  warren workers prune --older-than 0s --yes --json    # every stopped or lost worker

--json prints {\"removed\": [ID, ...]}.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = PRUNE_HELP)]
pub struct PruneArgs {
    /// Remove rows last seen longer ago than this, e.g. 1h or 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_age, allow_hyphen_values = true)]
    pub older_than: Duration,

    /// Do it without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,

    /// Print the removed ids as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Pruned {
    removed: Vec<String>,
}

pub(crate) async fn run(args: WorkersArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    if let Some(WorkersCommand::Prune(prune)) = args.command {
        return run_prune(prune, connection).await;
    }
    let store = connection.store("workers").await?;
    let workers = store.workers().await.map_err(anyhow::Error::from);
    store.close().await;
    let workers = workers?;
    if args.json {
        emit_json(&workers)
    } else {
        emit(&render(&workers, Utc::now()))
    }
}

async fn run_prune(args: PruneArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Usage(
                "refusing to prune workers without confirmation: stdin is not a terminal; pass \
                 --yes to go ahead"
                    .to_owned(),
            )
            .into());
        }
        let _ = write!(
            std::io::stderr(),
            "remove stopped and lost workers (lost: no heartbeat for {}s) last seen more than {} ago? [y/N] ",
            LOST_AFTER.as_secs(),
            crate::output::duration(args.older_than)
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the confirmation")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Usage("not confirmed; nothing was removed".to_owned()).into());
        }
    }
    let store = connection.store("workers prune").await?;
    let removed = store
        .prune_workers(args.older_than)
        .await
        .context("pruning workers (the admin role needs DELETE on warren_workers)");
    store.close().await;
    let removed = removed?;
    if args.json {
        return emit_json(&Pruned { removed });
    }
    let mut text = format!("removed {} worker rows\n", removed.len());
    for id in &removed {
        text.push_str(&format!("  {}\n", crate::output::printable_line(id)));
    }
    emit(&text)
}

/// A worker's queues, comma-separated, each paused one marked `(paused)`.
pub(crate) fn queues_text(w: &WorkerRecord) -> String {
    w.queues
        .iter()
        .map(|q| {
            if w.paused_queues.contains(q) {
                format!("{q}(paused)")
            } else {
                q.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn render(workers: &[WorkerRecord], now: DateTime<Utc>) -> String {
    if workers.is_empty() {
        return "no workers have registered\n".to_owned();
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("STATE", Align::Left),
        ("HOST", Align::Left),
        ("PID", Align::Right),
        ("VERSION", Align::Left),
        ("QUEUES", Align::Left),
        ("CONCURRENCY", Align::Right),
        ("IN FLIGHT", Align::Right),
        ("PROCESSED", Align::Right),
        ("FAILED", Align::Right),
        ("STARTED", Align::Left),
        ("LAST SEEN", Align::Left),
    ]);
    for w in workers {
        table.row(vec![
            w.id.clone(),
            w.state.clone(),
            w.hostname.clone(),
            w.pid.to_string(),
            if w.version.is_empty() {
                "-"
            } else {
                &w.version
            }
            .to_owned(),
            queues_text(w),
            w.concurrency.to_string(),
            w.in_flight.to_string(),
            w.processed.to_string(),
            w.failed.to_string(),
            age(now - w.started_at),
            age(now - w.last_seen_at),
        ]);
    }
    table.render()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn workers_read_as_a_table_with_their_age() {
        let now = DateTime::from_timestamp(1_738_314_900, 0).unwrap();
        let worker = WorkerRecord {
            id: "host-12".into(),
            hostname: "host".into(),
            pid: 12,
            queues: vec!["default".into(), "emails".into()],
            concurrency: 64,
            state: "running".into(),
            started_at: now - TimeDelta::hours(1),
            last_seen_at: now - TimeDelta::seconds(3),
            stopped_at: None,
            in_flight: 3,
            processed: 12_034,
            failed: 17,
            version: "0.1.0".into(),
            paused_queues: vec!["emails".into()],
        };
        assert_eq!(
            render(&[worker], now),
            concat!(
                "ID       STATE    HOST  PID  VERSION  QUEUES                  CONCURRENCY  ",
                "IN FLIGHT  PROCESSED  FAILED  STARTED  LAST SEEN\n",
                "host-12  running  host   12  0.1.0    default,emails(paused)           64  ",
                "        3      12034      17  1h ago   3s ago\n",
            )
        );
        assert_eq!(render(&[], now), "no workers have registered\n");
    }
}
