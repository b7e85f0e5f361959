//! The heartbeat: the worker's row in `warren_workers` (state, jobs in flight, jobs done) is
//! written every interval, and the cancel requests of the jobs running here are read back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_core::ErrorChain;
use warren_store::Store;

use crate::executor::Executor;

pub(crate) async fn heartbeat_loop(
    store: Store,
    worker_id: String,
    every: Duration,
    jobs: TaskTracker,
    executor: Arc<Executor>,
    (broker, health): (warren_broker::Broker, crate::Health),
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut degraded = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let c = &executor.counters;
        let processed = c.succeeded.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
        let failed = c.retried.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
        // The job tasks, not the taken slots: a consume loop waiting for a delivery holds a slot.
        let in_flight = jobs.len() as u32;
        // Not raced against `stop`: an UPDATE dropped half-sent could still land after the
        // shutdown's `stopped` beat and leave the row saying `running`.
        let beat = store
            .heartbeat(&worker_id, "running", in_flight, processed, failed)
            .await;
        health.set_connections(broker.is_connected(), beat.is_ok());
        health.log_transition();
        match beat {
            Ok(()) if degraded => {
                tracing::info!("recording worker heartbeats again");
                degraded = false;
            }
            Ok(()) => {}
            Err(e) if !degraded => {
                tracing::warn!(error = %ErrorChain(&e), "recording a worker heartbeat failed; retrying every beat");
                degraded = true;
            }
            Err(_) => {}
        }
        if in_flight > 0 {
            tokio::select! {
                () = crate::control::apply_cancel_requests(&store, &executor) => {}
                () = stop.cancelled() => break,
            }
        }
    }
    let c = &executor.counters;
    let processed = c.succeeded.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
    let failed = c.retried.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
    let in_flight = jobs.len() as u32;
    let _ = store
        .heartbeat(&worker_id, "stopping", in_flight, processed, failed)
        .await;
}
