//! Phase 4, promoter lateness: how late a delayed job starts. Jobs are scheduled through
//! Postgres (a client with a store) at due times spread evenly over a few seconds, a light
//! load, and the worker's promoter publishes each when it falls due. Lateness is `started_at`
//! read back from Postgres minus the due time the benchmark chose: what a user of delayed jobs
//! sees, promotion and delivery included.
//!
//! The burst phase ([`measure_burst`]) is the other extreme: 20,000 jobs due at the same
//! moment, for the promoter's throughput (due moment to the last start) and the lateness of
//! the due jobs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_runtime::Worker;
use warren_worker::tasks::register_builtins;

use crate::end_to_end::{enqueue_each, wait_for_succeeded, with_worker};
use crate::report::{Extra, Latency, Measure, Measured, Phase};
use crate::sandbox::Sandbox;
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

/// Delayed jobs measured: enough for a p99, few enough to be light load.
const JOBS: u64 = 1_000;
/// Their due times are spread over this window, starting one second from now.
const SPREAD: Duration = Duration::from_secs(4);

pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Phase> {
    let builder = register_builtins(Worker::builder());
    let (phase, _stats) =
        with_worker(settings, sandbox, builder, stop, drive(settings, sandbox)).await?;
    Ok(phase)
}

async fn drive(settings: &Settings, sandbox: &Sandbox) -> anyhow::Result<Phase> {
    let store = sandbox.database()?.connect("producer", Some(2)).await?;
    let client = Client::from_broker(sandbox.connect("producer").await?)
        .await
        .context("opening the client's publisher channel")?
        .with_store(store.clone());
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);

    let first = Utc::now() + chrono::Duration::seconds(1);
    let step = SPREAD.as_micros() as i64 / JOBS as i64;
    let due: Vec<_> = (0..JOBS as i64)
        .map(|i| first + chrono::Duration::microseconds(i * step))
        .collect();
    let jobs: Vec<NewJob> = due.iter().map(|&at| job.clone().run_at(at)).collect();
    let start = Instant::now();
    let ids = client
        .enqueue_many(jobs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("scheduling the delayed jobs")?;
    wait_for_succeeded(&store, JOBS, settings.phase_timeout).await?;
    let elapsed = start.elapsed();

    let due_of: HashMap<_, _> = ids.iter().copied().zip(due).collect();
    let mut lateness: Vec<f64> = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        for row in store
            .jobs(chunk)
            .await
            .context("reading the delayed jobs back")?
        {
            let started = row.started_at.context("a succeeded job has a start time")?;
            let due = due_of[&row.id];
            lateness.push((started - due).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        }
    }
    let early = lateness.iter().filter(|&&ms| ms < 0.0).count();
    anyhow::ensure!(
        early == 0,
        "{early} delayed jobs started before they were due"
    );
    client.broker().close().await;
    store.close().await;
    Ok(Phase {
        key: "promoter",
        title: "delayed jobs (1000 over 4 s)",
        jobs: JOBS,
        elapsed,
        measures: vec![Measure::latency(
            "due_to_start",
            "lateness: due→start",
            Latency::of(&mut lateness),
        )],
    })
}

/// Key of the burst phase.
pub(crate) const BURST: &str = "scheduled_burst";
/// Jobs of the burst, all due at the same moment (issue 13's figure).
const BURST_JOBS: u64 = 20_000;

/// Schedules [`BURST_JOBS`] jobs due at one moment a little ahead, and measures how fast the
/// in-process worker's promoter gets them all started and how late each one starts.
pub(crate) async fn measure_burst(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Measured> {
    let builder = register_builtins(Worker::builder());
    let (measured, _stats) =
        with_worker(settings, sandbox, builder, stop, burst(settings, sandbox)).await?;
    Ok(measured)
}

async fn burst(settings: &Settings, sandbox: &Sandbox) -> anyhow::Result<Measured> {
    let store = sandbox.database()?.connect("producer", Some(2)).await?;
    let client = Client::from_broker(sandbox.connect("producer").await?)
        .await
        .context("opening the client's publisher channel")?
        .with_store(store.clone());
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);

    // The warm-up is scheduled too, and its time says how long scheduling the burst will
    // take, so the burst's due moment can be set just after it. It falls due a second
    // ahead: a job already due when enqueued is published directly, not written as a row.
    let warm_start = Instant::now();
    let warm_due = Utc::now() + chrono::Duration::seconds(1);
    enqueue_each(&client, settings.warmup, |_| job.clone().run_at(warm_due)).await?;
    let per_job = warm_start.elapsed().as_secs_f64() / settings.warmup.max(1) as f64;
    wait_for_succeeded(&store, settings.warmup, settings.phase_timeout).await?;
    let lead = if settings.warmup > 0 {
        Duration::from_secs_f64(1.0 + 2.0 * per_job * BURST_JOBS as f64)
    } else {
        Duration::from_secs(10)
    };

    let due = Utc::now() + chrono::Duration::from_std(lead).context("a lead time in range")?;
    let mut ids = Vec::with_capacity(BURST_JOBS as usize);
    for chunk_start in (0..BURST_JOBS).step_by(crate::workload::CHUNK) {
        let n = (BURST_JOBS - chunk_start).min(crate::workload::CHUNK as u64);
        for outcome in client
            .enqueue_many((0..n).map(|_| job.clone().run_at(due)))
            .await
        {
            ids.push(outcome.context("scheduling the burst")?);
        }
    }
    let scheduled_by = Utc::now();
    anyhow::ensure!(
        scheduled_by < due,
        "scheduling {BURST_JOBS} jobs took until {:.1} s after their due moment (lead time \
         {lead:?}, estimated from the warm-up); the lateness would count the scheduling",
        (scheduled_by - due).num_milliseconds() as f64 / 1000.0
    );
    tokio::time::sleep((due - Utc::now()).to_std().unwrap_or_default()).await;
    let before = crate::end_to_end::in_process_start()?;
    wait_for_succeeded(&store, settings.warmup + BURST_JOBS, settings.phase_timeout).await?;
    let usage = crate::end_to_end::in_process_usage(before, BURST_JOBS)?;

    let mut lateness: Vec<f64> = Vec::with_capacity(ids.len());
    let mut last_start = due;
    for chunk in ids.chunks(500) {
        for row in store.jobs(chunk).await.context("reading the burst back")? {
            let started = row.started_at.context("a succeeded job has a start time")?;
            last_start = last_start.max(started);
            lateness.push((started - due).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        }
    }
    let early = lateness.iter().filter(|&&ms| ms < 0.0).count();
    anyhow::ensure!(
        early == 0,
        "{early} burst jobs started before they were due"
    );
    client.broker().close().await;
    store.close().await;
    let spread = (last_start - due).to_std().unwrap_or_default();
    Ok(Measured {
        phase: Phase {
            key: BURST,
            title: "20,000 due at once: →all started",
            jobs: BURST_JOBS,
            elapsed: spread,
            measures: vec![Measure::latency(
                "due_to_start",
                "lateness: due→start",
                Latency::of(&mut lateness),
            )],
        },
        extras: vec![Extra::phase(BURST, None, Some(usage))],
    })
}
