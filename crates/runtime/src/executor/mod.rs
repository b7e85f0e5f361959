//! One delivery, start to finish, in three named steps, the way River's job executor reads:
//!
//! 1. [`preflight`]: does the delivery run at all? The task is looked up and the attempt
//!    checked; a redelivered or promoted message is checked against its row; a cancelled job
//!    is settled; a keyed job claims its idempotency key.
//! 2. [`attempt`]: the handler runs in a task of its own, under its timeout, with a running
//!    mark for long jobs; a panic, a timeout, an admin's cancel and the hard stop each end it
//!    in their own way.
//! 3. [`report`]: how the attempt ended becomes the job's row (succeeded, a retry, dead,
//!    cancelled); the row is committed, and only then is the delivery acked.

mod attempt;
mod cancels;
mod preflight;
mod report;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_broker::{Delivery, Publisher};
use warren_core::lifecycle::{self, Event};
use warren_core::{ErrorChain, JobMessage, JobState, QueueName, TraceParent};
use warren_store::{Recorder, Store};

use crate::registry::Registry;
use crate::worker::JobSpanHook;
pub(crate) use attempt::panic_message;
pub(crate) use cancels::Cancels;
use preflight::Preflight;

/// Outcome counters, for heartbeats and the final log line. Each is counted once the outcome
/// is committed, never before.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) succeeded: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) skipped: AtomicU64,
    /// Deliveries deferred because a limit was reached (not attempts).
    pub(crate) deferred: AtomicU64,
    pub(crate) unrecorded: AtomicU64,
    /// Outcomes the recorder's fence discarded: attempts that ran again for nothing.
    pub(crate) duplicates: AtomicU64,
}

/// Everything a job task needs, shared by all of them.
pub(crate) struct Executor {
    pub(crate) registry: Registry,
    /// Called with each job's span as it opens (the binary's OpenTelemetry parent link).
    pub(crate) job_span: Option<JobSpanHook>,
    pub(crate) recorder: Recorder,
    /// Writes the deferrals of jobs over their limits, in batches.
    pub(crate) deferrer: warren_store::Deferrer,
    /// Reads the rows of deliveries that are checked before they run, in batches.
    pub(crate) progress: warren_store::ProgressReader,
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
    /// The fleet-wide limits, as this worker applies them.
    pub(crate) limits: Arc<crate::limits::Limiter>,
}

impl Executor {
    /// Handles one delivery from `queue`. Never panics and never leaves it unsettled, except
    /// on purpose (abandoned at hard shutdown), when closing the channel returns it.
    pub(crate) async fn handle(self: Arc<Self>, queue: QueueName, delivery: Delivery) {
        let message = match JobMessage::decode(&delivery.raw, self.max_body) {
            Ok(m) => m,
            Err(e) => return Box::pin(self.reject(&queue, &delivery, e)).await,
        };
        let trace = job_trace(&message);
        let span = tracing::info_span!(
            "job",
            job.id = %message.id,
            job.task = %message.task,
            job.attempt = message.attempt,
            queue = %queue,
            trace_id = %trace.trace_id_hex(),
            parent_span_id = %trace.parent_id_hex(),
        );
        if let Some(hook) = &self.job_span {
            hook(&span, &trace);
        }
        // Boxed: the attempt's state machine is several KiB, and every job task would
        // otherwise carry (and copy, as it is spawned and as it ends) all of it inline.
        // Measured with callgrind: those copies were about a sixth of the benchmark's
        // instructions.
        Box::pin(self.execute(queue, delivery, message))
            .instrument(span)
            .await
    }

    async fn execute(&self, queue: QueueName, delivery: Delivery, message: JobMessage) {
        let ready = match self.preflight(&queue, &delivery, &message).await {
            Preflight::Run(ready) => ready,
            Preflight::Settled => return,
        };
        let ended = self.attempt(&queue, &message, &ready).await;
        self.report(&message, *ready, ended, &delivery).await;
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
                        tracing::warn!(error = %ErrorChain(&e), "{what} failed; holding the message unacked and retrying until the database is back");
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
}

/// The trace context a job's span continues: the message's `traceparent`, which every Warren
/// producer sets (the client makes a fresh one when its caller has none). A message published
/// by other means without one gets a context derived from its job id, so that its trace id is
/// the job id in hex, the same on every attempt, and every job's logs carry a trace id.
fn job_trace(message: &JobMessage) -> TraceParent {
    if let Some(tp) = message.traceparent.as_deref().and_then(TraceParent::parse) {
        return tp;
    }
    let uuid = message.id.as_uuid();
    let id = uuid.as_bytes();
    let mut bytes = [0u8; 24];
    bytes[..16].copy_from_slice(id);
    bytes[16..].copy_from_slice(&id[8..]);
    TraceParent::from_random(bytes)
}

/// The state `event` moves a job to from `from`; the executor only takes legal transitions,
/// and the lifecycle table's tests hold it to that.
fn transition(from: Option<JobState>, event: Event) -> JobState {
    lifecycle::transition(from, event)
        .unwrap_or_else(|e| unreachable!("the executor only takes legal transitions: {e}"))
}
