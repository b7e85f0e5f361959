//! `warren jobs cancel ID` and `warren jobs retry ID`: steering one job.

use anyhow::Context;
use warren_core::JobId;
use warren_store::{CancelOutcome, RetryOutcome};

use crate::connection::ConnectionArgs;
use crate::exit::NotFound;
use crate::output::{emit, emit_json};

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The job id (a UUID).
    pub id: JobId,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The job id (a UUID) of a dead, cancelled or scheduled job.
    pub id: JobId,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A job whose state does not allow the operation: the message says which state and what
/// is possible instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn not_found(id: JobId) -> anyhow::Error {
    NotFound(format!(
        "no job {id} in the database (a job still queued on the hot path has no row until a \
         worker takes it; it can be cancelled once it is running)"
    ))
    .into()
}

pub(super) async fn cancel(args: CancelArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("jobs cancel").await?;
    let outcome = store.cancel_job(args.id).await;
    store.close().await;
    let outcome = outcome.with_context(|| format!("cancelling job {}", args.id))?;
    let text = match &outcome {
        CancelOutcome::NotFound => return Err(not_found(args.id)),
        CancelOutcome::AlreadyFinal { state } => {
            return Err(Refused(format!(
                "job {} is already {state}; there is nothing to cancel",
                args.id
            ))
            .into());
        }
        CancelOutcome::Cancelled { previous } => {
            format!(
                "cancelled job {} (it was {previous}; it will not run)",
                args.id
            )
        }
        CancelOutcome::Signalled { worker } => format!(
            "job {} is running on {}; its worker was told to cancel it (`warren jobs show {}` shows when it stopped)",
            args.id,
            worker.as_deref().unwrap_or("a worker"),
            args.id
        ),
    };
    if args.json {
        emit_json(&outcome)
    } else {
        emit(&text)
    }
}

pub(super) async fn retry(args: RetryArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("jobs retry").await?;
    let outcome = store.retry_job(args.id).await;
    store.close().await;
    let outcome = outcome.with_context(|| format!("retrying job {}", args.id))?;
    let text = match &outcome {
        RetryOutcome::NotFound => return Err(not_found(args.id)),
        RetryOutcome::NotRetryable { state } => {
            return Err(Refused(format!(
                "job {} is {state}; only dead, cancelled or scheduled jobs can be retried",
                args.id
            ))
            .into());
        }
        RetryOutcome::NoPayload => {
            return Err(Refused(format!(
                "job {} has no JSON payload (it was bad input, kept as raw bytes) and cannot run; \
                 `warren jobs show {}` shows why it died",
                args.id, args.id
            ))
            .into());
        }
        RetryOutcome::Scheduled {
            attempt,
            max_attempts,
        } => format!(
            "job {} is due now: it runs as attempt {} of {max_attempts}",
            args.id,
            attempt + 1
        ),
    };
    if args.json {
        emit_json(&outcome)
    } else {
        emit(&text)
    }
}
