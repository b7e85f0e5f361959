//! Worker processes, scaled and loaded: the same drain through 1, 2 and 4 `warren-worker`
//! processes on one queue (the scaling shape: more processes should never be slower), and
//! through one process at concurrency 256 (its peak memory under full load).

use tokio_util::sync::CancellationToken;
use warren_client::NewJob;

use crate::drain::{Drained, Producer, drain_with};
use crate::fleet::Shape;
use crate::report::{Extra, Measure, Measured, Phase};
use crate::sandbox::Sandbox;
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

pub(crate) const SCALING: &str = "scaling";
pub(crate) const RSS: &str = "rss";

/// Process counts measured, each with its measure key and label.
const COUNTS: [(usize, &str, &str); 3] = [
    (1, "processes_1", "1 worker process"),
    (2, "processes_2", "2 worker processes"),
    (4, "processes_4", "4 worker processes"),
];

/// Concurrency of the memory scenario's worker, as issue 13 states its target.
pub(crate) const RSS_CONCURRENCY: usize = 256;

/// Drains `settings.jobs` jobs through 1, 2 and 4 worker processes in turn, each with the
/// run's concurrency and prefetch, in one sandbox.
pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
    ceiling: Option<f64>,
) -> anyhow::Result<Measured> {
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);
    let mut producer = Producer::open(sandbox).await?;
    let mut runs: Vec<(&'static str, &'static str, Drained)> = Vec::new();
    for (processes, key, label) in COUNTS {
        let shape = Shape::of(settings, processes);
        match drain_with(settings, sandbox, &mut producer, shape, &job, stop).await {
            Ok(drained) => runs.push((key, label, drained)),
            Err(e) => {
                producer.close().await;
                return Err(e.context(format!("draining through {processes} worker processes")));
            }
        }
    }
    producer.close().await;

    let jobs = runs.iter().map(|(_, _, d)| d.jobs).sum();
    let elapsed = runs.iter().map(|(_, _, d)| d.elapsed).sum();
    let mut extras = Vec::new();
    let mut measures = Vec::new();
    for (key, label, d) in runs {
        measures.push(Measure {
            key,
            label,
            jobs_per_sec: Some(d.jobs_per_sec()),
            latency: d.to_start,
        });
        extras.push(Extra::measure(SCALING, key, ceiling, Some(d.usage)));
    }
    Ok(Measured {
        phase: Phase {
            key: SCALING,
            title: "worker processes (all 3 runs)",
            jobs,
            elapsed,
            measures,
        },
        extras,
    })
}

/// Drains `settings.jobs` jobs through one worker process at concurrency 256 and the
/// worker's default prefetch (512), and reports its peak resident memory.
pub(crate) async fn measure_rss(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
    ceiling: Option<f64>,
) -> anyhow::Result<Measured> {
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);
    let mut producer = Producer::open(sandbox).await?;
    let shape = Shape {
        processes: 1,
        concurrency: RSS_CONCURRENCY,
        prefetch: None,
    };
    let drained = drain_with(settings, sandbox, &mut producer, shape, &job, stop).await;
    producer.close().await;
    let d = drained?;
    Ok(Measured {
        phase: Phase {
            key: RSS,
            title: "1 worker at concurrency 256",
            jobs: d.jobs,
            elapsed: d.elapsed,
            measures: vec![
                Measure::latency("enqueue_to_start", "enqueue→start", d.to_start),
                Measure::latency("enqueue_to_recorded", "enqueue→recorded", d.to_recorded),
            ],
        },
        extras: vec![Extra::phase(RSS, ceiling, Some(d.usage))],
    })
}
