//! `warren queues`: Warren's queues, from both sides: RabbitMQ (ready messages, consumers) and
//! Postgres (scheduled, running, recent outcomes).

use anyhow::Context;
use serde::Serialize;
use warren_broker::{Broker, QueueDepth, Topology};
use warren_core::QueueName;
use warren_store::Store;

use crate::connection::ConnectionArgs;
use crate::output::{Align, Table, emit, emit_json};

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
}

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren queues list\n  warren queues list --json\n\n\
The queues are those with live or recent jobs in Postgres or a registered worker (RabbitMQ \
cannot list queues without its management plugin). Unacked counts and rates need the \
management API and are not shown yet."
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

/// A queue as `queues list` and `queues show` report it. `ready` and `consumers` are `None`
/// when RabbitMQ has no such queue.
#[derive(Debug, Serialize)]
pub(crate) struct QueueLine {
    pub(crate) queue: String,
    pub(crate) amqp_queue: String,
    pub(crate) ready: Option<u32>,
    pub(crate) consumers: Option<u32>,
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
    let lines = queue_lines(&store, &broker, only.as_ref()).await;
    store.close().await;
    broker.close().await;
    let lines = lines?;
    if let Some(only) = only
        && lines.iter().all(|l| {
            l.ready.is_none() && l.scheduled + l.running + l.dead_24h + l.succeeded_1h == 0
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
        emit(&render_lines(&lines))
    }
}

/// Counts from Postgres joined with each queue's depth from a passive declare: the rows of
/// `queues list`, or of `queues show` with `only`. `warren top` calls it on every refresh.
pub(crate) async fn queue_lines(
    store: &Store,
    broker: &Broker,
    only: Option<&QueueName>,
) -> anyhow::Result<Vec<QueueLine>> {
    let mut counts = store
        .queue_counts()
        .await
        .context("counting jobs per queue")?;
    if let Some(only) = only {
        counts.retain(|c| c.queue == only.as_str());
        if counts.is_empty() {
            counts.push(warren_store::QueueCounts {
                queue: only.to_string(),
                scheduled: 0,
                running: 0,
                dead_24h: 0,
                succeeded_1h: 0,
            });
        }
    }
    let mut lines = Vec::with_capacity(counts.len());
    for c in counts {
        // A name in Postgres that is not a valid queue name has no RabbitMQ queue to look at.
        let depth = match QueueName::new(c.queue.as_str()) {
            Ok(name) => broker
                .queue_depth(&name)
                .await
                .with_context(|| format!("reading the depth of queue `{name}`"))?,
            Err(_) => None,
        };
        lines.push(QueueLine {
            amqp_queue: broker.topology().queue_name_of(&c.queue),
            ready: depth.map(|d| d.ready),
            consumers: depth.map(|d| d.consumers),
            queue: c.queue,
            scheduled: c.scheduled,
            running: c.running,
            dead_24h: c.dead_24h,
            succeeded_1h: c.succeeded_1h,
        });
    }
    Ok(lines)
}

fn render_lines(lines: &[QueueLine]) -> String {
    if lines.is_empty() {
        return "no queues with live or recent jobs, and no registered workers\n".to_owned();
    }
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("READY", Align::Right),
        ("CONSUMERS", Align::Right),
        ("SCHEDULED", Align::Right),
        ("RUNNING", Align::Right),
        ("DEAD 24H", Align::Right),
        ("SUCCEEDED 1H", Align::Right),
    ]);
    let number = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for l in lines {
        table.row(vec![
            l.queue.clone(),
            number(l.ready),
            number(l.consumers),
            l.scheduled.to_string(),
            l.running.to_string(),
            l.dead_24h.to_string(),
            l.succeeded_1h.to_string(),
        ]);
    }
    table.render()
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
