//! warren-core: the domain of Warren as plain data and pure functions.
//!
//! It owns job identity ([`JobId`]), validated names ([`TaskName`], [`QueueName`], [`Namespace`]), the message
//! contract between producers and workers ([`message`]), job states and the one function that
//! decides their transitions ([`lifecycle`]), handler errors ([`JobError`]), the retry delay
//! policy ([`RetryPolicy`]), typed tasks ([`Task`]) and W3C trace context ([`TraceParent`]).
//!
//! It deliberately does no I/O: no tokio, no lapin, no sqlx. Everything here is testable with
//! plain unit tests, and every other crate agrees on these types instead of inventing its own.
//! One module is for the binaries only, behind the `clap` feature: `flags` parses
//! their flags and environment.

#![warn(missing_docs)]

pub mod cron;
pub mod duration;
mod error;
#[cfg(feature = "clap")]
pub mod flags;
mod id;
mod intake;
pub mod lifecycle;
pub mod message;
mod name;
pub mod redact;
mod retry;
mod task;
pub mod trace;

pub use error::{ErrorChain, FailureKind, FailureRecord, JobError, JobErrorKind};
pub use id::{JobId, ParseJobIdError};
pub use intake::IntakeMessage;
pub use lifecycle::{Event, IllegalTransition, JobState};
pub use message::{DecodeError, DecodeReason, HeaderValue, JobMessage, RawMessage};
pub use name::{InvalidName, Namespace, QueueName, TaskName};
pub use retry::{InvalidPolicy, MAX_RETRY_DELAY, RetryPolicy, SplitMix64};
pub use task::Task;
pub use trace::TraceParent;

/// The queue a job goes to when its producer names none.
pub const DEFAULT_QUEUE: &str = "default";
