//! Payload sizes: for 100 B, 4 KiB and 64 KiB, the broker ceiling at that size and a drain
//! through one `warren-worker` process at that size, each in a sandbox of its own, so every
//! Warren figure is compared with the ceiling for the same message.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use warren_client::NewJob;

use crate::drain::{Producer, drain_with};
use crate::fleet::Shape;
use crate::report::{Extra, Measure, Measured, Phase};
use crate::sandbox::Sandbox;
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

pub(crate) const PAYLOADS: &str = "payloads";

/// The sizes measured, each with the keys and labels of its two rows.
const SIZES: [(usize, [&str; 2], [&str; 2]); 3] = [
    (
        100,
        ["ceiling_100b", "warren_100b"],
        ["100 B: broker ceiling", "100 B: warren, 1 process"],
    ),
    (
        4 << 10,
        ["ceiling_4kib", "warren_4kib"],
        ["4 KiB: broker ceiling", "4 KiB: warren, 1 process"],
    ),
    (
        64 << 10,
        ["ceiling_64kib", "warren_64kib"],
        ["64 KiB: broker ceiling", "64 KiB: warren, 1 process"],
    ),
];

/// Measures each size: its ceiling, then Warren, in sandboxes named `payload<bytes>c` and
/// `payload<bytes>w` of run `run_id`.
pub(crate) async fn measure(
    settings: &Settings,
    run_id: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Measured> {
    let mut measures = Vec::new();
    let mut extras = Vec::new();
    let mut jobs = 0;
    let mut elapsed = std::time::Duration::ZERO;
    for (bytes, [ceiling_key, warren_key], [ceiling_label, warren_label]) in SIZES {
        let sized = Settings {
            payload_bytes: bytes,
            ..settings.clone()
        };
        let ceiling = Sandbox::create(&sized, run_id, &format!("payload{bytes}c"), false)
            .await?
            .run(sized.phase_timeout, shutdown, async |s, stop| {
                crate::ceiling::measure(&sized, s, stop).await
            })
            .await
            .with_context(|| format!("broker ceiling at {bytes} B"))?;
        let ceiling_rate = ceiling.jobs_per_sec();
        let warren = Sandbox::create(&sized, run_id, &format!("payload{bytes}w"), true)
            .await?
            .run(sized.phase_timeout, shutdown, async |s, stop| {
                let job = NewJob::new(TASK, &payload(bytes)).queue(QUEUE);
                let mut producer = Producer::open(s).await?;
                let drained =
                    drain_with(&sized, s, &mut producer, Shape::of(&sized, 1), &job, stop).await;
                producer.close().await;
                drained
            })
            .await
            .with_context(|| format!("Warren at {bytes} B"))?;
        measures.push(Measure::rate(
            ceiling_key,
            ceiling_label,
            ceiling.jobs,
            ceiling.elapsed,
        ));
        measures.push(Measure {
            key: warren_key,
            label: warren_label,
            jobs_per_sec: Some(warren.jobs_per_sec()),
            latency: warren.to_start,
        });
        extras.push(Extra::measure(
            PAYLOADS,
            warren_key,
            Some(ceiling_rate),
            Some(warren.usage),
        ));
        jobs += warren.jobs;
        elapsed += warren.elapsed;
    }
    Ok(Measured {
        phase: Phase {
            key: PAYLOADS,
            title: "payload sizes (warren, all 3)",
            jobs,
            elapsed,
            measures,
        },
        extras,
    })
}
