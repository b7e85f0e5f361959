//! Phase 1, the broker ceiling: what RabbitMQ alone sustains on this machine for Warren's
//! messages, with Warren's durability and none of its work.
//!
//! A producer connection publishes the same messages `Client::enqueue_many` would (persistent,
//! mandatory, confirms pipelined through `Publisher::publish_many`) to a quorum work queue,
//! while a consumer connection receives them with the same prefetch and acks each one, with
//! at most `concurrency` acks in flight as the worker has at most that many handlers. No
//! decoding, no handler, no database: whatever Warren adds on top shows up as the gap between
//! this phase and the next.

use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren_broker::{Consumer, PublishRequest, Publisher};
use warren_core::message::HEADER_ENQUEUED_AT;
use warren_core::{HeaderValue, RawMessage, TaskName};

use crate::report::{CEILING, Latency, Measure, Phase};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::workload::{CHUNK, TASK, noop_message, payload};

/// Publishes and consumes `settings.jobs` messages after a warm-up, in `sandbox`, until done
/// or `stop`ped.
pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Phase> {
    let producer = sandbox.connect("producer").await?;
    let consumer = sandbox.connect("consumer").await?;
    let measured = stoppable(stop, async {
        let publisher = producer
            .publisher()
            .await
            .context("opening the publisher channel")?;
        let deliveries = consumer
            .consume(&sandbox.queue, settings.prefetch, "warren-bench ceiling")
            .await
            .context("starting the consumer")?;
        let load = Load {
            publisher: &publisher,
            queue: sandbox.queue.as_str(),
            task: TaskName::new(TASK)?,
            payload: payload(settings.payload_bytes),
        };

        // The consumer runs as its own task, as it would in its own process, so publishing
        // and consuming overlap exactly as they do in the end-to-end phase.
        let warmup = tokio::spawn(drain(deliveries, settings.warmup, settings.concurrency));
        load.publish(settings.warmup).await?;
        let warm = warmup.await.context("the consumer task panicked")??;

        let drained = tokio::spawn(drain(warm.consumer, settings.jobs, settings.concurrency));
        let start = Instant::now();
        load.publish(settings.jobs).await?;
        let published = start.elapsed();
        let mut done = drained.await.context("the consumer task panicked")??;
        let elapsed = done.last_ack.duration_since(start);
        done.consumer.close().await;

        Ok(Phase {
            key: CEILING,
            title: "broker ceiling (pub+consume)",
            jobs: settings.jobs,
            elapsed,
            measures: vec![
                Measure::rate(
                    "publish",
                    "publish only (confirmed)",
                    settings.jobs,
                    published,
                ),
                Measure::latency(
                    "enqueue_to_delivered",
                    "enqueue→delivered",
                    Latency::of(&mut done.delivered_ms),
                ),
            ],
        })
    })
    .await;
    producer.close().await;
    consumer.close().await;
    measured
}

/// What the producer side publishes, and where.
struct Load<'a> {
    publisher: &'a Publisher,
    queue: &'a str,
    task: TaskName,
    payload: Box<RawValue>,
}

impl Load<'_> {
    /// Publishes `count` fresh job messages in chunks, each confirmed before returning.
    async fn publish(&self, count: u64) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(CHUNK as u64);
            let messages: Vec<RawMessage> = (0..n)
                .map(|_| noop_message(&self.task, &self.payload))
                .collect();
            let requests: Vec<PublishRequest<'_>> = messages
                .iter()
                .map(|message| PublishRequest {
                    queue: self.queue,
                    message,
                })
                .collect();
            for outcome in self.publisher.publish_many(&requests).await {
                outcome.context("publishing to the ceiling queue")?;
            }
            left -= n;
        }
        Ok(())
    }
}

/// The consumer handed back after `count` deliveries, with when the last ack went out and
/// each delivery's enqueue-to-delivery latency.
struct Drained {
    consumer: Consumer,
    last_ack: Instant,
    delivered_ms: Vec<f64>,
}

/// Receives and acks `count` deliveries, at most `concurrency` acks in flight.
async fn drain(mut consumer: Consumer, count: u64, concurrency: usize) -> anyhow::Result<Drained> {
    let mut acks = JoinSet::new();
    let mut delivered_ms = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for received in 0..count {
        // Like the worker, take a slot before taking a delivery, so unacked messages wait in
        // the prefetch buffer rather than in this process.
        if acks.len() >= concurrency
            && let Some(acked) = acks.join_next().await
        {
            acked.context("an ack task panicked")??;
        }
        let delivery = consumer
            .next()
            .await
            .with_context(|| {
                format!("the broker cancelled the consumer after {received} of {count} deliveries")
            })?
            .context("receiving a delivery")?;
        if let Some(HeaderValue::Int(enqueued)) = delivery.raw.headers.get(HEADER_ENQUEUED_AT) {
            delivered_ms.push((Utc::now().timestamp_millis() - enqueued) as f64);
        }
        acks.spawn(async move { delivery.ack().await.context("acking a delivery") });
    }
    while let Some(acked) = acks.join_next().await {
        acked.context("an ack task panicked")??;
    }
    Ok(Drained {
        consumer,
        last_ack: Instant::now(),
        delivered_ms,
    })
}
