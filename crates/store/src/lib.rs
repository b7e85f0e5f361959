//! warren-store: everything Warren keeps in PostgreSQL, through sqlx.
//!
//! It owns the schema (embedded migrations, safe to run from many workers at once), the jobs
//! and workers tables, the batching [`Recorder`] that writes many job outcomes in one
//! statement, fenced by (job id, attempt), and the queries the CLI and workers need.
//!
//! It deliberately knows nothing of RabbitMQ or handlers: it is told what happened and records
//! it. No other crate imports sqlx.

#![warn(missing_docs)]

mod admin;
mod batch;
mod dead;
mod error;
mod fleet;
mod jobs;
mod limits;
mod listing;
mod migrate;
mod pauses;
mod progress;
mod promotion;
pub mod provision;
mod queues;
mod recorder;
mod retention;
mod schedule;
mod schedules;
#[cfg(test)]
mod sql_states;
mod stats;
mod store;
mod totals;
mod workers;

pub use admin::{CancelOutcome, RetryOutcome};
pub use dead::DeadGroup;
pub use error::{Error, SqlxError};
pub use fleet::FleetLock;
pub use jobs::{Claim, JobProgress, JobRecord, LatencySummary, StateCount};
pub use limits::{Deferral, Deferrer, LIMITS_CHANNEL, Limit, LimitWait, MAX_COUNT, Rate, Taken};
pub use listing::{Batch, Cursor, JobFilter, JobListing, JobPage, MatchCount};
pub use migrate::SCHEMA_VERSION;
pub use pauses::{PAUSE_CHANNEL, QueuePause};
pub use progress::ProgressReader;
pub use promotion::{CANCEL_CHANNEL, DUE_CHANNEL, DueJob, Listener, Notification, Promotion};
pub use queues::QueueCounts;
pub use recorder::{
    BadInput, RAW_BODY_KEPT, RECORDER_BATCH_SIZE, RECORDER_COMMIT_SECONDS, RawBody, RecordRow,
    Recorded, Recorder, RecorderConfig,
};
pub use retention::{PRUNE_LOCK, PruneBatch, PruneLock};
pub use schedule::{PgTransaction, ScheduledJob, schedule_in};
pub use schedules::{Fired, NewSchedule, Schedule, ScheduleTick};
pub use stats::{MinuteCounts, TaskStats};
pub use store::{Store, StoreConfig};
pub use totals::{EXACT_UP_TO, StateTotal};
pub use workers::{LOST_AFTER, WorkerInfo, WorkerRecord};

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
