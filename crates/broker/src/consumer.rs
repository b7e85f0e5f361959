use std::fmt;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection};
use warren_core::RawMessage;

use crate::Error;
use crate::headers::from_field_table;

/// Deliveries from one queue, on a channel of its own with a prefetch window.
pub struct Consumer {
    channel: Channel,
    inner: lapin::Consumer,
    queue: String,
    tag: String,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) async fn open(
        connection: &Connection,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Self, Error> {
        let consume_err = |source| Error::Consume {
            queue: queue.to_owned(),
            source: Box::new(source),
        };
        let channel = connection.create_channel().await.map_err(Error::channel)?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(consume_err)?;
        let inner = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(consume_err)?;
        Ok(Self {
            channel,
            inner,
            queue: queue.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The next delivery, or `None` once the consumer is cancelled. A connection loss is
    /// waited out (lapin recovers the channel and the consumer); deliveries received before
    /// it can no longer be acked and will be redelivered by the broker.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        loop {
            match self.inner.next().await? {
                Ok(d) => {
                    let p = &d.properties;
                    let raw = RawMessage {
                        message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
                        content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
                        timestamp: *p.timestamp(),
                        headers: from_field_table(p.headers().as_ref()),
                        body: d.data,
                    };
                    return Some(Ok(Delivery {
                        raw,
                        redelivered: d.redelivered,
                        tag: d.delivery_tag,
                        acker: d.acker,
                    }));
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "consumer interrupted; waiting for recovery");
                    if let Err(source) = self.channel.wait_for_recovery(e).await {
                        return Some(Err(Error::Consume {
                            queue: self.queue.clone(),
                            source: Box::new(source),
                        }));
                    }
                }
            }
        }
    }

    /// Stops new deliveries. Deliveries already received stay valid until acked or the
    /// channel closes.
    pub async fn cancel(&self) -> Result<(), Error> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
            .map_err(|source| Error::Consume {
                queue: self.queue.clone(),
                source: Box::new(source),
            })
    }

    /// Closes the channel: every unacked delivery of this consumer returns to the queue.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "consumer closed".into()).await;
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }
}

/// One message handed to this process, to be settled exactly once.
pub struct Delivery {
    pub raw: RawMessage,
    /// The broker's flag: this message was delivered before, to this or another consumer.
    pub redelivered: bool,
    pub tag: u64,
    acker: Acker,
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
