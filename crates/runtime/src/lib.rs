//! warren-runtime: the worker engine.
//!
//! A [`Worker`] consumes its queues with a prefetch window, runs registered handlers
//! concurrently up to a limit with a per-job timeout, turns panics and timeouts into recorded
//! failures, decides retry or death with the task's [`RetryPolicy`],
//! hands every outcome to the batching recorder and acks a delivery only after its outcome is
//! committed. A [`Promoter`] publishes scheduled jobs when they fall due. Shutdown is one
//! visible sequence: stop consuming, finish in-flight work within the grace period, flush, ack,
//! close; after the grace period, cancel handlers and let the broker requeue what is unacked.
//!
//! Handlers are registered per typed task with [`WorkerBuilder::task`], so the payload type
//! names its task and brings its timeout and retry policy; string-named registration
//! ([`WorkerBuilder::register`]) stays for tasks enqueued from other languages.
//! [`WorkerBuilder::serve`] connects and runs in one call; [`Worker::run`] runs on connections
//! the caller made. Either takes any future as its shutdown signal, so the embedding
//! application or test decides when to stop ([`shutdown_on_signal`] is the binary's choice).
//!
//! It deliberately reads no flags or environment (the binary does) and holds no handlers of
//! its own (the binary registers them).

#![warn(missing_docs)]

mod broker_timeout;
mod cleaner;
mod consumer;
mod context;
mod control;
mod error;
mod executor;
mod gauges;
mod health;
mod heartbeat;
mod intake;
mod limits;
pub mod observe;
mod promoter;
mod reconciler;
mod registry;
mod scheduler;
mod shutdown;
mod signal;
mod supervise;
mod worker;

pub use cleaner::{Cleaner, CleanerPass, RetentionConfig};
pub use context::JobContext;
pub use error::Error;
pub use health::{BROKER_DOWN, CONSUMER_LOST, DATABASE_DOWN, Health, HealthReport, NOT_STARTED};
pub use promoter::{Promoter, PromoterConfig};
pub use registry::TaskOptions;
pub use scheduler::PeriodicJob;
pub use signal::{shutdown_on_signal, wait_for_signal};
pub use warren_broker::{BrokerConfig, Topology};
pub use warren_core::cron::CatchUp;
pub use warren_core::{
    JobError, JobId, Namespace, QueueName, RetryPolicy, Task, TaskName, TraceParent,
};
pub use warren_store::StoreConfig;
pub use worker::{Handler, JobSpanHook, Worker, WorkerBuilder, WorkerConfig, WorkerStats};
