//! The worker's metrics: every series name in one place (`docs/observability.md` lists them,
//! and a test there keeps the two in step), and the calls that record them.
//!
//! Recording goes through the `metrics` facade: without an installed recorder (a worker
//! started without `--metrics-addr`, or embedded in an application that installs none) each
//! call is a no-op, so the hot path pays nothing measurable.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use warren_core::QueueName;

/// Attempts started, by task and queue.
pub const JOBS_STARTED: &str = "warren_jobs_started_total";
/// Attempts finished, by task, queue and outcome (succeeded, retried, dead, cancelled).
pub const JOBS_FINISHED: &str = "warren_jobs_finished_total";
/// Deliveries deferred by a limit (no attempt spent), by task, queue and whether a token
/// was reserved for the job (`reserved`: `true`/`false`).
pub const JOBS_DEFERRED: &str = "warren_jobs_deferred_total";
/// Run time of an attempt, in seconds.
pub const JOB_RUN_SECONDS: &str = "warren_job_run_seconds";
/// Time from enqueue to the start of an attempt, in seconds.
pub const JOB_WAIT_SECONDS: &str = "warren_job_wait_seconds";
/// Jobs being handled by this worker now.
pub const JOBS_IN_FLIGHT: &str = "warren_jobs_in_flight";
/// Due jobs the promoter published.
pub const PROMOTER_PUBLISHED: &str = "warren_promoter_published_total";
/// How late the oldest job of the promoter's last batch was when it was published.
pub const PROMOTER_LAG_SECONDS: &str = "warren_promoter_lag_seconds";
/// 1 while the worker's RabbitMQ connection is up.
pub const BROKER_CONNECTED: &str = "warren_broker_connected";
/// 1 while the worker's last database round trip (its heartbeat) succeeded.
pub const DATABASE_CONNECTED: &str = "warren_database_connected";
/// Fleet-wide, exported by one worker at a time: ready messages per queue (passive declare).
pub const QUEUE_READY: &str = "warren_queue_ready";
/// Fleet-wide: jobs waiting in Postgres for their time, per queue.
pub const QUEUE_SCHEDULED: &str = "warren_queue_scheduled";
/// Fleet-wide: jobs running, per queue.
pub const QUEUE_RUNNING: &str = "warren_queue_running";
/// Fleet-wide: jobs that ended dead in the last 24 hours, per queue.
pub const QUEUE_DEAD_24H: &str = "warren_queue_dead_24h";
/// Fleet-wide: how late the oldest due scheduled job is, per queue (0 when none is due).
pub const QUEUE_OLDEST_DUE_SECONDS: &str = "warren_queue_oldest_due_seconds";
/// 1 on the worker that exports the fleet-wide gauges, 0 on the others.
pub const FLEET_EXPORTER: &str = "warren_fleet_exporter";

/// Every series the worker itself records (the recorder's live in `warren-store`), for the
/// documentation test.
pub const SERIES: &[&str] = &[
    JOBS_STARTED,
    JOBS_FINISHED,
    JOBS_DEFERRED,
    JOB_RUN_SECONDS,
    JOB_WAIT_SECONDS,
    JOBS_IN_FLIGHT,
    PROMOTER_PUBLISHED,
    PROMOTER_LAG_SECONDS,
    BROKER_CONNECTED,
    DATABASE_CONNECTED,
    QUEUE_READY,
    QUEUE_SCHEDULED,
    QUEUE_RUNNING,
    QUEUE_DEAD_24H,
    QUEUE_OLDEST_DUE_SECONDS,
    FLEET_EXPORTER,
];

/// How an attempt ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    Retried,
    Dead,
    Cancelled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retried => "retried",
            Outcome::Dead => "dead",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// An attempt begins: counted, and its wait since enqueue observed.
pub(crate) fn started(task: &str, queue: &QueueName, waited: Duration) {
    let labels = [("task", task.to_owned()), ("queue", queue.to_string())];
    counter!(JOBS_STARTED, &labels).increment(1);
    histogram!(JOB_WAIT_SECONDS, &labels).record(waited.as_secs_f64());
}

/// An attempt's outcome is committed: counted by outcome, its run time observed.
pub(crate) fn finished(task: &str, queue: &str, outcome: Outcome, ran: Option<Duration>) {
    let task = task.to_owned();
    let queue = queue.to_owned();
    counter!(
        JOBS_FINISHED,
        "task" => task.clone(),
        "queue" => queue.clone(),
        "outcome" => outcome.label()
    )
    .increment(1);
    if let Some(ran) = ran {
        histogram!(JOB_RUN_SECONDS, "task" => task, "queue" => queue).record(ran.as_secs_f64());
    }
}

/// A delivery was deferred by a limit, holding a reserved token or not.
pub(crate) fn deferred(task: &str, queue: &str, reserved: bool) {
    counter!(
        JOBS_DEFERRED,
        "task" => task.to_owned(),
        "queue" => queue.to_owned(),
        "reserved" => if reserved { "true" } else { "false" }
    )
    .increment(1);
}

/// The number of jobs this worker is handling changed by `delta`.
pub(crate) fn in_flight(delta: f64) {
    gauge!(JOBS_IN_FLIGHT).increment(delta);
}

/// The promoter published `n` due jobs, the oldest `lag` late.
pub(crate) fn promoted(n: usize, lag: Duration) {
    counter!(PROMOTER_PUBLISHED).increment(n as u64);
    gauge!(PROMOTER_LAG_SECONDS).set(lag.as_secs_f64());
}

/// The state of the worker's connections, as the heartbeat last saw them.
pub(crate) fn connections(broker: bool, database: bool) {
    gauge!(BROKER_CONNECTED).set(f64::from(u8::from(broker)));
    gauge!(DATABASE_CONNECTED).set(f64::from(u8::from(database)));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The series table of `docs/observability.md` names exactly the series the worker
    /// records: a renamed metric breaks dashboards and alerts, so it must break this first.
    #[test]
    fn the_documented_series_are_the_recorded_ones() {
        let page = include_str!("../../../docs/observability.md");
        let section = page
            .split("## Worker metrics")
            .nth(1)
            .expect("docs/observability.md has a Worker metrics section");
        let documented: BTreeSet<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|name| name.starts_with("warren_"))
            .collect();
        let mut recorded: BTreeSet<&str> = super::SERIES.iter().copied().collect();
        recorded.insert(warren_store::RECORDER_BATCH_SIZE);
        recorded.insert(warren_store::RECORDER_COMMIT_SECONDS);
        assert_eq!(documented, recorded);
    }
}
