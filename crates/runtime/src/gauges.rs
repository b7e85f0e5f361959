//! The fleet-wide gauges: per-queue depth, counts and lateness, exported by one worker at a
//! time (whichever holds the exporter's advisory lock), so that an autoscaler or an alert
//! reads one series per queue however many workers run. The others try for the lock every
//! round and take over within one round of the holder's death.

use std::collections::BTreeSet;
use std::time::Duration;

use metrics::gauge;
use tokio_util::sync::CancellationToken;
use warren_broker::Broker;
use warren_core::{ErrorChain, QueueName};
use warren_store::{FleetLock, Store};

use crate::observe::{
    FLEET_EXPORTER, QUEUE_DEAD_24H, QUEUE_OLDEST_DUE_SECONDS, QUEUE_READY, QUEUE_RUNNING,
    QUEUE_SCHEDULED,
};

pub(crate) async fn fleet_gauges_loop(
    store: Store,
    broker: Broker,
    own_queues: Vec<QueueName>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut lock: Option<FleetLock> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        if let Some(held) = lock.as_mut()
            && !held.is_held().await
        {
            tracing::warn!(
                "lost the fleet-gauge lock (database connection broken); another worker may take over"
            );
            lock = None;
        }
        if lock.is_none() {
            match store.try_fleet_lock().await {
                Ok(Some(l)) => {
                    tracing::info!("exporting the fleet-wide queue gauges from this worker");
                    lock = Some(l);
                }
                Ok(None) => {
                    gauge!(FLEET_EXPORTER).set(0.0);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %ErrorChain(&e), "cannot try the fleet-gauge lock; trying again next round");
                    continue;
                }
            }
        }
        gauge!(FLEET_EXPORTER).set(1.0);
        tokio::select! {
            () = export(&store, &broker, &own_queues) => {}
            () = stop.cancelled() => break,
        }
    }
}

/// Reads every queue's figures and sets their gauges. A failed read leaves the last values.
async fn export(store: &Store, broker: &Broker, own_queues: &[QueueName]) {
    let mut queues: BTreeSet<String> = own_queues.iter().map(ToString::to_string).collect();
    match store.queue_counts().await {
        Ok(counts) => {
            for c in counts {
                let q = c.queue.clone();
                gauge!(QUEUE_SCHEDULED, "queue" => q.clone()).set(c.scheduled as f64);
                gauge!(QUEUE_RUNNING, "queue" => q.clone()).set(c.running as f64);
                gauge!(QUEUE_DEAD_24H, "queue" => q.clone()).set(c.dead_24h as f64);
                queues.insert(q);
            }
        }
        Err(e) => {
            tracing::debug!(error = %ErrorChain(&e), "cannot read the queue counts for the gauges")
        }
    }
    match store.oldest_due().await {
        Ok(late) => {
            for q in &queues {
                let seconds = late
                    .iter()
                    .find(|(name, _)| name == q)
                    .map_or(0.0, |(_, s)| s.max(0.0));
                gauge!(QUEUE_OLDEST_DUE_SECONDS, "queue" => q.clone()).set(seconds);
            }
        }
        Err(e) => tracing::debug!(error = %ErrorChain(&e), "cannot read how late due jobs are"),
    }
    for q in queues {
        // Rows can name queues this broker has never seen (or that are not valid names).
        let Ok(name) = QueueName::new(q.as_str()) else {
            continue;
        };
        match broker.queue_depth(&name).await {
            Ok(Some(depth)) => gauge!(QUEUE_READY, "queue" => q).set(f64::from(depth.ready)),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(queue = %q, error = %ErrorChain(&e), "cannot read the queue depth for the gauges")
            }
        }
    }
}
