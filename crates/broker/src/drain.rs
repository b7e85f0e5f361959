//! Taking the ready messages out of a work queue, for `warren queues purge`: read with
//! `basic.get` on a channel of its own, acked one by one only after the caller has recorded
//! them. What is not acked returns to the queue when the drain closes.

use lapin::Channel;
use lapin::options::BasicGetOptions;
use warren_core::QueueName;

use crate::connection::within;
use crate::consumer::delivery_of;
use crate::{Broker, Delivery, Error};

/// The ready messages of one queue, as they stood when the drain began: messages published
/// after its first read are left alone, so a busy producer cannot keep a purge running.
pub struct Drain {
    channel: Channel,
    queue: String,
    timeout: std::time::Duration,
    /// Messages still to take, known after the first read (`None` before it).
    left: Option<usize>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("queue", &self.queue)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts taking the ready messages of `queue`.
    pub async fn drain(&self, queue: &QueueName) -> Result<Drain, Error> {
        let channel = within(
            self.config.connect_timeout,
            "opening a channel",
            self.connection.create_channel(),
        )
        .await?;
        Ok(Drain {
            channel,
            queue: self.config.topology.queue(queue),
            timeout: self.config.connect_timeout,
            left: None,
        })
    }
}

impl Drain {
    /// Takes up to `max` more messages; an empty batch means the queue (as it stood) is empty.
    /// Each must be acked once recorded; unacked ones go back to the queue on
    /// [`Drain::close`].
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, Error> {
        let mut batch = Vec::new();
        while batch.len() < max && self.left != Some(0) {
            let get = self.channel.basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            );
            let got = match tokio::time::timeout(self.timeout, get).await {
                Ok(Ok(got)) => got,
                Ok(Err(source)) => {
                    return Err(Error::Drain {
                        what: "read from",
                        queue: self.queue.clone(),
                        source: Box::new(source),
                    });
                }
                Err(_) => {
                    return Err(Error::StepTimeout {
                        what: "reading a message to purge",
                        timeout: self.timeout,
                    });
                }
            };
            let Some(got) = got else {
                self.left = Some(0);
                break;
            };
            // The broker says how many remain behind this one.
            let behind = usize::try_from(got.message_count).unwrap_or(usize::MAX);
            self.left = Some(match self.left {
                None => behind,
                Some(left) => left.saturating_sub(1).min(behind),
            });
            batch.push(delivery_of(got.delivery));
        }
        Ok(batch)
    }

    /// The RabbitMQ name of the queue drained.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Closes the channel: every message taken and not acked returns to the queue.
    pub async fn close(self) {
        let _ = tokio::time::timeout(self.timeout, self.channel.close(200, "drained".into())).await;
    }
}
