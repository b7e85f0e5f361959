//! The workers table: who is running, since when, last heard from when.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Error, Store};

/// What a worker says about itself when it starts.
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: u32,
}

/// A row of the workers table.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct WorkerRecord {
    pub id: String,
    pub hostname: String,
    pub pid: i32,
    pub queues: Vec<String>,
    pub concurrency: i32,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub in_flight: i32,
    pub processed: i64,
}

impl Store {
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO warren_workers (id, hostname, pid, queues, concurrency, state)
             VALUES ($1, $2, $3, $4, $5, 'running')
             ON CONFLICT (id) DO UPDATE SET state = 'running', last_seen_at = now(), stopped_at = NULL",
        )
        .bind(&info.id)
        .bind(&info.hostname)
        .bind(info.pid as i32)
        .bind(&info.queues)
        .bind(info.concurrency as i32)
        .execute(&self.pool)
        .await
        .map_err(Error::query("registering the worker"))?;
        Ok(())
    }

    pub async fn heartbeat(
        &self,
        id: &str,
        state: &str,
        in_flight: u32,
        processed: u64,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE warren_workers
             SET last_seen_at = now(), state = $2, in_flight = $3, processed = $4,
                 stopped_at = CASE WHEN $2 = 'stopped' THEN now() END
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(in_flight as i32)
        .bind(processed.min(i64::MAX as u64) as i64)
        .execute(&self.pool)
        .await
        .map_err(Error::query("recording a worker heartbeat"))?;
        Ok(())
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, Error> {
        sqlx::query_as(
            "SELECT id, hostname, pid, queues, concurrency, state, started_at, last_seen_at,
                    stopped_at, in_flight, processed
             FROM warren_workers ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("listing workers"))
    }
}
