//! Bulk `jobs retry` / `jobs cancel` (and `dead retry` / `dead cancel`): every job a filter
//! selects, in batches.
//!
//! Each batch is one transaction in the store that locks its jobs and applies the same rule
//! as the single-job command to each, so a batch is committed whole or not at all. An
//! interrupted run (Ctrl-C, a lost connection, `kill -9`) therefore leaves every job either
//! done once or untouched; running the command again picks up what is left, because a done
//! job no longer matches a state filter (a retried dead job is `scheduled`). Ctrl-C is caught:
//! the batch in progress is committed, the counts so far are printed, and the exit status is
//! 130.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use warren_core::JobState;
use warren_core::lifecycle::{Event, transition};
use warren_store::{CancelOutcome, JobFilter, RetryOutcome, Store};

use crate::batches::Batches;
use crate::exit::Interrupted;
use crate::output::{emit, emit_json};

/// Jobs per transaction: small enough that a batch holds its row locks for well under a
/// second, large enough that a million jobs take a few thousand round trips.
const BATCH: u32 = 200;

/// What a bulk command does to each job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Retry,
    Cancel,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Retry => "retried",
            Action::Cancel => "cancelled",
        }
    }
}

/// `--dry-run` and `--yes`, shared by every bulk command.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct BulkFlags {
    /// Print what would be done, and do nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Do it without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// What a bulk command did, or (with `--dry-run`) would do; `--json` prints it as is.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct Report {
    action: Option<Action>,
    dry_run: bool,
    /// Stopped by Ctrl-C after the last committed batch.
    interrupted: bool,
    /// Jobs the filter selected.
    matched: i64,
    /// Jobs retried (made due now) or cancelled.
    done: i64,
    /// Running jobs whose worker was told to cancel them (cancel only).
    signalled: i64,
    /// Jobs left alone because their state does not allow the action, per state.
    refused: BTreeMap<String, i64>,
    /// Jobs that cannot be retried because they have no JSON payload (retry only).
    no_payload: i64,
}

impl Report {
    fn refuse(&mut self, state: JobState, n: i64) {
        *self.refused.entry(state.to_string()).or_default() += n;
    }

    fn text(&self) -> String {
        let Some(action) = self.action else {
            return String::new();
        };
        let (done, signalled) = if self.dry_run {
            (format!("would {}", action.verb()), "would signal")
        } else {
            (action.past().to_owned(), "signalled")
        };
        let mut out = format!("matched {}: {done} {}", self.matched, self.done);
        if action == Action::Cancel {
            out.push_str(&format!(", {signalled} {} running", self.signalled));
        }
        let refused: i64 = self.refused.values().sum();
        if refused > 0 {
            let by_state: Vec<String> = self
                .refused
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            out.push_str(&format!(
                ", refused by state {refused} ({})",
                by_state.join(", ")
            ));
        }
        if self.no_payload > 0 {
            out.push_str(&format!(", without a payload {}", self.no_payload));
        }
        if self.interrupted {
            out.push_str(" (interrupted: run the same command again to do the rest)");
        }
        out.push('\n');
        out
    }
}

/// What the per-state counts say a run would do, by the same transition rules the store
/// applies to each job.
fn plan(action: Action, counts: &[warren_store::MatchCount]) -> Report {
    let mut report = Report {
        action: Some(action),
        dry_run: true,
        ..Report::default()
    };
    for c in counts {
        report.matched += c.count;
        match (action, transition(Some(c.state), event(action))) {
            (_, Err(_)) => report.refuse(c.state, c.count),
            (Action::Retry, Ok(_)) if !c.has_payload => report.no_payload += c.count,
            (Action::Cancel, Ok(JobState::Cancelled)) | (Action::Retry, Ok(_)) => {
                report.done += c.count
            }
            (Action::Cancel, Ok(_)) => report.signalled += c.count,
        }
    }
    report
}

fn event(action: Action) -> Event {
    match action {
        Action::Retry => Event::Retry,
        Action::Cancel => Event::Cancel,
    }
}

