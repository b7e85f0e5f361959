use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use warren_core::{JobId, QueueName, TaskName};

/// What a handler knows about the attempt it is running.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub id: JobId,
    pub task: TaskName,
    pub queue: QueueName,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub worker_id: Arc<str>,
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    /// Fires when the attempt should stop: its timeout passed, the worker's shutdown grace
    /// period ran out, or an admin cancelled the job. Long handlers should select on it.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Whether this is the last attempt the job gets.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}
