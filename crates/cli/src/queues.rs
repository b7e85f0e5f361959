//! `warren queues`: the RabbitMQ side of Warren's queues.

use anyhow::Context;
use serde::Serialize;
use warren_broker::{QueueDepth, Topology};
use warren_core::QueueName;

use crate::connection::ConnectionArgs;
use crate::output::{Align, Table, emit, emit_json};

#[derive(Debug, clap::Subcommand)]
pub enum QueuesCommand {
    /// Declare queues (idempotent), so jobs can be enqueued before any worker consumes them;
    /// print each with its RabbitMQ name and depth.
    Declare(DeclareArgs),
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
    let QueuesCommand::Declare(args) = command;
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