/// Runs `action` on every job `filter` selects: counts, confirms, then works in batches.
pub(crate) async fn run(
    store: &Store,
    action: Action,
    filter: &JobFilter,
    flags: BulkFlags,
    json: bool,
) -> anyhow::Result<()> {
    let counts = store
        .count_matching(filter)
        .await
        .context("counting the jobs the filters select")?;
    let planned = plan(action, &counts);
    if flags.dry_run || planned.matched == 0 {
        return print(&planned, json);
    }
    if !flags.yes {
        confirm(action, &planned)?;
    }
    let report = execute(store, action, filter, planned.matched).await?;
    print(&report, json)?;
    if report.interrupted {
        return Err(Interrupted(format!(
            "interrupted after {} of {} jobs; every batch done so far is committed",
            report.done + report.signalled,
            report.matched
        ))
        .into());
    }
    Ok(())
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        emit_json(report)
    } else {
        emit(&report.text())
    }
}

/// Asks on the terminal (see [`crate::confirm`]).
fn confirm(action: Action, planned: &Report) -> anyhow::Result<()> {
    let n = match action {
        Action::Retry => planned.done,
        Action::Cancel => planned.done + planned.signalled,
    };
    crate::confirm::confirm(&planned.text(), &format!("{} {n} jobs", action.verb()))
}

async fn execute(
    store: &Store,
    action: Action,
    filter: &JobFilter,
    matched: i64,
) -> anyhow::Result<Report> {
    let batches = Batches::start(u64::try_from(matched).ok());
    let mut report = Report {
        action: Some(action),
        matched,
        ..Report::default()
    };
    let mut after = None;
    let result = loop {
        let next = match action {
            Action::Retry => match store.retry_batch(filter, after, BATCH).await {
                Ok(batch) => {
                    for (_, outcome) in &batch.outcomes {
                        match outcome {
                            RetryOutcome::Scheduled { .. } => report.done += 1,
                            RetryOutcome::NotRetryable { state } => report.refuse(*state, 1),
                            RetryOutcome::NoPayload => report.no_payload += 1,
                            RetryOutcome::NotFound => {}
                        }
                    }
                    batch.next
                }
                Err(e) => break Err(e),
            },
            Action::Cancel => match store.cancel_batch(filter, after, BATCH).await {
                Ok(batch) => {
                    for (_, outcome) in &batch.outcomes {
                        match outcome {
                            CancelOutcome::Cancelled { .. } => report.done += 1,
                            CancelOutcome::Signalled { .. } => report.signalled += 1,
                            CancelOutcome::AlreadyFinal { state } => report.refuse(*state, 1),
                            CancelOutcome::NotFound => {}
                        }
                    }
                    batch.next
                }
                Err(e) => break Err(e),
            },
        };
        let seen = report.done
            + report.signalled
            + report.no_payload
            + report.refused.values().sum::<i64>();
        batches.progress(action.verb(), u64::try_from(seen).unwrap_or(0));
        after = next;
        if after.is_none() {
            break Ok(());
        }
        if batches.interrupted() {
            report.interrupted = true;
            break Ok(());
        }
    };
    batches.finish();
    result.with_context(|| {
        format!(
            "{} stopped after {} jobs (each committed batch stays done; run again for the rest)",
            action.verb(),
            report.done + report.signalled
        )
    })?;
    Ok(report)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use warren_store::MatchCount;

    use super::*;

    fn count(state: JobState, has_payload: bool, count: i64) -> MatchCount {
        MatchCount {
            state,
            has_payload,
            count,
        }
    }

    #[test]
    fn a_plan_follows_the_lifecycle() {
        let counts = [
            count(JobState::Dead, true, 7),
            count(JobState::Dead, false, 1),
            count(JobState::Running, true, 2),
            count(JobState::Succeeded, true, 3),
        ];
        let retry = plan(Action::Retry, &counts);
        assert_eq!((retry.matched, retry.done, retry.no_payload), (13, 7, 1));
        assert_eq!(
            retry.text(),
            "matched 13: would retry 7, refused by state 5 (2 running, 3 succeeded), \
             without a payload 1\n"
        );
        let cancel = plan(Action::Cancel, &counts);
        assert_eq!((cancel.done, cancel.signalled), (0, 2));
        assert_eq!(cancel.refused["dead"], 8);
    }
}
