//! The promoter: publishes scheduled jobs (retries waiting out their backoff, delayed jobs,
//! jobs enqueued in a transaction) when they fall due.
//!
//! Nothing delayed is held in memory: the rows in Postgres are the schedule. Every worker
//! process runs a promoter by default; `FOR UPDATE SKIP LOCKED` gives each due row to exactly
//! one of them. The row stays locked while its message is published and confirmed, and is
//! marked `queued` in the same transaction, so in normal operation an attempt is published
//! once. A crash between the confirm and the commit publishes it again later; the recorder's
//! fence absorbs that duplicate.

use std::time::Duration;

use chrono::Utc;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use warren_broker::{PublishRequest, Publisher};
use warren_core::{JobId, JobMessage, RawMessage, TaskName};

use tokio::sync::Notify;
use warren_store::{DueJob, Store};

/// Tuning of the promoter.
#[derive(Clone, Copy, Debug)]
pub struct PromoterConfig {
    /// Rows claimed and published per transaction.
    pub batch: u32,
    /// Longest sleep between looks at the table. NOTIFY normally wakes the promoter sooner;
    /// this bounds the lateness when a notification is missed.
    pub poll_interval: Duration,
    /// How far a job whose publish failed (say its queue is gone) is pushed back.
    pub defer_on_failure: Duration,
}

impl Default for PromoterConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            poll_interval: Duration::from_secs(1),
            defer_on_failure: Duration::from_secs(5),
        }
    }
}

/// Publishes due jobs until told to stop.
#[derive(Debug)]
pub struct Promoter {
    store: Store,
    publisher: Publisher,
    config: PromoterConfig,
    /// Notified when a job becomes scheduled (the worker forwards `warren_due` to it).
    wakeup: Arc<Notify>,
}

impl Promoter {
    /// A promoter publishing through `publisher`; nothing runs until [`Promoter::run`].
    pub fn new(store: Store, publisher: Publisher, config: PromoterConfig) -> Self {
        Self {
            store,
            publisher,
            config,
            wakeup: Arc::new(Notify::new()),
        }
    }

    /// Shares a wake-up signal: whoever holds it calls `notify_one` when a job may have
    /// become due sooner than the promoter expects. Without one it polls.
    pub fn with_wakeup(mut self, wakeup: Arc<Notify>) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// Promotes due jobs until `stop` is cancelled: a batch at a time, sleeping until the
    /// next job is due (at most the poll interval) or a wake-up. Failures are logged and
    /// retried, never returned; a batch in progress finishes before it stops.
    pub async fn run(self, stop: CancellationToken) {
        // Entering and leaving the failing state are logged once each, not on every pass.
        let mut failing = false;
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.promote_once().await {
                Ok(n) => {
                    if failing {
                        tracing::info!("promoting due jobs again");
                        failing = false;
                    }
                    // A full batch means more may be due right now.
                    if n >= self.config.batch as usize {
                        continue;
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %warren_core::ErrorChain(&e), "promoting due jobs failed; retrying every poll interval until it works");
                    failing = true;
                }
                Err(_) => {}
            }
            let wait = match self.store.next_due_at().await {
                Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                Ok(None) | Err(_) => self.config.poll_interval,
            }
            .min(self.config.poll_interval);
            if wait.is_zero() {
                // Due now but not claimable (held by another promoter): do not spin on it.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wakeup.notified() => {}
                () = stop.cancelled() => break,
            }
        }
    }

    /// Claims, publishes and marks one batch; returns how many jobs were due.
    pub async fn promote_once(&self) -> Result<usize, warren_store::Error> {
        let promotion = self.store.claim_due(self.config.batch).await?;
        let n = promotion.jobs.len();
        if n == 0 {
            return Ok(0);
        }
        let (published, deferred) = self.publish_due(&promotion.jobs).await;
        let lateness_ms: Vec<i64> = promotion
            .jobs
            .iter()
            .map(|j| (Utc::now() - j.run_at).num_milliseconds())
            .collect();
        promotion
            .finish(&published, &deferred, self.config.defer_on_failure)
            .await?;
        let max_lateness = lateness_ms.iter().max().copied().unwrap_or(0).max(0);
        crate::observe::promoted(
            published.len(),
            std::time::Duration::from_millis(max_lateness as u64),
        );
        tracing::debug!(
            published = published.len(),
            deferred = deferred.len(),
            max_lateness_ms = lateness_ms.iter().max().copied().unwrap_or(0),
            "promoted due jobs"
        );
        Ok(n)
    }

    /// Publishes claimed due jobs, each as its next attempt and marked as having a row;
    /// returns the ids published and the ids to defer (publish failed, or the row is
    /// unreadable). Until the claim commits, the rows stay `scheduled`: a promoter that dies
    /// here has published jobs that will be published again, which is why these messages
    /// carry `warren-has-row` and workers check the row before running them.
    pub async fn publish_due(&self, jobs: &[DueJob]) -> (Vec<JobId>, Vec<JobId>) {
        let mut deferred: Vec<JobId> = Vec::new();
        let mut prepared: Vec<(JobId, String, RawMessage)> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let task = TaskName::new(job.task.clone());
            let payload = RawValue::from_string(job.payload.clone());
            let (Ok(task), Ok(payload)) = (task, payload) else {
                // Rows are written by Warren, so this means someone edited one by hand.
                tracing::error!(job.id = %job.id, "scheduled row has an invalid task name or payload; deferring it");
                deferred.push(job.id);
                continue;
            };
            let message = JobMessage {
                id: job.id,
                task,
                attempt: job.attempt + 1,
                max_attempts: Some(job.max_attempts),
                timeout_ms: job.timeout_ms,
                idempotency_key: job.idempotency_key.clone(),
                enqueued_at: job.enqueued_at,
                traceparent: job.traceparent.clone(),
                tracestate: None,
                has_row: true,
                limit_token: job.limit_token_at,
                payload,
            };
            prepared.push((job.id, job.queue.clone(), message.encode()));
        }
        let requests: Vec<PublishRequest<'_>> = prepared
            .iter()
            .map(|(_, queue, raw)| PublishRequest {
                queue,
                message: raw,
            })
            .collect();
        let outcomes = self.publisher.publish_many(&requests).await;
        let mut published = Vec::with_capacity(jobs.len());
        for ((id, _, _), outcome) in prepared.iter().zip(outcomes) {
            match outcome {
                Ok(()) => published.push(*id),
                Err(e) => {
                    tracing::warn!(job.id = %id, error = %warren_core::ErrorChain(&e), "cannot publish due job; deferring it");
                    deferred.push(*id);
                }
            }
        }
        (published, deferred)
    }
}
