//! The consume loop: deliveries from one queue, each handed to the executor in a job task of
//! its own once a concurrency slot is free; paused and resumed as an admin asks.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_broker::Consumer;
use warren_core::{ErrorChain, QueueName};

use crate::Error;
use crate::control::PausedQueues;
use crate::executor::Executor;
use crate::supervise::Fatal;

#[allow(
    clippy::too_many_arguments,
    reason = "each argument is one of the worker's shared parts; a struct would only rename them"
)]
pub(crate) async fn consume_loop(
    queue: QueueName,
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    executor: Arc<Executor>,
    mut paused: watch::Receiver<PausedQueues>,
    stop: CancellationToken,
    failed: Fatal,
) {
    let mut consumer = consumer.lock().await;
    let name = queue.to_string();
    loop {
        if paused.borrow_and_update().contains(&name) {
            pause(&queue, &mut consumer).await;
            tokio::select! {
                changed = paused.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                () = stop.cancelled() => break,
            }
        }
        if consumer.is_paused() {
            resume(&queue, &mut consumer, &failed).await;
            if consumer.is_paused() {
                break;
            }
        }
        // Take a slot before taking a delivery: when all slots are busy the delivery stays
        // in the prefetch buffer, unacked, and the broker stops sending more.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = paused.changed() => continue,
            () = stop.cancelled() => break,
        };
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = paused.changed() => continue,
            () = stop.cancelled() => break,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let executor = executor.clone();
                let queue = queue.clone();
                // Boxed so that the task holds a pointer, not the job's state machine:
                // spawning moves the future into the task and ending it overwrites it with
                // the output, and each of those copied all of it (see `Executor::handle`).
                jobs.spawn(Box::pin(async move {
                    crate::observe::in_flight(1.0);
                    executor.handle(queue, delivery).await;
                    crate::observe::in_flight(-1.0);
                    drop(permit);
                }));
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

/// Stops taking deliveries from `queue`; those prefetched but not started go back to it.
/// Jobs already started finish and are acked as usual.
async fn pause(queue: &QueueName, consumer: &mut Consumer) {
    if consumer.is_paused() {
        return;
    }
    match consumer.pause().await {
        Ok(returned) => {
            tracing::info!(queue = %queue, returned, "queue paused: taking no new jobs from it; prefetched ones went back to the queue")
        }
        Err(e) => {
            tracing::warn!(queue = %queue, error = %ErrorChain(&e), "queue paused, but the consumer could not be cancelled cleanly; its connection was closed, so its unacked deliveries return to the queue")
        }
    }
}

/// Starts taking deliveries from `queue` again. A failure to subscribe is fatal to the worker,
/// as at start-up: the supervisor restarts it.
async fn resume(queue: &QueueName, consumer: &mut Consumer, failed: &Fatal) {
    match consumer.resume().await {
        Ok(()) => tracing::info!(queue = %queue, "queue resumed: taking jobs from it again"),
        Err(e) => {
            tracing::error!(queue = %queue, error = %ErrorChain(&e), "cannot resume consuming the queue");
            failed.report(Error::ConsumerLost {
                queue: queue.to_string(),
            });
        }
    }
}
