//! One delivery, start to finish: decode, check, run, decide, record, ack.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_broker::{Delivery, Publisher};
use warren_core::lifecycle::{self, Event};
use warren_core::{
    DecodeError, FailureKind, FailureRecord, JobId, JobMessage, JobState, QueueName,
};
use warren_store::{Claim, RecordRow, Recorder, Store};

use crate::JobContext;
use crate::registry::{HandlerFailure, Registry};

/// How long a job runs before its `running` mark is written. Shorter jobs never get one:
/// their row is written once, with the outcome, which keeps the hot path at one row write per
/// job; longer ones show as `running` (with worker and start time) a moment after they start.
const MARK_AFTER: Duration = Duration::from_millis(200);

/// Outcome counters, for heartbeats and the final log line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) succeeded: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) unrecorded: AtomicU64,
}

/// Admin cancellations this worker knows of: the tokens of the jobs it is running, and the
/// ids cancelled recently (a cancelled queued job's message may arrive later).
#[derive(Debug, Default)]
pub(crate) struct Cancels {
    running: Mutex<HashMap<JobId, (CancellationToken, CancellationToken)>>,
    recent: Mutex<HashSet<JobId>>,
}

/// Remembered cancelled ids. Past this the set starts over: a cancel older than ten thousand
/// others is unlikely to still have a message in flight, and the fence keeps the row
/// `cancelled` even then.
const RECENT_CANCELS: usize = 10_000;

impl Cancels {
    /// Called for every cancel notification: fires the job's token if it runs here.
    pub(crate) fn cancel(&self, id: JobId) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= RECENT_CANCELS {
                recent.clear();
            }
            recent.insert(id);
        }
        if let Ok(running) = self.running.lock()
            && let Some((token, admin)) = running.get(&id)
        {
            tracing::info!(job.id = %id, "cancelling running job at an admin's request");
            admin.cancel();
            token.cancel();
        }
    }

    fn was_cancelled(&self, id: JobId) -> bool {
        self.recent.lock().is_ok_and(|r| r.contains(&id))
    }

    fn start(&self, id: JobId, token: CancellationToken) -> CancellationToken {
        let admin = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, (token, admin.clone()));
        }
        admin
    }

    fn finish(&self, id: JobId) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&id);
        }
    }
}

/// Everything a job task needs, shared by all of them.
pub(crate) struct Executor {
    pub(crate) registry: Registry,
    pub(crate) recorder: Recorder,
    pub(crate) store: Store,
    pub(crate) dead_letters: Publisher,
    pub(crate) worker_id: Arc<str>,
    pub(crate) default_timeout: Duration,
    pub(crate) max_body: usize,
    /// The longest attempt the broker's consumer timeout leaves room for (`None`: no limit).
    pub(crate) max_timeout: Option<Duration>,
    /// Cancelled when the shutdown grace period runs out: handlers are told to stop.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) counters: Counters,
    pub(crate) cancels: Cancels,
}

/// How an attempt ended, before deciding what it means for the job.
enum Ended {
    Ok(Box<serde_json::value::RawValue>),
    Failed(FailureKind, String),
    /// The worker's grace period ran out mid-attempt: nothing is recorded and the delivery is
    /// left unacked, so the broker gives it to another worker.
    Abandoned,
    /// An admin cancelled the job and the handler stopped.
    Cancelled,
}

impl Executor {
    /// Handles one delivery from `queue`. Never panics and never leaves it unsettled, except
    /// on purpose (abandoned at hard shutdown), when closing the channel returns it.
    pub(crate) async fn handle(self: Arc<Self>, queue: QueueName, delivery: Delivery) {
        let message = match JobMessage::decode(&delivery.raw, self.max_body) {
            Ok(m) => m,
            Err(e) => return self.reject(&queue, delivery, e).await,
        };
        let span = tracing::info_span!(
            "job",
            job.id = %message.id,
            job.task = %message.task,
            job.attempt = message.attempt,
            queue = %queue,
        );
        self.run(queue, delivery, message).instrument(span).await
    }

