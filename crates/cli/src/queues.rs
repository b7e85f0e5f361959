//! `warren queues`: Warren's queues, from both sides: RabbitMQ (ready messages, consumers) and
//! Postgres (scheduled, running, recent outcomes).

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_broker::{Broker, QueueDepth, Topology};
use warren_core::QueueName;
use warren_store::Store;

use crate::connection::ConnectionArgs;
use crate::management::Management;
use crate::output::{Align, Table, emit, emit_json};
pub use crate::queue_control::{PauseArgs, PurgeArgs};

#[derive(Debug, clap::Subcommand)]
pub enum QueuesCommand {
    /// One line per queue: ready messages and consumers from RabbitMQ; scheduled, running,
    /// dead in the last 24 h and succeeded in the last hour from Postgres.
    List(ListArgs),
    /// The same for one queue.
    Show(ShowArgs),
    /// Declare queues (idempotent), so jobs can be enqueued before any worker consumes them;
    /// print each with its RabbitMQ name and depth.
    Declare(DeclareArgs),
    /// Stop every worker taking new jobs from a queue (they wait in RabbitMQ).
    Pause(PauseArgs),
    /// Let the workers take a paused queue's jobs again.
    Resume(PauseArgs),
    /// Remove a queue's ready messages, recording each job `cancelled` (reason: purged).
    Purge(PurgeArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren queues list\n  warren queues list --json\n\n\
The queues are those with live or recent jobs in Postgres, a registered worker or a pause, \
and, with the management API, every queue of the namespace RabbitMQ has (one that no worker \
serves and no job row names yet, say). UNACKED and the rates (IN/S published, OUT/S delivered, per second) come from the RabbitMQ \
management API (--rabbitmq-api-url); without it they show as n/a. STATE is `paused` while \
`warren queues pause` holds the queue."
)]
pub struct ListArgs {
    /// Print the queues as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "Example:\n  warren queues show emails --json\n\n\
Exits 3 when neither RabbitMQ nor Postgres knows the queue.")]
pub struct ShowArgs {
    /// The Warren queue name.
    pub queue: QueueName,

    /// Print the queue as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A queue as `queues list` and `queues show` report it. The RabbitMQ columns are `None`
/// when they are unknown: `ready` and `consumers` when RabbitMQ has no such queue, `unacked`
/// and the rates when the management API is not configured or did not answer
/// (`broker_stats` says which source was used).
#[derive(Debug, Serialize)]
pub(crate) struct QueueLine {
    pub(crate) queue: String,
    pub(crate) amqp_queue: String,
    /// True while an admin has the queue paused (`warren queues pause`).
    pub(crate) paused: bool,
    pub(crate) paused_at: Option<DateTime<Utc>>,
    pub(crate) ready: Option<u64>,
    pub(crate) unacked: Option<u64>,
    pub(crate) consumers: Option<u64>,
    /// Messages published to the queue per second (management API).
    pub(crate) publish_rate: Option<f64>,
    /// Messages delivered from the queue per second (management API).
    pub(crate) deliver_rate: Option<f64>,
    /// Where the RabbitMQ columns came from: `management` (the HTTP API), `amqp` (a passive
    /// declare: no unacked count, no rates) or `missing` (RabbitMQ has no such queue).
    pub(crate) broker_stats: &'static str,
    pub(crate) scheduled: i64,
    pub(crate) running: i64,
    pub(crate) dead_24h: i64,
    pub(crate) succeeded_1h: i64,
}

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren queues declare emails\n  warren queues declare default emails reports --json"
)]
pub struct DeclareArgs {
    /// Warren queue names, e.g. default emails.
    #[arg(required = true, value_name = "QUEUE")]
    pub queues: Vec<QueueName>,

