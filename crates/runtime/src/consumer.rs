//! The consume loop: deliveries from one queue, each handed to the executor in a job task of
//! its own once a concurrency slot is free.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_broker::Consumer;
use warren_core::{ErrorChain, QueueName};

use crate::Error;
use crate::executor::Executor;
use crate::supervise::Fatal;

pub(crate) async fn consume_loop(
    queue: QueueName,
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    executor: Arc<Executor>,
    stop: CancellationToken,
    failed: Fatal,
) {
    let mut consumer = consumer.lock().await;
    loop {
        // Take a slot before taking a delivery: when all slots are busy the delivery stays
        // in the prefetch buffer, unacked, and the broker stops sending more.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let delivery = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => break,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let executor = executor.clone();
                let queue = queue.clone();
                jobs.spawn(async move {
                    executor.handle(queue, delivery).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                tracing::error!(queue = %queue, error = %ErrorChain(&e), "consumer failed and could not recover");
                failed.report(Error::ConsumerLost {
                    queue: queue.to_string(),
                });
                break;
            }
            None => {
                if !stop.is_cancelled() {
                    tracing::error!(queue = %queue, "consumer was cancelled by the broker (queue deleted?)");
                    failed.report(Error::ConsumerLost {
                        queue: queue.to_string(),
                    });
                }
                break;
            }
        }
    }
    if let Err(e) = consumer.cancel().await {
        tracing::debug!(error = %e, "consumer cancel failed (channel already closed?)");
    }
}
