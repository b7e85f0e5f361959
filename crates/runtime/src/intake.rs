//! The intake loop: turns delayed jobs that producers without database access published to
//! the intake queue into `scheduled` rows, acking each message only once its row is committed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warren_broker::{Consumer, Delivery};
use warren_core::{DecodeError, DecodeReason, ErrorChain, IntakeMessage, QueueName};
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
        if !schedule(&delivery, &store, &executor, &stop, &intake).await {
            // Shutdown ended the wait; the message returns to the intake queue.
            break;
        }
    }
    if let Err(e) = consumer.cancel().await {
        tracing::debug!(error = %e, "intake consumer cancel failed");
    }
}

/// Turns one intake message into its `scheduled` row and acks it once the row is committed;
/// a bad message is recorded dead. Returns `false` when shutdown ended a wait for the
/// database (the message stays unacked and returns to the queue).
async fn schedule(
    delivery: &Delivery,
    store: &Store,
    executor: &Executor,
    stop: &CancellationToken,
    intake: &QueueName,
) -> bool {
    let message = match IntakeMessage::decode(&delivery.raw, executor.max_body) {
        Ok(m) => m,
        Err(e) => {
            executor.reject(intake, delivery, e).await;
            return true;
        }
    };
    let row = ScheduledJob::from_message(message.job, &message.queue, message.run_at);
    // An outage is waited out with the message held unacked: a requeue would spend a
    // delivery, and enough of them dead-letter the job.
    let scheduled = executor
        .through_outage(
            "scheduling a delayed job from the intake queue",
            stop,
            || store.schedule(std::slice::from_ref(&row)),
        )
        .await;
    match scheduled {
        Ok(Some(_)) => {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %ErrorChain(&e), "intake ack failed; the redelivery is a harmless repeat insert");
            }
            true
        }
        Ok(None) => false,
        Err(e) => {
            let err = DecodeError {
                job_id: Some(row.id),
                task: Some(row.task.clone()),
                attempt: Some(1),
                reason: DecodeReason::Unstorable(ErrorChain(&e).to_string()),
            };
            executor.reject(intake, delivery, err).await;
            true
        }
    }
}