    async fn run(&self, queue: QueueName, delivery: Delivery, message: JobMessage) {
        let Some(registered) = self.registry.get(&message.task).cloned() else {
            let reason = format!(
                "no handler for task `{}` on this worker (it handles: {})",
                message.task,
                self.registry.names().join(", ")
            );
            let err = DecodeError {
                job_id: Some(message.id),
                task: Some(message.task.to_string()),
                attempt: Some(message.attempt),
                reason: warren_core::DecodeReason::BadTask(reason),
            };
            return self.reject(&queue, delivery, err).await;
        };
        let max_attempts = message
            .max_attempts
            .unwrap_or(registered.options.retry.max_attempts);
        if message.attempt > max_attempts {
            let err = DecodeError {
                job_id: Some(message.id),
                task: Some(message.task.to_string()),
                attempt: Some(message.attempt),
                reason: warren_core::DecodeReason::OutOfRange {
                    header: warren_core::message::HEADER_ATTEMPT,
                    value: i64::from(message.attempt),
                    min: 1,
                    max: i64::from(max_attempts),
                },
            };
            return self.reject(&queue, delivery, err).await;
        }

        // A redelivered message may belong to an attempt that already ended (its worker died
        // between commit and ack). Look before running it again; fresh deliveries skip this
        // round trip, and the recorder's fence covers them anyway.
        if delivery.redelivered {
            match self.store.progress(message.id).await {
                Ok(Some(p)) if p.supersedes(message.attempt) => {
                    tracing::info!(state = %p.state, recorded_attempt = p.attempt, "redelivered job already past this attempt; not running it again");
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    return self.ack(&delivery).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check redelivered job; running it (the recorder's fence still applies)")
                }
            }
        }

        if self.cancels.was_cancelled(message.id) {
            tracing::info!("job was cancelled before it ran; not running it");
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return self.ack(&delivery).await;
        }

        let timeout = message
            .timeout_ms
            .map(Duration::from_millis)
            .or(registered.options.timeout)
            .unwrap_or(self.default_timeout);
        // Run past RabbitMQ's consumer timeout, the job would be taken back and redelivered
        // while still running: refuse it as bad input instead (task and default timeouts were
        // checked against the same limit when the worker was built).
        if let Some(limit) = self.max_timeout
            && timeout > limit
        {
            let err = DecodeError {
                job_id: Some(message.id),
                task: Some(message.task.to_string()),
                attempt: Some(message.attempt),
                reason: warren_core::DecodeReason::TimeoutTooLong {
                    timeout_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
                    limit_ms: limit.as_millis().min(u128::from(u64::MAX)) as u64,
                },
            };
            return self.reject(&queue, delivery, err).await;
        }
        let started_at = Utc::now();
        let mut row = RecordRow {
            id: message.id,
            queue: queue.to_string(),
            task: message.task.to_string(),
            payload: Some(message.payload.clone()),
            raw_body: None,
            state: JobState::Running,
            attempt: message.attempt,
            max_attempts,
            timeout_ms: Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64),
            run_at: None,
            enqueued_at: message.enqueued_at,
            started_at: Some(started_at),
            finished_at: None,
            result: None,
            error: None,
            worker_id: self.worker_id.to_string(),
            idempotency_key: message.idempotency_key.clone(),
            traceparent: message.traceparent.clone(),
            duplicate_of: None,
        };
        // A job with an idempotency key claims it before running: one synchronous insert,
        // paid only by keyed jobs. The unique index makes the claim atomic across workers.
        if row.idempotency_key.is_some() {
            let claim = self
                .through_outage("claiming the idempotency key", &self.hard_stop, || {
                    self.store.claim_key(&row)
                })
                .await;
            match claim {
                Ok(Some(Claim::Claimed | Claim::Ours)) => {}
                Ok(Some(Claim::HeldBy(original))) => {
                    return self.record_duplicate(row, original, &delivery).await;
                }
                // The hard stop ended the wait: the delivery returns to the broker unsettled.
                Ok(None) => return,
                Err(e) => {
                    let err = DecodeError {
                        job_id: Some(message.id),
                        task: Some(message.task.to_string()),
                        attempt: Some(message.attempt),
                        reason: warren_core::DecodeReason::Unstorable(
                            warren_core::ErrorChain(&e).to_string(),
                        ),
                    };
                    return self.reject(&queue, delivery, err).await;
                }
            }
        }
        let cancel = self.hard_stop.child_token();
        let ctx = JobContext {
            id: message.id,
            task: message.task.clone(),
            queue: queue.clone(),
            attempt: message.attempt,
            max_attempts,
            enqueued_at: message.enqueued_at,
            traceparent: message.traceparent.clone(),
            worker_id: self.worker_id.clone(),
            cancel: cancel.clone(),
        };
        let admin = self.cancels.start(message.id, cancel.clone());
        // The `running` mark is written only for a job still running after MARK_AFTER: a
        // fast job's row is written once, with its outcome.
        let ended = run_attempt(
            (registered.handler)(ctx, &message.payload),
            timeout,
            self.recorder.mark(row.clone()),
            &cancel,
            &self.hard_stop,
        )
        .await;
        self.cancels.finish(message.id);
        // A handler that stopped because an admin cancelled it ends the job as cancelled,
        // whatever error it returned on the way out.
        let ended = match ended {
            Ended::Failed(..) if admin.is_cancelled() => Ended::Cancelled,
            other => other,
        };

        let now = Utc::now();
        row.finished_at = Some(now);
        match ended {
            Ended::Abandoned => {
                tracing::warn!(
                    "grace period over; attempt abandoned, the broker will redeliver it"
                );
                return;
            }
            Ended::Cancelled => {
                row.state = transition(JobState::Running, Event::CancelObserved);
                row.error = Some(FailureRecord {
                    attempt: message.attempt,
                    kind: FailureKind::Cancelled,
                    message: "cancelled by an admin while running".to_owned(),
                    worker: self.worker_id.to_string(),
                    at: now,
                });
                tracing::info!("job cancelled");
            }
            Ended::Ok(result) => {
                row.state = transition(JobState::Running, Event::Succeed);
                row.result = Some(result);
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Ended::Failed(kind, msg) => {
                let event =
                    lifecycle::failure_event(message.attempt, max_attempts, kind.is_retryable());
                row.state = transition(JobState::Running, event);
                if row.state == JobState::Scheduled {
                    let delay = registered.options.retry.delay(message.id, message.attempt);
                    row.run_at = Some(
                        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
                    );
                    row.finished_at = None;
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(kind = ?kind, error = %msg, delay_ms = delay.as_millis() as u64, "attempt failed; retry scheduled");
                } else {
                    self.counters.dead.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(kind = ?kind, error = %msg, "job is dead");
                }
                row.error = Some(FailureRecord {
                    attempt: message.attempt,
                    kind,
                    message: msg,
                    worker: self.worker_id.to_string(),
                    at: now,
                });
            }
        }
        self.commit_then_ack(row, &delivery).await;
    }

    /// Records a message that can never run: a `dead` row with the reason and the raw body
    /// when it names a job, or the broker's dead-letter queue with the reason in a header
    /// when it does not. Either way the delivery is settled and never retried.
    pub(crate) async fn reject(&self, queue: &QueueName, delivery: Delivery, err: DecodeError) {
        self.counters.dead.fetch_add(1, Ordering::Relaxed);
        let Some(id) = err.job_id else {
            tracing::warn!(queue = %queue, reason = %err, "message without a job id; dead-lettering it");
            let reason = err.to_string();
            match self
                .dead_letters
                .publish_dead_letter(&delivery.raw, queue.as_str(), &reason)
                .await
            {
                Ok(()) => return self.ack(&delivery).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot republish to the dead-letter queue; rejecting to the broker's dead-lettering instead");
                    if let Err(e) = delivery.dead_letter().await {
                        tracing::warn!(error = %e, "reject failed");
                    }
                    return;
                }
            }
        };
        tracing::warn!(job.id = %id, queue = %queue, reason = %err, "bad input; recording the job as dead");
        let now = Utc::now();
        let attempt = err
            .attempt
            .unwrap_or(1)
            .clamp(1, warren_core::message::MAX_ATTEMPTS_LIMIT);
        // A body that is valid JSON stays the payload, so that `warren jobs retry` can run the
        // job once the cause is fixed (a task deployed after its producer, say). Anything
        // else is kept as raw bytes, at most a bounded prefix of them.
        let payload = std::str::from_utf8(&delivery.raw.body)
            .ok()
            .filter(|_| delivery.raw.body.len() <= self.max_body)
            .and_then(|text| serde_json::from_str::<Box<serde_json::value::RawValue>>(text).ok());
        let raw_body = payload.is_none().then(|| delivery.raw.body.clone());
        let row = RecordRow {
            id,
            queue: queue.to_string(),
            task: err.task.clone().unwrap_or_else(|| "(unknown)".to_owned()),
            payload,
            raw_body,
            state: transition_from_none(Event::Reject),
            attempt,
            max_attempts: attempt,
            timeout_ms: None,
            run_at: None,
            enqueued_at: now,
            started_at: None,
            finished_at: Some(now),
            result: None,
            error: Some(FailureRecord {
                attempt,
                kind: FailureKind::BadInput,
                message: err.reason.to_string(),
                worker: self.worker_id.to_string(),
                at: now,
            }),
            worker_id: self.worker_id.to_string(),
            idempotency_key: None,
            traceparent: None,
            duplicate_of: None,
        };
        self.commit_then_ack(row, &delivery).await;
    }

