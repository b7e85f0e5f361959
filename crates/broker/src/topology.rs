use lapin::Channel;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use warren_core::{Namespace, QueueName};

use crate::Error;

/// Names and settings of Warren's RabbitMQ objects.
///
/// Every name starts with the namespace (default `warren`), so several Warren deployments, or
/// parallel tests, can share one vhost without seeing each other:
///
/// - `<ns>.work`: durable direct exchange; the routing key is the Warren queue name;
/// - `<ns>.q.<queue>`: one durable quorum queue per Warren queue, bound with its name;
/// - `<ns>.dlx`: durable fanout exchange the work queues dead-letter into;
/// - `<ns>.dead`: durable quorum queue holding what the broker dead-lettered; the workers'
///   reconciler consumes it. It has the work queues' delivery limit and dead-letters, through
///   the default exchange, into the parking queue, so a message that kills the reconciler's
///   connection (a frame lapin cannot parse) ends there instead of looping;
/// - `<ns>.dead.unread`: durable quorum queue of parked dead letters, those with no readable
///   job id, kept for `warren dlq`; no worker consumes it;
/// - `<ns>.intake`: durable quorum queue of delayed jobs from producers without database
///   access, published through the default exchange; workers turn them into scheduled rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The prefix of every exchange and queue name.
    pub namespace: Namespace,
    /// `x-delivery-limit` of every work queue: a message delivered more than this many times
    /// (because its worker keeps dying) is dead-lettered instead of looping forever.
    pub delivery_limit: u32,
}

impl Default for Topology {
    /// Namespace [`Namespace::DEFAULT`] and delivery limit [`Topology::DEFAULT_DELIVERY_LIMIT`]:
    /// the defaults of every binary's flags.
    fn default() -> Self {
        Self {
            namespace: Namespace::default(),
            delivery_limit: Self::DEFAULT_DELIVERY_LIMIT,
        }
    }
}

const HINT_MISMATCH: &str = "; if it exists with different arguments (queue type, delivery limit, \
    dead-letter settings) delete it or use another namespace";

impl Topology {
    /// Deliveries of one message before the broker dead-letters it. High enough that a job
    /// is not dead-lettered for the crashes of an innocent neighbour (see ARCHITECTURE.md).
    pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

    /// `<ns>.work`, the exchange jobs are published to.
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.namespace)
    }

    /// `<ns>.dlx`, where work queues dead-letter to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    /// `<ns>.dead`, the queue behind the dead-letter exchange.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// `<ns>.dead.unread`, the parking queue: dead letters without a readable job id, kept
    /// for `warren dlq`. Nothing consumes it.
    pub fn parking_queue(&self) -> String {
        format!("{}.dead.unread", self.namespace)
    }

    /// `<ns>.intake`, the queue of delayed jobs from producers without database access.
    pub fn intake_queue(&self) -> String {
        format!("{}.intake", self.namespace)
    }

    /// `<ns>.q.<queue>`, the RabbitMQ queue of a Warren queue.
    pub fn queue(&self, queue: &QueueName) -> String {
        self.queue_name_of(queue.as_str())
    }

    /// The RabbitMQ name of a Warren queue named by a plain string (e.g. read back from a
    /// row), for display.
    pub fn queue_name_of(&self, queue: &str) -> String {
        format!("{}.q.{}", self.namespace, queue)
    }

    // Declaring is idempotent: running it again with the same settings changes nothing, so
    // every worker does it at start-up (`Broker::declare` runs the three steps below).

    pub(crate) async fn declare_exchanges(&self, channel: &Channel) -> Result<(), Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (self.work_exchange(), ExchangeKind::Direct),
            (self.dead_letter_exchange(), ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .map_err(|source| Error::Declare {
                    what: "exchange",
                    name: name.clone(),
                    hint: "",
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// The parking queue, then the dead-letter queue (which dead-letters into it), bound to
    /// the dead-letter exchange.
    pub(crate) async fn declare_dead_letter_queues(&self, channel: &Channel) -> Result<(), Error> {
        let mut parking_args = FieldTable::default();
        parking_args.insert("x-queue-type".into(), string("quorum"));
        declare_queue(channel, &self.parking_queue(), parking_args).await?;
        let dlq = self.dead_letter_queue();
        declare_queue(channel, &dlq, self.dead_letter_queue_arguments()).await?;
        bind(channel, &dlq, &self.dead_letter_exchange(), "").await
    }

    /// The intake queue and the given work queues, each bound to the work exchange.
    pub(crate) async fn declare_work_queues(
        &self,
        channel: &Channel,
        queues: &[QueueName],
    ) -> Result<(), Error> {
        declare_queue(channel, &self.intake_queue(), self.work_queue_arguments()).await?;
        for queue in queues {
            let name = self.queue(queue);
            declare_queue(channel, &name, self.work_queue_arguments()).await?;
            bind(channel, &name, &self.work_exchange(), queue.as_str()).await?;
        }
        Ok(())
    }

    /// The dead-letter queue's arguments: a delivery limit, so that a message the reconciler
    /// cannot read (its connection dies on it, and careful mode reconnects) is charged a
    /// delivery each time and finally moved to the parking queue, with the broker's own
    /// `x-death` entry (reason `delivery_limit`, queue `<ns>.dead`) marking it.
    fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = self.work_queue_arguments();
        // The default exchange routes by queue name.
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            string(&self.parking_queue()),
        );
        args
    }

    fn work_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_letter_exchange()),
        );
        // Without these two, RabbitMQ 3.10 silently dead-letters at most once: a message
        // could vanish between the work queue and the dead-letter queue.
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
        args
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), Error> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(ShortString::from(name), options, args)
        .await
        .map(drop)
        .map_err(|source| Error::Declare {
            what: "queue",
            name: name.to_owned(),
            hint: HINT_MISMATCH,
            source: Box::new(source),
        })
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Declare {
            what: "binding for queue",
            name: queue.to_owned(),
            hint: "",
            source: Box::new(source),
        })
}
