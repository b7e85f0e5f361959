//! `warren jobs`: what PostgreSQL knows about jobs, one in full or all in aggregate.
//!
//! A job's row is written when a worker records an outcome (or when it is scheduled), so a job
//! still waiting in RabbitMQ has no row yet; both commands say so rather than guess.

mod control;
mod show;
mod summary;

pub use control::{CancelArgs, Refused, RetryArgs};
pub use show::ShowArgs;
pub use summary::SummaryArgs;

use crate::connection::ConnectionArgs;

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Print one job: its state, attempts, timings, payload, result and error history.
    Show(ShowArgs),
    /// Count jobs per state and summarise the latency and throughput of recent ones.
    Summary(SummaryArgs),
    /// Cancel a job: a scheduled or queued one never runs; a running one is signalled.
    Cancel(CancelArgs),
    /// Run a dead, cancelled or scheduled job again now (its attempt count carries on).
    Retry(RetryArgs),
}

pub(crate) async fn run(command: JobsCommand, connection: &ConnectionArgs) -> anyhow::Result<()> {
    match command {
        JobsCommand::Show(args) => show::run(args, connection).await,
        JobsCommand::Summary(args) => summary::run(args, connection).await,
        JobsCommand::Cancel(args) => control::cancel(args, connection).await,
        JobsCommand::Retry(args) => control::retry(args, connection).await,
    }
}