    /// Records a job that was not run because `original` holds its idempotency key.
    async fn record_duplicate(&self, mut row: RecordRow, original: JobId, delivery: &Delivery) {
        tracing::info!(original = %original, "duplicate of a job holding the same idempotency key; not running it");
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        row.state = JobState::Cancelled;
        row.finished_at = Some(now);
        row.duplicate_of = Some(original);
        row.error = Some(FailureRecord {
            attempt: row.attempt,
            kind: FailureKind::Cancelled,
            message: format!(
                "not run: job {original} holds idempotency key `{}`",
                row.idempotency_key.as_deref().unwrap_or_default()
            ),
            worker: self.worker_id.to_string(),
            at: now,
        });
        self.commit_then_ack(row, delivery).await;
    }

    /// The invariant: ack only after the outcome's batch is committed. If it cannot be
    /// committed, requeue so that the job is tried again rather than forgotten.
    async fn commit_then_ack(&self, row: RecordRow, delivery: &Delivery) {
        match self.recorder.record(row).await {
            Ok(()) => self.ack(delivery).await,
            Err(e) => {
                self.counters.unrecorded.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "outcome not recorded; requeueing the delivery");
                if let Err(e) = delivery.requeue().await {
                    tracing::warn!(error = %e, "requeue failed; the broker will redeliver when the channel closes");
                }
            }
        }
    }

    /// Runs a database call and holds the message through an outage: a transient failure is
    /// retried with backoff while the delivery stays unacked, because a requeue would spend
    /// one of its deliveries and the broker dead-letters a message after `x-delivery-limit`
    /// of those, job and all. The prefetch window meanwhile stops the broker from sending
    /// more. Returns `Ok(None)` when `give_up` ends the wait (the delivery goes back to the
    /// broker as the channel closes) and `Err` for a failure no retry would change.
    pub(crate) async fn through_outage<T, F, Fut>(
        &self,
        what: &'static str,
        give_up: &CancellationToken,
        mut call: F,
    ) -> Result<Option<T>, warren_store::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, warren_store::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut degraded = false;
        loop {
            match call().await {
                Ok(v) => {
                    if degraded {
                        tracing::info!("{what}: the database answers again; going on");
                    }
                    return Ok(Some(v));
                }
                Err(e) if e.is_transient() => {
                    if !degraded {
                        tracing::warn!(error = %warren_core::ErrorChain(&e), "{what} failed; holding the message unacked and retrying until the database is back");
                        degraded = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = give_up.cancelled() => return Ok(None),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = delivery.ack().await {
            // After a connection recovery the broker has already requeued this delivery; the
            // redelivery will find the job recorded and be acked without running.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}

fn transition(from: JobState, event: Event) -> JobState {
    lifecycle::transition(Some(from), event)
        .unwrap_or_else(|e| unreachable!("the executor only takes legal transitions: {e}"))
}

fn transition_from_none(event: Event) -> JobState {
    lifecycle::transition(None, event)
        .unwrap_or_else(|e| unreachable!("the executor only takes legal transitions: {e}"))
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

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(a non-string panic payload)".to_owned(),
        },
    }
}
