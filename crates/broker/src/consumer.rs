use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection};
use warren_core::RawMessage;

use crate::connection::{open_connection_at, within};
use crate::headers::{Death, death_of, from_field_table};
use crate::supervised::{RETRY_MAX, RETRY_MIN};
use crate::{BrokerConfig, Error};

/// Deliveries from one queue, on a connection and channel of its own, with a prefetch window.
///
/// The connection is the consumer's own for two reasons. A broker alarm blocks connections
/// that publish; acks on a consume-only connection keep flowing. And lapin treats a frame it
/// cannot parse (a `message_id` that is not UTF-8, say) as fatal to the whole connection: on
/// its own connection, such a poison message takes only this consumer's unacked deliveries
/// with it.
///
/// Nobody inside the connection brings it back once lost (lapin's auto-recovery is not used,
/// see `crate::connection::open_connection_at`): the consumer opens a new connection itself,
/// from the node after the one it had, retrying every [`RETRY_MAX`] at most while no node
/// answers, so it is back within about that long of the broker's return.
///
/// After a failure that is not a lost connection (a frame lapin could not parse) the
/// consumer reconnects in *careful mode*:
/// prefetch 1, so the broker has at most one unacked message out with it. If that message is
/// the poison, the connection dies again and only that message is charged a delivery; after
/// `x-delivery-limit` of those the broker dead-letters it. Careful mode ends after
/// [`CAREFUL_CLEAN_DELIVERIES`] deliveries in a row were read cleanly, and the prefetch
/// window is restored.
pub struct Consumer {
    config: BrokerConfig,
    queue: String,
    tag: String,
    prefetch: u16,
    /// Clean deliveries since careful mode began; `None` outside careful mode.
    careful: Option<u32>,
    connection: Connection,
    /// The node of the URL list `connection` is to.
    node: usize,
    channel: Channel,
    /// The subscription; `None` while paused ([`Consumer::pause`]).
    inner: Option<lapin::Consumer>,
    /// False while the connection under the subscription is lost and being recovered or
    /// reopened; see [`Consumer::liveness`].
    live: Arc<AtomicBool>,
}

