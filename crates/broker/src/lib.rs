//! warren-broker: everything Warren does with RabbitMQ, through lapin.
//!
//! It owns the connections (their recovery and failover across a cluster's nodes, heartbeats,
//! timeouts), the topology (a durable work exchange, one quorum queue per Warren queue with a
//! delivery limit and a dead-letter exchange, a dead-letter queue), publishing with pipelined
//! publisher confirms, and consuming with a prefetch window. It maps the message contract of `warren_core::message` onto AMQP
//! properties and headers and back.
//!
//! It deliberately knows nothing of Postgres, handlers or retries: callers decide what a
//! delivery means and when to ack it. No other crate imports lapin.

#![warn(missing_docs)]

mod config;
mod connection;
mod consumer;
mod drain;
mod error;
mod headers;
mod parking;
mod publisher;
mod stack;
mod supervised;
mod topology;

pub use config::BrokerConfig;
pub use connection::{Broker, QueueDepth};
pub use consumer::{CAREFUL_CLEAN_DELIVERIES, Consumer, Delivery};
pub use drain::Drain;
pub use error::Error;
pub use headers::Death;
pub use parking::{Parked, Replayed};
pub use publisher::{PublishRequest, Publisher};
pub use stack::{IO_THREAD_STACK, MAX_HEADER_DEPTH};
pub use topology::Topology;

/// A result whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
