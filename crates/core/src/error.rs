use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether a handler's failure is worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobErrorKind {
    /// Transient: a later attempt may succeed (network blip, lock timeout, rate limit).
    Retryable,
    /// No attempt will ever succeed (bad payload, missing record, forbidden).
    Permanent,
}

/// The error a handler returns.
///
/// Any `std::error::Error` converts into a retryable `JobError` with `?`, keeping its source
/// chain in the message; say [`JobError::permanent`] when retrying is pointless. It does not
/// implement `std::error::Error` itself, which is what makes that blanket conversion possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    /// Whether the job is worth another attempt.
    pub kind: JobErrorKind,
    /// What went wrong, as recorded in the job's error history and shown by `warren jobs show`.
    pub message: String,
}

impl JobError {
    /// A failure a later attempt may not repeat; the job is retried while its policy allows.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self {
            kind: JobErrorKind::Retryable,
            message: message.to_string(),
        }
    }

    /// A failure no attempt can get past; the job goes straight to `dead`, whatever attempts
    /// it has left.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            kind: JobErrorKind::Permanent,
            message: message.to_string(),
        }
    }

    /// Whether the kind is [`JobErrorKind::Retryable`].
    pub fn is_retryable(&self) -> bool {
        self.kind == JobErrorKind::Retryable
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobError::retryable(message)
    }
}

/// What kind of failure an attempt ended in, as kept in a job's error history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned a retryable error.
    Error,
    /// The handler returned a permanent error.
    Permanent,
    /// The attempt ran past its timeout and was cancelled.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The message could never run: undecodable, unknown task, payload of the wrong shape.
    BadInput,
    /// The handler stopped because the job was cancelled.
    Cancelled,
}

impl FailureKind {
    /// Whether another attempt could help.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Error | FailureKind::Timeout | FailureKind::Panic
        )
    }
}

/// One entry of a job's error history: one failed attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The attempt that failed, 1-based.
    pub attempt: u32,
    /// How it failed.
    pub kind: FailureKind,
    /// The handler's error message, or what the worker saw (timeout, panic, bad input).
    pub message: String,
    /// The id of the worker that ran the attempt.
    pub worker: String,
    /// When the failure was recorded.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn question_mark_makes_a_retryable_error_with_the_chain() {
        fn run() -> Result<(), JobError> {
            Err(Outer(std::io::Error::other("inner")))?;
            Ok(())
        }
        let err = run().unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.message, "outer: inner");
        assert!(!JobError::permanent("no").is_retryable());
    }

    #[test]
    fn history_entries_serialise_in_snake_case() {
        let rec = FailureRecord {
            attempt: 2,
            kind: FailureKind::BadInput,
            message: "m".into(),
            worker: "w".into(),
            at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["kind"], "bad_input");
        assert_eq!(json["attempt"], 2);
    }
}

/// Displays an error with its whole `source()` chain, `outer: inner: innermost`, for logs
/// that would otherwise show only the outermost message (which by convention does not repeat
/// its source).
#[derive(Clone, Copy, Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer step failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "outer step failed: connection refused"
        );
    }
}
