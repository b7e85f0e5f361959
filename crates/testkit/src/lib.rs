//! warren-testkit: helpers for tests against the real RabbitMQ and PostgreSQL.
//!
//! [`TestEnv`] gives each test a database of its own (created, migrated, dropped) and a
//! RabbitMQ namespace of its own (every exchange and queue name prefixed), so tests run in
//! parallel against the shared services and leave nothing behind: each env is recorded in
//! the server's `postgres` database and removed even when its test fails, and [`sweep`]
//! removes what runs that were killed outright left (once per test process).
//! [`wait_until`] waits for a condition and says what it waited for when it gives up.
//! [`WorkerProcess`] runs the real `warren-worker` binary for tests that must kill or signal a
//! process. [`DisposableRabbit`] starts a RabbitMQ node of the test's own, for broker
//! settings or faults the shared node must not see, and [`DisposablePostgres`] a PostgreSQL
//! server of its own. [`Proxy`] cuts one worker's connections,
//! and [`raw_amqp`] publishes frames lapin would refuse to send.
//!
//! A missing service fails the test loudly; nothing here skips silently.
//!
//! It is for tests only: it reads `WARREN_TEST_AMQP_URL` and `WARREN_TEST_DATABASE_URL` from
//! the environment, which libraries otherwise never do.

#![warn(missing_docs)]

mod env;
mod pg_node;
mod process;
mod proxy;
mod rabbit_cluster;
mod rabbit_node;
pub mod raw_amqp;
mod sandbox;
mod wait;

pub use env::{RunningWorker, TestEnv};
pub use pg_node::{DisposablePostgres, PostgresOptions};
pub use process::{WorkerProcess, bin_path};
pub use proxy::Proxy;
pub use rabbit_cluster::RabbitCluster;
pub use rabbit_node::{DisposableRabbit, RabbitOptions};
pub use sandbox::{STALE_AFTER, sweep};
pub use wait::wait_until;
