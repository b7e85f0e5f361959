//! The control channel: one LISTEN connection per worker, for the notifications that steer
//! it (`warren_due` wakes the promoter, `warren_cancel` stops a running job, `warren_pause`
//! pauses or resumes a queue, `warren_limits` re-reads the fleet-wide limits), with the rows
//! read back whenever a notification may have been missed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_core::ErrorChain;
use warren_store::Store;

use crate::executor::Executor;

/// The Warren names of the queues an admin paused, as this worker last read them. Each
/// consume loop watches it.
pub(crate) type PausedQueues = BTreeSet<String>;

/// How often the paused queues are read back even without a notification: the bound on how
/// long a worker that missed a NOTIFY (its LISTEN connection was down) goes on ignoring it.
const PAUSES_REREAD: Duration = Duration::from_secs(5);

/// One LISTEN connection for the whole worker: `warren_due` wakes the promoter,
/// `warren_cancel` fires the token of a job running here, `warren_pause` makes it re-read
/// the paused queues and `warren_limits` the limits. A NOTIFY sent while the connection is down is lost, so every time it is
/// (re)established the running jobs' cancel requests, the paused queues and the limits are
/// read back (the heartbeat reads cancel requests too, and the pauses and limits are re-read
/// every few seconds, as safety nets).
pub(crate) async fn notification_loop(
    store: Store,
    executor: Arc<Executor>,
    due: Arc<tokio::sync::Notify>,
    paused: watch::Sender<PausedQueues>,
    stop: CancellationToken,
) {
    use warren_store::{CANCEL_CHANNEL, DUE_CHANNEL, LIMITS_CHANNEL, PAUSE_CHANNEL};
    let mut degraded = false;
    let mut reread = tokio::time::interval(PAUSES_REREAD);
    reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        let listening = tokio::select! {
            l = store.listen(&[DUE_CHANNEL, CANCEL_CHANNEL, PAUSE_CHANNEL, LIMITS_CHANNEL]) => l,
            () = stop.cancelled() => break,
        };
        let mut listener = match listening {
            Ok(l) => l,
            Err(e) => {
                if !degraded {
                    tracing::warn!(error = %ErrorChain(&e), "cannot LISTEN for notifications; the promoter polls and cancel requests are read on each heartbeat meanwhile; retrying every 5s");
                    degraded = true;
                }
                tokio::select! {
                    () = async {
                        refresh_pauses(&store, &paused).await;
                        executor.limits.refresh().await;
                    } => {}
                    () = stop.cancelled() => break,
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        if degraded {
            tracing::info!("listening for notifications again");
            degraded = false;
        }
        tokio::select! {
            () = async {
                apply_cancel_requests(&store, &executor).await;
                refresh_pauses(&store, &paused).await;
                executor.limits.refresh().await;
            } => {}
            () = stop.cancelled() => break,
        }
        // Anything that fell due while nobody listened is found by the promoter's next pass.
        due.notify_one();
        loop {
            let notification = tokio::select! {
                n = listener.recv() => n,
                _ = reread.tick() => {
                    refresh_pauses(&store, &paused).await;
                    executor.limits.refresh().await;
                    continue;
                }
                () = stop.cancelled() => return,
            };
            match notification {
                Ok(n) if n.channel == DUE_CHANNEL => due.notify_one(),
                Ok(n) if n.channel == PAUSE_CHANNEL => refresh_pauses(&store, &paused).await,
                Ok(n) if n.channel == LIMITS_CHANNEL => executor.limits.refresh().await,
                Ok(n) => match n.payload.parse::<warren_core::JobId>() {
                    Ok(id) => executor.cancels.cancel(id),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a malformed cancel notification")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "notification listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Fires the tokens of running jobs whose rows say an admin asked them to stop.
pub(crate) async fn apply_cancel_requests(store: &Store, executor: &Executor) {
    let running = executor.cancels.running_ids();
    match store.cancel_requests(&running).await {
        Ok(ids) => {
            for id in ids {
                executor.cancels.cancel(id);
            }
        }
        Err(e) => {
            tracing::debug!(error = %ErrorChain(&e), "cannot read cancel requests; trying again later")
        }
    }
}

/// Reads the paused queues and tells the consume loops if the set changed. A failed read
/// keeps the last known set: pausing is never guessed from an error.
pub(crate) async fn refresh_pauses(store: &Store, paused: &watch::Sender<PausedQueues>) {
    match store.paused_queues().await {
        Ok(rows) => {
            let now: PausedQueues = rows.into_iter().map(|p| p.queue).collect();
            paused.send_if_modified(|known| {
                let changed = *known != now;
                *known = now;
                changed
            });
        }
        Err(e) => {
            tracing::debug!(error = %ErrorChain(&e), "cannot read the paused queues; trying again later")
        }
    }
}
