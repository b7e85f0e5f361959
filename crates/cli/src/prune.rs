//! `warren prune`: deletes finished jobs (succeeded, dead, cancelled) that finished longer
//! ago than `--older-than`, state by state, in batches.
//!
//! Each batch is one short transaction in the store ([`Store::prune_batch`]), so the table is
//! never locked for long and an interrupted run (Ctrl-C, a lost connection) leaves every
//! committed batch deleted and the rest untouched; running the command again deletes what is
//! left. Ctrl-C is caught: the batch in progress commits, the counts so far are printed, and
//! the exit status is 130. Batches share the workers' prune lock (see
//! `warren_store::PRUNE_LOCK`), so a worker's cleaner and this command take turns.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use warren_core::JobState;
use warren_core::duration::parse_age;
use warren_store::{PruneBatch, PruneLock, Store};

use crate::batches::Batches;
use crate::connection::ConnectionArgs;
use crate::exit::Interrupted;
use crate::jobs::BulkFlags;
use crate::output::{Align, Table, duration, emit, emit_json};

const PRUNE_HELP: &str = "\
A job's age is the time since it finished (succeeded, died or was cancelled), by the database's
clock. Jobs that have not finished (scheduled, queued, running) are never deleted. Workers can
prune on their own too: see --retain-succeeded and its siblings in `warren-worker --help`.

Examples:
  warren prune --state succeeded --older-than 7d --dry-run
  warren prune --state succeeded --older-than 7d --yes
  warren prune --state dead,cancelled --older-than 30d --yes --json
  warren prune --state cancelled --older-than 0s --yes      # every cancelled job

