use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use warren_core::{JobId, QueueName, TaskName};

/// What a handler knows about the attempt it is running.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job's id, the same on every attempt: the key for making side effects idempotent.
    pub id: JobId,
    /// The task this handler was registered for.
    pub task: TaskName,
    /// The Warren queue the job was delivered from.
    pub queue: QueueName,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Attempts allowed in total: the job's own, or its task's retry policy.
    pub max_attempts: u32,
    /// When the producer first enqueued the job.
    pub enqueued_at: DateTime<Utc>,
    /// The producer's W3C trace context, if it sent a valid one.
    pub traceparent: Option<String>,
    /// The id of the worker running this attempt.
    pub worker_id: Arc<str>,
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    /// Fires when the attempt should stop: its timeout passed, the worker's shutdown grace
    /// period ran out, or an admin cancelled the job. Long handlers should select on it.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether [`JobContext::cancelled`] has fired, for handlers that check between steps
    /// instead of selecting.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Whether this is the last attempt the job gets.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}
