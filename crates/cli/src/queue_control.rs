//! `warren queues pause / resume / purge`: steering a queue across the whole fleet.
//!
//! Pause and resume only write Postgres (a row in `warren_queue_pauses` and a NOTIFY); the
//! workers do the rest. Purge takes the ready messages out of RabbitMQ itself and records
//! each purged job `cancelled` before acking its message, so nothing vanishes untraced.

use anyhow::Context;
use serde::Serialize;
use warren_broker::{Delivery, Drain, Publisher};
use warren_core::{FailureKind, JobMessage, JobState, QueueName};
use warren_store::{RecordRow, Recorded, Recorder, RecorderConfig};

use crate::connection::ConnectionArgs;
use crate::exit::Interrupted;
use crate::output::{emit, emit_json, printable_line};

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren queues pause emails\n  warren queues resume emails\n\n\
Every worker stops taking new jobs from the queue within about a second: jobs wait in RabbitMQ, \
jobs already running finish, and prefetched ones go back to the queue. A worker started later \
honours the pause too. `warren queues` and `warren workers` show it."
)]
pub struct PauseArgs {
    /// The Warren queue name.
    pub queue: QueueName,

    /// Who is acting, recorded as NAME@HOST with the pause or the purge.
    #[arg(long, env = "USER", value_name = "NAME", default_value = "unknown")]
    pub by: String,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren queues purge emails --dry-run\n  warren queues purge emails --yes\n  warren queues purge emails --yes --json\n\n\
Takes the messages ready in the queue when it starts and records each job `cancelled` \
(reason: purged) before removing its message; a message without a readable job id is moved to \
the parking queue (`warren dlq`). Messages a worker holds are not touched: pause the queue \
first to purge everything that waits. Ctrl-C stops after the current batch (exit 130)."
)]
pub struct PurgeArgs {
    /// The Warren queue name.
    pub queue: QueueName,

    /// Who is acting, recorded as NAME@HOST with the pause or the purge.
    #[arg(long, env = "USER", value_name = "NAME", default_value = "unknown")]
    pub by: String,

    /// Purge without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,

