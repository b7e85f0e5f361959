//! Job states and the one function that decides how a job moves between them.
//!
//! `docs/job-lifecycle.md` holds the same rules as a table for people; a unit test below reads
//! that table and checks [`transition`] against exactly it, so the two cannot drift.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Stored as lower-case text in the jobs table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting in Postgres until `run_at`: delayed, retrying, or enqueued in a transaction.
    Scheduled,
    /// Published to RabbitMQ, waiting for a worker.
    Queued,
    /// A worker is executing an attempt.
    Running,
    /// The handler returned a result; it is recorded with the job.
    Succeeded,
    /// Retries exhausted, a permanent error, or input that can never succeed.
    Dead,
    /// An admin cancelled the job while it waited, or its handler stopped on seeing the
    /// cancellation; also a job whose idempotency key another job already holds.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The state as stored in the jobs table and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Terminal states are final for the worker side: no delivery, duplicate or late outcome
    /// moves a job out of them. Only an admin `retry` does.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown job state `{s}`: expected one of scheduled, queued, running, succeeded, dead, cancelled")
            })
    }
}

/// Something that happens to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A producer's publish was confirmed by the broker.
    Enqueue,
    /// A delayed, transactional or intake enqueue wrote the job to Postgres.
    Schedule,
    /// The promoter published a due job and the broker confirmed it.
    Promote,
    /// A worker began an attempt (also: a redelivery after the previous worker died).
    Start,
    /// The handler returned a result.
    Succeed,
    /// The handler failed and the job has attempts left.
    FailRetryable,
    /// The handler failed permanently or on its last attempt.
    FailFinal,
    /// The message can never be run (bad input); no handler ran.
    Reject,
    /// An admin cancelled the job. A running job is only signalled.
    Cancel,
    /// The running handler stopped because it saw the cancellation.
    CancelObserved,
    /// An admin asked to run the job again now.
    Retry,
    /// Another job holds this job's idempotency key, so this one is not run.
    Duplicate,
    /// The broker dead-letters the job's message (`x-delivery-limit` reached: a crash loop),
    /// and the reconciler records what the broker decided.
    DeadLetter,
    /// A limit (`warren limits`) has no slot or token for the job now: it waits as a row, its
    /// attempt not counted.
    Defer,
}

impl Event {
    /// Every event, in the order of the lifecycle table.
    pub const ALL: [Event; 14] = [
        Event::Enqueue,
        Event::Schedule,
        Event::Promote,
        Event::Start,
        Event::Succeed,
        Event::FailRetryable,
        Event::FailFinal,
        Event::Reject,
        Event::Cancel,
        Event::CancelObserved,
        Event::Retry,
        Event::Duplicate,
        Event::DeadLetter,
        Event::Defer,
    ];

    /// The event's name in snake case, as the lifecycle table and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Enqueue => "enqueue",
            Event::Schedule => "schedule",
            Event::Promote => "promote",
            Event::Start => "start",
            Event::Succeed => "succeed",
            Event::FailRetryable => "fail_retryable",
            Event::FailFinal => "fail_final",
            Event::Reject => "reject",
            Event::Cancel => "cancel",
            Event::CancelObserved => "cancel_observed",
            Event::Retry => "retry",
            Event::Duplicate => "duplicate",
            Event::DeadLetter => "dead_letter",
            Event::Defer => "defer",
        }
    }
}

/// An event that may not happen to a job in its current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a job in state {} cannot take event `{}`", from.map_or("(none)", JobState::as_str), event.as_str())]
pub struct IllegalTransition {
    /// The job's state, or `None` when it had no record yet.
    pub from: Option<JobState>,
    /// The event that may not happen in that state.
    pub event: Event,
}

