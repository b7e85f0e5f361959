//! `warren workers`: the workers table, as each worker last reported itself.

use anyhow::Context;
use chrono::{DateTime, Utc};
use warren_store::WorkerRecord;

use crate::connection::ConnectionArgs;
use crate::output::{Align, Table, age, emit, emit_json};

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: WorkersArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("workers").await?;
    let workers = store.workers().await.context("listing workers");
    store.close().await;
    let workers = workers?;
    if args.json {
        emit_json(&workers)
    } else {
        emit(&render(&workers, Utc::now()))
    }
}

fn render(workers: &[WorkerRecord], now: DateTime<Utc>) -> String {
    if workers.is_empty() {
        return "no workers have registered\n".to_owned();
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("STATE", Align::Left),
        ("QUEUES", Align::Left),
        ("CONCURRENCY", Align::Right),
        ("IN FLIGHT", Align::Right),
        ("PROCESSED", Align::Right),
        ("LAST SEEN", Align::Left),
    ]);
    for w in workers {
        table.row(vec![
            w.id.clone(),
            w.state.clone(),
            w.queues.join(","),
            w.concurrency.to_string(),
            w.in_flight.to_string(),
            w.processed.to_string(),
            age(now - w.last_seen_at),
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
    fn workers_read_as_a_table_with_their_age() {
        let now = DateTime::from_timestamp(1_738_314_900, 0).unwrap();
        let worker = WorkerRecord {
            id: "host-12".into(),
            hostname: "host".into(),
            pid: 12,
            queues: vec!["default".into(), "emails".into()],
            concurrency: 64,
            state: "running".into(),
            started_at: now - TimeDelta::hours(1),
            last_seen_at: now - TimeDelta::seconds(3),
            stopped_at: None,
            in_flight: 3,
            processed: 12_034,
        };
        assert_eq!(
            render(&[worker], now),
            "ID       STATE    QUEUES          CONCURRENCY  IN FLIGHT  PROCESSED  LAST SEEN\n\
             host-12  running  default,emails           64          3      12034  3s ago\n"
        );
        assert_eq!(render(&[], now), "no workers have registered\n");
    }
}
