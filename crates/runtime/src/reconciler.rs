//! The reconciler: consumes the broker's dead-letter queue `<ns>.dead` so that every dead job
//! ends in Postgres.
//!
//! RabbitMQ dead-letters a message by itself when its `x-delivery-limit` is reached (a crash
//! loop: the worker died on it each time), leaving its row `running`, or leaving no row at
//! all for a job on the hot path. For a message whose job id can be read, the reconciler
//! records the job `dead` through the recorder, with the broker's reason from `x-death` and
//! the message body, and acks only once that is committed. The write is fenced like any
//! outcome, with the message's own attempt: it replaces a row that attempt left `running`,
//! or a `queued` one of an earlier attempt, and never a terminal row.
//!
//! A message with no readable job id has no row to write. It is moved, confirmed, to the
//! parking queue `<ns>.dead.unread` (which no worker consumes) with `warren-dead-reason` and
//! `warren-dead-queue` set, then acked, where `warren dlq` lists, replays or purges it.
//! Moving it instead of leaving it unacked keeps it from looping through this consumer.
//!
//! A frame lapin cannot parse kills this consumer's connection like any other; careful mode
//! reconnects, and `<ns>.dead`'s own delivery limit finally moves that message to the parking
//! queue too, marked by the broker's `x-death` entry naming `<ns>.dead`.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use warren_broker::{Consumer, Death, Delivery};
use warren_core::lifecycle::{self, Event};
use warren_core::message::MAX_ATTEMPTS_LIMIT;
use warren_core::{ErrorChain, JobId, JobMessage};
use warren_store::{BadInput, RecordRow, Recorded};

use crate::executor::Executor;
use crate::supervise::Fatal;

/// Unacked dead letters at once. The reconciler handles one at a time; a small window only
/// saves a round trip between them.
pub(crate) const RECONCILER_PREFETCH: u16 = 16;

pub(crate) async fn reconcile_loop(
    consumer: Arc<Mutex<Consumer>>,
    executor: Arc<Executor>,
    stop: CancellationToken,
    failed: Fatal,
) {
    let mut consumer = consumer.lock().await;
    let lost = || crate::Error::ConsumerLost {
        queue: "dead".to_owned(),
    };
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => break,
        };
        match delivery {
            Some(Ok(d)) => reconcile(&d, &executor).await,
            Some(Err(e)) => {
                tracing::error!(error = %ErrorChain(&e), "dead-letter consumer failed and could not recover");
                failed.report(lost());
                break;
            }
            None => {
                if !stop.is_cancelled() {
                    tracing::error!(
                        "dead-letter consumer was cancelled by the broker (queue deleted?)"
                    );
                    failed.report(lost());
                }
                break;
            }
        }
    }
    if let Err(e) = consumer.cancel().await {
        tracing::debug!(error = %e, "dead-letter consumer cancel failed");
    }
}

/// What the reconciler could read of a dead letter's job.
struct DeadJob {
    id: JobId,
    task: Option<String>,
    attempt: u32,
}

/// The job a dead letter belongs to, if its id can be read. The rest of the message may be
/// bad input; the id is all a row needs.
fn dead_job(delivery: &Delivery, max_body: usize) -> Option<DeadJob> {
    match JobMessage::decode(&delivery.raw, max_body) {
        Ok(m) => Some(DeadJob {
            id: m.id,
            task: Some(m.task.to_string()),
            attempt: m.attempt,
        }),
        Err(e) => e.job_id.map(|id| DeadJob {
            id,
            task: e.task,
            attempt: e.attempt.unwrap_or(1),
        }),
    }
}

/// The Warren queue a dead letter came from: the routing key the broker recorded in
/// `x-death`, or the routing key it arrived with (Warren's own dead-lettering keeps it).
fn origin_queue(delivery: &Delivery) -> String {
    delivery
        .death
        .as_ref()
        .and_then(|d| d.routing_keys.first())
        .filter(|k| !k.is_empty())
        .cloned()
        .or_else(|| Some(delivery.routing_key.clone()).filter(|k| !k.is_empty()))
        .unwrap_or_else(|| "(unknown)".to_owned())
}

