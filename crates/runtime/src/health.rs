//! What `/readyz` answers: whether the worker is consuming, and whether its broker and
//! database connections were up at the last heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

/// One reading of [`Health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The worker has started and not begun shutting down.
    pub consuming: bool,
    /// Its RabbitMQ connection was up at the last heartbeat.
    pub broker: bool,
    /// Its last heartbeat reached Postgres.
    pub database: bool,
}

impl HealthReport {
    /// Ready to take jobs: consuming, with both services reachable.
    pub fn is_ready(&self) -> bool {
        self.consuming && self.broker && self.database
    }
}

impl Health {
    /// The current reading.
    pub fn report(&self) -> HealthReport {
        HealthReport {
            consuming: self.0.consuming.load(Ordering::Relaxed),
            broker: self.0.broker.load(Ordering::Relaxed),
            database: self.0.database.load(Ordering::Relaxed),
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
}