--json prints {\"dry_run\", \"interrupted\", \"older_than_secs\", \"states\": [{\"state\",
\"matched\", \"removed\"}], \"matched\", \"removed\"}: `matched` is what was counted before
deleting (what a dry run would remove), `removed` what was deleted (0 in a dry run).";

/// Rows per batch by default: a batch of 5,000 deletes in well under a second on a large
/// table, and ten million rows take 2,000 round trips.
const DEFAULT_BATCH: u32 = 5_000;

#[derive(Debug, clap::Args)]
#[command(after_long_help = PRUNE_HELP)]
pub struct PruneJobsArgs {
    /// The finished states to prune (comma-separated or repeated): succeeded, dead, cancelled.
    #[arg(long, value_name = "STATE", value_delimiter = ',', required = true, value_parser = parse_finished_state)]
    pub state: Vec<JobState>,

    /// Delete jobs that finished longer ago than this, e.g. 12h or 7d; 0s deletes every job in
    /// those states.
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub older_than: Duration,

    /// Jobs deleted per transaction.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    #[command(flatten)]
    pub bulk: BulkFlags,

    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A `--state` value: a job state, and a finished one.
fn parse_finished_state(s: &str) -> Result<JobState, String> {
    let state: JobState = s.parse()?;
    if !state.is_terminal() {
        return Err(format!(
            "`{state}` jobs have not finished and are never pruned; name succeeded, dead or \
             cancelled"
        ));
    }
    Ok(state)
}

/// What a prune did, or (with `--dry-run`) would do; `--json` prints it as is.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct Report {
    dry_run: bool,
    /// Stopped by Ctrl-C after the last committed batch.
    interrupted: bool,
    older_than_secs: u64,
    states: Vec<StateReport>,
    /// Jobs counted before deleting, all states together.
    matched: i64,
    /// Jobs deleted, all states together.
    removed: i64,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
struct StateReport {
    state: JobState,
    /// Jobs old enough when counted.
    matched: i64,
    /// Jobs deleted (0 in a dry run). It can exceed `matched` when more jobs came of age
    /// while the prune ran.
    removed: i64,
}

impl Report {
    fn text(&self, older_than: Duration) -> String {
        let age = duration(older_than);
        let mut out = if self.dry_run {
            format!("dry run: jobs that finished more than {age} ago, nothing removed\n")
        } else {
            format!("removed jobs that finished more than {age} ago\n")
        };
        let count = if self.dry_run {
            "WOULD REMOVE"
        } else {
            "REMOVED"
        };
        let mut table = Table::new(&[("STATE", Align::Left), (count, Align::Right)]);
        for s in &self.states {
            let n = if self.dry_run { s.matched } else { s.removed };
            table.row(vec![s.state.to_string(), n.to_string()]);
        }
        let total = if self.dry_run {
            self.matched
        } else {
            self.removed
        };
        table.row(vec!["total".to_owned(), total.to_string()]);
        out.push_str(&table.render());
        if self.interrupted {
            out.push_str("(interrupted: run the same command again to remove the rest)\n");
        }
        out
    }
}

pub(crate) async fn run(args: PruneJobsArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("prune").await?;
    let result = prune(&store, &args).await;
    store.close().await;
    result
}

async fn prune(store: &Store, args: &PruneJobsArgs) -> anyhow::Result<()> {
    let mut states: Vec<JobState> = Vec::new();
    for &state in &args.state {
        if !states.contains(&state) {
            states.push(state);
        }
    }
    let mut report = Report {
        dry_run: true,
        older_than_secs: args.older_than.as_secs(),
        ..Report::default()
    };
    for &state in &states {
        let matched = store
            .count_prunable(state, args.older_than)
            .await
            .with_context(|| format!("counting the {state} jobs to prune"))?;
        report.matched += matched;
        report.states.push(StateReport {
            state,
            matched,
            removed: 0,
        });
    }
    if args.bulk.dry_run || report.matched == 0 {
        return print(&report, args);
    }
    if !args.bulk.yes {
        crate::confirm::confirm(
            &report.text(args.older_than),
            &format!("delete {} jobs", report.matched),
        )?;
    }
    report.dry_run = false;
    execute(store, args, &mut report).await?;
    print(&report, args)?;
    if report.interrupted {
        return Err(Interrupted(format!(
            "interrupted after removing {} of {} jobs; every batch removed so far is committed",
            report.removed, report.matched
        ))
        .into());
    }
    Ok(())
}

/// Deletes state by state, a batch at a time, until each state has nothing old enough left
/// or Ctrl-C is pressed.
async fn execute(store: &Store, args: &PruneJobsArgs, report: &mut Report) -> anyhow::Result<()> {
    let batches = Batches::start(u64::try_from(report.matched).ok());
    let mut result = Ok(());
    'states: for i in 0..report.states.len() {
        let state = report.states[i].state;
        loop {
            if batches.interrupted() {
                report.interrupted = true;
                break 'states;
            }
            let deleted = match store
                .prune_batch(state, args.older_than, args.batch_size, PruneLock::Wait)
                .await
            {
                Ok(PruneBatch::Deleted(n)) => n as i64,
                // Only PruneLock::Skip answers Busy; waiting, the lock is always had.
                Ok(PruneBatch::Busy) => 0,
                Err(e) => {
                    result = Err(e);
                    break 'states;
                }
            };
            report.states[i].removed += deleted;
            report.removed += deleted;
            batches.progress(
                &format!("prune {state}"),
                u64::try_from(report.removed).unwrap_or(0),
            );
            if deleted < i64::from(args.batch_size) {
                break;
            }
        }
    }
    batches.finish();
    result.with_context(|| {
        format!(
            "prune stopped after removing {} jobs (each committed batch stays removed; run \
             again for the rest)",
            report.removed
        )
    })
}

fn print(report: &Report, args: &PruneJobsArgs) -> anyhow::Result<()> {
    if args.json {
        emit_json(report)
    } else {
        emit(&report.text(args.older_than))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_states_are_accepted() {
        assert_eq!(parse_finished_state("dead"), Ok(JobState::Dead));
        let err = parse_finished_state("running").unwrap_err();
        assert!(err.contains("never pruned"), "{err}");
        assert!(parse_finished_state("nope").is_err());
    }

    #[test]
    fn a_report_reads_as_a_table() {
        let report = Report {
            dry_run: false,
            interrupted: true,
            older_than_secs: 7 * 86_400,
            states: vec![
                StateReport {
                    state: JobState::Succeeded,
                    matched: 12_000,
                    removed: 10_000,
                },
                StateReport {
                    state: JobState::Dead,
                    matched: 40,
                    removed: 0,
                },
            ],
            matched: 12_040,
            removed: 10_000,
        };
        assert_eq!(
            report.text(Duration::from_secs(7 * 86_400)),
            "removed jobs that finished more than 7d00h ago\n\
             STATE      REMOVED\n\
             succeeded    10000\n\
             dead             0\n\
             total        10000\n\
             (interrupted: run the same command again to remove the rest)\n"
        );
    }
}