    /// Print the queues as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A declared queue as `queues declare` reports it.
#[derive(Debug, Serialize)]
struct Declared {
    queue: String,
    amqp_queue: String,
    /// Messages ready for delivery; `None` if the queue vanished between declare and look.
    ready: Option<u32>,
    consumers: Option<u32>,
}

pub(crate) async fn run(command: QueuesCommand, connection: &ConnectionArgs) -> anyhow::Result<()> {
    match command {
        QueuesCommand::List(args) => list(None, args.json, connection).await,
        QueuesCommand::Show(args) => list(Some(args.queue), args.json, connection).await,
        QueuesCommand::Declare(args) => declare(args, connection).await,
        QueuesCommand::Pause(args) => crate::queue_control::pause(args, true, connection).await,
        QueuesCommand::Resume(args) => crate::queue_control::pause(args, false, connection).await,
        QueuesCommand::Purge(args) => crate::queue_control::purge(args, connection).await,
    }
}

async fn list(
    only: Option<QueueName>,
    json: bool,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    let store = connection.store("queues").await?;
    let broker = match connection.broker("queues").await {
        Ok(broker) => broker,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let mut management = connection.management().await;
    let lines = queue_lines(&store, &broker, &mut management, only.as_ref()).await;
    // Which tasks and queues have a fleet-wide limit, and how long their jobs waited in the
    // last hour, for people (`warren limits list --json` and `warren stats --json` have it
    // for scripts). A failed read only leaves the note out.
    let limited = if json {
        None
    } else {
        crate::limits::limited_note(&store).await
    };
    store.close().await;
    broker.close().await;
    let lines = lines?;
    if let Some(only) = only
        && lines.iter().all(|l| {
            l.ready.is_none()
                && !l.paused
                && l.scheduled + l.running + l.dead_24h + l.succeeded_1h == 0
        })
    {
        return Err(crate::exit::NotFound(format!(
            "no queue `{only}` in RabbitMQ or Postgres (namespace `{}`); check the name and \
             --namespace",
            connection.namespace
        ))
        .into());
    }
    if json {
        emit_json(&lines)
    } else {
        let mut text = render_lines(&lines);
        text.push_str(limited.as_deref().unwrap_or_default());
        emit(&text)
    }
}

/// Adds to `counts` (Postgres's queues) the queues of this namespace that only RabbitMQ has:
/// declared (`warren queues declare`, or by workers since pruned) but never named by a job
/// row, a registered worker or a pause, such as a queue no worker serves whose messages wait.
/// Only the management API can list them; a failed listing drops the API (see
/// [`queue_lines`]) and leaves `counts` as it was.
async fn add_broker_only(
    counts: &mut Vec<warren_store::QueueCounts>,
    broker: &Broker,
    management: &mut Option<Management>,
) {
    let Some(api) = management.as_mut() else {
        return;
    };
    let prefix = broker.topology().queue_name_of("");
    let names = match api.queue_names(&prefix).await {
        Ok(names) => names,
        Err(e) => return api_failed(management, &e),
    };
    let before = counts.len();
    for name in names {
        let Some(queue) = name.strip_prefix(&prefix) else {
            continue;
        };
        // A RabbitMQ queue whose name is not a Warren queue name is none of Warren's.
        if QueueName::new(queue).is_err() || counts[..before].iter().any(|c| c.queue == queue) {
            continue;
        }
        counts.push(no_counts(queue.to_owned()));
    }
    if counts.len() > before {
        counts.sort_by(|a, b| a.queue.cmp(&b.queue));
    }
}

/// A queue Postgres has no jobs, workers or pause for: every count zero.
fn no_counts(queue: String) -> warren_store::QueueCounts {
    warren_store::QueueCounts {
        queue,
        scheduled: 0,
        running: 0,
        dead_24h: 0,
        succeeded_1h: 0,
        paused_at: None,
    }
}

/// Warns that the management API failed, and stops using it.
fn api_failed(management: &mut Option<Management>, e: &anyhow::Error) {
    tracing::warn!(
        "RabbitMQ management API failed ({}); unacked counts and rates are shown as n/a",
        crate::output::printable_line(&format!("{e:#}"))
    );
    *management = None;
}

/// Every queue Postgres knows of (or just `only`), with its RabbitMQ side: from the
/// management API when one is given and answers, else from a passive declare. The rows of
/// `queues list` and `queues show`; `warren top` calls it on every refresh. An API that fails
/// is dropped (set to `None`) with a warning, and the rest comes from AMQP.
pub(crate) async fn queue_lines(
    store: &Store,
    broker: &Broker,
    management: &mut Option<Management>,
    only: Option<&QueueName>,
) -> anyhow::Result<Vec<QueueLine>> {
    let mut counts = store
        .queue_counts()
        .await
        .context("counting jobs per queue")?;
    if let Some(only) = only {
        counts.retain(|c| c.queue == only.as_str());
        if counts.is_empty() {
            counts.push(no_counts(only.to_string()));
        }
    }
    if only.is_none() {
        add_broker_only(&mut counts, broker, management).await;
    }
    let mut lines = Vec::with_capacity(counts.len());
    for c in counts {
        let amqp_queue = broker.topology().queue_name_of(&c.queue);
        let mut line = QueueLine {
            amqp_queue,
            paused: c.paused_at.is_some(),
            paused_at: c.paused_at,
            ready: None,
            unacked: None,
            consumers: None,
            publish_rate: None,
            deliver_rate: None,
            broker_stats: "missing",
            queue: c.queue,
            scheduled: c.scheduled,
            running: c.running,
            dead_24h: c.dead_24h,
            succeeded_1h: c.succeeded_1h,
        };
        if let Some(api) = management.as_mut() {
            match api.queue(&line.amqp_queue).await {
                Ok(stats) => {
                    if let Some(q) = stats {
                        line.ready = Some(q.ready);
                        line.unacked = Some(q.unacked);
                        line.consumers = Some(q.consumers);
                        line.publish_rate = Some(q.publish_rate);
                        line.deliver_rate = Some(q.deliver_rate);
                        line.broker_stats = "management";
                    }
                    lines.push(line);
                    continue;
                }
                Err(e) => api_failed(management, &e),
            }
        }
        // A name in Postgres that is not a valid queue name has no RabbitMQ queue to look at.
        let depth = match QueueName::new(line.queue.as_str()) {
            Ok(name) => broker
                .queue_depth(&name)
                .await
                .with_context(|| format!("reading the depth of queue `{name}`"))?,
            Err(_) => None,
        };
        if let Some(d) = depth {
            line.ready = Some(u64::from(d.ready));
            line.consumers = Some(u64::from(d.consumers));
            line.broker_stats = "amqp";
        }
        lines.push(line);
    }
    Ok(lines)
}

fn render_lines(lines: &[QueueLine]) -> String {
    if lines.is_empty() {
        return "no queues with live or recent jobs, and no registered workers\n".to_owned();
    }
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("STATE", Align::Left),
        ("READY", Align::Right),
        ("UNACKED", Align::Right),
        ("CONSUMERS", Align::Right),
        ("IN/S", Align::Right),
        ("OUT/S", Align::Right),
        ("SCHEDULED", Align::Right),
        ("RUNNING", Align::Right),
        ("DEAD 24H", Align::Right),
        ("SUCCEEDED 1H", Align::Right),
    ]);
    for l in lines {
        // `-`: RabbitMQ has no such queue; `n/a`: this source cannot tell.
        let known = |n: Option<u64>| match (n, l.broker_stats) {
            (Some(n), _) => n.to_string(),
            (None, "missing") => "-".to_owned(),
            (None, _) => "n/a".to_owned(),
        };
        let rate = |r: Option<f64>| match (r, l.broker_stats) {
            (Some(r), _) => format!("{r:.1}"),
            (None, "missing") => "-".to_owned(),
            (None, _) => "n/a".to_owned(),
        };
        table.row(vec![
            l.queue.clone(),
            if l.paused { "paused" } else { "active" }.to_owned(),
            known(l.ready),
            known(l.unacked),
            known(l.consumers),
            rate(l.publish_rate),
            rate(l.deliver_rate),
            l.scheduled.to_string(),
            l.running.to_string(),
            l.dead_24h.to_string(),
            l.succeeded_1h.to_string(),
        ]);
    }
    let mut out = table.render();
    if lines.iter().any(|l| l.broker_stats == "amqp") {
        out.push_str(
            "n/a: unacked counts and rates need the management API (--rabbitmq-api-url)\n",
        );
    }
    out
}

