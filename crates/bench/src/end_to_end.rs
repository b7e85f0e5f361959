//! Phase 2, Warren end to end: the same messages through the real system.
//!
//! A `warren_client::Client` enqueues `warren.noop` jobs with `enqueue_many`, and an
//! in-process `warren_runtime::Worker`, built with the worker binary's built-in tasks, runs
//! them and records every outcome in PostgreSQL through the batching recorder before acking.
//! The clock stops when Postgres holds all of them as succeeded: a job counts only once its
//! outcome is committed.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_runtime::{Worker, WorkerBuilder, WorkerConfig, WorkerStats};
use warren_store::{LatencySummary, Store};
use warren_testkit::{RunningWorker, wait_until};
use warren_worker::tasks::register_builtins;

use crate::report::{END_TO_END, Extra, Latency, Measure, Measured, Phase, Usage};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::usage::Sample;
use crate::workload::{CHUNK, QUEUE, TASK, payload};

/// Runs `settings.jobs` jobs through an in-process worker after a warm-up, in `sandbox`,
/// until done or `stop`ped. `ceiling` is the broker ceiling's jobs/s of the same run.
pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
    ceiling: Option<f64>,
) -> anyhow::Result<Measured> {
    let builder = register_builtins(Worker::builder());
    let ((phase, usage), _stats) =
        with_worker(settings, sandbox, builder, stop, drive(settings, sandbox)).await?;
    Ok(Measured {
        phase,
        extras: vec![Extra::phase(END_TO_END, ceiling, Some(usage))],
    })
}

/// What this process (the in-process worker and the producer together) spent since
/// `before`, on `jobs` jobs; its peak RSS is the process's since [`in_process_start`].
pub(crate) fn in_process_usage(before: Sample, jobs: u64) -> anyhow::Result<Usage> {
    let now = Sample::of(None)?;
    Ok(Usage {
        cpu_secs: now.cpu.saturating_sub(before.cpu).as_secs_f64(),
        jobs,
        peak_rss_bytes: Some(now.peak_rss_bytes),
    })
}

/// Resets this process's peak RSS (so that an earlier phase's peak is not this one's) and
/// reads where its CPU time starts.
pub(crate) fn in_process_start() -> anyhow::Result<Sample> {
    if !Sample::reset_own_peak() {
        tracing::warn!(
            "cannot reset this process's peak RSS (/proc/self/clear_refs); each phase's \
             figure is the peak since the benchmark started"
        );
    }
    Sample::of(None)
}

/// Runs `drive` (until done or `stop`ped) while an in-process worker with `builder`'s
/// handlers serves the sandbox's queue; returns what `drive` measured and the worker's totals.
pub(crate) async fn with_worker<T>(
    settings: &Settings,
    sandbox: &Sandbox,
    builder: WorkerBuilder,
    stop: &CancellationToken,
    drive: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, WorkerStats)> {
    let worker = start_worker(settings, sandbox, builder).await?;
    let measured = stoppable(stop, drive).await;
    // Stopped as on SIGTERM, whether or not the measurement succeeded, so its last writes
    // and acks finish before the sandbox is removed.
    let stats = worker.stop().await.context("stopping the worker");
    let phase = measured?;
    let stats = stats?;
    tracing::info!(?stats, "worker stopped");
    Ok((phase, stats))
}

/// Starts an in-process worker with `builder`'s handlers on the sandbox's queue.
async fn start_worker(
    settings: &Settings,
    sandbox: &Sandbox,
    builder: WorkerBuilder,
) -> anyhow::Result<RunningWorker> {
    let database = sandbox.database()?;
    let mut config = WorkerConfig::new(
        format!("{}-worker", sandbox.broker_config.topology.namespace),
        vec![sandbox.queue.clone()],
    );
    config.concurrency = settings.concurrency;
    config.prefetch = settings.prefetch;
    let worker: Worker = builder.build(config).context("configuring the worker")?;
    let broker = sandbox.connect("worker").await?;
    let store = database.connect("worker", None).await?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(broker, store, shutdown.clone().cancelled_owned()));
    Ok(RunningWorker { shutdown, handle })
}

