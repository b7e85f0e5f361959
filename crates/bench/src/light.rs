//! Light load: what one job costs when nothing queues. Jobs are enqueued one per call, evenly
//! spaced at `--light-rate` (200/s by default), to one `warren-worker` process, and each
//! job's latency is taken from the benchmark's own clock at the moment it called `enqueue`
//! to the row's `started_at` and `updated_at` (the outcome's write), which Postgres keeps in
//! microseconds. The message's `warren-enqueued-at` header has only milliseconds, too coarse
//! for a figure of a millisecond or two; the contract stays as it is, and the benchmark keeps
//! its own send time per job id instead (all on the same machine, so one clock).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren_client::NewJob;
use warren_core::JobId;

use crate::drain::Producer;
use crate::end_to_end::wait_for_succeeded;
use crate::fleet::{Fleet, Shape};
use crate::report::{Extra, Latency, Measure, Measured, Phase};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

pub(crate) const LIGHT: &str = "light";

pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Measured> {
    let mut producer = Producer::open(sandbox).await?;
    let mut fleet = match Fleet::start(settings, sandbox, Shape::of(settings, 1), stop).await {
        Ok(f) => f,
        Err(e) => {
            producer.close().await;
            return Err(e);
        }
    };
    let measured = stoppable(stop, paced(settings, sandbox, &mut producer, &mut fleet)).await;
    let stopped = fleet.stop().await;
    producer.close().await;
    let measured = measured?;
    stopped?;
    Ok(measured)
}

async fn paced(
    settings: &Settings,
    sandbox: &Sandbox,
    producer: &mut Producer,
    fleet: &mut Fleet,
) -> anyhow::Result<Measured> {
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);
    producer
        .run(sandbox, &job, settings.warmup, settings.phase_timeout)
        .await
        .context("warming up")?;

    let count = settings.light_jobs;
    let spacing = Duration::from_secs_f64(1.0 / f64::from(settings.light_rate));
    let before = fleet.sample()?;
    let start = Instant::now();
    let mut sends = JoinSet::new();
    let mut sent_at: HashMap<JobId, DateTime<Utc>> = HashMap::with_capacity(count as usize);
    for i in 0..count {
        let due = start + spacing.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        // Each send is a task of its own, so a slow confirm does not delay the next job:
        // the load stays evenly spaced whatever one enqueue costs (no coordinated omission).
        let client = producer.client.clone();
        let job = job.clone();
        sends.spawn(async move {
            let sent = Utc::now();
            let id = client.enqueue(job).await?;
            anyhow::Ok((id, sent))
        });
        // Reap finished sends as we go, so an error surfaces now and not at the end.
        while let Some(done) = sends.try_join_next() {
            let (id, sent) = done.context("an enqueue task panicked")??;
            sent_at.insert(id, sent);
        }
    }
    while let Some(done) = sends.join_next().await {
        let (id, sent) = done.context("an enqueue task panicked")??;
        sent_at.insert(id, sent);
    }
    let offered = start.elapsed();
    producer.enqueued += count;
    wait_for_succeeded(&producer.probe, producer.enqueued, settings.phase_timeout).await?;
    let usage = fleet.usage_since(before, count)?;
    anyhow::ensure!(
        sent_at.len() as u64 == count,
        "{} of {count} light-load jobs came back with an id",
        sent_at.len()
    );

    let ids: Vec<JobId> = sent_at.keys().copied().collect();
    let mut to_start = Vec::with_capacity(ids.len());
    let mut to_recorded = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        for row in producer
            .probe
            .jobs(chunk)
            .await
            .context("reading the light-load jobs back")?
        {
            let sent = sent_at[&row.id];
            let started = row.started_at.context("a succeeded job has a start time")?;
            to_start.push(millis(started - sent));
            to_recorded.push(millis(row.updated_at - sent));
        }
    }
    Ok(Measured {
        phase: Phase {
            key: LIGHT,
            title: "light load (paced, 1 process)",
            jobs: count,
            elapsed: offered,
            measures: vec![
                Measure::latency(
                    "enqueue_to_start",
                    "enqueue→start",
                    Latency::of(&mut to_start),
                ),
                Measure::latency(
                    "enqueue_to_recorded",
                    "enqueue→recorded",
                    Latency::of(&mut to_recorded),
                ),
            ],
        },
        // The rate is the one offered, not a capacity: no share of the ceiling.
        extras: vec![Extra::phase(LIGHT, None, Some(usage))],
    })
}

/// A duration between two timestamps in milliseconds, with their microseconds.
fn millis(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_their_microseconds() {
        assert_eq!(millis(chrono::TimeDelta::microseconds(1_234)), 1.234);
        assert_eq!(millis(chrono::TimeDelta::microseconds(-500)), -0.5);
    }
}
