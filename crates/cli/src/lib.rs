//! warren-cli: the `warren` admin command line, as a library so its tests run exactly what the
//! binary runs.
//!
//! It owns the command-line surface (flags, environment variables, exit statuses) and the
//! human and JSON forms of what the commands print. [`Args`] is what clap parses; [`run`]
//! executes it; [`Status::of`] maps an error to the documented exit status.
//!
//! It deliberately holds no Warren logic of its own: enqueueing is `warren_client`'s, topology
//! is `warren_broker`'s, queries and migrations are `warren_store`'s. A command here checks its
//! input, calls them, and formats the answer.

mod batches;
mod completions;
mod confirm;
mod connection;
mod dead;
mod dlq;
mod enqueue;
mod exit;
mod jobs;
mod limits;
mod logs;
mod management;
mod migrate;
mod output;
mod prune;
mod queue_control;
mod queues;
mod schedules;
mod stats;
mod top;
mod workers;

use clap::{Parser, Subcommand};

pub use completions::{CompletionShell, CompletionsArgs};
pub use connection::ConnectionArgs;
pub use dead::{DeadArgs, DeadBulkArgs, DeadCommand};
pub use dlq::{DlqCommand, DlqListArgs, DlqPurgeArgs, DlqReplayArgs, DlqShowArgs};
pub use enqueue::EnqueueArgs;
pub use exit::{Interrupted, NotFound, Status, Usage};
pub use jobs::{
    BulkFlags, CancelArgs, FilterArgs, JobsCommand, ListArgs, Refused, RetryArgs, ShowArgs,
    SummaryArgs,
};
pub use limits::LimitsCommand;
pub use logs::{LogWriter, log_writer};
pub use migrate::MigrateArgs;
pub use output::ColourChoice;
pub use prune::PruneJobsArgs;
pub use queues::{DeclareArgs, PauseArgs, PurgeArgs, QueuesCommand};
pub use schedules::SchedulesCommand;
pub use stats::StatsArgs;
pub use top::TopArgs;
pub use workers::{PruneArgs, WorkersArgs, WorkersCommand};

const LONG_ABOUT: &str = "\
Administers Warren: applies database migrations, enqueues jobs, lists them and shows what
happened to them, retries or cancels them one by one or in bulk, groups dead jobs, lists,
declares, pauses, resumes and purges queues, manages periodic schedules and fleet-wide limits, lists workers, prunes old finished jobs, and
shows it all live (`top`).

Settings come from flags or WARREN_* environment variables. Each command needs only the service
it talks to: --amqp-url for `enqueue`, `queues` and `dlq`, --database-url for `migrate`, `jobs`,
`dead`, `stats`, `prune`, `schedules`, `limits` and `workers`.

Exit status:
  0  success
  1  the operation failed (a service unreachable, a job refused by RabbitMQ)
  2  bad usage or input; nothing was done
  3  not found (`jobs show`, `cancel` or `retry` of an id with no row; `dlq show` past the
     end of the parking queue; `queues show` or `queues purge` of an unknown queue;
     `schedules show`, `remove`, `pause` or `resume` of an unknown schedule; `limits remove`
     of a target without a limit)
  4  refused: the job's state does not allow it (retry of a succeeded job, cancel of a
     finished one)
  130  a bulk retry, cancel, prune or purge was interrupted by Ctrl-C (committed batches stay
       done)

Examples:
  warren jobs list --state dead --since 1h
  warren dead
  warren dead retry --task email.send --error-contains timeout --yes
  warren schedules add cleanup --cron '0 */5 * * * *' --task cleanup.run --payload '{}'
  warren limits set email.send --rate 20/s
  warren workers";

