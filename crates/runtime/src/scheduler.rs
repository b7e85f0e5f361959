//! The scheduler: turns the due ticks of periodic schedules (`warren_schedules`) into
//! `scheduled` job rows, which the promoter then publishes like any delayed job.
//!
//! It runs in every worker that runs a promoter, so there are usually many. Each fire is one
//! short transaction on the schedule's locked row, and every job it inserts carries the key
//! (schedule, tick), unique in `warren_jobs`: however many schedulers race, a tick makes one
//! job. Which ticks are due after an outage is the schedule's catch-up policy
//! ([`warren_core::cron::CatchUp`]).
//!
//! It reads the table every second at most (sooner when a tick falls due sooner), so a new,
//! paused or removed schedule takes effect within a second without a NOTIFY.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use warren_core::cron::{CatchUp, CronSchedule, Due};
use warren_core::{DEFAULT_QUEUE, QueueName, TaskName};
use warren_store::{NewSchedule, Schedule, Store};

/// A periodic job declared in code with [`crate::WorkerBuilder::schedule`]: saved to
/// `warren_schedules` (added, or its definition replaced) each time the worker starts, so a
/// deploy rolls out a changed schedule. Its paused state and last tick are kept; `warren
/// schedules pause` still works on it. Removing it from the code does not remove the row: use
/// `warren schedules remove`.
#[derive(Clone, Debug)]
pub struct PeriodicJob {
    name: String,
    cron: String,
    timezone: String,
    task: String,
    payload: serde_json::Value,
    queue: String,
    catch_up: CatchUp,
}

impl PeriodicJob {
    /// A schedule `name` firing `task` by `cron` (6 fields with seconds first, or 5), in UTC,
    /// with payload `{}`, on the default queue, catching up on the last missed tick.
    pub fn new(name: &str, cron: &str, task: &str) -> Self {
        Self {
            name: name.to_owned(),
            cron: cron.to_owned(),
            timezone: "UTC".to_owned(),
            task: task.to_owned(),
            payload: serde_json::json!({}),
            queue: DEFAULT_QUEUE.to_owned(),
            catch_up: CatchUp::default(),
        }
    }

    /// The payload of every job it makes.
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = payload;
        self
    }

    /// The queue its jobs go to.
    pub fn queue(mut self, queue: &QueueName) -> Self {
        self.queue = queue.to_string();
        self
    }

    /// The IANA time zone the cron expression is read in, e.g. `Europe/Berlin`.
    pub fn timezone(mut self, timezone: &str) -> Self {
        self.timezone = timezone.to_owned();
        self
    }

    /// What it does about ticks missed while no worker ran.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The row to save, or what is wrong with it.
    pub(crate) fn validate(&self) -> Result<NewSchedule, String> {
        let what = |e: &dyn std::fmt::Display| format!("schedule `{}`: {e}", self.name);
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err(what(
                &"the name must be non-empty, without control characters",
            ));
        }
        TaskName::new(self.task.as_str()).map_err(|e| what(&e))?;
        CronSchedule::parse(&self.cron, &self.timezone).map_err(|e| what(&e))?;
        Ok(NewSchedule {
            name: self.name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            task: self.task.clone(),
            payload: self.payload.to_string(),
            queue: self.queue.clone(),
            catch_up: self.catch_up,
        })
    }
}

