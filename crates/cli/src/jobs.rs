//! `warren jobs`: what PostgreSQL knows about jobs, one in full or all in aggregate.
//!
//! A job's row is written when a worker records an outcome (or when it is scheduled), so a job
//! still waiting in RabbitMQ has no row yet; both commands say so rather than guess.

pub(crate) mod bulk;
mod control;
pub(crate) mod filter;
mod list;
mod show;
mod summary;

pub use bulk::BulkFlags;
pub use control::{CancelArgs, Refused, RetryArgs};
pub use filter::FilterArgs;
pub use list::ListArgs;
pub use show::ShowArgs;
pub use summary::SummaryArgs;

use crate::connection::ConnectionArgs;

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs newest first, filtered, a page at a time (--after continues).
    List(ListArgs),
    /// Print one job: its state, attempts, timings, payload, result and error history.
    Show(ShowArgs),
    /// Count jobs per state and summarise the latency and throughput of recent ones.
    Summary(SummaryArgs),
    /// Cancel a job, or every job the filters select: a scheduled or queued one never runs; a
    /// running one is signalled.
    Cancel(CancelArgs),
    /// Run a dead, cancelled or scheduled job again now (its attempt count carries on), or
    /// every such job the filters select.
    Retry(RetryArgs),
}

pub(crate) async fn run(command: JobsCommand, connection: &ConnectionArgs) -> anyhow::Result<()> {
    match command {
        JobsCommand::List(args) => list::run(args, connection).await,
        JobsCommand::Show(args) => show::run(args, connection).await,
        JobsCommand::Summary(args) => summary::run(args, connection).await,
        JobsCommand::Cancel(args) => control::cancel(args, connection).await,
        JobsCommand::Retry(args) => control::retry(args, connection).await,
    }
}
