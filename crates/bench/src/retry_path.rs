//! Phase 3, the retry path: the Warren end-to-end workload with one job in ten failing its
//! first attempt. Those go the whole failure path: a `scheduled` row with the error appended,
//! the promoter publishing the due row, a second delivery, a second recorded outcome. The retry
//! delay is 50 ms (no jitter), so the figure measures the machinery, not the wait.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_core::RetryPolicy;
use warren_runtime::{TaskOptions, Worker};
use warren_worker::tasks::{fail, register_builtins};

use crate::end_to_end::{
    enqueue, enqueue_each, in_process_start, in_process_usage, latencies, now_to_the_millisecond,
    wait_for_succeeded, with_worker,
};
use crate::report::{Extra, Measure, Measured, Phase, Usage};
use crate::sandbox::Sandbox;
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

/// The task that fails its first attempt.
const FLAKY: &str = "bench.flaky";
/// One job in this many is flaky.
const EVERY: u64 = 10;

/// Key of the retry-path phase.
pub(crate) const RETRY_PATH: &str = "retry_path";

/// Runs the workload with one job in ten failing once; `ceiling` is the broker ceiling's
/// jobs/s of the same run.
pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
    ceiling: Option<f64>,
) -> anyhow::Result<Measured> {
    let fast_retry = TaskOptions {
        timeout: None,
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(50),
            factor: 2.0,
            max_delay: Duration::from_secs(1),
            jitter: 0.0,
        },
    };
    let builder = register_builtins(Worker::builder()).register_with(FLAKY, fast_retry, fail);
    let ((phase, usage), stats) =
        with_worker(settings, sandbox, builder, stop, drive(settings, sandbox)).await?;
    anyhow::ensure!(
        stats.retried >= settings.jobs / EVERY,
        "expected at least {} retries, the worker counted {}",
        settings.jobs / EVERY,
        stats.retried
    );
    Ok(Measured {
        phase,
        extras: vec![Extra::phase(RETRY_PATH, ceiling, Some(usage))],
    })
}

async fn drive(settings: &Settings, sandbox: &Sandbox) -> anyhow::Result<(Phase, Usage)> {
    let probe = sandbox.database()?.connect("probe", Some(1)).await?;
    let client = Client::from_broker(sandbox.connect("producer").await?)
        .await
        .context("opening the client's publisher channel")?;
    let noop = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);
    let flaky = NewJob::new(FLAKY, &json!({ "times": 1 })).queue(QUEUE);

    enqueue(&client, &noop, settings.warmup).await?;
    wait_for_succeeded(&probe, settings.warmup, settings.phase_timeout).await?;

    let before = in_process_start()?;
    let since = now_to_the_millisecond();
    let start = Instant::now();
    enqueue_each(&client, settings.jobs, |i| {
        if i % EVERY == 0 {
            flaky.clone()
        } else {
            noop.clone()
        }
    })
    .await?;
    wait_for_succeeded(
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
    let (_, to_recorded) = latencies(&summary);
    client.broker().close().await;
    probe.close().await;
    let phase = Phase {
        key: RETRY_PATH,
        title: "retry path (10% fail once)",
        jobs: settings.jobs,
        elapsed,
        measures: vec![Measure::latency(
            "enqueue_to_recorded",
            "enqueue→final outcome",
            to_recorded,
        )],
    };
    Ok((phase, usage))
}
