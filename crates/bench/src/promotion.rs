//! Phase 4, promoter lateness: how late a delayed job starts. Jobs are scheduled through
//! Postgres (a client with a store) at due times spread evenly over a few seconds, a light
//! load, and the worker's promoter publishes each when it falls due. Lateness is `started_at`
//! read back from Postgres minus the due time the benchmark chose: what a user of delayed jobs
//! sees, promotion and delivery included.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_runtime::Worker;
use warren_worker::tasks::register_builtins;

use crate::end_to_end::{wait_for_succeeded, with_worker};
use crate::report::{Latency, Measure, Phase};
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
