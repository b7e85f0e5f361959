//! `warren jobs cancel` and `warren jobs retry`: steering one job by id, or every job the
//! filters select (see `bulk`).

use anyhow::Context;
use warren_core::JobId;
use warren_store::{CancelOutcome, JobFilter, RetryOutcome};

use super::bulk::{self, Action, BulkFlags};
use super::filter::FilterArgs;
use crate::connection::ConnectionArgs;
use crate::exit::{NotFound, Usage};
use crate::output::{emit, emit_json};

const CANCEL_HELP: &str = "\
Examples:
  warren jobs cancel 01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d
  warren jobs cancel --state scheduled --task report.build --dry-run
  warren jobs cancel --state queued,scheduled --queue emails --yes

With filters instead of an id, every selected job is cancelled in batches of 200, each one
transaction; Ctrl-C stops after the current batch (exit 130), and running the command again
does the rest. Without --yes it asks on a terminal and refuses (exit 2) otherwise.
--json prints {\"outcome\", ...} for one job, or {\"action\", \"dry_run\", \"interrupted\",
\"matched\", \"done\", \"signalled\", \"refused\": {STATE: N}, \"no_payload\"} in bulk.";

const RETRY_HELP: &str = "\
Examples:
  warren jobs retry 01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d
  warren jobs retry --state dead --task email.send --since 1h --dry-run
  warren jobs retry --state dead --error-contains timeout --yes

With filters instead of an id, every selected job is retried in batches of 200, each one
transaction; Ctrl-C stops after the current batch (exit 130), and running the command again
does the rest (retried jobs are no longer dead). Without --yes it asks on a terminal and
refuses (exit 2) otherwise. --json prints {\"outcome\", ...} for one job, or {\"action\",
\"dry_run\", \"interrupted\", \"matched\", \"done\", \"signalled\", \"refused\": {STATE: N},
\"no_payload\"} in bulk.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = CANCEL_HELP)]
pub struct CancelArgs {
    /// The job id (a UUID); leave it out to cancel every job the filters select.
    pub id: Option<JobId>,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub bulk: BulkFlags,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = RETRY_HELP)]
pub struct RetryArgs {
    /// The job id (a UUID) of a dead, cancelled or scheduled job; leave it out to retry every
    /// job the filters select.
    pub id: Option<JobId>,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub bulk: BulkFlags,

    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One job by id, or many by filter: never both, never neither (an empty filter would
/// select every job in the table).
fn one_or_bulk(
    verb: &str,
    id: Option<JobId>,
    filter: &FilterArgs,
    bulk: BulkFlags,
) -> anyhow::Result<Option<JobId>> {
    let filter = filter.to_filter();
    match id {
        Some(id) if filter.is_empty() && !bulk.dry_run => Ok(Some(id)),
        Some(_) => Err(Usage(format!(
            "`jobs {verb}` takes either a job id or filters (with --dry-run), not both"
        ))
        .into()),
        None if filter.is_empty() => Err(Usage(format!(
            "`jobs {verb}` needs a job id, or at least one filter (--state, --task, --queue, \
             --since, --until, --error-contains) to select jobs in bulk"
        ))
        .into()),
        None => Ok(None),
    }
}

/// A job whose state does not allow the operation: the message says which state and what
/// is possible instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// `id` has no row. What that can mean depends on the action: a queued job gets its row when
/// a worker takes it, which lets a cancel through; a retry only ever applies to a dead job.
fn not_found(id: JobId, action: Action) -> anyhow::Error {
    let hint = match action {
        Action::Cancel => "it can be cancelled once it is running",
        Action::Retry => "only a dead job can be retried",
    };
    NotFound(format!(
        "no job {id} in the database (a job still queued on the hot path has no row until a \
         worker takes it; {hint})"
    ))
    .into()
}

/// Runs a bulk action on the jobs `filter` matches, on a store of its own.
async fn run_bulk(
    action: Action,
    filter: &JobFilter,
    flags: BulkFlags,
    json: bool,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    let command = match action {
        Action::Cancel => "jobs cancel",
        Action::Retry => "jobs retry",
    };
    let store = connection.store(command).await?;
    let result = bulk::run(&store, action, filter, flags, json).await;
    store.close().await;
    result
}

pub(super) async fn cancel(args: CancelArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let Some(id) = one_or_bulk("cancel", args.id, &args.filter, args.bulk)? else {
        let filter = args.filter.to_filter();
        return run_bulk(Action::Cancel, &filter, args.bulk, args.json, connection).await;
    };
    let store = connection.store("jobs cancel").await?;
    let outcome = store.cancel_job(id).await;
    store.close().await;
    let outcome = outcome.with_context(|| format!("cancelling job {id}"))?;
    let text = match &outcome {
        CancelOutcome::NotFound => return Err(not_found(id, Action::Cancel)),
        CancelOutcome::AlreadyFinal { state } => {
            return Err(Refused(format!(
                "job {} is already {state}; there is nothing to cancel",
                id
            ))
            .into());
        }
        CancelOutcome::Cancelled { previous } => {
            format!("cancelled job {} (it was {previous}; it will not run)", id)
        }
        CancelOutcome::Signalled { worker } => format!(
            "job {} is running on {}; its worker was told to cancel it (`warren jobs show {}` shows when it stopped)",
            id,
            worker.as_deref().unwrap_or("a worker"),
            id
        ),
    };
    if args.json {
        emit_json(&outcome)
    } else {
        emit(&format!("{text}\n"))
    }
}

pub(super) async fn retry(args: RetryArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let Some(id) = one_or_bulk("retry", args.id, &args.filter, args.bulk)? else {
        let filter = args.filter.to_filter();
        return run_bulk(Action::Retry, &filter, args.bulk, args.json, connection).await;
    };
    let store = connection.store("jobs retry").await?;
    let outcome = store.retry_job(id).await;
    store.close().await;
    let outcome = outcome.with_context(|| format!("retrying job {id}"))?;
    let text = match &outcome {
        RetryOutcome::NotFound => return Err(not_found(id, Action::Retry)),
        RetryOutcome::NotRetryable { state } => {
            return Err(Refused(format!(
                "job {} is {state}; only dead, cancelled or scheduled jobs can be retried",
                id
            ))
            .into());
        }
        RetryOutcome::NoPayload => {
            return Err(Refused(format!(
                "job {} has no JSON payload (it was bad input, kept as raw bytes) and cannot run; \
                 `warren jobs show {}` shows why it died",
                id, id
            ))
            .into());
        }
        RetryOutcome::Scheduled {
            attempt,
            max_attempts,
        } => format!(
            "job {} is due now: it runs as attempt {} of {max_attempts}",
            id,
            attempt + 1
        ),
    };
    if args.json {
        emit_json(&outcome)
    } else {
        emit(&format!("{text}\n"))
    }
}
