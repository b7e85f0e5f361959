//! `warren schedules`: periodic jobs kept in Postgres (`warren_schedules`). Every worker that
//! runs a promoter fires their ticks, once per tick across the fleet.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_core::cron::{CatchUp, CronSchedule};
use warren_core::{DEFAULT_QUEUE, QueueName, TaskName};
use warren_store::{NewSchedule, Schedule};

use crate::connection::ConnectionArgs;
use crate::exit::{NotFound, Usage};
use crate::output::{Align, Table, emit, emit_json, printable_line, timestamp};

const SCHEDULES_HELP: &str = "\
A schedule is a cron expression read in a time zone. Every worker that runs a promoter looks
at the schedules every second and makes one job per tick (a `scheduled` row due at the tick,
published by the promoter), however many workers run: the tick is part of a unique key.

Examples:
  warren schedules add report.hourly --cron '0 0 * * * *' --task report.build --payload '{}'
  warren schedules list
  warren schedules pause report.hourly";

#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = SCHEDULES_HELP)]
pub enum SchedulesCommand {
    /// Add a schedule, or replace the definition of the one with that name.
    Add(AddArgs),
    /// One line per schedule: its cron, next and last fire time, and last job.
    List(JsonArgs),
    /// Everything about one schedule.
    Show(NameArgs),
    /// Remove a schedule: it fires nothing more (jobs it made are left alone).
    Remove(NameArgs),
    /// Pause a schedule: it fires nothing until resumed.
    Pause(NameArgs),
    /// Resume a paused schedule; ticks missed meanwhile follow its --catch-up policy.
    Resume(NameArgs),
}

const ADD_HELP: &str = "\
--cron takes 6 fields, seconds first (sec min hour day-of-month month day-of-week), or the
classic 5 (seconds 0). Ticks are read in --timezone (an IANA name), with croner's DST rules:
in a spring-forward gap a fixed-time tick fires once right after the gap, and interval ticks in
the gap are skipped; in a fall-back overlap a fixed-time tick fires once (the first), interval
ticks fire in both passes. See docs/scheduling.md.

--catch-up says what a schedule does about ticks it missed while no worker ran (or while it
was paused): `last` (default) fires the most recent missed tick once, `none` fires only a tick
at most 5 s old, `all` fires every missed tick (at most the last 1000).

Adding a name that exists replaces its definition; its paused state and last tick are kept.

Examples:
  warren schedules add cleanup --cron '0 */5 * * * *' --task cleanup.run --payload '{}'
  warren schedules add digest --cron '0 0 8 * * MON-FRI' --timezone Europe/Berlin \\
      --task email.digest --payload '{\"list\": \"team\"}' --queue emails --catch-up none

--json prints {\"name\", \"created\" (false when it replaced one), \"next_fire_at\" (null while
paused)}.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = ADD_HELP)]
pub struct AddArgs {
    /// The schedule's name, unique.
    pub name: String,

    /// When it fires, e.g. '0 */5 * * * *' (every five minutes, at second 0).
    #[arg(long, value_name = "EXPR", allow_hyphen_values = true)]
    pub cron: String,

    /// Task of the jobs it makes.
    #[arg(long)]
    pub task: TaskName,

    /// Their payload as JSON.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub payload: String,

    /// Queue they are published to.
    #[arg(long, default_value = DEFAULT_QUEUE)]
    pub queue: QueueName,

    /// The IANA time zone the cron expression is read in, e.g. Europe/Berlin.
    #[arg(long, default_value = "UTC", value_name = "ZONE")]
    pub timezone: String,

    /// Missed ticks: none, last or all.
    #[arg(long, value_name = "POLICY", default_value = "last")]
    pub catch_up: String,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren schedules list\n  warren schedules list --json\n\n\
--json prints [{\"name\", \"cron\", \"timezone\", \"task\", \"payload\", \"queue\", \"catch_up\", \
\"paused\", \"next_fire_at\", \"last_fired_at\", \"last_job_id\", \"created_at\", \"updated_at\"}]; \
next_fire_at is null for a paused schedule."
)]
pub struct JsonArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  warren schedules show cleanup\n  \
warren schedules pause cleanup --json\n\n\
--json: `show` prints the object `list` prints for each; `remove` prints {\"name\", \"removed\"}; \
`pause` and `resume` print {\"name\", \"paused\", \"changed\"}. An unknown name exits 3.")]
pub struct NameArgs {
    /// The schedule's name.
    pub name: String,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A schedule as `list` and `show` print it.
#[derive(Debug, Serialize)]
struct View<'a> {
    #[serde(flatten)]
    schedule: &'a Schedule,
    next_fire_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct Added<'a> {
    name: &'a str,
    created: bool,
    next_fire_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct Removed<'a> {
    name: &'a str,
    removed: bool,
}

