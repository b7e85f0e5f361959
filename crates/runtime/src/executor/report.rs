//! Step 3: how an attempt ended becomes the job's row; the row is committed, then the
//! delivery acked. Also the other ways a delivery is settled without running: bad input, a
//! duplicate by idempotency key, a cancel seen before the attempt.

use std::sync::atomic::Ordering;

use chrono::Utc;
use warren_broker::Delivery;
use warren_core::lifecycle::{self, Event};
use warren_core::message::MAX_ATTEMPTS_LIMIT;
use warren_core::{
    DecodeError, ErrorChain, FailureKind, JobId, JobMessage, JobState, QueueName, TaskName,
};
use warren_store::{BadInput, JobProgress, RecordRow, Recorded};

use super::attempt::Ended;
use super::preflight::Ready;
use super::{Executor, transition};
use crate::observe::Outcome;

impl Executor {
    /// Records how the attempt ended and acks. An abandoned attempt (the grace period ran
    /// out) is left unsettled: the broker redelivers it as the same attempt.
    pub(super) async fn report(
        &self,
        message: &JobMessage,
        ready: Ready,
        ended: Ended,
        delivery: &Delivery,
    ) {
        let row = ready.row;
        let running = Some(JobState::Running);
        let row = match ended {
            Ended::Abandoned => {
                tracing::warn!(
                    "grace period over; attempt abandoned, the broker will redeliver it"
                );
                return;
            }
            Ended::Cancelled => {
                tracing::info!("job cancelled");
                let state = transition(running, Event::CancelObserved);
                let text = "cancelled by an admin while running".to_owned();
                row.end(state, FailureKind::Cancelled, text)
            }
            Ended::Ok(result) => {
                debug_assert_eq!(transition(running, Event::Succeed), JobState::Succeeded);
                row.succeed(result)
            }
            Ended::Failed(kind, text) => {
                let event = lifecycle::failure_event(
                    message.attempt,
                    row.max_attempts,
                    kind.is_retryable(),
                );
                match transition(running, event) {
                    JobState::Scheduled => {
                        let retry = ready.registered.options.retry;
                        let delay = retry.delay(message.id, message.attempt);
                        tracing::info!(kind = ?kind, error = %text, delay_ms = delay.as_millis() as u64, "attempt failed; retry scheduled");
                        // RetryPolicy caps its delays at a year, so this cannot overflow; the
                        // fallback only keeps a corrupt policy from panicking.
                        let run_at = chrono::Duration::from_std(delay)
                            .ok()
                            .and_then(|d| Utc::now().checked_add_signed(d))
                            .unwrap_or_else(Utc::now);
                        row.retry_at(run_at, kind, text)
                    }
                    state => {
                        tracing::warn!(kind = ?kind, error = %text, "job is dead");
                        row.end(state, kind, text)
                    }
                }
            }
        };
        self.commit_then_ack(row, delivery).await;
    }

    /// Records a message that can never run: a `dead` row with the reason and the body when
    /// it names a job, or the broker's dead-letter queue with the reason in a header when it
    /// does not. Either way the delivery is settled and never retried.
    pub(crate) async fn reject(&self, queue: &QueueName, delivery: &Delivery, err: DecodeError) {
        let Some(id) = err.job_id else {
            return self.dead_letter(queue, delivery, &err).await;
        };
        tracing::warn!(job.id = %id, queue = %queue, reason = %err, "bad input; recording the job as dead");
        let attempt = err.attempt.unwrap_or(1).clamp(1, MAX_ATTEMPTS_LIMIT);
        let row = RecordRow::bad_input(BadInput {
            id,
            queue: queue.as_str(),
            task: err.task.as_deref(),
            attempt,
            body: &delivery.raw.body,
            max_body: self.max_body,
            reason: err.reason.to_string(),
            worker: &self.worker_id,
        });
        self.commit_then_ack(row, delivery).await;
    }

