//! Step 1: whether a delivery runs at all, and what its attempt's row starts as.

use std::sync::atomic::Ordering;
use std::time::Duration;

use warren_broker::Delivery;
use warren_core::message::HEADER_ATTEMPT;
use warren_core::{DecodeError, DecodeReason, ErrorChain, JobMessage, QueueName};
use warren_store::{Claim, Deferral, JobProgress, RecordRow};

use super::Executor;
use crate::limits::{Admission, Permits};
use crate::registry::Registered;

/// What pre-flight decided.
pub(super) enum Preflight {
    /// Run the attempt. Boxed: the row is large and most deliveries pass through here.
    Run(Box<Ready>),
    /// The delivery is settled (acked, recorded or rejected), or deliberately left unsettled
    /// for the broker to redeliver (the hard stop came first).
    Settled,
}

/// An attempt cleared to run: its handler and the row it starts as.
pub(super) struct Ready {
    pub(super) registered: Registered,
    pub(super) row: RecordRow,
    pub(super) timeout: Duration,
    /// The limits' slots this attempt holds, handed back when it is dropped, after the
    /// outcome is recorded.
    pub(super) _permits: Permits,
}

/// A message that names a job but can never run.
fn unrunnable(message: &JobMessage, reason: DecodeReason) -> DecodeError {
    DecodeError {
        job_id: Some(message.id),
        task: Some(message.task.to_string()),
        attempt: Some(message.attempt),
        reason,
    }
}

impl Executor {
    pub(super) async fn preflight(
        &self,
        queue: &QueueName,
        delivery: &Delivery,
        message: &JobMessage,
    ) -> Preflight {
        let Some(registered) = self.registry.get(&message.task).cloned() else {
            let reason = format!(
                "no handler for task `{}` on this worker (it handles: {})",
                message.task,
                self.registry.names().join(", ")
            );
            let err = unrunnable(message, DecodeReason::BadTask(reason));
            self.reject(queue, delivery, err).await;
            return Preflight::Settled;
        };
        let max_attempts = message
            .max_attempts
            .unwrap_or(registered.options.retry.max_attempts);
        if message.attempt > max_attempts {
            let reason = DecodeReason::OutOfRange {
                header: HEADER_ATTEMPT,
                value: i64::from(message.attempt),
                min: 1,
                max: i64::from(max_attempts),
            };
            self.reject(queue, delivery, unrunnable(message, reason))
                .await;
            return Preflight::Settled;
        }
        if !self.check_row(queue, delivery, message).await {
            return Preflight::Settled;
        }
        if self.cancels.was_cancelled(message.id) {
            tracing::info!("job was cancelled before it ran; not running it");
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            self.ack(delivery).await;
            return Preflight::Settled;
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
            let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
            let reason = DecodeReason::TimeoutTooLong {
                timeout_ms: millis(timeout),
                limit_ms: millis(limit),
            };
            self.reject(queue, delivery, unrunnable(message, reason))
                .await;
            return Preflight::Settled;
        }
        // Before the row is made: its start time is when the limits let the job start.
        let Some(permits) = self.limit(queue, delivery, message, max_attempts).await else {
            return Preflight::Settled;
        };
        let row = RecordRow::attempt(
            message,
            queue.as_str(),
            &self.worker_id,
            max_attempts,
            timeout,
        );
        if !self.claim_key(queue, delivery, message, &row).await {
            return Preflight::Settled;
        }
        Preflight::Run(Box::new(Ready {
            registered,
            row,
            timeout,
            _permits: permits,
        }))
    }

