use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, PublisherConfirm};
use warren_core::HeaderValue;
use warren_core::message::{HEADER_DEAD_QUEUE, HEADER_DEAD_REASON, RawMessage};

use crate::connection::{passive_depth, within};
use crate::headers::to_field_table;
use crate::supervised::Supervised;
use crate::{BrokerConfig, Error, Topology};

/// One message to publish: the Warren queue it is for and the message itself.
#[derive(Clone, Copy, Debug)]
pub struct PublishRequest<'a> {
    /// The routing key: the Warren queue name (for an intake message, the intake queue's
    /// RabbitMQ name, since it goes through the default exchange).
    pub queue: &'a str,
    /// The message, already encoded by the message contract.
    pub message: &'a RawMessage,
}

/// Publishes to the work exchange on a channel in confirm mode.
///
/// Every publish is persistent and `mandatory`, and succeeds only when the broker's confirm is
/// an ack without a returned message: an unroutable message (no such queue) or a nack is an
/// error for that message, never a silent success. Clones share the channel.
///
/// The channel is replaced when it is lost: with the connection (which the [`crate::Broker`]
/// replaces by itself), or alone (the broker closed it). A publish that finds it lost waits
/// for a new one, within the confirm timeout; a message is never sent twice on its own, and a
/// confirm from the old channel is never taken for one on the new.
///
/// Each outcome belongs to its own message, however many tasks publish at once:
/// - RabbitMQ numbers confirms in the order messages reach it, and lapin numbers them when a
///   publish is called, so the two steps are taken under one lock per channel (see
///   [`Publisher::send`]).
/// - lapin hands a `basic.return` to whichever confirm it completes next, which under
///   concurrent publishes is often another message's. So a message is not sent to a queue
///   RabbitMQ has not been seen to have: the first publish to each queue asks with a passive
///   declare, and a queue missing then is refused as unroutable without a publish. Returns
///   are then left only for a queue deleted while it is published to (see
///   docs/reliability.md).
#[derive(Clone)]
pub struct Publisher {
    connection: Supervised,
    channel: Arc<ChannelSlot>,
    /// What is known of RabbitMQ's queues, shared by the clones.
    routes: Arc<Mutex<Routes>>,
    topology: Topology,
    connect_timeout: Duration,
    exchange: String,
    dead_letter_exchange: String,
    intake_queue: String,
    parking_queue: String,
    confirm_timeout: Duration,
    /// Confirms in flight at once in [`Publisher::publish_many`]. A few hundred keeps the
    /// broker busy without holding a whole batch's confirms in memory.
    window: usize,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// How long a queue found missing is taken as missing without asking again. A client that
/// keeps sending jobs to a misspelt queue costs RabbitMQ one passive declare (a channel, and an
/// error line in its log) a second, not one a job; a queue declared meanwhile takes jobs at
/// most this much later.
const MISSING_FOR: Duration = Duration::from_secs(1);

/// What a publisher knows of RabbitMQ's queues, by RabbitMQ name.
#[derive(Debug, Default)]
struct Routes {
    /// Seen to exist; forgotten when a message comes back unroutable, so that each is asked
    /// about again.
    known: HashSet<String>,
    /// Seen missing, and when.
    missing: HashMap<String, Instant>,
}

/// Whether a queue can be published to, as far as the publisher knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// It exists.
    Open,
    /// RabbitMQ says it does not exist.
    Missing,
    /// It could not be asked (the connection is down).
    Unknown,
}

/// The wait before trying again to open a publishing channel that failed to open although
/// the connection was up a moment before.
const RETRY_CHANNEL: Duration = Duration::from_millis(100);

/// How a message is named in errors: its job id, or a placeholder when it has none.
fn job_of(message: &RawMessage) -> String {
    message
        .message_id
        .clone()
        .unwrap_or_else(|| "(no id)".to_owned())
}

