//! The intake loop: turns delayed jobs that producers without database access published to
//! the intake queue into `scheduled` rows, acking each message only once its row is committed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warren_broker::Consumer;
use warren_core::{DecodeError, DecodeReason, ErrorChain, IntakeMessage, QueueName, RetryPolicy};
use warren_store::{ScheduledJob, Store};

use crate::executor::Executor;
use crate::supervise::Fatal;

pub(crate) async fn intake_loop(
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
    store: Store,
    executor: Arc<Executor>,
    stop: CancellationToken,
    failed: Fatal,
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
                tracing::error!(error = %ErrorChain(&e), "intake consumer failed and could not recover");
                failed.report(crate::Error::ConsumerLost {
                    queue: "intake".to_owned(),
                });
                break;
            }
            None => {
                if !stop.is_cancelled() {
                    tracing::error!("intake consumer was cancelled by the broker (queue deleted?)");
                    failed.report(crate::Error::ConsumerLost {
                        queue: "intake".to_owned(),
                    });
                }
                break;
            }
        };
        let message = match IntakeMessage::decode(&delivery.raw, executor.max_body) {
            Ok(m) => m,
            Err(e) => {
                executor.reject(&intake, &delivery, e).await;
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
        // An outage is waited out with the message held unacked: a requeue would spend a
        // delivery, and enough of them dead-letter the job.
        let scheduled = executor
            .through_outage(
                "scheduling a delayed job from the intake queue",
                &stop,
                || store.schedule(std::slice::from_ref(&row)),
            )
            .await;
        match scheduled {
            Ok(Some(_)) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(error = %e, "intake ack failed; the redelivery is a harmless repeat insert");
                }
            }
            // Shutdown ended the wait; the message returns to the intake queue.
            Ok(None) => break,
            Err(e) => {
                let err = DecodeError {
                    job_id: Some(row.id),
                    task: Some(row.task.clone()),
                    attempt: Some(1),
                    reason: DecodeReason::Unstorable(ErrorChain(&e).to_string()),
                };
                executor.reject(&intake, &delivery, err).await;
            }
        }
    }
    if let Err(e) = consumer.cancel().await {
        tracing::debug!(error = %e, "intake consumer cancel failed");
    }
}