/// Saves the schedules declared in code; called once as the worker starts.
pub(crate) async fn save_declared(
    store: &Store,
    declared: &[NewSchedule],
) -> Result<(), crate::Error> {
    for s in declared {
        store
            .upsert_schedule(s)
            .await
            .map_err(|source| crate::Error::Schedule {
                name: s.name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Longest sleep between two reads of the schedules.
const POLL: Duration = Duration::from_secs(1);

/// Fires due ticks until `stop` is cancelled. Failures are logged and retried on the next
/// pass, never returned.
pub(crate) async fn run(store: Store, stop: CancellationToken) {
    // Entering and leaving the failing state are logged once each, and an invalid
    // schedule (edited by hand in the table) once per name.
    let mut failing = false;
    let mut invalid = HashSet::new();
    loop {
        let wait = match pass(&store, &mut invalid).await {
            Ok(next) => {
                if failing {
                    tracing::info!("firing periodic schedules again");
                    failing = false;
                }
                next.map_or(POLL, |at| {
                    (at - Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(POLL)
                })
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %warren_core::ErrorChain(&e), "firing periodic schedules failed; retrying every second until it works");
                    failing = true;
                }
                POLL
            }
        };
        // A tick is due at a whole second; wake just after it, not just before.
        let wait = wait + Duration::from_millis(5);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => break,
        }
    }
}

/// One look at every schedule; fires the due ones. Returns the earliest next tick.
async fn pass(
    store: &Store,
    invalid: &mut HashSet<String>,
) -> Result<Option<DateTime<Utc>>, warren_store::Error> {
    let mut earliest: Option<DateTime<Utc>> = None;
    for schedule in store.schedules().await? {
        if schedule.paused {
            continue;
        }
        let Some((cron, catch_up)) = parsed(&schedule, invalid) else {
            continue;
        };
        let now = Utc::now();
        let after = last_tick(&schedule);
        if cron.due(after, now, catch_up).is_some() {
            let fired = store
                .fire_schedule(&schedule.name, |row| {
                    // Decided again on the locked row: another scheduler may have fired it,
                    // or it may have been redefined, since the read above.
                    let (cron, catch_up) = parsed(row, &mut HashSet::new())?;
                    due_now(&cron, row, catch_up)
                })
                .await?;
            for (tick, job) in fired.map(|f| f.jobs).unwrap_or_default() {
                tracing::info!(schedule = %schedule.name, tick = %tick.to_rfc3339(), job_id = %job, "fired a periodic job");
            }
        }
        let next = cron.next_after(now.max(after));
        earliest = match (earliest, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest)
}

fn due_now(cron: &CronSchedule, row: &Schedule, catch_up: CatchUp) -> Option<Due> {
    cron.due(last_tick(row), Utc::now(), catch_up)
}

/// The tick after which the next is due: the last one dealt with, or, for a schedule never
/// fired, when it was added (a new schedule does not fire ticks from before it existed).
fn last_tick(s: &Schedule) -> DateTime<Utc> {
    s.last_fired_at.unwrap_or(s.created_at)
}

fn parsed(s: &Schedule, invalid: &mut HashSet<String>) -> Option<(CronSchedule, CatchUp)> {
    let parsed = CronSchedule::parse(&s.cron, &s.timezone)
        .and_then(|cron| Ok((cron, s.catch_up.parse::<CatchUp>()?)));
    match parsed {
        Ok(ok) => Some(ok),
        Err(e) => {
            if invalid.insert(s.name.clone()) {
                tracing::warn!(schedule = %s.name, error = %e, "skipping a schedule that does not parse; fix it with `warren schedules add`");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobContext, JobError, Worker, WorkerConfig};

    fn builder() -> crate::WorkerBuilder {
        Worker::builder().register("t", |_ctx: JobContext, _p: serde_json::Value| async {
            Ok::<_, JobError>(())
        })
    }

    fn config_error(b: crate::WorkerBuilder) -> String {
        let queues = vec![QueueName::new(DEFAULT_QUEUE).expect("valid")];
        match b.build(WorkerConfig::new("w".to_owned(), queues)) {
            Err(crate::Error::Config(e)) => e,
            other => panic!("expected a config error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_bad_declared_schedule_stops_the_build_naming_it() {
        let e = config_error(builder().schedule(PeriodicJob::new("a", "99 * * * * *", "t")));
        assert!(
            e.contains("schedule `a`") && e.contains("'99 * * * * *'"),
            "{e}"
        );
        let e = config_error(
            builder().schedule(PeriodicJob::new("b", "* * * * * *", "t").timezone("Nowhere")),
        );
        assert!(e.contains("unknown time zone 'Nowhere'"), "{e}");
        let twice = PeriodicJob::new("c", "* * * * * *", "t");
        let e = config_error(builder().schedule(twice.clone()).schedule(twice));
        assert!(e.contains("schedule `c` is declared twice"), "{e}");
    }
}
