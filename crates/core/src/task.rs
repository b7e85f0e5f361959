//! Tasks named by their payload type.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{DEFAULT_QUEUE, RetryPolicy};

/// A kind of job, named by its payload type, so that the producer's payload and the handler's
/// input cannot disagree: both sides name the type, and the type names the task.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use warren_core::Task;
///
/// #[derive(Serialize, Deserialize)]
/// struct EmailSend {
///     to: String,
///     subject: String,
/// }
///
/// impl Task for EmailSend {
///     const NAME: &'static str = "email.send";
///     const QUEUE: &'static str = "emails";
///     type Output = ();
/// }
///
/// assert_eq!(EmailSend::NAME, "email.send");
/// ```
///
/// `warren_client::Client::enqueue` takes such a value as the job, and
/// `warren_runtime::Worker::builder().task::<EmailSend>(handler)` registers its handler. The
/// string-named API stays for dynamic cases and for producers in other languages, which
/// follow `schemas/` and use [`Task::NAME`] as the `warren-task` header.
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The task name, as it travels in the `warren-task` header.
    const NAME: &'static str;
    /// The queue jobs of this task go to unless the enqueue names another.
    const QUEUE: &'static str = DEFAULT_QUEUE;
    /// What a successful run returns; recorded as the job's result.
    type Output: Serialize + Send + 'static;

    /// Retries of this task, used by the workers that handle it.
    fn retry_policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Per-attempt timeout; the worker's default when `None`.
    fn timeout() -> Option<Duration> {
        None
    }
}
