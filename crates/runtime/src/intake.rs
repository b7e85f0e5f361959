//! The intake loop: turns delayed jobs that producers without database access published to
//! the intake queue into `scheduled` rows, acking each message only once its row is committed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_broker::Consumer;
use warren_core::{IntakeMessage, QueueName, RetryPolicy};
use warren_store::{ScheduledJob, Store};

use crate::execute::Executor;

pub(crate) async fn intake_loop(
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
    store: Store,
    executor: Arc<Executor>,
    stop: CancellationToken,
) {
    let mut consumer = consumer.lock().await;
    // Rows of bad intake messages are recorded under this queue name when the message does
    // not say which queue it was for.
    let intake =
        QueueName::new("intake").unwrap_or_else(|_| unreachable!("`intake` is a valid queue name"));
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => break,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::error!(error = %e, "intake consumer failed; delayed jobs from broker-only producers wait until a worker restarts");
                break;
            }
            None => break,
        };
        let message = match IntakeMessage::decode(&delivery.raw, executor.max_body) {
            Ok(m) => m,
            Err(e) => {
                executor.reject(&intake, delivery, e).await;
                continue;
            }
        };
        let job = &message.job;
        let row = ScheduledJob {
            id: job.id,
            queue: message.queue.to_string(),
            task: job.task.to_string(),
            payload: job.payload.get().to_owned(),
            max_attempts: job
                .max_attempts
                .unwrap_or(RetryPolicy::default().max_attempts),
            timeout_ms: job.timeout_ms,
            run_at: message.run_at,
            enqueued_at: job.enqueued_at,
            idempotency_key: job.idempotency_key.clone(),
            traceparent: job.traceparent.clone(),
        };
        match store.schedule(std::slice::from_ref(&row)).await {
            Ok(_) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(error = %e, "intake ack failed; the redelivery is a harmless repeat insert");
                }
            }
            Err(e) => {
                tracing::warn!(job.id = %row.id, error = %e, "cannot schedule an intake job; requeueing it");
                // Give the database a moment rather than spinning on the same failure.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Err(e) = delivery.requeue().await {
                    tracing::warn!(error = %e, "intake requeue failed; the broker redelivers on close");
                }
            }
        }
    }
    if let Err(e) = consumer.cancel().await {
        tracing::debug!(error = %e, "intake consumer cancel failed");
    }
}
