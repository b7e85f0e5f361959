//! warren-worker: the worker binary's pieces, as a library so tests and the benchmark run
//! exactly what the binary runs.
//!
//! [`tasks`] holds the built-in diagnostic tasks; [`settings`] turns flags and environment
//! into validated configuration. `main.rs` only wires them together.

pub mod settings;
pub mod tasks;
