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

/// How an attempt ended, before deciding what it means for the job. `Debug` lets a test print
/// the outcome it did not expect.
#[derive(Debug)]
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
        let waited = (chrono::Utc::now() - message.enqueued_at)
            .to_std()
            .unwrap_or_default();
        crate::observe::started(message.task.as_str(), queue, waited);
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

#[cfg(test)]
mod tests {
    //! `run_attempt` under paused time: every sleep below completes as soon as the runtime is
    //! idle, at exactly its deadline, so timeouts and the running mark are tested to the
    //! millisecond without waiting and without racing a real clock.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::value::RawValue;
    use tokio::time::{Instant, sleep};
    use warren_core::JobError;

    use super::*;
    use crate::registry::HandlerFuture;

    /// A timeout that no test reaches unless it means to.
    const LONG: Duration = Duration::from_secs(3600);

    fn handler(
        fut: impl Future<Output = Result<Box<RawValue>, HandlerFailure>> + Send + 'static,
    ) -> HandlerFuture {
        Box::pin(fut)
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("the test's JSON is valid")
    }

    /// The tokens as `Executor::attempt` makes them: the attempt's own token is a child of the
    /// worker's hard stop.
    fn tokens() -> (CancellationToken, CancellationToken) {
        let hard_stop = CancellationToken::new();
        (hard_stop.child_token(), hard_stop)
    }

    /// Runs `fut` as an attempt with `timeout`, fresh tokens and a running mark that does
    /// nothing.
    async fn run(fut: HandlerFuture, timeout: Duration) -> Ended {
        let (cancel, hard_stop) = tokens();
        run_attempt(fut, timeout, async {}, &cancel, &hard_stop).await
    }

    fn failure(ended: Ended) -> (FailureKind, String) {
        match ended {
            Ended::Failed(kind, msg) => (kind, msg),
            other => panic!("expected a failed attempt, got {other:?}"),
        }
    }