#[derive(Serialize)]
struct Paused<'a> {
    name: &'a str,
    paused: bool,
    changed: bool,
}

pub(crate) async fn run(
    command: SchedulesCommand,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    match command {
        SchedulesCommand::Add(args) => add(args, connection).await,
        SchedulesCommand::List(args) => list(args, connection).await,
        SchedulesCommand::Show(args) => show(args, connection).await,
        SchedulesCommand::Remove(args) => remove(args, connection).await,
        SchedulesCommand::Pause(args) => set_paused(args, true, connection).await,
        SchedulesCommand::Resume(args) => set_paused(args, false, connection).await,
    }
}

/// Checks everything `add` was given; the error names the flag.
fn validate(args: &AddArgs) -> Result<(NewSchedule, CronSchedule), Usage> {
    let name = args.name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Usage(
            "NAME: a schedule's name must be 1 to 200 characters, without control characters"
                .to_owned(),
        ));
    }
    let cron = CronSchedule::parse(&args.cron, &args.timezone).map_err(|e| {
        let flag = match e {
            warren_core::cron::CronScheduleError::TimeZone { .. } => "--timezone",
            _ => "--cron",
        };
        Usage(format!("{flag}: {e}"))
    })?;
    if cron.next_after(Utc::now()).is_none() {
        return Err(Usage(format!(
            "--cron: '{}' never fires (no date matches it)",
            args.cron
        )));
    }
    let catch_up: CatchUp = args
        .catch_up
        .parse()
        .map_err(|e| Usage(format!("--catch-up: {e}")))?;
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| Usage(format!("--payload: not valid JSON: {e}")))?;
    warren_core::message::check_payload(&args.payload)
        .map_err(|e| Usage(format!("--payload: JSON that no worker can read: {e}")))?;
    warren_core::message::check_storable(&args.payload)
        .map_err(|e| Usage(format!("--payload: JSON that PostgreSQL cannot store: {e}")))?;
    Ok((
        NewSchedule {
            name: name.to_owned(),
            cron: args.cron.trim().to_owned(),
            timezone: args.timezone.clone(),
            task: args.task.to_string(),
            payload: payload.to_string(),
            queue: args.queue.to_string(),
            catch_up,
        },
        cron,
    ))
}

async fn add(args: AddArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let (schedule, cron) = validate(&args)?;
    let store = connection.store("schedules add").await?;
    let created = store
        .upsert_schedule(&schedule)
        .await
        .context("adding the schedule");
    store.close().await;
    let (created, paused) = created?;
    let next = if paused {
        None
    } else {
        cron.next_after(Utc::now())
    };
    if args.json {
        return emit_json(&Added {
            name: &schedule.name,
            created,
            next_fire_at: next,
        });
    }
    emit(&format!(
        "{} schedule {} ({})\n",
        if created { "added" } else { "replaced" },
        printable_line(&schedule.name),
        next.map_or_else(
            || "paused: resume it with `warren schedules resume`".to_owned(),
            |t| format!("next fire {}", timestamp(t))
        )
    ))
}

/// When a schedule fires next: its first tick after now or its last tick, whichever is
/// later; `None` while paused or if its definition no longer parses.
fn next_fire(s: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if s.paused {
        return None;
    }
    let cron = CronSchedule::parse(&s.cron, &s.timezone).ok()?;
    cron.next_after(now.max(s.last_fired_at.unwrap_or(s.created_at)))
}

async fn list(args: JsonArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("schedules list").await?;
    let schedules = store.schedules().await.context("reading the schedules");
    store.close().await;
    let schedules = schedules?;
    let now = Utc::now();
    let views: Vec<View<'_>> = schedules
        .iter()
        .map(|s| View {
            schedule: s,
            next_fire_at: next_fire(s, now),
        })
        .collect();
    if args.json {
        emit_json(&views)
    } else {
        emit(&render(&views))
    }
}