/// The publishing channel that every clone of a publisher shares, and the lock that lets one
/// of them at a time replace it.
struct ChannelSlot {
    current: Mutex<Open>,
    replacing: tokio::sync::Mutex<()>,
}

/// A channel in confirm mode, the generation of the connection it was opened on, and the lock
/// that keeps its publishes in the order their confirms are numbered.
#[derive(Clone)]
struct Open {
    channel: Arc<Channel>,
    generation: u64,
    order: Arc<Mutex<()>>,
}

impl ChannelSlot {
    fn get(&self) -> Open {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, open: Open) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = open;
    }
}

/// Opens a channel on the current connection (waiting for one while it is being replaced)
/// and switches it to confirm mode, each step within `timeout`.
async fn open_channel(connection: &Supervised, timeout: Duration) -> Result<Open, Error> {
    let (channel, generation) = within(
        timeout,
        "opening a publishing channel",
        connection.create_channel_with_generation(),
    )
    .await?;
    within(
        timeout,
        "switching the channel to confirm mode",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(Open {
        channel: Arc::new(channel),
        generation,
        order: Arc::new(Mutex::new(())),
    })
}

impl Publisher {
    pub(crate) async fn open(
        connection: &Supervised,
        config: &BrokerConfig,
    ) -> Result<Self, Error> {
        let open = open_channel(connection, config.connect_timeout).await?;
        Ok(Self {
            connection: connection.clone(),
            channel: Arc::new(ChannelSlot {
                current: Mutex::new(open),
                replacing: tokio::sync::Mutex::new(()),
            }),
            routes: Arc::default(),
            topology: config.topology.clone(),
            connect_timeout: config.connect_timeout,
            exchange: config.topology.work_exchange(),
            dead_letter_exchange: config.topology.dead_letter_exchange(),
            intake_queue: config.topology.intake_queue(),
            parking_queue: config.topology.parking_queue(),
            confirm_timeout: config.confirm_timeout,
            window: 512,
        })
    }

    /// Sets how many confirms [`Publisher::publish_many`] keeps in flight.
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, queue: &str, message: &RawMessage) -> Result<(), Error> {
        let req = PublishRequest { queue, message };
        let target = self.topology.queue_name_of(queue);
        self.publish_one(&self.exchange, &self.exchange, &target, req)
            .await
    }

    /// Publishes many messages with their confirms pipelined, and reports each one's outcome
    /// in order. A failure of one message does not stop the others, except that once the
    /// connection is lost for good the rest are reported [`Error::NotSent`] at once.
    ///
    /// Every confirm is waited for until its own deadline, `confirm_timeout` after its
    /// message was sent, never `confirm_timeout` after the one before it settled: a broker
    /// that dies with a full window of confirms pending costs one timeout, not one per
    /// message.
    pub async fn publish_many(&self, batch: &[PublishRequest<'_>]) -> Vec<Result<(), Error>> {
        let mut results: Vec<Option<Result<(), Error>>> = batch.iter().map(|_| None).collect();
        let mut pending: VecDeque<(usize, Instant, PublisherConfirm)> =
            VecDeque::with_capacity(self.window);
        let mut lost = false;
        // Each queue of the batch is asked about once, before anything is sent.
        let mut routes: HashMap<&str, Route> = HashMap::new();
        for req in batch {
            if !routes.contains_key(req.queue) {
                let target = self.topology.queue_name_of(req.queue);
                routes.insert(req.queue, self.route(&target).await);
            }
        }
        for (i, req) in batch.iter().enumerate() {
            let route = routes.get(req.queue).copied().unwrap_or(Route::Unknown);
            if let Some(refused) = Self::refusal(route, &self.exchange, *req) {
                results[i] = Some(Err(refused));
                continue;
            }
            if lost {
                results[i] = Some(Err(Error::NotSent {
                    job: job_of(req.message),
                    queue: req.queue.to_owned(),
                }));
                continue;
            }
            if pending.len() >= self.window
                && let Some((j, deadline, confirm)) = pending.pop_front()
            {
                results[j] = Some(
                    self.settle(&self.exchange, batch[j], confirm, deadline)
                        .await,
                );
            }
            match self.send(&self.exchange, *req).await {
                Ok(confirm) => {
                    pending.push_back((i, Instant::now() + self.confirm_timeout, confirm));
                }
                Err(e) => {
                    // `send` already waited (bounded) for a new channel; without one by
                    // then, the rest would not be taken either.
                    lost = !self.is_usable(&self.channel.get());
                    results[i] = Some(Err(e));
                }
            }
        }
        for (j, deadline, confirm) in pending {
            results[j] = Some(
                self.settle(&self.exchange, batch[j], confirm, deadline)
                    .await,
            );
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| unreachable!("every slot is settled above")))
            .collect()
    }

    /// Publishes a delayed job to the intake queue (through the default exchange, which routes
    /// by queue name), confirmed like any other publish.
    pub async fn publish_intake(&self, message: &RawMessage) -> Result<(), Error> {
        let req = PublishRequest {
            queue: &self.intake_queue,
            message,
        };
        self.publish_one("", "(default)", &self.intake_queue, req)
            .await
    }

    /// Publishes a dead letter to the parking queue (through the default exchange), confirmed,
    /// with the Warren queue it came from in `warren-dead-queue` and the reason in
    /// `warren-dead-reason` (an existing reason is kept). `x-death` and other headers outside
    /// the contract that only read back as [`HeaderValue::Other`] are dropped: they cannot be
    /// republished faithfully, and the reason header says what they said.
    pub async fn publish_parked(
        &self,
        message: &RawMessage,
        from_queue: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let mut message = message.clone();
        message
            .headers
            .retain(|_, v| !matches!(v, HeaderValue::Other(_)));
        message
            .headers
            .entry(HEADER_DEAD_REASON.to_owned())
            .or_insert_with(|| HeaderValue::Str(reason.to_owned()));
        message.headers.insert(
            HEADER_DEAD_QUEUE.to_owned(),
            HeaderValue::Str(from_queue.to_owned()),
        );
        let req = PublishRequest {
            queue: &self.parking_queue,
            message: &message,
        };
        self.publish_one("", "(default)", &self.parking_queue, req)
            .await
    }

    /// Publishes a message straight to the dead-letter queue with `warren-dead-reason` set.
    /// Used for input so broken that no job record can be made of it.
    pub async fn publish_dead_letter(
        &self,
        message: &RawMessage,
        queue: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let mut message = message.clone();
        message.headers.insert(
            HEADER_DEAD_REASON.to_owned(),
            HeaderValue::Str(reason.to_owned()),
        );
        let req = PublishRequest {
            queue,
            message: &message,
        };
        let target = self.topology.dead_letter_queue();
        self.publish_one(
            &self.dead_letter_exchange,
            &self.dead_letter_exchange,
            &target,
            req,
        )
        .await
    }

    /// Sends one message to `exchange` (named `label` in errors), bound for the RabbitMQ queue
    /// `target`, and waits for its confirm, until `confirm_timeout` after sending.
    async fn publish_one(
        &self,
        exchange: &str,
        label: &str,
        target: &str,
        req: PublishRequest<'_>,
    ) -> Result<(), Error> {
        if let Some(refused) = Self::refusal(self.route(target).await, label, req) {
            return Err(refused);
        }
        let confirm = self.send(exchange, req).await?;
        let deadline = Instant::now() + self.confirm_timeout;
        self.settle(label, req, confirm, deadline).await
    }

    /// Whether RabbitMQ has the queue of the Warren queue `queue`: known from an earlier
    /// publish or check, or asked with a passive declare (and then remembered while it
    /// exists). An error only when it could not be asked.
    pub async fn has_queue(&self, queue: &str) -> Result<bool, Error> {
        self.exists(&self.topology.queue_name_of(queue)).await
    }

    async fn exists(&self, target: &str) -> Result<bool, Error> {
        let now = Instant::now();
        {
            let routes = self.routes();
            if routes.known.contains(target) {
                return Ok(true);
            }
            if routes
                .missing
                .get(target)
                .is_some_and(|&seen| now < seen + MISSING_FOR)
            {
                return Ok(false);
            }
        }
        let found = passive_depth(&self.connection, self.connect_timeout, target)
            .await?
            .is_some();
        let mut routes = self.routes();
        if found {
            routes.missing.remove(target);
            routes.known.insert(target.to_owned());
        } else {
            routes.missing.retain(|_, seen| now < *seen + MISSING_FOR);
            routes.missing.insert(target.to_owned(), now);
        }
        Ok(found)
    }

    /// Whether the RabbitMQ queue `target` can be published to.
    async fn route(&self, target: &str) -> Route {
        match self.exists(target).await {
            Ok(true) => Route::Open,
            Ok(false) => Route::Missing,
            Err(e) => {
                tracing::debug!(queue = target, error = %warren_core::ErrorChain(&e), "cannot tell whether the queue exists; not publishing to it");
                Route::Unknown
            }
        }
    }

    /// The error for a message whose route is not open: unroutable for a missing queue, not
    /// sent (and safe to retry) when it could not be asked.
    fn refusal(route: Route, label: &str, req: PublishRequest<'_>) -> Option<Error> {
        match route {
            Route::Open => None,
            Route::Missing => Some(Error::Unroutable {
                job: job_of(req.message),
                queue: req.queue.to_owned(),
                exchange: label.to_owned(),
            }),
            Route::Unknown => Some(Error::NotSent {
                job: job_of(req.message),
                queue: req.queue.to_owned(),
            }),
        }
    }

    /// What is known of the queues; the guard is never held across an await.
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one message and returns its confirm, once lapin has written it.
    ///
    /// lapin numbers a confirm when the publish is first polled and queues its frames in the
    /// same poll, under two locks of its own: two tasks publishing at once on one channel can
    /// take their numbers in one order and send their frames in the other, and RabbitMQ
    /// numbers by arrival, so each would get the other's confirm (a nack, or a return, handed
    /// to the wrong job). That first poll is taken under the channel's `order` lock.
    async fn send(
        &self,
        exchange: &str,
        req: PublishRequest<'_>,
    ) -> Result<PublisherConfirm, Error> {
        let m = req.message;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(to_field_table(&m.headers));
        if let Some(id) = &m.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(ct) = &m.content_type {
            props = props.with_content_type(ct.as_str().into());
        }
        if let Some(ts) = m.timestamp {
            props = props.with_timestamp(ts);
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // One bound for getting a channel (waiting, if the connection is being replaced) and
        // writing the frame: a connection that died without lapin noticing would otherwise
        // leave this waiting for good.
        let deadline = Instant::now() + self.confirm_timeout;
        let mut retried = false;
        loop {
            let open = match self.usable_channel(deadline).await {
                Ok(open) => open,
                // The connection went down again between being reopened and taking the
                // channel: wait for the next one, within the same bound.
                Err(e)
                    if e.is_transient()
                        && !self.connection.is_closed()
                        && Instant::now() + RETRY_CHANNEL < deadline =>
                {
                    tracing::debug!(job = %job_of(m), error = %warren_core::ErrorChain(&e), "cannot open a publishing channel yet; retrying");
                    tokio::time::sleep(RETRY_CHANNEL).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(job = %job_of(m), error = %warren_core::ErrorChain(&e), "no publishing channel for the message");
                    return Err(Error::NotSent {
                        job: job_of(m),
                        queue: req.queue.to_owned(),
                    });
                }
            };
            let mut publish = pin!(open.channel.basic_publish(
                exchange.into(),
                req.queue.into(),
                options,
                &m.body,
                props.clone(),
            ));
            let first = std::future::poll_fn(|cx| {
                let _order = open.order.lock().unwrap_or_else(PoisonError::into_inner);
                Poll::Ready(publish.as_mut().poll(cx))
            })
            .await;
            let sent = match first {
                Poll::Ready(sent) => Ok(sent),
                Poll::Pending => tokio::time::timeout_at(deadline, publish).await,
            };
            match sent {
                Ok(Ok(confirm)) => return Ok(confirm),
                // The channel or its connection broke under this message: try it once more,
                // on a new channel if this one is lost (the job id makes a copy harmless).
                Ok(Err(_)) if !retried => retried = true,
                Ok(Err(source)) => {
                    return Err(Error::Publish {
                        job: job_of(m),
                        queue: req.queue.to_owned(),
                        source: Box::new(source),
                    });
                }
                Err(_) => {
                    return Err(Error::ConfirmTimeout {
                        job: job_of(m),
                        queue: req.queue.to_owned(),
                        timeout: self.confirm_timeout,
                    });
                }
            }
        }
    }

    /// True while `open` can take a publish: the channel is up and its connection is the
    /// current one.
    fn is_usable(&self, open: &Open) -> bool {
        open.channel.status().connected() && open.generation == self.connection.generation()
    }

    /// The shared channel if it is usable; otherwise a new one, opened by one clone at a time
    /// on the current connection, waited for until `deadline`.
    async fn usable_channel(&self, deadline: Instant) -> Result<Open, Error> {
        let open = self.channel.get();
        if self.is_usable(&open) {
            return Ok(open);
        }
        let waited = |what| Error::StepTimeout {
            what,
            timeout: self.confirm_timeout,
        };
        let _turn = tokio::time::timeout_at(deadline, self.channel.replacing.lock())
            .await
            .map_err(|_| waited("waiting for another publish to reopen the channel"))?;
        // Another clone may have replaced it while this one waited for its turn.
        let open = self.channel.get();
        if self.is_usable(&open) {
            return Ok(open);
        }
        let fresh = tokio::time::timeout_at(
            deadline,
            open_channel(&self.connection, self.connect_timeout),
        )
        .await
        .map_err(|_| {
            waited("waiting for the broker connection to reopen the publishing channel")
        })??;
        tracing::info!(generation = fresh.generation, "publishing channel reopened");
        self.channel.set(fresh.clone());
        Ok(fresh)
    }

    async fn settle(
        &self,
        exchange: &str,
        req: PublishRequest<'_>,
        confirm: PublisherConfirm,
        deadline: Instant,
    ) -> Result<(), Error> {
        let job = || job_of(req.message);
        match tokio::time::timeout_at(deadline, confirm).await {
            Err(_) => Err(Error::ConfirmTimeout {
                job: job(),
                queue: req.queue.to_owned(),
                timeout: self.confirm_timeout,
            }),
            Ok(Err(source)) => Err(Error::Publish {
                job: job(),
                queue: req.queue.to_owned(),
                source: Box::new(source),
            }),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                // The queue was there when first published to, and is gone: ask again next
                // time. lapin may have handed this return to the wrong confirm (see the type's
                // docs), so the job it names is logged: it may have been reported accepted.
                self.routes().known.clear();
                let returned_id = returned.delivery.properties.message_id().as_ref();
                if returned_id.map(|id| id.as_str()) != req.message.message_id.as_deref() {
                    tracing::error!(
                        job = %job(),
                        returned_job = returned_id.map_or("(no id)", |id| id.as_str()),
                        routing_key = %returned.delivery.routing_key,
                        "RabbitMQ returned a message as unroutable (its queue was deleted while published to) and lapin gave the return to another message's confirm: the returned job may have been reported accepted and is not in any queue"
                    );
                }
                Err(Error::Unroutable {
                    job: job(),
                    queue: req.queue.to_owned(),
                    exchange: exchange.to_owned(),
                })
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(Error::Nacked {
                job: job(),
                queue: req.queue.to_owned(),
            }),
        }
    }
}