    /// Sets its flag when dropped, which is how an aborted handler's future shows it is gone.
    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A handler that would run for `runs` and then set `finished`; its future sets `dropped`
    /// when it is dropped, finished or not.
    fn long_handler(
        runs: Duration,
        finished: &Arc<AtomicBool>,
        dropped: &Arc<AtomicBool>,
    ) -> HandlerFuture {
        let finished = Arc::clone(finished);
        let guard = SetOnDrop(Arc::clone(dropped));
        handler(async move {
            let _guard = guard;
            sleep(runs).await;
            finished.store(true, Ordering::SeqCst);
            Ok(raw("null"))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ok_result_is_returned_as_the_handler_gave_it() {
        let ended = run(handler(async { Ok(raw(r#"{"sent":3}"#)) }), LONG).await;
        match ended {
            Ended::Ok(result) => assert_eq!(result.get(), r#"{"sent":3}"#),
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_job_error_fails_as_error_with_its_message() {
        let fut = handler(async {
            Err(HandlerFailure::Job(JobError::retryable(
                "smtp answered 451",
            )))
        });
        assert_eq!(
            failure(run(fut, LONG).await),
            (FailureKind::Error, "smtp answered 451".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_job_error_fails_as_permanent_with_its_message() {
        let fut =
            handler(async { Err(HandlerFailure::Job(JobError::permanent("no such mailbox"))) });
        assert_eq!(
            failure(run(fut, LONG).await),
            (FailureKind::Permanent, "no such mailbox".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn payload_that_does_not_fit_fails_as_bad_input() {
        let msg = "payload does not fit task `send` (expected u32): invalid type";
        let fut = handler(async move { Err(HandlerFailure::Payload(msg.to_owned())) });
        assert_eq!(
            failure(run(fut, LONG).await),
            (FailureKind::BadInput, msg.to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn result_that_is_not_json_fails_as_permanent() {
        let msg = "handler result is not JSON: key must be a string";
        let fut = handler(async move { Err(HandlerFailure::Result(msg.to_owned())) });
        assert_eq!(
            failure(run(fut, LONG).await),
            (FailureKind::Permanent, msg.to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panic_with_a_string_payload_fails_as_panic_with_its_message() {
        let row = 7;
        // A formatted panic carries a `String`.
        let fut = handler(async move { panic!("bad row {row}") });
        assert_eq!(
            failure(run(fut, LONG).await),
            (FailureKind::Panic, "handler panicked: bad row 7".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panic_with_a_str_payload_fails_as_panic_with_its_message() {
        // A panic with a bare literal carries a `&'static str`.
        let fut = handler(async { panic!("bad row") });
        assert_eq!(
            failure(run(fut, LONG).await),
            (FailureKind::Panic, "handler panicked: bad row".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panic_with_a_non_string_payload_fails_as_panic_saying_so() {
        let fut = handler(async { std::panic::panic_any(42_u32) });
        assert_eq!(
            failure(run(fut, LONG).await),
            (
                FailureKind::Panic,
                "handler panicked: (a non-string panic payload)".to_owned()
            )
        );
    }

    #[test]
    fn panic_message_reads_string_and_str_payloads_and_names_others() {
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new("borrowed")), "borrowed");
        assert_eq!(
            panic_message(Box::new(42_u32)),
            "(a non-string panic payload)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn handler_past_its_timeout_fails_as_timeout_is_cancelled_and_aborted() {
        let (finished, dropped) = (Arc::default(), Arc::default());
        let (cancel, hard_stop) = tokens();
        let start = Instant::now();
        let ended = run_attempt(
            long_handler(Duration::from_secs(10), &finished, &dropped),
            Duration::from_secs(1),
            async {},
            &cancel,
            &hard_stop,
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(
            failure(ended),
            (
                FailureKind::Timeout,
                "timed out after 1s; the attempt was cancelled".to_owned()
            )
        );
        assert!(
            cancel.is_cancelled(),
            "the attempt's token was not cancelled"
        );
        assert!(!hard_stop.is_cancelled(), "a timeout fired the hard stop");
        // Paused time moves past the point where the handler would have finished; an aborted
        // handler never gets there, and its future has been dropped.
        sleep(Duration::from_secs(20)).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler's future is still alive"
        );
        assert!(
            !finished.load(Ordering::SeqCst),
            "the handler ran on after its timeout"
        );
    }

    /// Runs a handler that takes `runs` and returns the paused-clock times, from the start of
    /// the attempt, at which its running mark was written.
    async fn marks_for_a_handler_taking(runs: Duration) -> Vec<Duration> {
        let marks = Arc::new(Mutex::new(Vec::new()));
        let (cancel, hard_stop) = tokens();
        let start = Instant::now();
        let mark = {
            let marks = Arc::clone(&marks);
            async move { marks.lock().unwrap().push(start.elapsed()) }
        };
        let fut = handler(async move {
            sleep(runs).await;
            Ok(raw("null"))
        });
        let ended = run_attempt(fut, LONG, mark, &cancel, &hard_stop).await;
        assert!(matches!(ended, Ended::Ok(_)), "expected Ok, got {ended:?}");
        assert_eq!(start.elapsed(), runs);
        marks.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn fast_handler_is_never_marked_running() {
        let marks = marks_for_a_handler_taking(Duration::from_millis(100)).await;
        assert_eq!(marks, Vec::<Duration>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_handler_is_marked_running_once_after_mark_after() {
        let marks = marks_for_a_handler_taking(Duration::from_secs(1)).await;
        assert_eq!(marks, vec![MARK_AFTER]);
    }

    #[tokio::test(start_paused = true)]
    async fn hard_stop_mid_attempt_abandons_it_and_aborts_the_handler() {
        let (finished, dropped) = (Arc::default(), Arc::default());
        let (cancel, hard_stop) = tokens();
        let start = Instant::now();
        let (ended, ()) = tokio::join!(
            run_attempt(
                long_handler(Duration::from_secs(10), &finished, &dropped),
                LONG,
                async {},
                &cancel,
                &hard_stop,
            ),
            async {
                sleep(Duration::from_millis(500)).await;
                hard_stop.cancel();
            },
        );
        assert!(
            matches!(ended, Ended::Abandoned),
            "expected Abandoned, got {ended:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert!(
            cancel.is_cancelled(),
            "the attempt's token was not cancelled"
        );
        // As with a timeout, the handler is aborted rather than left running.
        sleep(Duration::from_secs(20)).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler's future is still alive"
        );
        assert!(
            !finished.load(Ordering::SeqCst),
            "the handler ran on after the hard stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn handler_failing_because_of_the_hard_stop_is_abandoned_not_failed() {
        // When the hard stop fires, a handler that watches its token returns at once, so
        // `run_attempt` finds both its error and the hard stop ready. `select!` picks among
        // ready branches at random, so the attempt is run many times to take both orders; in
        // each, the attempt is handed back to the broker rather than counted as a failure.
        for round in 0..64 {
            let (cancel, hard_stop) = tokens();
            let watched = cancel.clone();
            let fut = handler(async move {
                watched.cancelled().await;
                Err(HandlerFailure::Job(JobError::retryable(
                    "stopped: the worker is shutting down",
                )))
            });
            let stopper = {
                let hard_stop = hard_stop.clone();
                tokio::spawn(async move {
                    sleep(Duration::from_millis(500)).await;
                    hard_stop.cancel();
                })
            };
            let ended = run_attempt(fut, LONG, async {}, &cancel, &hard_stop).await;
            stopper.await.unwrap();
            assert!(
                matches!(ended, Ended::Abandoned),
                "round {round}: expected Abandoned, got {ended:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn admin_cancel_ends_the_attempt_as_the_handler_failed() {
        // `run_attempt` knows nothing of admins: a handler that stops on an admin's cancel
        // ends as the failure it returned. Turning that into `Ended::Cancelled` is
        // `Executor::attempt`'s job, which asks the cancel registry whether an admin fired.
        let (cancel, hard_stop) = tokens();
        let watched = cancel.clone();
        let fut = handler(async move {
            watched.cancelled().await;
            Err(HandlerFailure::Job(JobError::retryable(
                "stopped: the job was cancelled",
            )))
        });
        let (ended, ()) = tokio::join!(
            run_attempt(fut, LONG, async {}, &cancel, &hard_stop),
            async {
                sleep(Duration::from_millis(300)).await;
                cancel.cancel();
            },
        );
        assert_eq!(
            failure(ended),
            (
                FailureKind::Error,
                "stopped: the job was cancelled".to_owned()
            )
        );
        assert!(
            !hard_stop.is_cancelled(),
            "an admin's cancel fired the hard stop"
        );
    }
}
