//! Handlers by task name, with their options, behind one type-erased signature.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use warren_core::{JobError, RetryPolicy, TaskName};

use crate::JobContext;

/// Per-task settings, fixed at registration.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TaskOptions {
    /// Per-attempt timeout; the worker's default when `None`. A job's own timeout header wins.
    pub timeout: Option<Duration>,
    /// Retries; a job's max-attempts header overrides `max_attempts`.
    pub retry: RetryPolicy,
}

/// How an attempt failed before or inside the handler, as the executor sees it.
#[derive(Debug)]
pub(crate) enum HandlerFailure {
    Job(JobError),
    /// The payload does not deserialize into the handler's type.
    Payload(String),
    /// The handler's result does not serialize to JSON.
    Result(String),
}

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Box<RawValue>, HandlerFailure>> + Send>>;
type ErasedHandler = dyn Fn(JobContext, &RawValue) -> HandlerFuture + Send + Sync;

#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) handler: Arc<ErasedHandler>,
    pub(crate) options: TaskOptions,
}

#[derive(Clone, Default)]
pub(crate) struct Registry {
    tasks: BTreeMap<TaskName, Registered>,
}

impl Registry {
    pub(crate) fn insert<T, R, F, Fut>(
        &mut self,
        task: TaskName,
        options: TaskOptions,
        handler: F,
    ) -> bool
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
    {
        let name = task.to_string();
        let erased = move |ctx: JobContext, payload: &RawValue| -> HandlerFuture {
            // Deserialise before spawning anything, so a payload of the wrong shape costs no
            // handler run and says exactly what did not fit.
            let input = match serde_json::from_str::<T>(payload.get()) {
                Ok(input) => input,
                Err(e) => {
                    let msg = format!(
                        "payload does not fit task `{name}` (expected {}): {e}",
                        std::any::type_name::<T>()
                    );
                    return Box::pin(async move { Err(HandlerFailure::Payload(msg)) });
                }
            };
            let fut = handler(ctx, input);
            Box::pin(async move {
                let output = fut.await.map_err(HandlerFailure::Job)?;
                serde_json::value::to_raw_value(&output)
                    .map_err(|e| HandlerFailure::Result(format!("handler result is not JSON: {e}")))
            })
        };
        self.tasks
            .insert(
                task,
                Registered {
                    handler: Arc::new(erased),
                    options,
                },
            )
            .is_none()
    }

    pub(crate) fn get(&self, task: &TaskName) -> Option<&Registered> {
        self.tasks.get(task)
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        self.tasks.keys().map(TaskName::as_str).collect()
    }

    /// Each task with its own timeout, if it set one.
    pub(crate) fn timeouts(&self) -> impl Iterator<Item = (&str, Option<Duration>)> {
        self.tasks
            .iter()
            .map(|(name, r)| (name.as_str(), r.options.timeout))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
