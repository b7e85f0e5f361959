//! warren-worker: the worker program as a library. [`run`] is the whole program (flags,
//! environment, logging, signals, exit codes) for any set of handlers, so a custom worker
//! binary is a `main` of one line; `warren-worker` itself is [`run`] with the built-in tasks.
//!
//! [`tasks`] holds the built-in diagnostic tasks; [`settings`] turns flags and environment
//! into validated configuration.

mod logging;
pub mod metrics_server;
mod otel;
mod run;
pub mod settings;
pub mod tasks;

pub use run::run;