    /// A message without a job id has no row to record: it goes to `<ns>.dead` with the
    /// reason in a header (or, if that publish fails, to the broker's own dead-lettering).
    async fn dead_letter(&self, queue: &QueueName, delivery: &Delivery, err: &DecodeError) {
        tracing::warn!(queue = %queue, reason = %err, "message without a job id; dead-lettering it");
        let published = self
            .dead_letters
            .publish_dead_letter(&delivery.raw, queue.as_str(), &err.to_string())
            .await;
        match published {
            Ok(()) => {
                self.counters.dead.fetch_add(1, Ordering::Relaxed);
                self.ack(delivery).await;
            }
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "cannot republish to the dead-letter queue; rejecting to the broker's dead-lettering instead");
                if let Err(e) = delivery.dead_letter().await {
                    tracing::warn!(error = %ErrorChain(&e), "reject failed");
                }
            }
        }
    }

    /// Records a job that was not run because `original` holds its idempotency key.
    pub(super) async fn record_duplicate(
        &self,
        row: RecordRow,
        original: JobId,
        delivery: &Delivery,
    ) {
        tracing::info!(original = %original, "duplicate of a job holding the same idempotency key; not running it");
        let key = row.idempotency_key.clone().unwrap_or_default();
        // A keyed job reaches the claim with no row (hot path) or a queued one (promoted).
        let state = transition(None, Event::Duplicate);
        let text = format!("not run: job {original} holds idempotency key `{key}`");
        let mut row = row.end(state, FailureKind::Cancelled, text);
        row.duplicate_of = Some(original);
        self.commit_then_ack(row, delivery).await;
    }

    /// Records that an attempt an admin asked to stop before it ran was not run.
    pub(super) async fn record_unrun_cancel(
        &self,
        queue: &QueueName,
        message: &JobMessage,
        progress: JobProgress,
        delivery: &Delivery,
    ) {
        let state = transition(Some(progress.state), Event::CancelObserved);
        let max_attempts = message.max_attempts.unwrap_or(message.attempt);
        let timeout = self.default_timeout;
        let mut row = RecordRow::attempt(
            message,
            queue.as_str(),
            &self.worker_id,
            max_attempts,
            timeout,
        );
        row.started_at = None;
        row.idempotency_key = None;
        let text = "cancelled by an admin before this attempt ran".to_owned();
        self.commit_then_ack(row.end(state, FailureKind::Cancelled, text), delivery)
            .await;
    }

    /// The invariant: ack only after the outcome's batch is committed. If it cannot be
    /// committed, requeue so that the job is tried again rather than forgotten. Outcomes are
    /// counted here, once committed, never before.
    async fn commit_then_ack(&self, row: RecordRow, delivery: &Delivery) {
        let state = row.state;
        let duplicate = row.duplicate_of.is_some();
        let observed = (!duplicate).then(|| self.observation(&row));
        match self.recorder.record(row).await {
            Ok(Recorded::Written) => {
                if let Some((task, queue, ran)) = observed {
                    let outcome = match state {
                        JobState::Succeeded => Some(Outcome::Succeeded),
                        JobState::Scheduled => Some(Outcome::Retried),
                        JobState::Dead => Some(Outcome::Dead),
                        JobState::Cancelled => Some(Outcome::Cancelled),
                        _ => None,
                    };
                    if let Some(outcome) = outcome {
                        crate::observe::finished(&task, &queue, outcome, ran);
                    }
                }
                let c = &self.counters;
                let counter = match state {
                    JobState::Succeeded => Some(&c.succeeded),
                    JobState::Scheduled => Some(&c.retried),
                    JobState::Dead => Some(&c.dead),
                    JobState::Cancelled if duplicate => Some(&c.skipped),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                self.ack(delivery).await
            }
            Ok(Recorded::Fenced) => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(outcome = %state, "this attempt ran although the job had already moved past it; its outcome was discarded and counted in the job's duplicate_runs");
                self.ack(delivery).await
            }
            Err(e) => {
                self.counters.unrecorded.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %ErrorChain(&e), "outcome not recorded; requeueing the delivery");
                if let Err(e) = delivery.requeue().await {
                    tracing::warn!(error = %ErrorChain(&e), "requeue failed; the broker will redeliver when the channel closes");
                }
            }
        }
    }

    /// The labels and run time of an outcome, for the metrics. A task name no handler is
    /// registered for (bad input) is labelled `(unregistered)`: labels come from message
    /// headers anyone can write, and each new value would be a new series.
    fn observation(&self, row: &RecordRow) -> (String, String, Option<std::time::Duration>) {
        let registered =
            TaskName::new(&row.task).is_ok_and(|name| self.registry.get(&name).is_some());
        let task = if registered {
            row.task.clone()
        } else {
            "(unregistered)".to_owned()
        };
        let ran = row.started_at.and_then(|s| (Utc::now() - s).to_std().ok());
        (task, row.queue.clone(), ran)
    }

    pub(super) async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = delivery.ack().await {
            // After a connection recovery the broker has already requeued this delivery; the
            // redelivery will find the job recorded and be acked without running.
            tracing::warn!(error = %ErrorChain(&e), "ack failed");
        }
    }
}