    /// Only say how many messages are ready to be purged.
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `queues pause` and `queues resume` did.
#[derive(Debug, Serialize)]
struct Paused {
    queue: String,
    paused: bool,
    /// False when the queue already was in the state asked for.
    changed: bool,
    /// Whether any job, worker or earlier pause named the queue before this command: a
    /// pause of a queue nothing knows is kept (workers started later honour it), but is
    /// likely a typo, and the text says how to undo it.
    known: bool,
}

/// What `queues purge` did.
#[derive(Debug, Default, Serialize)]
struct Purged {
    queue: String,
    /// Jobs recorded `cancelled` (reason purged) and removed from the queue.
    cancelled: u64,
    /// Jobs removed whose rows were already final (a duplicate delivery of a finished job).
    already_final: u64,
    /// Messages without a readable job id, moved to the parking queue.
    parked: u64,
    interrupted: bool,
}

/// Who is acting, for the pause row and the purge reason: `user@host`.
fn actor(user: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{user}@{host}")
}

pub(crate) async fn pause(
    args: PauseArgs,
    pause: bool,
    connection: &ConnectionArgs,
) -> anyhow::Result<()> {
    let command = if pause {
        "queues pause"
    } else {
        "queues resume"
    };
    let store = connection.store(command).await?;
    let done = async {
        let known = store
            .queue_counts()
            .await
            .context("reading the queues Postgres knows")?
            .iter()
            .any(|c| c.queue == args.queue.as_str());
        let changed = if pause {
            store
                .pause_queue(args.queue.as_str(), &actor(&args.by))
                .await
        } else {
            store.resume_queue(args.queue.as_str()).await
        };
        anyhow::Ok((known, changed?))
    }
    .await;
    store.close().await;
    let (known, changed) = done.with_context(|| format!("{command} {}", args.queue))?;
    let result = Paused {
        queue: args.queue.to_string(),
        paused: pause,
        changed,
        known,
    };
    if args.json {
        return emit_json(&result);
    }
    let q = &result.queue;
    let unknown = if known {
        String::new()
    } else {
        format!(
            "note: no job, worker or pause has named queue `{q}` in namespace `{}`: check the \
             name; the pause holds for workers started later\n",
            connection.namespace
        )
    };
    emit(&match (pause, changed) {
        (true, true) => format!(
            "paused queue `{q}`: workers take no new jobs from it (within about a second); its \
             jobs wait in RabbitMQ\n{unknown}resume with: warren queues resume {q}\n"
        ),
        (true, false) => format!("queue `{q}` was already paused\n"),
        (false, true) => format!("resumed queue `{q}`: workers take its jobs again\n"),
        (false, false) => format!("queue `{q}` was not paused\n"),
    })
}

/// Messages taken per round: recorded in one batch, then acked.
const PURGE_BATCH: usize = 500;

pub(crate) async fn purge(args: PurgeArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let broker_config = connection.broker_config("queues purge")?;
    // Both services are needed: a missing database URL is reported before the broker is
    // touched.
    connection.store_config("queues purge")?;
    let broker = connection.broker("queues purge").await?;
    let depth = broker
        .queue_depth(&args.queue)
        .await
        .with_context(|| format!("reading the depth of queue `{}`", args.queue));
    let depth = match depth {
        Ok(Some(d)) => d,
        Ok(None) => {
            broker.close().await;
            return Err(crate::exit::NotFound(format!(
                "RabbitMQ has no queue `{}` (namespace `{}`); check the name and --namespace",
                broker_config.topology.queue(&args.queue),
                connection.namespace
            ))
            .into());
        }
        Err(e) => {
            broker.close().await;
            return Err(e);
        }
    };
    if args.dry_run {
        broker.close().await;
        let plan = serde_json::json!({ "queue": args.queue.to_string(), "ready": depth.ready });
        return if args.json {
            emit_json(&plan)
        } else {
            emit(&format!(
                "would purge {} ready message(s) from queue `{}`; nothing was done\n",
                depth.ready, args.queue
            ))
        };
    }
    let what = format!(
        "purge {} ready message(s) from queue `{}`, recording each job cancelled",
        depth.ready, args.queue
    );
    if !args.yes
        && let Err(e) = crate::confirm::confirm("", &what)
    {
        broker.close().await;
        return Err(e);
    }
    let store = connection.store("queues purge").await?;
    let result = async {
        let publisher = broker.publisher().await.context("opening a publisher")?;
        let mut drain = broker
            .drain(&args.queue)
            .await
            .context("opening a channel to purge")?;
        let (recorder, recorder_task) = Recorder::spawn(store.clone(), RecorderConfig::default());
        let reason = format!(
            "purged from queue `{}` by `warren queues purge` ({})",
            args.queue,
            actor(&args.by)
        );
        let outcome = purge_all(&args.queue, &reason, &mut drain, &recorder, &publisher).await;
        drain.close().await;
        drop(recorder);
        let _ = recorder_task.await;
        outcome
    }
    .await;
    store.close().await;
    broker.close().await;
    let report = result?;
    if args.json {
        emit_json(&report)?;
    } else {
        emit(&format!(
            "purged queue `{}`: {} job(s) recorded cancelled (reason: purged), {} already \
             final, {} unreadable message(s) moved to the parking queue{}\n",
            printable_line(&report.queue),
            report.cancelled,
            report.already_final,
            report.parked,
            if report.interrupted {
                "; interrupted: the rest is still in the queue"
            } else {
                ""
            }
        ))?;
    }
    if report.interrupted {
        return Err(Interrupted("purge interrupted by Ctrl-C".to_owned()).into());
    }
    Ok(())
}

/// Takes batches until the queue (as it stood) is empty or Ctrl-C. Each batch is recorded,
/// then acked; a failure leaves the unacked rest in the queue.
async fn purge_all(
    queue: &QueueName,
    reason: &str,
    drain: &mut Drain,
    recorder: &Recorder,
    publisher: &Publisher,
) -> anyhow::Result<Purged> {
    let batches = crate::batches::Batches::start(None);
    let mut report = Purged {
        queue: queue.to_string(),
        ..Purged::default()
    };
    let result = loop {
        if batches.interrupted() {
            report.interrupted = true;
            break Ok(());
        }
        let batch = match drain.next_batch(PURGE_BATCH).await {
            Ok(b) if b.is_empty() => break Ok(()),
            Ok(b) => b,
            Err(e) => break Err(anyhow::Error::new(e).context("taking messages from the queue")),
        };
        if let Err(e) = purge_batch(queue, &batch, reason, recorder, publisher, &mut report).await {
            break Err(e);
        }
        batches.progress("purged", report.cancelled + report.parked);
    };
    batches.finish();
    result.with_context(|| {
        format!(
            "purge stopped after {} job(s); what was not recorded is still in the queue",
            report.cancelled
        )
    })?;
    Ok(report)
}

async fn purge_batch(
    queue: &QueueName,
    batch: &[Delivery],
    reason: &str,
    recorder: &Recorder,
    publisher: &Publisher,
    report: &mut Purged,
) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    for delivery in batch {
        // Any size goes: the body is kept as the job's payload, never run.
        match JobMessage::decode(&delivery.raw, usize::MAX) {
            Ok(message) => records.push((delivery, cancelled_row(&message, queue, reason))),
            Err(e) => unreadable.push((delivery, e.to_string())),
        }
    }
    // Recorded all at once, so the recorder writes them in one batch.
    let mut writes = tokio::task::JoinSet::new();
    let mut delivered = Vec::with_capacity(records.len());
    for (i, (delivery, row)) in records.into_iter().enumerate() {
        let recorder = recorder.clone();
        writes.spawn(async move { (i, recorder.record(row).await) });
        delivered.push(delivery);
    }
    let mut outcomes = Vec::with_capacity(delivered.len());
    while let Some(joined) = writes.join_next().await {
        outcomes.push(joined.context("a record task failed")?);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    for (i, outcome) in outcomes {
        let delivery = delivered[i];
        match outcome.context("recording a purged job")? {
            Recorded::Written => report.cancelled += 1,
            Recorded::Fenced => report.already_final += 1,
        }
        delivery
            .ack()
            .await
            .context("removing a recorded message")?;
    }
    for (delivery, why) in unreadable {
        publisher
            .publish_parked(
                &delivery.raw,
                queue.as_str(),
                &format!("{reason}; unreadable: {why}"),
            )
            .await
            .context("parking an unreadable message")?;
        delivery.ack().await.context("removing a parked message")?;
        report.parked += 1;
    }
    Ok(())
}

/// The row of a purged job: `cancelled` now, at the attempt the message carried, never
/// started.
fn cancelled_row(message: &JobMessage, queue: &QueueName, reason: &str) -> RecordRow {
    let attempts = message
        .max_attempts
        .unwrap_or(message.attempt)
        .max(message.attempt);
    let timeout = std::time::Duration::from_millis(message.timeout_ms.unwrap_or(0));
    let mut row = RecordRow::attempt(message, queue.as_str(), "warren-cli", attempts, timeout).end(
        JobState::Cancelled,
        FailureKind::Cancelled,
        reason.to_owned(),
    );
    row.started_at = None;
    if message.timeout_ms.is_none() {
        row.timeout_ms = None;
    }
    row
}