/// Warren's admin command line.
#[derive(Debug, Parser)]
#[command(name = "warren", version, long_about = LONG_ABOUT)]
pub struct Args {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Colour tables: auto (only on a terminal, and not when NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t)]
    pub color: ColourChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (safe to run at any time, from anywhere).
    Migrate(MigrateArgs),
    /// Publish a job (or --count copies of it) and print its id once RabbitMQ confirms it.
    Enqueue(EnqueueArgs),
    /// Look up jobs in PostgreSQL.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Manage Warren's RabbitMQ queues.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// List the workers that have registered, with their state (lost, if their heartbeat
    /// stopped) and last heartbeat; `workers prune` removes old rows.
    Workers(WorkersArgs),
    /// Periodic jobs: add, list, show, remove, pause and resume cron schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Fleet-wide concurrency and rate limits on a task or queue: set, list, remove.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Parked dead letters (no readable job id): list, show, replay or purge them.
    #[command(
        subcommand,
        after_long_help = "Examples:\n  warren dlq list\n  warren dlq replay --limit 10 --yes"
    )]
    Dlq(DlqCommand),
    /// Dead jobs grouped by task and error; `dead retry` / `dead cancel` act on a group.
    Dead(DeadArgs),
    /// Per task and queue: jobs succeeded, retried and dead, and their wait and run times.
    Stats(StatsArgs),
    /// A live view of queues, tasks and workers, refreshed every second (q quits).
    Top(TopArgs),
    /// Delete finished jobs (succeeded, dead, cancelled) older than --older-than, in batches.
    Prune(PruneJobsArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completions(CompletionsArgs),
}

/// An error as `warren` prints it: the chain on one line, with any control characters from job
/// data escaped so that they cannot drive the terminal. A cause that the text so far already
/// ends with is left out: some errors (lapin's) print their source in their own message and
/// return it as their source too, which would say it twice.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.ends_with(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    output::printable_text(&text).into_owned()
}

/// Runs one command. Its output goes to stdout; an error is returned for the caller to print
/// once, and [`Status::of`] says which exit status it deserves.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        connection,
        color,
        command,
    } = args;
    output::init_colour(color);
    match command {
        Command::Migrate(args) => migrate::run(args, &connection).await,
        Command::Enqueue(args) => enqueue::run(args, &connection).await,
        Command::Jobs(command) => jobs::run(command, &connection).await,
        Command::Queues(command) => queues::run(command, &connection).await,
        Command::Workers(args) => workers::run(args, &connection).await,
        Command::Schedules(command) => schedules::run(command, &connection).await,
        Command::Limits(command) => limits::run(command, &connection).await,
        Command::Dlq(command) => dlq::run(command, &connection).await,
        Command::Dead(args) => dead::run(args, &connection).await,
        Command::Stats(args) => stats::run(args, &connection).await,
        Command::Top(args) => top::run(args, &connection).await,
        Command::Prune(args) => prune::run(args, &connection).await,
        Command::Completions(args) => completions::run(args),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("protocol error: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let e = anyhow::Error::new(Repeats(std::io::Error::other("ACCESS_REFUSED")))
            .context("connecting to RabbitMQ");
        assert_eq!(
            error_text(&e),
            "connecting to RabbitMQ: protocol error: ACCESS_REFUSED"
        );
        let e = anyhow::Error::new(std::io::Error::other("refused\u{1b}[2J")).context("step");
        assert_eq!(error_text(&e), "step: refused\\u{1b}[2J");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn help_documents_every_exit_status() {
        let help = Args::command().render_long_help().to_string();
        for line in [
            "0  success",
            "1  the operation failed",
            "2  bad usage",
            "3  not found",
        ] {
            assert!(help.contains(line), "{line} missing from:\n{help}");
        }
    }

    #[test]
    fn every_command_shows_an_example_in_its_help() {
        fn check(command: &mut clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let leaf = !command.has_subcommands();
            // Commands with subcommands of their own (`jobs`, `queues`) only list them.
            if (leaf || command.get_name() != "jobs" && command.get_name() != "queues")
                && !command.render_long_help().to_string().contains("Example")
            {
                missing.push(path.clone());
            }
            for sub in command.get_subcommands_mut() {
                if sub.get_name() != "help" {
                    check(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        check(&mut Args::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
    }

    #[test]
    fn urls_are_optional_until_a_command_needs_them() {
        // Clap would refuse here if a URL were required; the command asks for it when it runs.
        assert!(Args::try_parse_from(["warren", "jobs", "summary", "--since", "15m"]).is_ok());
        let bad_id = Args::try_parse_from(["warren", "jobs", "show", "nope"]).unwrap_err();
        assert_eq!(bad_id.exit_code(), Status::Usage as i32);
        assert!(
            bad_id.to_string().contains("`nope` is not a job id"),
            "{bad_id}"
        );
    }
}
