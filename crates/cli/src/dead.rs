//! `warren dead`: dead jobs grouped by task, error kind and the first line of their last
//! error; `dead retry` and `dead cancel` act on a group (or any filter) through the bulk
//! machinery, with the state fixed to `dead`.

use chrono::{DateTime, Utc};
use warren_core::JobState;
use warren_store::DeadGroup;

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::jobs::bulk::{self, Action};
use crate::jobs::filter::parse_when;
use crate::jobs::{BulkFlags, FilterArgs};
use crate::output::{Align, Table, age, emit, emit_json};

const DEAD_HELP: &str = "\
Examples:
  warren dead                      # every dead job, grouped
  warren dead --since 1h --json
  warren dead retry --task email.send --error-contains timeout --dry-run
  warren dead retry --task email.send --error-contains timeout --yes
  warren dead cancel --task report.build --yes

--json prints [{\"task\", \"kind\", \"message\", \"count\", \"first_seen\", \"last_seen\",
\"example_id\"}], largest group first. `message` is the first line of the last error.
`warren dead --since` is on the time of death; the --since / --until filters of `dead retry`
and `dead cancel` are on the enqueue time, as in `jobs list`.";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, after_long_help = DEAD_HELP)]
pub struct DeadArgs {
    #[command(subcommand)]
    pub command: Option<DeadCommand>,

    /// Only jobs that died at or after this time: a duration back from now (1h, 7d) or an
    /// RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<DateTime<Utc>>,

    /// Print the groups as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// Retry the dead jobs selected by --task, --error-contains and the other filters.
    Retry(DeadBulkArgs),
    /// Cancel the dead jobs selected by --task, --error-contains and the other filters, so
    /// that they no longer show here.
    Cancel(DeadBulkArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = DEAD_HELP)]
pub struct DeadBulkArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub bulk: BulkFlags,

    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: DeadArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    match args.command {
        None => list(args.since, args.json, connection).await,
        Some(DeadCommand::Retry(a)) => act(Action::Retry, a, connection).await,
        Some(DeadCommand::Cancel(a)) => act(Action::Cancel, a, connection).await,
    }
}

async fn list(
    since: Option<DateTime<Utc>>,
    json: bool,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    let store = connection.store("dead").await?;
    let groups = store.dead_groups(since).await.map_err(anyhow::Error::from);
    store.close().await;
    let groups = groups?;
    if json {
        emit_json(&groups)
    } else {
        emit(&render(&groups, Utc::now()))
    }
}

async fn act(
    action: Action,
    args: DeadBulkArgs,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    if !args.filter.state.is_empty() {
        return Err(Usage(
            "`dead retry` and `dead cancel` select dead jobs only; drop --state, or use \
             `jobs retry` / `jobs cancel` for other states"
                .to_owned(),
        )
        .into());
    }
    let mut filter = args.filter.to_filter();
    if filter.is_empty() {
        return Err(Usage(
            "name the dead jobs to act on: --task (as `warren dead` shows it), \
             --error-contains, --queue, --since or --until"
                .to_owned(),
        )
        .into());
    }
    filter.states = vec![JobState::Dead];
    let store = connection.store("dead").await?;
    let result = bulk::run(&store, action, &filter, args.bulk, args.json).await;
    store.close().await;
    result
}

fn render(groups: &[DeadGroup], now: DateTime<Utc>) -> String {
    if groups.is_empty() {
        return "no dead jobs\n".to_owned();
    }
    let mut table = Table::new(&[
        ("COUNT", Align::Right),
        ("TASK", Align::Left),
        ("KIND", Align::Left),
        ("FIRST SEEN", Align::Left),
        ("LAST SEEN", Align::Left),
        ("EXAMPLE", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for g in groups {
        let message: String = if g.message.chars().count() > 60 {
            g.message.chars().take(59).chain(['…']).collect()
        } else {
            g.message.clone()
        };
        table.row(vec![
            g.count.to_string(),
            g.task.clone(),
            g.kind.clone(),
            age(now - g.first_seen),
            age(now - g.last_seen),
            g.example_id.to_string(),
            message,
        ]);
    }
    table.render()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn groups_read_as_a_table() {
        let now = DateTime::from_timestamp(1_764_570_000, 0).unwrap();
        let group = DeadGroup {
            task: "email".into(),
            kind: "timeout".into(),
            message: "attempt timed out after 30s".into(),
            count: 500,
            first_seen: now - TimeDelta::hours(2),
            last_seen: now - TimeDelta::minutes(1),
            example_id: "01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d".parse().unwrap(),
        };
        assert_eq!(
            render(&[group], now),
            "COUNT  TASK   KIND     FIRST SEEN  LAST SEEN  EXAMPLE                               ERROR\n\
             \x20 500  email  timeout  2h ago      1m ago     01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d  attempt timed out after 30s\n"
        );
        assert_eq!(render(&[], now), "no dead jobs\n");
    }
}