async fn declare(args: DeclareArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let broker = connection.broker("queues declare").await?;
    let result = async {
        broker
            .declare(&args.queues)
            .await
            .context("declaring the queues")?;
        let mut declared = Vec::with_capacity(args.queues.len());
        for queue in &args.queues {
            let depth = broker
                .queue_depth(queue)
                .await
                .with_context(|| format!("reading the depth of queue `{queue}`"))?;
            declared.push(describe(broker.topology(), queue, depth));
        }
        anyhow::Ok(declared)
    }
    .await;
    broker.close().await;
    let declared = result?;
    if args.json {
        emit_json(&declared)
    } else {
        emit(&render(&declared))
    }
}

fn describe(topology: &Topology, queue: &QueueName, depth: Option<QueueDepth>) -> Declared {
    Declared {
        queue: queue.to_string(),
        amqp_queue: topology.queue(queue),
        ready: depth.map(|d| d.ready),
        consumers: depth.map(|d| d.consumers),
    }
}

fn render(declared: &[Declared]) -> String {
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("AMQP QUEUE", Align::Left),
        ("READY", Align::Right),
        ("CONSUMERS", Align::Right),
    ]);
    let number = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for d in declared {
        table.row(vec![
            d.queue.clone(),
            d.amqp_queue.clone(),
            number(d.ready),
            number(d.consumers),
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
    use super::*;

    #[test]
    fn queues_show_their_amqp_names_and_depth() {
        let topology = Topology {
            namespace: warren_core::Namespace::new("prod").unwrap(),
            delivery_limit: 5,
        };
        let q = |name| QueueName::new(name).unwrap();
        let rows = [
            describe(
                &topology,
                &q("default"),
                Some(QueueDepth {
                    ready: 12,
                    consumers: 2,
                }),
            ),
            describe(&topology, &q("emails"), None),
        ];
        assert_eq!(
            render(&rows),
            "QUEUE    AMQP QUEUE      READY  CONSUMERS\n\
             default  prod.q.default     12          2\n\
             emails   prod.q.emails       -          -\n"
        );
    }
}
