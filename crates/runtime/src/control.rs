//! The control channel: one LISTEN connection per worker, for the notifications that steer
//! it (`warren_due` wakes the promoter, `warren_cancel` stops a running job), with the rows
//! read back whenever a notification may have been missed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_core::ErrorChain;
use warren_store::Store;

use crate::executor::Executor;

/// One LISTEN connection for the whole worker: `warren_due` wakes the promoter, and
/// `warren_cancel` fires the token of a job running here. A NOTIFY sent while the connection
/// is down is lost, so every time it is (re)established the running jobs' cancel requests are
/// read back from their rows (the heartbeat reads them too, as a safety net).
pub(crate) async fn notification_loop(
    store: Store,
    executor: Arc<Executor>,
    due: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    use warren_store::{CANCEL_CHANNEL, DUE_CHANNEL};
    let mut degraded = false;
    while !stop.is_cancelled() {
        let listening = tokio::select! {
            l = store.listen(&[DUE_CHANNEL, CANCEL_CHANNEL]) => l,
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
            () = apply_cancel_requests(&store, &executor) => {}
            () = stop.cancelled() => break,
        }
        // Anything that fell due while nobody listened is found by the promoter's next pass.
        due.notify_one();
        loop {
            let notification = tokio::select! {
                n = listener.recv() => n,
                () = stop.cancelled() => return,
            };
            match notification {
                Ok(n) if n.channel == DUE_CHANNEL => due.notify_one(),
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
