//! What `/readyz` answers: whether the worker is consuming, whether its broker and database
//! connections were up at the last heartbeat, whether every work-queue consumer is subscribed,
//! and, when it is not ready, why. Entering and leaving each degraded state is logged at WARN
//! (checked every heartbeat).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A shared view of the worker's health, updated by the worker and read by whoever serves
/// health checks. Clones share it; a fresh one reports not ready until the worker runs.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    consuming: AtomicBool,
    broker: AtomicBool,
    database: AtomicBool,
    /// Each work queue's consumer liveness (see `warren_broker::Consumer::liveness`).
    consumers: Mutex<Vec<(String, Arc<AtomicBool>)>>,
    /// The degraded state last logged, to log only its changes.
    logged: Mutex<Option<&'static str>>,
}

/// Why a running worker is not consuming: the broker is down.
pub const BROKER_DOWN: &str = "broker down";
/// Why a running worker is not consuming: its last heartbeat did not reach Postgres.
pub const DATABASE_DOWN: &str = "database down";
/// Why a running worker is not consuming: a work-queue consumer lost its connection and is
/// re-subscribing.
pub const CONSUMER_LOST: &str = "consumer lost";
/// Why the worker is not consuming: it is starting or shutting down.
pub const NOT_STARTED: &str = "starting or shutting down";

/// One reading of [`Health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The worker has started and not begun shutting down.
    pub consuming: bool,
    /// Its RabbitMQ connection was up at the last heartbeat.
    pub broker: bool,
    /// Its last heartbeat reached Postgres.
    pub database: bool,
    /// Every work-queue consumer is subscribed on a live connection.
    pub consumers: bool,
    /// Why it is not ready ([`BROKER_DOWN`], [`DATABASE_DOWN`], [`CONSUMER_LOST`],
    /// [`NOT_STARTED`]); `None` when ready.
    pub reason: Option<&'static str>,
}

impl HealthReport {
    /// Ready to take jobs: consuming, with both services reachable and every consumer live.
    pub fn is_ready(&self) -> bool {
        self.reason.is_none()
    }
}

impl Health {
    /// The current reading.
    pub fn report(&self) -> HealthReport {
        let consuming = self.0.consuming.load(Ordering::Relaxed);
        let broker = self.0.broker.load(Ordering::Relaxed);
        let database = self.0.database.load(Ordering::Relaxed);
        let consumers = self
            .0
            .consumers
            .lock()
            .map(|c| c.iter().all(|(_, live)| live.load(Ordering::Relaxed)))
            .unwrap_or(true);
        let reason = if !consuming {
            Some(NOT_STARTED)
        } else if !broker {
            Some(BROKER_DOWN)
        } else if !database {
            Some(DATABASE_DOWN)
        } else if !consumers {
            Some(CONSUMER_LOST)
        } else {
            None
        };
        HealthReport {
            consuming,
            broker,
            database,
            consumers,
            reason,
        }
    }

    pub(crate) fn set_consuming(&self, on: bool) {
        self.0.consuming.store(on, Ordering::Relaxed);
    }

    pub(crate) fn set_connections(&self, broker: bool, database: bool) {
        self.0.broker.store(broker, Ordering::Relaxed);
        self.0.database.store(database, Ordering::Relaxed);
        crate::observe::connections(broker, database);
    }

    pub(crate) fn watch_consumer(&self, queue: String, live: Arc<AtomicBool>) {
        if let Ok(mut consumers) = self.0.consumers.lock() {
            consumers.push((queue, live));
        }
    }

    /// Logs at WARN when the worker enters a degraded state, moves to another, or leaves it.
    /// Starting and shutting down are not degraded states.
    pub(crate) fn log_transition(&self) {
        let report = self.report();
        let now = report.reason.filter(|r| *r != NOT_STARTED);
        let Ok(mut logged) = self.0.logged.lock() else {
            return;
        };
        if *logged == now {
            return;
        }
        match (*logged, now) {
            (_, Some(reason)) => {
                let lost: Vec<String> = self
                    .0
                    .consumers
                    .lock()
                    .map(|c| {
                        c.iter()
                            .filter(|(_, live)| !live.load(Ordering::Relaxed))
                            .map(|(q, _)| q.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                tracing::warn!(reason, broker = report.broker, database = report.database, lost_consumers = ?lost, "worker degraded: not consuming ({reason}); waiting for it to recover by itself");
            }
            (Some(was), None) => {
                tracing::warn!(was, "worker no longer degraded: consuming again");
            }
            (None, None) => {}
        }
        *logged = now;
    }
}