    /// A redelivered message may belong to an attempt that already ended (its worker died
    /// between commit and ack), and a message published from a row may belong to a job
    /// cancelled while queued, or be the second copy from a promoter that died between
    /// publishing and committing. Look before running; fresh hot-path messages have no row
    /// yet, skip this round trip, and are covered by the recorder's fence anyway. Returns
    /// whether the attempt may go on.
    async fn check_row(
        &self,
        queue: &QueueName,
        delivery: &Delivery,
        message: &JobMessage,
    ) -> bool {
        if !delivery.redelivered && !message.has_row {
            return true;
        }
        let progress = self
            .through_outage("checking the job's row", &self.hard_stop, || {
                self.progress.progress(message.id)
            })
            .await;
        match progress {
            Ok(Some(Some(p))) if p.supersedes(message.attempt) => {
                tracing::info!(state = %p.state, recorded_attempt = p.attempt, "job already past this attempt; not running it again");
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                self.ack(delivery).await;
                false
            }
            Ok(Some(Some(
                p @ JobProgress {
                    cancel_requested: true,
                    ..
                },
            ))) => {
                tracing::info!("an admin cancelled this job; not running it");
                self.record_unrun_cancel(queue, message, p, delivery).await;
                false
            }
            Ok(Some(_)) => true,
            // The hard stop ended the wait: the delivery returns to the broker unsettled.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot check the job's row; running it (the recorder's fence still applies)");
                true
            }
        }
    }

    /// A job with an idempotency key claims it before running: one synchronous insert, paid
    /// only by keyed jobs; the unique index makes the claim atomic across workers. Returns
    /// whether the attempt may go on.
    async fn claim_key(
        &self,
        queue: &QueueName,
        delivery: &Delivery,
        message: &JobMessage,
        row: &RecordRow,
    ) -> bool {
        if row.idempotency_key.is_none() {
            return true;
        }
        let claim = self
            .through_outage("claiming the idempotency key", &self.hard_stop, || {
                self.store.claim_key(row)
            })
            .await;
        match claim {
            Ok(Some(Claim::Claimed | Claim::Ours)) => true,
            Ok(Some(Claim::HeldBy(original))) => {
                self.record_duplicate(row.clone(), original, delivery).await;
                false
            }
            // The hard stop ended the wait: the delivery returns to the broker unsettled.
            Ok(None) => false,
            Err(e) => {
                let reason = DecodeReason::Unstorable(ErrorChain(&e).to_string());
                self.reject(queue, delivery, unrunnable(message, reason))
                    .await;
                false
            }
        }
    }
}

impl Executor {
    /// Whether the job's limits let it start now. Jobs under no limit pass at the cost of
    /// one atomic load. One over a limit is deferred: kept as a `scheduled` row (its attempt
    /// not counted) that the promoter republishes when a slot or token is expected, and its
    /// delivery acked once that row is committed. Returns `None` when the delivery is settled.
    async fn limit(
        &self,
        queue: &QueueName,
        delivery: &Delivery,
        message: &JobMessage,
        max_attempts: u32,
    ) -> Option<Permits> {
        if self.limits.unlimited(message.task.as_str(), queue.as_str()) {
            return Some(Permits::default());
        }
        let admitted = self
            .through_outage("taking a limit's slot or token", &self.hard_stop, || {
                self.limits.admit(
                    message.task.as_str(),
                    queue.as_str(),
                    &message.payload,
                    message.limit_token,
                )
            })
            .await;
        let (wait, token_at) = match admitted {
            Ok(Some(Admission::Run(permits))) => return Some(permits),
            Ok(Some(Admission::Wait { wait, token_at })) => (wait, token_at),
            // The hard stop ended the wait: the delivery returns to the broker unsettled.
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot apply the job's limits; running it without them");
                return Some(Permits::default());
            }
        };
        let run_at = chrono::Utc::now()
            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
        let deferral = Deferral {
            id: message.id,
            queue: queue.to_string(),
            task: message.task.to_string(),
            payload: message.payload.get().to_owned(),
            attempt: message.attempt,
            max_attempts,
            timeout_ms: message.timeout_ms,
            run_at,
            enqueued_at: message.enqueued_at,
            idempotency_key: message.idempotency_key.clone(),
            traceparent: message.traceparent.clone(),
            worker_id: self.worker_id.to_string(),
            limit_token_at: token_at,
        };
        let deferred = self
            .through_outage("deferring a job over its limit", &self.hard_stop, || {
                self.deferrer.defer(deferral.clone())
            })
            .await;
        match deferred {
            Ok(Some(written)) => {
                if written {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "over its limit; deferred"
                    );
                    self.counters.deferred.fetch_add(1, Ordering::Relaxed);
                    crate::observe::deferred(
                        message.task.as_str(),
                        queue.as_str(),
                        token_at.is_some(),
                    );
                } else {
                    tracing::info!("job already past this attempt; not running it again");
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                self.ack(delivery).await;
                None
            }
            Ok(None) => None,
            Err(e) => {
                // A row Postgres refuses (say, a key another job holds) must not lose the job.
                tracing::warn!(error = %ErrorChain(&e), "cannot defer the job over its limit; running it now");
                Some(Permits::default())
            }
        }
    }
}