fn render(views: &[View<'_>]) -> String {
    if views.is_empty() {
        return "no schedules; add one with `warren schedules add`\n".to_owned();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("CRON", Align::Left),
        ("TIMEZONE", Align::Left),
        ("TASK", Align::Left),
        ("QUEUE", Align::Left),
        ("CATCH-UP", Align::Left),
        ("NEXT FIRE", Align::Left),
        ("LAST FIRE", Align::Left),
        ("LAST JOB", Align::Left),
    ]);
    let time = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), timestamp);
    for v in views {
        let s = v.schedule;
        table.row(vec![
            s.name.clone(),
            if s.paused { "paused" } else { "active" }.to_owned(),
            s.cron.clone(),
            s.timezone.clone(),
            s.task.clone(),
            s.queue.clone(),
            s.catch_up.clone(),
            time(v.next_fire_at),
            time(s.last_fired_at),
            s.last_job_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        ]);
    }
    table.render()
}

async fn find(
    connection: &ConnectionArgs,
    command: &str,
    name: &str,
) -> anyhow::Result<(warren_store::Store, Schedule)> {
    let store = connection.store(command).await?;
    match store.schedule_named(name).await {
        Ok(Some(s)) => Ok((store, s)),
        Ok(None) => {
            store.close().await;
            Err(not_found(name))
        }
        Err(e) => {
            store.close().await;
            Err(anyhow::Error::from(e).context("reading the schedule"))
        }
    }
}

fn not_found(name: &str) -> anyhow::Error {
    NotFound(format!(
        "no schedule named '{}' (see `warren schedules list`)",
        printable_line(name)
    ))
    .into()
}

async fn show(args: NameArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let (store, s) = find(connection, "schedules show", &args.name).await?;
    store.close().await;
    let view = View {
        next_fire_at: next_fire(&s, Utc::now()),
        schedule: &s,
    };
    if args.json {
        return emit_json(&view);
    }
    let time = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), timestamp);
    let lines = [
        ("name", s.name.clone()),
        (
            "state",
            if s.paused { "paused" } else { "active" }.to_owned(),
        ),
        ("cron", s.cron.clone()),
        ("timezone", s.timezone.clone()),
        ("task", s.task.clone()),
        ("queue", s.queue.clone()),
        ("payload", s.payload.to_string()),
        ("catch-up", s.catch_up.clone()),
        ("next fire", time(view.next_fire_at)),
        ("last fire", time(s.last_fired_at)),
        (
            "last job",
            s.last_job_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        ),
        ("created", timestamp(s.created_at)),
        ("updated", timestamp(s.updated_at)),
    ];
    let text: String = lines
        .iter()
        .map(|(k, v)| format!("{:<10} {}\n", format!("{k}:"), printable_line(v)))
        .collect();
    emit(&text)
}

async fn remove(args: NameArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("schedules remove").await?;
    let removed = store
        .remove_schedule(&args.name)
        .await
        .context("removing the schedule");
    store.close().await;
    if !removed? {
        return Err(not_found(&args.name));
    }
    if args.json {
        return emit_json(&Removed {
            name: &args.name,
            removed: true,
        });
    }
    emit(&format!(
        "removed schedule {}\n",
        printable_line(&args.name)
    ))
}

async fn set_paused(
    args: NameArgs,
    paused: bool,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    let command = if paused {
        "schedules pause"
    } else {
        "schedules resume"
    };
    let store = connection.store(command).await?;
    let changed = store
        .set_schedule_paused(&args.name, paused)
        .await
        .context("pausing or resuming the schedule");
    store.close().await;
    let Some(changed) = changed? else {
        return Err(not_found(&args.name));
    };
    if args.json {
        return emit_json(&Paused {
            name: &args.name,
            paused,
            changed,
        });
    }
    let word = if paused { "paused" } else { "resumed" };
    let name = printable_line(&args.name);
    emit(&if changed {
        format!("{word} schedule {name}\n")
    } else {
        format!(
            "schedule {name} was already {}\n",
            if paused { "paused" } else { "active" }
        )
    })
}