/// Deliveries read cleanly, in a row, that end careful mode. Quorum queues hand returned
/// messages out before fresh ones, so by then the poison and every neighbour returned with it
/// have come round again.
pub const CAREFUL_CLEAN_DELIVERIES: u32 = 64;

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .field("prefetch", &self.prefetch)
            .field("careful", &self.careful)
            .field("paused", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) async fn open(
        config: &BrokerConfig,
        queue: &str,
        prefetch: u16,
        tag: &str,
        paused: bool,
    ) -> Result<Self, Error> {
        let prefetch = prefetch.max(1);
        let (connection, node, channel, inner) =
            subscribe(config, queue, prefetch, tag, paused, 0).await?;
        Ok(Self {
            config: config.clone(),
            queue: queue.to_owned(),
            tag: tag.to_owned(),
            prefetch,
            careful: None,
            connection,
            node,
            channel,
            inner,
            live: Arc::new(AtomicBool::new(true)),
        })
    }

    /// A flag that is false while this consumer has lost its connection and is recovering
    /// or reopening it (no deliveries can arrive), and true otherwise, including while
    /// deliberately paused. For health checks, which cannot wait for [`Consumer::next`].
    pub fn liveness(&self) -> Arc<AtomicBool> {
        self.live.clone()
    }

    /// The next delivery, or `None` once the consumer is cancelled (by [`Consumer::cancel`]
    /// or by the broker, e.g. because the queue was deleted). A lost connection is replaced
    /// with a new one; a failure that is not a lost connection (a frame lapin could not parse)
    /// with a new one in careful mode. Deliveries received before either can no longer be
    /// acked and will be redelivered by the broker.
    ///
    /// While the consumer is paused, this waits forever: call [`Consumer::resume`] first.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return std::future::pending().await;
            };
            let error = match inner.next().await {
                Some(Ok(d)) => {
                    if self.careful.is_some() {
                        Box::pin(self.count_clean()).await;
                    }
                    return Some(Ok(delivery_of(d)));
                }
                Some(Err(e)) => Some(e),
                // The stream also ends when the connection under it died for good; only a
                // live connection means the broker really cancelled this consumer.
                None if self.connection.status().connected() => return None,
                None => None,
            };
            self.live.store(false, Ordering::Relaxed);
            // lapin calls a failure recoverable when it is the connection's, not the bytes':
            // reset, refused, closed by the broker, heartbeats missed. Anything else (a frame
            // it could not parse, or an end with no error given) may be a poison message, so
            // the new connection takes one delivery at a time until that is ruled out.
            let careful = match &error {
                Some(error) if error.can_be_recovered() => {
                    tracing::warn!(queue = %self.queue, error = %error, "consumer connection lost; reconnecting");
                    false
                }
                Some(error) => {
                    tracing::warn!(queue = %self.queue, error = %error, "consumer connection failed (a malformed frame from the broker?)");
                    true
                }
                None => {
                    tracing::warn!(queue = %self.queue, "consumer connection closed under it");
                    true
                }
            };
            // The reconnect is boxed: its future (a whole connection handshake) is kilobytes,
            // and inline it made every `next()` future as large, which the consume loop
            // copied for every delivery (callgrind: a tenth of the benchmark).
            if let Err(e) = Box::pin(self.reopen(careful)).await {
                return Some(Err(e));
            }
        }
    }

    /// A new connection, channel and subscription, from the node after the one lost, retried
    /// with backoff while no node can be reached; with prefetch 1 if `careful`. Refusals that
    /// another try would not change (the queue is gone, the credentials are wrong) are
    /// returned.
    async fn reopen(&mut self, careful: bool) -> Result<(), Error> {
        if careful {
            self.careful = Some(0);
        }
        let prefetch = if self.careful.is_some() {
            1
        } else {
            self.prefetch
        };
        let _ = tokio::time::timeout(
            self.config.connect_timeout,
            self.connection.close(200, "reopening".into()),
        )
        .await;
        let lost = std::time::Instant::now();
        let mut delay = RETRY_MIN;
        let mut logged = false;
        loop {
            let first = self.node + 1;
            match subscribe(&self.config, &self.queue, prefetch, &self.tag, false, first).await {
                Ok((connection, node, channel, inner)) => {
                    let down = lost.elapsed();
                    if self.careful.is_some() {
                        tracing::warn!(queue = %self.queue, ?down, "consumer reconnected in careful mode: prefetch 1 until {CAREFUL_CLEAN_DELIVERIES} deliveries in a row are read cleanly");
                    } else {
                        tracing::info!(queue = %self.queue, ?down, "consumer reconnected");
                    }
                    self.connection = connection;
                    self.node = node;
                    self.channel = channel;
                    self.inner = inner;
                    self.live.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    if !logged {
                        tracing::warn!(queue = %self.queue, error = %warren_core::ErrorChain(&e), "cannot reconnect the consumer yet; retrying every {RETRY_MAX:?} at most");
                        logged = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Counts a clean delivery in careful mode and restores the prefetch window after enough.
    async fn count_clean(&mut self) {
        let Some(clean) = self.careful.as_mut() else {
            return;
        };
        *clean += 1;
        if *clean < CAREFUL_CLEAN_DELIVERIES {
            return;
        }
        match self
            .channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
        {
            Ok(()) => {
                tracing::info!(queue = %self.queue, prefetch = self.prefetch, "careful mode over; prefetch window restored");
                self.careful = None;
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "cannot restore the prefetch window; staying careful")
            }
        }
    }

    /// True while the consumer runs with prefetch 1 after a failure lapin could not recover.
    pub fn is_careful(&self) -> bool {
        self.careful.is_some()
    }

    /// Stops new deliveries. Deliveries already received stay valid until acked or the
    /// channel closes. A paused consumer has nothing to cancel.
    pub async fn cancel(&self) -> Result<(), Error> {
        if self.inner.is_none() {
            return Ok(());
        }
        within(
            self.config.connect_timeout,
            "cancelling a consumer",
            self.channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await
    }

    /// True while paused: subscribed to nothing, with the connection and channel kept so that
    /// deliveries handed out before the pause can still be acked.
    pub fn is_paused(&self) -> bool {
        self.inner.is_none()
    }

    /// Stops deliveries and returns the ones received but not yet handed out by
    /// [`Consumer::next`] to the queue (nack with requeue); returns how many. Deliveries already
    /// handed out stay valid: their jobs finish and are acked as usual.
    ///
    /// RabbitMQ counts a returned message as delivered, so each pause charges the prefetched
    /// messages one delivery against the queue's `x-delivery-limit`.
    pub async fn pause(&mut self) -> Result<usize, Error> {
        let Some(mut inner) = self.inner.take() else {
            return Ok(0);
        };
        let t = self.config.connect_timeout;
        let cancelled = within(
            t,
            "pausing a consumer",
            self.channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
        if let Err(e) = cancelled {
            // The channel is unusable: closing its connection returns every unacked delivery,
            // and `resume` subscribes on a new one.
            let _ =
                tokio::time::timeout(t, self.connection.close(200, "pause failed".into())).await;
            return Err(e);
        }
        // After cancel-ok the broker sends nothing more; the stream yields what it had
        // buffered and then ends.
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let mut returned = 0;
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(t, inner.next()).await {
            if delivery.acker.nack(requeue).await.is_ok() {
                returned += 1;
            }
        }
        Ok(returned)
    }

    /// Subscribes again after [`Consumer::pause`], on the same channel. If that channel has
    /// gone, it reconnects as after a failure: in careful mode, retried with backoff while the
    /// broker cannot be reached. Does nothing if the consumer is not paused.
    pub async fn resume(&mut self) -> Result<(), Error> {
        if self.inner.is_some() {
            return Ok(());
        }
        if self.connection.status().connected() {
            let subscribed = within(
                self.config.connect_timeout,
                "resuming a consumer",
                self.channel.basic_consume(
                    self.queue.as_str().into(),
                    self.tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await;
            match subscribed {
                Ok(inner) => {
                    self.inner = Some(inner);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "cannot resume on the consumer's channel; reconnecting")
                }
            }
        }
        self.reopen(true).await
    }

    /// Closes the channel and the connection: every unacked delivery of this consumer returns
    /// to the queue.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            self.config.connect_timeout,
            self.connection.close(200, "consumer closed".into()),
        )
        .await;
    }

    /// The RabbitMQ name of the queue consumed, e.g. `warren.q.default`.
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

/// Warren's view of a lapin delivery: the contract's fields, the broker's `x-death`, and the
/// handle to settle it.
pub(crate) fn delivery_of(d: lapin::message::Delivery) -> Delivery {
    let p = &d.properties;
    let raw = RawMessage {
        message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
        timestamp: *p.timestamp(),
        headers: from_field_table(p.headers().as_ref()),
        body: d.data,
    };
    Delivery {
        raw,
        death: death_of(p.headers().as_ref()),
        routing_key: d.routing_key.as_str().to_owned(),
        redelivered: d.redelivered,
        tag: d.delivery_tag,
        acker: d.acker,
    }
}

/// Connects (trying the nodes from the one at index `first`) and subscribes to `queue` with
/// `prefetch` (unless `paused`: then the channel is opened but nothing is subscribed), every
/// step bounded in time. Returns the connection, the index of its node, the channel and the
/// subscription.
async fn subscribe(
    config: &BrokerConfig,
    queue: &str,
    prefetch: u16,
    tag: &str,
    paused: bool,
    first: usize,
) -> Result<(Connection, usize, Channel, Option<lapin::Consumer>), Error> {
    let (connection, node) = open_connection_at(config, &format!("consume {queue}"), first).await?;
    let opened = async {
        let t = config.connect_timeout;
        let channel = within(t, "opening a channel", connection.create_channel()).await?;
        within(
            t,
            "setting the prefetch window",
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        if paused {
            return Ok::<_, Error>((channel, None));
        }
        let inner = within(
            t,
            "subscribing",
            channel.basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((channel, Some(inner)))
    }
    .await;
    match opened {
        Ok((channel, inner)) => Ok((connection, node, channel, inner)),
        Err(e) => {
            let _ = tokio::time::timeout(
                config.connect_timeout,
                connection.close(200, "subscribe failed".into()),
            )
            .await;
            Err(Error::Subscribe {
                queue: queue.to_owned(),
                source: Box::new(e),
            })
        }
    }
}

/// One message handed to this process, to be settled exactly once.
pub struct Delivery {
    /// The message as received, ready for `JobMessage::decode`.
    pub raw: RawMessage,
    /// Why the broker dead-lettered it, read from `x-death`; `None` unless it did.
    pub death: Option<Death>,
    /// The routing key it was published with (for a Warren job: its Warren queue).
    pub routing_key: String,
    /// The broker's flag: this message was delivered before, to this or another consumer.
    pub redelivered: bool,
    /// The delivery tag, unique on its consumer's channel; errors and logs name it.
    pub tag: u64,
    pub(crate) acker: Acker,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.raw.message_id)
            .field("redelivered", &self.redelivered)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    fn job(&self) -> String {
        self.raw
            .message_id
            .clone()
            .unwrap_or_else(|| "(no id)".to_owned())
    }

    fn settle_err(&self, source: lapin::Error) -> Error {
        Error::Settle {
            tag: self.tag,
            job: self.job(),
            source: Box::new(source),
        }
    }

    /// Done with: the broker forgets the message.
    pub async fn ack(&self) -> Result<(), Error> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| self.settle_err(e))
    }

    /// Back to the queue for another delivery (counts towards the delivery limit).
    pub async fn requeue(&self) -> Result<(), Error> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        self.acker
            .nack(options)
            .await
            .map(drop)
            .map_err(|e| self.settle_err(e))
    }

    /// Rejected without requeue: the queue dead-letters it to the dead-letter exchange.
    pub async fn dead_letter(&self) -> Result<(), Error> {
        self.acker
            .nack(BasicNackOptions::default())
            .await
            .map(drop)
            .map_err(|e| self.settle_err(e))
    }
}
