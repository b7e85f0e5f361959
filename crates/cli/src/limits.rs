//! `warren limits`: fleet-wide concurrency and rate limits on a task or a queue, kept in
//! Postgres (`warren_limits`). Workers re-read them on NOTIFY and apply them across the fleet.

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use warren_core::{QueueName, TaskName};
use warren_store::{Limit, MAX_COUNT, Rate};

use crate::connection::ConnectionArgs;
use crate::exit::{NotFound, Usage};
use crate::output::{Align, Table, emit, emit_json, printable_line, timestamp};

const LIMITS_HELP: &str = "\
A limit applies to every job whose task or queue is its target, across all workers: at most
--concurrency of them run at once, and at most --rate of them start per second or minute.
With --key-from, each value of that payload field has a limit of its own. A job over its limit
is neither failed nor counted as an attempt: it waits as a scheduled job and runs when a slot
or token is free. See docs/limits.md.

Examples:
  warren limits set email.send --rate 20/s
  warren limits set reports --concurrency 2
  warren limits set api.call --concurrency 1 --key-from /customer_id
  warren limits list
  warren limits remove email.send";

#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = LIMITS_HELP)]
pub enum LimitsCommand {
    /// Set the limit on a task or queue (replacing the one it had).
    Set(SetArgs),
    /// One line per limit.
    List(ListArgs),
    /// Remove the limit on a task or queue: its jobs run unlimited again.
    Remove(RemoveArgs),
}

const SET_HELP: &str = "\
TARGET is a task or a queue name; a job is under the limits of both its task and its queue.

--concurrency N: at most N jobs running at once across the fleet (at least 1).
--rate N/s or N/m: at most N jobs started per second or per minute (N at least 1). A bucket
  of tokens refills continuously; after a quiet spell it holds a burst of a tenth of a
  second's worth of tokens (at least 1), so any one-second window holds at most the rate
  plus that burst.
--key-from POINTER: an RFC 6901 JSON pointer into the payload (e.g. /customer_id); each value
  found there is limited on its own. Jobs without the field share one key.

Examples:
  warren limits set email.send --rate 20/s
  warren limits set reports --concurrency 2 --rate 100/m
  warren limits set api.call --concurrency 1 --key-from /customer_id

--json prints {\"target\", \"created\", \"concurrency\", \"rate\", \"key_from\"}.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = SET_HELP)]
pub struct SetArgs {
    /// The task or queue the limit applies to.
    pub target: String,

    /// Most jobs running at once, across the fleet.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<String>,

    /// Most jobs started per second (N/s) or minute (N/m).
    #[arg(long, value_name = "N/s|N/m")]
    pub rate: Option<String>,

    /// JSON pointer to the payload field whose values are limited separately.
    #[arg(long, value_name = "POINTER", allow_hyphen_values = true)]
    pub key_from: Option<String>,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren limits list\n  warren limits list --json\n\n\
--json prints [{\"target\", \"concurrency\", \"rate\", \"key_from\", \"updated_at\"}]; rate is \
like \"20/s\", and null when there is none, as is concurrency."
)]
pub struct ListArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  warren limits remove email.send\n\n\
--json prints {\"target\", \"removed\"}. A target without a limit exits 3.")]
pub struct RemoveArgs {
    /// The task or queue whose limit goes.
    pub target: String,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A limit as `list` and `set --json` print it.
#[derive(Debug, Serialize)]
struct View<'a> {
    target: &'a str,
    concurrency: Option<u32>,
    rate: Option<String>,
    key_from: Option<&'a str>,
    updated_at: chrono::DateTime<Utc>,
}

impl<'a> View<'a> {
    fn of(l: &'a Limit) -> Self {
        View {
            target: &l.target,
            concurrency: l.concurrency,
            rate: l.rate.map(rate_text),
            key_from: l.key_from.as_deref(),
            updated_at: l.updated_at,
        }
    }
}

#[derive(Serialize)]
struct SetView<'a> {
    target: &'a str,
    created: bool,
    concurrency: Option<u32>,
    rate: Option<String>,
    key_from: Option<&'a str>,
}

#[derive(Serialize)]
struct Removed<'a> {
    target: &'a str,
    removed: bool,
}

pub(crate) async fn run(command: LimitsCommand, connection: &ConnectionArgs) -> anyhow::Result<()> {
    match command {
        LimitsCommand::Set(args) => set(args, connection).await,
        LimitsCommand::List(args) => list(args, connection).await,
        LimitsCommand::Remove(args) => remove(args, connection).await,
    }
}

fn rate_text(rate: Rate) -> String {
    match rate.period_ms {
        1000 => format!("{}/s", rate.count),
        60_000 => format!("{}/m", rate.count),
        ms => format!("{}/{ms}ms", rate.count),
    }
}

