//! Exit statuses, and the two errors that end with a status other than "operation failed".

use std::process::ExitCode;

/// How `warren` ends. The numbers are part of its interface (scripts test them), are listed in
/// `warren --help`, and never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The command did what it was asked.
    Ok = 0,
    /// The command was understood but failed: a service was unreachable, a job was refused.
    Failed = 1,
    /// The command line or its input was wrong; nothing was done. Clap uses the same code.
    Usage = 2,
    /// What was asked for does not exist.
    NotFound = 3,
    /// The job's state does not allow the operation.
    Refused = 4,
    /// A bulk command was stopped by Ctrl-C after committing its current batch.
    Interrupted = 130,
}

impl Status {
    /// The status an error ends the process with: [`Usage`] and [`NotFound`] anywhere in its
    /// chain decide it, anything else is a failed operation.
    pub fn of(error: &anyhow::Error) -> Status {
        for cause in error.chain() {
            if cause.is::<Usage>() {
                return Status::Usage;
            }
            if cause.is::<NotFound>() {
                return Status::NotFound;
            }
            if cause.is::<crate::Refused>() {
                return Status::Refused;
            }
            if cause.is::<Interrupted>() {
                return Status::Interrupted;
            }
            // A URL that cannot be used is bad configuration, as a bad flag is.
            if matches!(
                cause.downcast_ref::<warren_broker::Error>(),
                Some(warren_broker::Error::Url { .. })
            ) || matches!(
                cause.downcast_ref::<warren_store::Error>(),
                Some(warren_store::Error::Url { .. })
            ) {
                return Status::Usage;
            }
        }
        Status::Failed
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> ExitCode {
        ExitCode::from(status as u8)
    }
}

/// Input that clap could not check by itself was wrong: a missing URL, a combination of flags
/// that makes no sense. The message names the flag and says what would be right.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The thing asked for does not exist. The message says what was looked for, and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// A bulk command was interrupted by Ctrl-C; what it did so far is committed and reported.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn the_marker_decides_the_status_even_under_context() {
        let usage = Err::<(), _>(Usage("bad".into())).context("while enqueuing");
        assert_eq!(Status::of(&usage.unwrap_err()), Status::Usage);
        let missing = anyhow::Error::new(NotFound("no job".into()));
        assert_eq!(Status::of(&missing), Status::NotFound);
        assert_eq!(
            Status::of(&anyhow::anyhow!("connection refused")),
            Status::Failed
        );
    }
}
