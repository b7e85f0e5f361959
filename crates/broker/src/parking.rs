//! The parking queue `<ns>.dead.unread`: dead letters without a readable job id, which no
//! worker consumes, read and settled here for `warren dlq`.
//!
//! Looking must not lose anything. Reads use `basic.get` without auto-ack on a channel of
//! their own and never ack; closing that channel returns every message to the queue, in
//! order (a quorum queue hands returned messages out first). Replay acks a message only after
//! its republish to the work exchange is confirmed.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use warren_core::HeaderValue;
use warren_core::RawMessage;
use warren_core::message::{HEADER_DEAD_QUEUE, HEADER_DEAD_REASON};

use crate::connection::within;
use crate::consumer::delivery_of;
use crate::{Broker, Death, Error, Publisher};

/// One message in the parking queue, as read without taking it.
#[derive(Clone, Debug)]
pub struct Parked {
    /// 1-based position in the queue at the time of reading.
    pub position: usize,
    /// The message as it sits in the queue.
    pub raw: RawMessage,
    /// The broker's last `x-death` entry, if the broker dead-lettered it.
    pub death: Option<Death>,
    /// How many times the broker has handed it out before (`x-delivery-count`), if it says.
    pub deliveries: Option<i64>,
}

impl Parked {
    /// Why it is dead: `warren-dead-reason` if Warren set it, else the broker's `x-death`
    /// reason with the queue it left, else `None`.
    pub fn reason(&self) -> Option<String> {
        if let Some(HeaderValue::Str(r)) = self.raw.headers.get(HEADER_DEAD_REASON) {
            return Some(r.clone());
        }
        self.death
            .as_ref()
            .map(|d| format!("{} (from {}, {} time(s))", d.reason, d.queue, d.count))
    }

    /// The Warren queue to replay it to: `warren-dead-queue` if Warren set it, else the
    /// routing key of the broker's `x-death` entry.
    pub fn queue(&self) -> Option<String> {
        if let Some(HeaderValue::Str(q)) = self.raw.headers.get(HEADER_DEAD_QUEUE) {
            return Some(q.clone());
        }
        self.death
            .as_ref()
            .and_then(|d| d.routing_keys.first().cloned())
            .filter(|k| !k.is_empty())
    }

    /// The message to republish: the dead-letter headers and the broker's bookkeeping
    /// removed, so the job starts its next delivery count afresh.
    pub fn replay_message(&self) -> RawMessage {
        let mut raw = self.raw.clone();
        raw.headers.retain(|k, v| {
            !matches!(v, HeaderValue::Other(_))
                && k != HEADER_DEAD_REASON
                && k != HEADER_DEAD_QUEUE
                && !k.starts_with("x-")
        });
        raw
    }
}

/// What [`Broker::replay_parked`] did.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    /// Messages republished (confirmed) and removed from the parking queue.
    pub replayed: usize,
    /// Messages left in the parking queue because no Warren queue could be read from them;
    /// their positions among those read.
    pub skipped: Vec<usize>,
}

impl Broker {
    async fn parking_channel(&self) -> Result<Channel, Error> {
        within(
            self.config.connect_timeout,
            "opening a channel",
            self.connection.create_channel(),
        )
        .await
    }

    fn parking_error(&self, what: &'static str, source: lapin::Error) -> Error {
        Error::Parking {
            what,
            queue: self.config.topology.parking_queue(),
            source: Box::new(source),
        }
    }

    /// Reads up to `limit` messages from the head of the parking queue without taking any:
    /// nothing is acked, and the channel's close returns them all.
    pub async fn peek_parked(&self, limit: usize) -> Result<Vec<Parked>, Error> {
        let queue = self.config.topology.parking_queue();
        let channel = self.parking_channel().await?;
        let mut parked = Vec::new();
        let result = async {
            while parked.len() < limit {
                let got = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| self.parking_error("read from", e))?;
                let Some(got) = got else { break };
                parked.push(parked_of(parked.len() + 1, got.delivery));
            }
            Ok::<_, Error>(())
        }
        .await;
        // Closing without acking hands every message read back to the queue.
        let _ = channel.close(200, "peeked".into()).await;
        result.map(|()| parked.into_iter().map(|(p, _)| p).collect())
    }

    /// Republishes up to `limit` parked messages to the work exchange, each to the Warren
    /// queue it came from, and acks each only once its publish is confirmed. Messages with no
    /// known queue stay parked. Stops at the first failed publish: what was not acked returns
    /// to the parking queue. Only the messages parked when it starts are replayed: one that
    /// fails again and is parked anew while it runs waits for the next replay instead of
    /// looping.
    pub async fn replay_parked(
        &self,
        publisher: &Publisher,
        limit: usize,
    ) -> Result<Replayed, Error> {
        let queue = self.config.topology.parking_queue();
        let channel = self.parking_channel().await?;
        let mut report = Replayed::default();
        let mut read = 0;
        let mut limit = limit;
        let result = async {
            while read < limit {
                let got = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| self.parking_error("read from", e))?;
                let Some(got) = got else { break };
                if read == 0 {
                    // The broker says how many were left behind the first: that is the
                    // queue as it stood when the replay began.
                    let parked = usize::try_from(got.message_count).unwrap_or(usize::MAX);
                    limit = limit.min(parked.saturating_add(1));
                }
                read += 1;
                let (parked, acker) = parked_of(read, got.delivery);
                let Some(target) = parked.queue() else {
                    report.skipped.push(read);
                    continue;
                };
                publisher.publish(&target, &parked.replay_message()).await?;
                acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| self.parking_error("ack a replayed message in", e))?;
                report.replayed += 1;
            }
            Ok::<_, Error>(())
        }
        .await;
        let _ = channel.close(200, "replayed".into()).await;
        result.map(|()| report)
    }

    /// Drops every message in the parking queue; returns how many. A purge never parses the
    /// messages, so it also clears one the AMQP client cannot read.
    pub async fn purge_parked(&self) -> Result<u32, Error> {
        let queue = self.config.topology.parking_queue();
        let channel = self.parking_channel().await?;
        let purged = channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| self.parking_error("purge", e));
        let _ = channel.close(200, "purged".into()).await;
        purged
    }
}

fn parked_of(position: usize, d: lapin::message::Delivery) -> (Parked, lapin::Acker) {
    let d = delivery_of(d);
    let deliveries = match d.raw.headers.get("x-delivery-count") {
        Some(HeaderValue::Int(n)) => Some(*n),
        _ => None,
    };
    let acker = d.acker.clone();
    (
        Parked {
            position,
            raw: d.raw,
            death: d.death,
            deliveries,
        },
        acker,
    )
}
