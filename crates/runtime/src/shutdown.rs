//! A running worker and its shutdown sequence, one visible step after another:
//!
//! 1. Soft phase: the consumers stop taking deliveries (what is prefetched but not started
//!    stays unacked and returns to the queue), a promotion in flight finishes, and in-flight
//!    jobs finish, their outcomes committed and acked.
//! 2. Hard phase, if the grace period runs out first: the handlers' tokens fire and their
//!    tasks are aborted; those attempts are not recorded, and the broker redelivers them.
//! 3. Closing: the heartbeat and LISTEN tasks end, the recorder flushes, the worker's row is
//!    marked `stopped`, and the connections close.
//!
//! Every step is bounded by the grace period, so a broker or database that does not answer
//! cannot stretch the shutdown past it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_broker::{Broker, Consumer};
use warren_core::ErrorChain;
use warren_store::Store;

use crate::WorkerStats;
use crate::executor::Executor;
use crate::supervise::Supervised;

/// Everything a started worker runs, held until it stops.
pub(crate) struct Running {
    /// Told when the worker stops consuming, so `/readyz` fails while it drains.
    pub(crate) health: crate::Health,
    pub(crate) worker_id: String,
    pub(crate) grace: Duration,
    pub(crate) broker: Broker,
    pub(crate) store: Store,
    pub(crate) executor: Arc<Executor>,
    pub(crate) recorder_task: tokio::task::JoinHandle<()>,
    /// One task per job being handled.
    pub(crate) jobs: TaskTracker,
    /// The consume loops (work queues and intake).
    pub(crate) loops: TaskTracker,
    pub(crate) consumers: Vec<Arc<Mutex<Consumer>>>,
    pub(crate) background: Background,
    /// Cancelled to stop consuming, promoting, beating and listening.
    pub(crate) stop_consuming: CancellationToken,
    /// Cancelled when the grace period runs out: handlers are told to stop.
    pub(crate) hard_stop: CancellationToken,
}

/// The worker's background tasks, each supervised.
pub(crate) struct Background {
    /// Gives back limit slots; ends once the jobs holding them are done.
    pub(crate) limits: Supervised,
    pub(crate) heartbeat: Supervised,
    pub(crate) control: Supervised,
    pub(crate) promoter: Option<Supervised>,
    pub(crate) gauges: Option<Supervised>,
    /// Fires periodic schedules; runs where the promoter does.
    pub(crate) scheduler: Option<Supervised>,
    /// Deletes old finished jobs; a batch in progress is a short transaction, and one cut off
    /// by the end of the grace period rolls back.
    pub(crate) cleaner: Supervised,
}

impl Running {
    /// Jobs being handled. Counted by their tasks, not by the slots taken: a consume loop
    /// waiting for a delivery holds a slot too.
    fn in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// The shutdown sequence; returns the run's totals.
    pub(crate) async fn stop(mut self) -> WorkerStats {
        tracing::info!(in_flight = self.in_flight(), grace = ?self.grace, "shutting down: no new jobs; finishing in-flight ones");
        let deadline = Instant::now() + self.grace;
        // Keep back a little of the grace period for cancelling and closing, so the whole
        // shutdown fits in it.
        let close_budget = (self.grace / 5).min(Duration::from_secs(1));
        let soft_end = deadline - close_budget;
        self.health.set_consuming(false);
        self.stop_consuming.cancel();
        bounded(soft_end, "stopping the consumers", self.loops.wait()).await;
        if let Some(promoter) = self.background.promoter.take() {
            // A promotion in flight is let finish (aborting between its publish and its
            // commit would publish those jobs twice), within the grace period.
            promoter.join_until(soft_end, "finishing a promotion").await;
        }
        let abandoned = self.finish_jobs(soft_end, deadline).await;
        let stats = self.stats(abandoned);
        let closing = deadline.max(Instant::now() + close_budget);
        self.close(closing, &stats).await;
        tracing::info!(?stats, "worker stopped");
        stats
    }

    /// Lets in-flight jobs finish until `soft_end`; then cancels the rest and waits for them
    /// until `deadline`. Returns how many were abandoned.
    async fn finish_jobs(&self, soft_end: Instant, deadline: Instant) -> u64 {
        self.jobs.close();
        if tokio::time::timeout_at(soft_end, self.jobs.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        // Hard phase: cancel handlers; their deliveries stay unacked and return to the queue
        // when the channels close.
        let abandoned = self.in_flight() as u64;
        tracing::warn!(
            abandoned,
            "grace period over; cancelling the jobs still running"
        );
        self.hard_stop.cancel();
        let _ = tokio::time::timeout_at(deadline, self.jobs.wait()).await;
        abandoned
    }

    /// The totals, each counted once its outcome was committed.
    fn stats(&self, abandoned: u64) -> WorkerStats {
        let c = &self.executor.counters;
        WorkerStats {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead: c.dead.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            unrecorded: c.unrecorded.load(Ordering::Relaxed),
            abandoned,
            duplicates: c.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Ends the background tasks, flushes the recorder, marks the worker stopped and closes
    /// the connections, all before `closing`.
    async fn close(self, closing: Instant, stats: &WorkerStats) {
        // Every job task has finished, so only running marks can be pending; the recorder
        // ends once the executor (its last sender) is gone.
        drop(self.executor);
        let Background {
            limits,
            heartbeat,
            control,
            promoter,
            gauges,
            scheduler,
            cleaner,
        } = self.background;
        for (task, what) in [
            (heartbeat, "stopping the heartbeat"),
            (control, "closing the LISTEN connection"),
            (cleaner, "stopping the cleaner"),
            (limits, "giving back limit slots"),
        ] {
            task.join_until(closing, what).await;
        }
        if let Some(promoter) = promoter {
            promoter.join_until(closing, "stopping the promoter").await;
        }
        if let Some(scheduler) = scheduler {
            scheduler
                .join_until(closing, "stopping the scheduler")
                .await;
        }
        if let Some(gauges) = gauges {
            gauges
                .join_until(closing, "stopping the fleet gauges")
                .await;
        }
        if bounded(closing, "flushing the recorder", self.recorder_task)
            .await
            .is_none()
        {
            tracing::warn!(
                "recorder did not flush in time; unrecorded deliveries will be redelivered"
            );
        }
        let processed = stats.succeeded + stats.dead;
        let failed = stats.retried + stats.dead;
        let stopped = self
            .store
            .heartbeat(&self.worker_id, "stopped", 0, processed, failed);
        if let Some(Err(e)) = bounded(closing, "marking the worker stopped", stopped).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot mark the worker stopped");
        }
        let consumers = self.consumers;
        let broker = self.broker;
        let close_all = async move {
            for consumer in consumers {
                consumer.lock().await.close().await;
            }
            broker.close().await;
        };
        bounded(closing, "closing the broker connections", close_all).await;
    }
}

/// Runs one shutdown step until `until`; `None` (and a warning) if it did not finish.
pub(crate) async fn bounded<F: Future>(until: Instant, what: &str, step: F) -> Option<F::Output> {
    match tokio::time::timeout_at(until, step).await {
        Ok(out) => Some(out),
        Err(_) => {
            tracing::warn!("shutdown: {what} did not finish within the grace period; going on");
            None
        }
    }
}