/// `n` as a limit's count, which Postgres keeps in an `int4`: at most 2147483647.
fn at_most_max(n: u64, flag: &str, text: &str) -> Result<u32, Usage> {
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_COUNT)
        .ok_or_else(|| {
            Usage(format!(
                "{flag}: `{}` is more than {MAX_COUNT}, the most a limit holds",
                printable_line(text)
            ))
        })
}

/// Reads `N/s` or `N/m`.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, Usage> {
    let bad = || {
        Usage(format!(
            "--rate: `{}` is not a rate; write N/s or N/m with N a whole number, e.g. 20/s or 100/m",
            printable_line(text)
        ))
    };
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let period_ms = match unit.trim() {
        "s" => 1000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let count = at_most_max(count, "--rate", text)?;
    if count == 0 {
        return Err(Usage(format!(
            "--rate: `{}` lets no job start; give at least 1 per second or minute, e.g. 1/s",
            printable_line(text)
        )));
    }
    Ok(Rate { count, period_ms })
}

/// Checks an RFC 6901 JSON pointer: empty, or `/`-separated tokens in which `~` only starts
/// the escapes `~0` and `~1`.
pub(crate) fn check_pointer(text: &str) -> Result<(), Usage> {
    if !text.is_empty() && !text.starts_with('/') {
        return Err(Usage(format!(
            "--key-from: `{}` is not a JSON pointer (RFC 6901): it must start with `/`, e.g. /customer_id",
            printable_line(text)
        )));
    }
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '~' && !matches!(chars.peek(), Some((_, '0' | '1'))) {
            return Err(Usage(format!(
                "--key-from: `{}` is not a JSON pointer (RFC 6901): `~` at byte {at} must be followed by 0 (for ~) or 1 (for /)",
                printable_line(text)
            )));
        }
    }
    Ok(())
}

/// Checks everything `set` was given; the error names the flag.
fn validate(args: &SetArgs) -> Result<Limit, Usage> {
    let target = args.target.trim();
    // Task and queue names follow one rule, so either error says what is wrong.
    if let (Err(e), Err(_)) = (TaskName::new(target), QueueName::new(target)) {
        return Err(Usage(format!(
            "TARGET: `{}` is neither a task nor a queue name: {}",
            printable_line(&e.name),
            e.reason
        )));
    }
    let concurrency = match &args.concurrency {
        None => None,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Some(at_most_max(n, "--concurrency", text)?),
            _ => {
                return Err(Usage(format!(
                    "--concurrency: `{}` is not a whole number of at least 1",
                    printable_line(text)
                )));
            }
        },
    };
    let rate = args.rate.as_deref().map(parse_rate).transpose()?;
    if concurrency.is_none() && rate.is_none() {
        return Err(Usage(
            "give --concurrency, --rate or both (to lift a limit, use `warren limits remove`)"
                .to_owned(),
        ));
    }
    if let Some(pointer) = &args.key_from {
        check_pointer(pointer)?;
    }
    Ok(Limit {
        target: target.to_owned(),
        concurrency,
        rate,
        key_from: args.key_from.clone(),
        updated_at: Utc::now(),
    })
}

async fn set(args: SetArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let limit = validate(&args)?;
    let store = connection.store("limits set").await?;
    let created = store.set_limit(&limit).await.context("setting the limit");
    store.close().await;
    let created = created?;
    if args.json {
        return emit_json(&SetView {
            target: &limit.target,
            created,
            concurrency: limit.concurrency,
            rate: limit.rate.map(rate_text),
            key_from: limit.key_from.as_deref(),
        });
    }
    emit(&format!(
        "{} limit on {}: {}\n",
        if created { "set" } else { "replaced" },
        printable_line(&limit.target),
        describe(&limit)
    ))
}

fn describe(l: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(c) = l.concurrency {
        parts.push(format!("at most {c} running at once"));
    }
    if let Some(r) = l.rate {
        parts.push(format!("at most {} started", rate_text(r)));
    }
    let mut text = parts.join(", ");
    if let Some(k) = &l.key_from {
        text.push_str(&format!(", per value of {}", printable_line(k)));
    }
    text
}

/// A limit in a few words, for a table cell (`warren top`): `5 at once`, `20/s`,
/// `5 at once, 20/s`, with ` per key` when it applies per payload value.
pub(crate) fn short(l: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(c) = l.concurrency {
        parts.push(format!("{c} at once"));
    }
    if let Some(r) = l.rate {
        parts.push(rate_text(r));
    }
    let mut text = parts.join(", ");
    if l.key_from.is_some() {
        text.push_str(" per key");
    }
    text
}

