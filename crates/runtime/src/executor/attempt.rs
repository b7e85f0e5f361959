//! Step 2: the attempt itself. The handler runs in a task of its own, so that a panic is
//! caught as a `JoinError` instead of unwinding through the worker, and so that a timeout,
//! an admin's cancel or the hard stop can abort it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_core::{FailureKind, JobMessage, QueueName};

use super::Executor;
use super::preflight::Ready;
use crate::JobContext;
use crate::registry::HandlerFailure;

/// How long a job runs before its `running` mark is written. Shorter jobs never get one:
/// their row is written once, with the outcome, which keeps the hot path at one row write per
/// job; longer ones show as `running` (with worker and start time) a moment after they start.
const MARK_AFTER: Duration = Duration::from_millis(200);

/// How an attempt ended, before deciding what it means for the job.
pub(super) enum Ended {
    Ok(Box<serde_json::value::RawValue>),
    Failed(FailureKind, String),
    /// The worker's grace period ran out mid-attempt: nothing is recorded and the delivery is
    /// left unacked, so the broker gives it to another worker.
    Abandoned,
    /// An admin cancelled the job and the handler stopped.
    Cancelled,
}

impl Executor {
    pub(super) async fn attempt(
        &self,
        queue: &QueueName,
        message: &JobMessage,
        ready: &Ready,
    ) -> Ended {
        let cancel = self.hard_stop.child_token();
        let ctx = JobContext {
            id: message.id,
            task: message.task.clone(),
            queue: queue.clone(),
            attempt: message.attempt,
            max_attempts: ready.row.max_attempts,
            enqueued_at: message.enqueued_at,
            traceparent: message.traceparent.clone(),
            worker_id: self.worker_id.clone(),
            cancel: cancel.clone(),
        };
        let admin = self.cancels.start(message.id, cancel.clone());
        let ended = run_attempt(
            (ready.registered.handler)(ctx, &message.payload),
            ready.timeout,
            self.recorder.mark(ready.row.clone()),
            &cancel,
            &self.hard_stop,
        )
        .await;
        self.cancels.finish(message.id);
        // A handler that stopped because an admin cancelled it ends the job as cancelled,
        // whatever error it returned on the way out.
        match ended {
            Ended::Failed(..) if admin.is_cancelled() => Ended::Cancelled,
            other => other,
        }
    }
}

/// Runs the handler in a task of its own, so that a panic is caught as a `JoinError` instead
/// of unwinding through the worker, and so that a timeout or the hard stop can abort it.
async fn run_attempt(
    fut: crate::registry::HandlerFuture,
    timeout: Duration,
    mark_running: impl Future<Output = ()>,
    cancel: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Ended {
    let mut handle = tokio::spawn(fut);
    let deadline = tokio::time::sleep(timeout);
    let mark = async {
        tokio::time::sleep(MARK_AFTER).await;
        mark_running.await;
    };
    tokio::pin!(deadline, mark);
    let mut marked = false;
    let ended = loop {
        tokio::select! {
            joined = &mut handle => break match joined {
                Ok(Ok(result)) => Ended::Ok(result),
                Ok(Err(HandlerFailure::Job(e))) => {
                    let kind = if e.is_retryable() { FailureKind::Error } else { FailureKind::Permanent };
                    Ended::Failed(kind, e.message)
                }
                Ok(Err(HandlerFailure::Payload(msg))) => Ended::Failed(FailureKind::BadInput, msg),
                Ok(Err(HandlerFailure::Result(msg))) => Ended::Failed(FailureKind::Permanent, msg),
                Err(e) if e.is_panic() => Ended::Failed(FailureKind::Panic, format!("handler panicked: {}", panic_message(e.into_panic()))),
                Err(_) => Ended::Failed(FailureKind::Error, "handler task was cancelled".to_owned()),
            },
            () = &mut mark, if !marked => marked = true,
            () = &mut deadline => {
                cancel.cancel();
                break Ended::Failed(FailureKind::Timeout, format!("timed out after {timeout:?}; the attempt was cancelled"));
            }
            () = hard_stop.cancelled() => break Ended::Abandoned,
        }
    };
    if !handle.is_finished() {
        cancel.cancel();
        handle.abort();
    }
    // A handler that gave up because the grace period ran out did not fail: its attempt is
    // handed back to the broker unrecorded rather than counted against the job.
    match ended {
        Ended::Failed(..) if hard_stop.is_cancelled() => Ended::Abandoned,
        other => other,
    }
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(a non-string panic payload)".to_owned(),
        },
    }
}