/// The producer and the observer: enqueues, waits for the outcomes, reads the latencies,
/// and what this process spent meanwhile.
async fn drive(settings: &Settings, sandbox: &Sandbox) -> anyhow::Result<(Phase, Usage)> {
    // One connection is enough to count rows; the worker's pool is left alone.
    let probe = sandbox.database()?.connect("probe", Some(1)).await?;
    let client = Client::from_broker(sandbox.connect("producer").await?)
        .await
        .context("opening the client's publisher channel")?;
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);

    enqueue(&client, &job, settings.warmup).await?;
    wait_for_succeeded(&probe, settings.warmup, settings.phase_timeout).await?;

    let before = in_process_start()?;
    let since = now_to_the_millisecond();
    let start = Instant::now();
    enqueue(&client, &job, settings.jobs).await?;
    let enqueued = start.elapsed();
    wait_for_drained(
        sandbox,
        &probe,
        settings.warmup + settings.jobs,
        settings.phase_timeout,
    )
    .await?;
    let elapsed = start.elapsed();
    let usage = in_process_usage(before, settings.jobs)?;

    let summary = probe
        .latency_summary(since)
        .await
        .context("reading the latency summary")?;
    if u64::try_from(summary.finished).ok() != Some(settings.jobs) {
        anyhow::bail!(
            "the latency summary counts {} finished jobs since the measurement began, expected {}",
            summary.finished,
            settings.jobs
        );
    }
    let (to_start, to_recorded) = latencies(&summary);
    client.broker().close().await;
    probe.close().await;
    let phase = Phase {
        key: END_TO_END,
        title: "warren end-to-end",
        jobs: settings.jobs,
        elapsed,
        measures: vec![
            Measure::rate(
                "enqueue",
                "enqueue only (confirmed)",
                settings.jobs,
                enqueued,
            ),
            Measure::latency("enqueue_to_start", "enqueue→start", to_start),
            Measure::latency("enqueue_to_recorded", "enqueue→recorded", to_recorded),
        ],
    };
    Ok((phase, usage))
}

/// Enqueues `count` copies of `job` (each with a fresh id) in chunks, each confirmed.
pub(crate) async fn enqueue(client: &Client, job: &NewJob, count: u64) -> anyhow::Result<()> {
    enqueue_each(client, count, |_| job.clone()).await
}

/// Enqueues `job_for(0..count)` in chunks, each confirmed.
pub(crate) async fn enqueue_each(
    client: &Client,
    count: u64,
    job_for: impl Fn(u64) -> NewJob,
) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < count {
        let n = (count - sent).min(CHUNK as u64);
        for outcome in client.enqueue_many((sent..sent + n).map(&job_for)).await {
            outcome.context("enqueueing a benchmark job")?;
        }
        sent += n;
    }
    Ok(())
}

/// Waits until the sandbox's work queue has no ready messages, then until `target` jobs have
/// succeeded. RabbitMQ is asked first (a passive declare, cheap for the broker): counting a
/// jobs table of 100,000 rows every 50 ms while the backlog drains would take a share of the
/// database whose throughput is being measured. What the consumers still hold once the queue
/// is empty (a prefetch window each) is then counted in Postgres.
pub(crate) async fn wait_for_drained(
    sandbox: &Sandbox,
    store: &Store,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    wait_until(timeout, "the work queue to empty", || async {
        let ready = sandbox.depth().await?.ready;
        Ok(if ready == 0 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        })
    })
    .await?;
    wait_for_succeeded(store, target, timeout.saturating_sub(start.elapsed())).await
}

/// Polls Postgres (every 50 ms, `wait_until`'s pace) until `target` jobs have succeeded.
/// A dead job fails the run at once: the benchmark is of the happy path, and waiting for the
/// timeout would only hide why.
pub(crate) async fn wait_for_succeeded(
    store: &Store,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    if target == 0 {
        return Ok(());
    }
    let what = format!("{target} jobs to succeed");
    wait_until(timeout, &what, || async move {
        let counts = store
            .state_counts(None)
            .await
            .context("counting jobs per state")?;
        let count = |state: JobState| {
            counts
                .iter()
                .find(|c| c.state == state)
                .map_or(0, |c| u64::try_from(c.count).unwrap_or(0))
        };
        let dead = count(JobState::Dead);
        if dead > 0 {
            anyhow::bail!("{dead} benchmark jobs died; the benchmark measures the path where every job succeeds");
        }
        if count(JobState::Succeeded) >= target {
            return Ok(Ok(()));
        }
        Ok(Err(counts
            .iter()
            .map(|c| format!("{:?}={}", c.state, c.count))
            .collect::<Vec<_>>()
            .join(" ")))
    })
    .await
}

/// Now, cut to whole milliseconds. Jobs carry their enqueue time in milliseconds, so a job
/// enqueued in the same millisecond as a sub-millisecond `since` would otherwise look older
/// than the measurement and be left out of the summary.
pub(crate) fn now_to_the_millisecond() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

pub(crate) fn latencies(summary: &LatencySummary) -> (Option<Latency>, Option<Latency>) {
    let pair = |p50: Option<f64>, p99: Option<f64>| {
        Some(Latency {
            p50_ms: p50?,
            p99_ms: p99?,
        })
    };
    (
        pair(summary.start_p50_ms, summary.start_p99_ms),
        pair(summary.recorded_p50_ms, summary.recorded_p99_ms),
    )
}
