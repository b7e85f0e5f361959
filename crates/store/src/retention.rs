//! Retention: deleting finished jobs once they are old enough, for `warren prune` and the
//! workers' cleaner.
//!
//! A job's age here is the time since it finished (`finished_at`), so a job that waited a
//! week and finished a minute ago is a minute old. Only the three terminal states can be
//! pruned; the guard is kept in two places, so that no caller mistake can delete a live job:
//! [`Store::prune_batch`] refuses a state that is not terminal before it sends any SQL, and
//! the `DELETE` itself names only terminal states.
//!
//! Deletes run in batches, one short transaction each, so neither the table nor its rows are
//! locked for long however much there is to remove. Every batch takes the transaction-scoped
//! advisory lock [`PRUNE_LOCK`] first, so that one pruner works at a time across the fleet: a
//! worker's cleaner *tries* it and skips its pass when another pruner holds it; `warren prune`
//! *waits* for it (at most one batch). A transaction lock, rather than a session lock, is
//! what suits a connection pool: it is released by the commit (or the rollback, or the
//! connection dropping) on the very connection that took it, so a pooled connection can
//! never go back to the pool still holding it, and no connection has to be set aside for it.
//! Migration 0006 adds the `(state, finished_at)` index each batch walks.

use std::time::Duration;

use warren_core::JobState;

use crate::{Error, Store};

/// The advisory lock key that pruners share: an arbitrary constant that names Warren's
/// retention among other advisory locks (the migration lock is `…0001`).
pub const PRUNE_LOCK: i64 = 0x5741_5252_454E_0002;

/// How a batch waits for the prune lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneLock {
    /// Wait until the pruner holding it commits its batch (`warren prune`).
    Wait,
    /// Give up at once if another pruner holds it (the workers' cleaner, which tries again
    /// on its next pass).
    Skip,
}

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneBatch {
    /// This many jobs were deleted; fewer than the batch size means none are left.
    Deleted(u64),
    /// Another pruner holds the lock ([`PruneLock::Skip`] only); nothing was deleted.
    Busy,
}

/// The terminal states a prune may name.
fn check_terminal(state: JobState) -> Result<(), Error> {
    if state.is_terminal() {
        Ok(())
    } else {
        Err(Error::NotPrunable { state })
    }
}

impl Store {
    /// How many jobs in `state` finished more than `older_than` ago, by Postgres' clock:
    /// what a prune would delete now. Refuses a state that is not terminal.
    pub async fn count_prunable(
        &self,
        state: JobState,
        older_than: Duration,
    ) -> Result<i64, Error> {
        check_terminal(state)?;
        sqlx::query_scalar(
            "SELECT count(*) FROM warren_jobs
             WHERE state = $1 AND finished_at < now() - $2::interval
               AND state IN ('succeeded', 'dead', 'cancelled')",
        )
        .bind(state.as_str())
        .bind(older_than)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("counting the jobs a prune would delete"))
    }

    /// Deletes up to `limit` jobs in `state` that finished more than `older_than` ago, the
    /// oldest first, in one transaction under the prune lock (see the module's opening).
    /// Refuses a state that is not terminal.
    ///
    /// Rows another transaction holds (a retry or a cancel in progress) are skipped rather
    /// than waited for, and every row is checked again as it is deleted, so a job retried
    /// meanwhile (`dead` become `scheduled`) is kept.
    pub async fn prune_batch(
        &self,
        state: JobState,
        older_than: Duration,
        limit: u32,
        lock: PruneLock,
    ) -> Result<PruneBatch, Error> {
        check_terminal(state)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("starting a prune batch"))?;
        let locked: bool = match lock {
            // Returns void: selected from, it makes one row once the lock is held.
            PruneLock::Wait => sqlx::query_scalar("SELECT true FROM pg_advisory_xact_lock($1)"),
            PruneLock::Skip => sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)"),
        }
        .bind(PRUNE_LOCK)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::query("taking the prune lock"))?;
        if !locked {
            return Ok(PruneBatch::Busy);
        }
        let deleted = sqlx::query(
            // The batch is a materialized CTE: as `id IN (SELECT … LIMIT)`, the planner may
            // run the subquery again per row and delete more than `limit` rows.
            "WITH batch AS MATERIALIZED (
                 SELECT id FROM warren_jobs
                 WHERE state = $1 AND finished_at < now() - $2::interval
                 ORDER BY finished_at
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             DELETE FROM warren_jobs j USING batch
             WHERE j.id = batch.id
               AND j.state = $1 AND j.finished_at < now() - $2::interval
               AND j.state IN ('succeeded', 'dead', 'cancelled')",
        )
        .bind(state.as_str())
        .bind(older_than)
        .bind(i64::from(limit.max(1)))
        .execute(&mut *tx)
        .await
        .map_err(Error::query("deleting a batch of old jobs"))?
        .rows_affected();
        tx.commit()
            .await
            .map_err(Error::query("committing a prune batch"))?;
        Ok(PruneBatch::Deleted(deleted))
    }
}
