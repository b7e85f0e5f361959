//! A drain through worker processes: enqueue N jobs while a [`Fleet`] works them off, and
//! time it until Postgres holds all N as succeeded, as the end-to-end phase does with its
//! in-process worker. The scaling, payload, memory and steady-state scenarios build on it.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_store::Store;

use crate::end_to_end::{enqueue, latencies, now_to_the_millisecond, wait_for_drained};
use crate::fleet::{Fleet, Shape};
use crate::report::{Latency, Usage};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;

/// The benchmark's side of a sandbox: a client that enqueues and a one-connection pool that
/// watches the jobs table, both apart from the system under test.
pub(crate) struct Producer {
    pub(crate) client: Client,
    pub(crate) probe: Store,
    /// Jobs enqueued in this sandbox so far, so waits know what "all succeeded" is.
    pub(crate) enqueued: u64,
}

impl Producer {
    pub(crate) async fn open(sandbox: &Sandbox) -> anyhow::Result<Producer> {
        let probe = sandbox.database()?.connect("probe", Some(1)).await?;
        let client = Client::from_broker(sandbox.connect("producer").await?)
            .await
            .context("opening the client's publisher channel")?;
        Ok(Producer {
            client,
            probe,
            enqueued: 0,
        })
    }

    pub(crate) async fn close(self) {
        self.client.broker().close().await;
        self.probe.close().await;
    }

    /// Enqueues `count` copies of `job` and waits until every job of the sandbox succeeded.
    pub(crate) async fn run(
        &mut self,
        sandbox: &Sandbox,
        job: &NewJob,
        count: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        enqueue(&self.client, job, count).await?;
        self.enqueued += count;
        wait_for_drained(sandbox, &self.probe, self.enqueued, timeout).await
    }
}

/// What one drain measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drained {
    pub(crate) jobs: u64,
    /// From the first enqueue until Postgres held the last outcome.
    pub(crate) elapsed: Duration,
    pub(crate) to_start: Option<Latency>,
    pub(crate) to_recorded: Option<Latency>,
    /// What the worker processes spent meanwhile.
    pub(crate) usage: Usage,
}

impl Drained {
    pub(crate) fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Enqueues `settings.jobs` copies of `job` while `fleet` runs, after a warm-up of
/// `settings.warmup`, and waits until Postgres holds all of them as succeeded.
pub(crate) async fn drain(
    settings: &Settings,
    sandbox: &Sandbox,
    producer: &mut Producer,
    fleet: &mut Fleet,
    job: &NewJob,
) -> anyhow::Result<Drained> {
    producer
        .run(sandbox, job, settings.warmup, settings.phase_timeout)
        .await
        .context("warming up")?;
    let before = fleet.sample()?;
    let since = now_to_the_millisecond();
    let start = Instant::now();
    producer
        .run(sandbox, job, settings.jobs, settings.phase_timeout)
        .await?;
    let elapsed = start.elapsed();
    let usage = fleet.usage_since(before, settings.jobs)?;
    let summary = producer
        .probe
        .latency_summary(since)
        .await
        .context("reading the latency summary")?;
    let (to_start, to_recorded) = latencies(&summary);
    Ok(Drained {
        jobs: settings.jobs,
        elapsed,
        to_start,
        to_recorded,
        usage,
    })
}

/// Starts a fleet of `shape` on the sandbox, drains through it, and stops it, however the
/// drain ended.
pub(crate) async fn drain_with(
    settings: &Settings,
    sandbox: &Sandbox,
    producer: &mut Producer,
    shape: Shape,
    job: &NewJob,
    stop: &CancellationToken,
) -> anyhow::Result<Drained> {
    let mut fleet = Fleet::start(settings, sandbox, shape, stop).await?;
    let drained = stoppable(stop, drain(settings, sandbox, producer, &mut fleet, job)).await;
    let stopped = fleet.stop().await;
    let drained = drained?;
    stopped?;
    Ok(drained)
}