/// The state a job moves to when `event` happens in state `from` (`None`: no record yet,
/// which is normal for a job on the hot path until its outcome is written).
pub fn transition(from: Option<JobState>, event: Event) -> Result<JobState, IllegalTransition> {
    use Event as E;
    use JobState as S;
    let to = match (from, event) {
        (None, E::Enqueue) => S::Queued,
        (None, E::Schedule) => S::Scheduled,
        (Some(S::Scheduled), E::Promote) => S::Queued,
        (None | Some(S::Queued | S::Running), E::Start) => S::Running,
        (Some(S::Running), E::Succeed) => S::Succeeded,
        (Some(S::Running), E::FailRetryable) => S::Scheduled,
        (Some(S::Running), E::FailFinal) => S::Dead,
        (None | Some(S::Queued), E::Reject) => S::Dead,
        (Some(S::Scheduled | S::Queued), E::Cancel) => S::Cancelled,
        (Some(S::Running), E::Cancel) => S::Running,
        (Some(S::Running), E::CancelObserved) => S::Cancelled,
        (Some(S::Scheduled | S::Dead | S::Cancelled), E::Retry) => S::Scheduled,
        (None | Some(S::Queued), E::Duplicate) => S::Cancelled,
        (None | Some(S::Queued | S::Running), E::DeadLetter) => S::Dead,
        (None | Some(S::Queued | S::Running), E::Defer) => S::Scheduled,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(to)
}

/// Which failure event a failed attempt is: retry while attempts are left and the error allows.
pub fn failure_event(attempt: u32, max_attempts: u32, retryable: bool) -> Event {
    if retryable && attempt < max_attempts {
        Event::FailRetryable
    } else {
        Event::FailFinal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const DOC: &str = include_str!("../../../docs/job-lifecycle.md");

    fn parse_state(cell: &str) -> Option<JobState> {
        let cell = cell.trim().trim_matches('`');
        if cell == "(none)" {
            None
        } else {
            Some(cell.parse().unwrap_or_else(|e| panic!("doc table: {e}")))
        }
    }

    /// Reads the transition table (rows `| from | event | to | who |`) from the doc.
    fn doc_table() -> Vec<(Option<JobState>, Event, JobState)> {
        let start = DOC
            .find("<!-- transitions -->")
            .expect("doc has the transitions marker");
        DOC[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| from"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
                let event_name = cells[1].trim().trim_matches('`');
                let event = Event::ALL
                    .into_iter()
                    .find(|e| e.as_str() == event_name)
                    .unwrap_or_else(|| panic!("doc table names unknown event `{event_name}`"));
                let to = parse_state(cells[2]).expect("a transition always has a target");
                (parse_state(cells[0]), event, to)
            })
            .collect()
    }

    #[test]
    fn code_matches_the_documented_table_exactly() {
        let table = doc_table();
        assert!(table.len() >= 15, "the table was not found or is truncated");
        let mut documented = BTreeSet::new();
        for (from, event, to) in &table {
            assert_eq!(
                transition(*from, *event),
                Ok(*to),
                "doc says {from:?} --{event:?}--> {to:?}"
            );
            documented.insert((from.map(JobState::as_str), event.as_str()));
        }
        let froms = std::iter::once(None).chain(JobState::ALL.into_iter().map(Some));
        for from in froms {
            for event in Event::ALL {
                let key = (from.map(JobState::as_str), event.as_str());
                if !documented.contains(&key) {
                    assert!(
                        transition(from, event).is_err(),
                        "code allows {from:?} --{event:?}--> but the doc does not list it"
                    );
                }
            }
        }
    }

    #[test]
    fn terminal_states_only_leave_by_admin_retry() {
        for st in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for ev in Event::ALL {
                if let Ok(to) = transition(Some(st), ev) {
                    assert_eq!(ev, Event::Retry, "{st} left by {ev:?} to {to}");
                }
            }
        }
    }

    #[test]
    fn last_attempt_or_permanent_failure_is_final() {
        assert_eq!(failure_event(1, 3, true), Event::FailRetryable);
        assert_eq!(failure_event(3, 3, true), Event::FailFinal);
        assert_eq!(failure_event(1, 3, false), Event::FailFinal);
    }
}
