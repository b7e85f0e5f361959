//! The fleet-wide gauges one worker at a time exports: which worker (a session advisory lock
//! on a connection of its own), and what it reads (per-queue counts and lateness).

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::{Error, Store};

/// An arbitrary constant naming the fleet-gauge exporter's lock among other advisory locks.
const LOCK_KEY: i64 = 0x5741_5252_454E_0002;

/// The exporter's lock, held for as long as this lives: a session lock on a connection
/// outside the pool, so it takes nothing from the workers' pool and is released by Postgres
/// the moment the process dies or the connection breaks.
#[derive(Debug)]
pub struct FleetLock {
    connection: PgConnection,
}

impl FleetLock {
    /// True while the lock's connection still answers (and so still holds the lock).
    pub async fn is_held(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(5), self.connection.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Store {
    /// Takes the exporter's lock if no other process holds it.
    pub async fn try_fleet_lock(&self) -> Result<Option<FleetLock>, Error> {
        let options = self.pool.connect_options();
        let mut connection = PgConnection::connect_with(&options)
            .await
            .map_err(Error::query("connecting for the fleet-gauge lock"))?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut connection)
            .await
            .map_err(Error::query("taking the fleet-gauge lock"))?;
        if got {
            Ok(Some(FleetLock { connection }))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    /// How late the oldest due `scheduled` job of each queue is, in seconds. Served by the
    /// promoter's `warren_jobs_due` index.
    pub async fn oldest_due(&self) -> Result<Vec<(String, f64)>, Error> {
        sqlx::query_as(
            "SELECT queue, extract(epoch FROM now() - min(run_at))::float8
             FROM warren_jobs
             WHERE state = 'scheduled' AND run_at <= now()
             GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading how late due jobs are"))
    }
}
