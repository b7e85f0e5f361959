//! Paused queues: the `warren_queue_pauses` table, and the NOTIFY that tells every worker to
//! re-read it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Error, Store};

/// Postgres channel notified when a queue is paused or resumed; the payload is the queue.
pub const PAUSE_CHANNEL: &str = "warren_pause";

/// A paused queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueuePause {
    /// The Warren queue name.
    pub queue: String,
    /// When it was paused.
    pub paused_at: DateTime<Utc>,
    /// Who paused it (`warren` records user@host).
    pub paused_by: String,
}

impl Store {
    /// Pauses `queue` across the fleet: records it and notifies the workers, in one
    /// transaction, so a worker that re-reads the table on the notification sees the row.
    /// Returns `false` if it was paused already (the first pause's time and author are kept).
    pub async fn pause_queue(&self, queue: &str, by: &str) -> Result<bool, Error> {
        self.change_pause(
            "pausing the queue",
            sqlx::query(
                "INSERT INTO warren_queue_pauses (queue, paused_by) VALUES ($1, $2)
                 ON CONFLICT (queue) DO NOTHING",
            )
            .bind(queue)
            .bind(by),
            queue,
        )
        .await
    }

    /// Resumes `queue`: deletes its pause and notifies the workers. Returns `false` if it was
    /// not paused.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool, Error> {
        self.change_pause(
            "resuming the queue",
            sqlx::query("DELETE FROM warren_queue_pauses WHERE queue = $1").bind(queue),
            queue,
        )
        .await
    }

    async fn change_pause(
        &self,
        what: &'static str,
        change: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        queue: &str,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await.map_err(Error::query(what))?;
        let changed = change
            .execute(&mut *tx)
            .await
            .map_err(Error::query(what))?
            .rows_affected()
            > 0;
        // Sent even when nothing changed: a worker that missed the first one catches up.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PAUSE_CHANNEL)
            .bind(queue)
            .execute(&mut *tx)
            .await
            .map_err(Error::query("notifying the workers"))?;
        tx.commit().await.map_err(Error::query(what))?;
        Ok(changed)
    }

    /// Every paused queue, by name.
    pub async fn paused_queues(&self) -> Result<Vec<QueuePause>, Error> {
        sqlx::query_as("SELECT queue, paused_at, paused_by FROM warren_queue_pauses ORDER BY queue")
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("reading the paused queues"))
    }
}