async fn list(args: ListArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("limits list").await?;
    let limits = store.limits().await.context("reading the limits");
    store.close().await;
    let limits = limits?;
    if args.json {
        let views: Vec<View<'_>> = limits.iter().map(View::of).collect();
        return emit_json(&views);
    }
    if limits.is_empty() {
        return emit("no limits; set one with `warren limits set`\n");
    }
    let mut table = Table::new(&[
        ("TARGET", Align::Left),
        ("CONCURRENCY", Align::Right),
        ("RATE", Align::Right),
        ("KEY FROM", Align::Left),
        ("UPDATED", Align::Left),
    ]);
    let dash = || "-".to_owned();
    for l in &limits {
        table.row(vec![
            l.target.clone(),
            l.concurrency.map_or_else(dash, |c| c.to_string()),
            l.rate.map_or_else(dash, rate_text),
            l.key_from.clone().unwrap_or_else(dash),
            timestamp(l.updated_at),
        ]);
    }
    emit(&table.render())
}

async fn remove(args: RemoveArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("limits remove").await?;
    let removed = store
        .remove_limit(args.target.trim())
        .await
        .context("removing the limit");
    store.close().await;
    if !removed? {
        return Err(NotFound(format!(
            "no limit on '{}' (see `warren limits list`)",
            printable_line(&args.target)
        ))
        .into());
    }
    if args.json {
        return emit_json(&Removed {
            target: &args.target,
            removed: true,
        });
    }
    emit(&format!(
        "removed the limit on {}\n",
        printable_line(&args.target)
    ))
}

/// A few lines for `warren queues`: each limit, with how long its task's jobs waited for
/// limits in the last hour; `None` when there is no limit or it cannot be read.
pub(crate) async fn limited_note(store: &warren_store::Store) -> Option<String> {
    let limits = store.limits().await.ok()?;
    if limits.is_empty() {
        return None;
    }
    let waits = store
        .limit_waits(Utc::now() - chrono::TimeDelta::hours(1))
        .await
        .unwrap_or_default();
    let mut text = "\nlimits (`warren limits list`; waits are of the last hour):\n".to_owned();
    for l in &limits {
        let wait = waits
            .iter()
            .find(|w| w.task == l.target)
            .map_or_else(String::new, |w| {
                format!(
                    "; {} jobs waited, avg {} ms, max {} ms",
                    w.deferred_jobs, w.avg_wait_ms, w.max_wait_ms
                )
            });
        text.push_str(&format!(
            "  {}: {}{wait}\n",
            printable_line(&l.target),
            describe(l)
        ));
    }
    Some(text)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_per_second_and_per_minute() {
        assert_eq!(
            parse_rate("20/s").unwrap(),
            Rate {
                count: 20,
                period_ms: 1000
            }
        );
        assert_eq!(parse_rate("100/m").unwrap().period_ms, 60_000);
        for bad in ["0/s", "abc", "20", "20/h", "-1/s", "1.5/s", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(
            parse_rate("0/s")
                .unwrap_err()
                .0
                .contains("lets no job start")
        );
    }

    #[test]
    fn a_target_that_is_no_name_says_which_rule_it_breaks() {
        let set = |target: &str| {
            validate(&SetArgs {
                target: target.to_owned(),
                concurrency: Some("1".to_owned()),
                rate: None,
                key_from: None,
                json: false,
            })
            .unwrap_err()
            .0
        };
        assert!(set(&"a".repeat(300)).ends_with("it is longer than 120 bytes"));
        assert!(set("9lives").ends_with("it must start with an ASCII letter"));
        assert!(set("two words").contains("only ASCII letters, digits"));
    }

    #[test]
    fn counts_beyond_what_postgres_holds_are_refused_not_clamped() {
        let set = |concurrency: Option<&str>, rate: Option<&str>| {
            validate(&SetArgs {
                target: "email.send".to_owned(),
                concurrency: concurrency.map(str::to_owned),
                rate: rate.map(str::to_owned),
                key_from: None,
                json: false,
            })
        };
        let max = set(Some("2147483647"), Some("2147483647/s")).unwrap();
        assert_eq!(max.concurrency, Some(MAX_COUNT));
        assert_eq!(max.rate.unwrap().count, MAX_COUNT);
        for (concurrency, rate, flag) in [
            (Some("2147483648"), None, "--concurrency"),
            (Some("4294967296"), None, "--concurrency"),
            (None, Some("2147483648/s"), "--rate"),
            (None, Some("99999999999/m"), "--rate"),
        ] {
            let err = set(concurrency, rate).unwrap_err().0;
            assert!(
                err.starts_with(flag) && err.contains("more than 2147483647"),
                "{err}"
            );
        }
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        for good in ["", "/customer_id", "/a/0/b", "/a~0b", "/a~1b", "/"] {
            assert!(check_pointer(good).is_ok(), "{good}");
        }
        for bad in ["customer_id", "/a~2", "/a~", "#/a"] {
            assert!(check_pointer(bad).is_err(), "{bad}");
        }
    }
}
