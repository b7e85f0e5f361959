//! Admin cancellations a worker knows of.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use warren_core::JobId;

/// The tokens of the jobs this worker is running, and the ids cancelled recently (a
/// cancelled queued job's message may arrive later).
#[derive(Debug, Default)]
pub(crate) struct Cancels {
    running: Mutex<HashMap<JobId, (CancellationToken, CancellationToken)>>,
    recent: Mutex<HashSet<JobId>>,
}

/// Remembered cancelled ids. Past this the set starts over: a cancel older than ten thousand
/// others is unlikely to still have a message in flight, and the row check and the fence keep
/// the job `cancelled` even then.
const RECENT_CANCELS: usize = 10_000;

impl Cancels {
    /// Called for every cancel notification: fires the job's token if it runs here.
    pub(crate) fn cancel(&self, id: JobId) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= RECENT_CANCELS {
                recent.clear();
            }
            recent.insert(id);
        }
        if let Ok(running) = self.running.lock()
            && let Some((token, admin)) = running.get(&id)
        {
            tracing::info!(job.id = %id, "cancelling running job at an admin's request");
            admin.cancel();
            token.cancel();
        }
    }

    /// The jobs running in this worker now.
    pub(crate) fn running_ids(&self) -> Vec<JobId> {
        self.running
            .lock()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default()
    }

    pub(super) fn was_cancelled(&self, id: JobId) -> bool {
        self.recent.lock().is_ok_and(|r| r.contains(&id))
    }

    /// Registers a running attempt's token; the returned token fires only for an admin's
    /// cancel, so that the attempt can tell it from a timeout or the hard stop.
    pub(super) fn start(&self, id: JobId, token: CancellationToken) -> CancellationToken {
        let admin = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, (token, admin.clone()));
        }
        admin
    }

    pub(super) fn finish(&self, id: JobId) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&id);
        }
    }
}