/// The failure text recorded with the job, naming the broker's reason.
pub(crate) fn reason_text(death: Option<&Death>) -> String {
    match death {
        Some(d) if d.reason == "delivery_limit" => format!(
            "dead-lettered by RabbitMQ: delivery_limit (from {}, {} time(s)): the message was delivered more times than the queue's x-delivery-limit, most likely because the worker died on it each time (a crash loop); fix the handler, then `warren jobs retry`",
            d.queue, d.count
        ),
        Some(d) => format!(
            "dead-lettered by RabbitMQ: {} (from {}, {} time(s))",
            d.reason, d.queue, d.count
        ),
        None => "dead-lettered without a broker reason (no x-death header)".to_owned(),
    }
}

/// Settles one dead letter: recorded and acked, or parked and acked. On a failure it stays
/// unacked, and returns to `<ns>.dead` when this consumer closes.
async fn reconcile(delivery: &Delivery, executor: &Executor) {
    let queue = origin_queue(delivery);
    let Some(job) = dead_job(delivery, executor.max_body) else {
        return park(
            delivery,
            executor,
            &queue,
            "dead letter without a readable job id",
        )
        .await;
    };
    let state = lifecycle::transition(None, Event::DeadLetter)
        .unwrap_or_else(|e| unreachable!("dead_letter is legal from no row: {e}"));
    debug_assert!(state.is_terminal());
    let reason = reason_text(delivery.death.as_ref());
    tracing::warn!(job.id = %job.id, queue = %queue, reason = %reason, "recording a job the broker dead-lettered");
    let row = RecordRow::dead_lettered(BadInput {
        id: job.id,
        queue: &queue,
        task: job.task.as_deref(),
        attempt: job.attempt.clamp(1, MAX_ATTEMPTS_LIMIT),
        body: &delivery.raw.body,
        max_body: executor.max_body,
        reason,
        worker: &executor.worker_id,
    });
    match executor.recorder.record(row).await {
        Ok(Recorded::Written) => ack(delivery).await,
        Ok(Recorded::Fenced) => {
            tracing::info!(job.id = %job.id, "the job already has a final or newer record; dead letter acked without changing it");
            ack(delivery).await;
        }
        Err(e) => {
            // The recorder already waits out database outages; an error here is data the
            // table refuses. Park the message so it neither loops nor is lost.
            let why = format!(
                "dead letter of job {} could not be recorded: {}",
                job.id,
                ErrorChain(&e)
            );
            park(delivery, executor, &queue, &why).await;
        }
    }
}

/// Moves a dead letter to the parking queue (confirmed), then acks it.
async fn park(delivery: &Delivery, executor: &Executor, queue: &str, why: &str) {
    let reason = match &delivery.death {
        Some(d) => format!("{why}; {}", reason_text(Some(d))),
        None => why.to_owned(),
    };
    tracing::warn!(queue = %queue, reason = %reason, "parking a dead letter for `warren dlq`");
    match executor
        .dead_letters
        .publish_parked(&delivery.raw, queue, &reason)
        .await
    {
        Ok(()) => ack(delivery).await,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "cannot park the dead letter; it stays in the dead-letter queue and is tried again when this consumer reconnects");
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %ErrorChain(&e), "dead-letter ack failed; the redelivery is recorded again, harmlessly (the fence keeps the first)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_limit_reason_names_the_limit_and_what_to_do() {
        let death = Death {
            reason: "delivery_limit".into(),
            count: 1,
            queue: "w.q.default".into(),
            routing_keys: vec!["default".into()],
        };
        let text = reason_text(Some(&death));
        assert!(text.contains("delivery_limit"), "{text}");
        assert!(text.contains("w.q.default"), "{text}");
        assert!(text.contains("warren jobs retry"), "{text}");
        assert!(reason_text(None).contains("no x-death"));
    }
}
