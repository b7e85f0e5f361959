//! Dead jobs grouped by why they died: the view that shows "500 jobs died of the same
//! timeout" as one line.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;
use warren_core::JobId;

use crate::{Error, Store};

/// Dead jobs sharing a task, an error kind and the first line of their last error message
/// (its first 500 characters).
#[derive(Clone, Debug, Serialize)]
pub struct DeadGroup {
    /// The task.
    pub task: String,
    /// The kind of the last failure (`error`, `permanent`, `timeout`, `panic`, …), empty when the
    /// job has no error history (bad input recorded without one).
    pub kind: String,
    /// The first line of the last error message, cut at 500 characters.
    pub message: String,
    /// How many dead jobs are in the group.
    pub count: i64,
    /// When the first of them died.
    pub first_seen: DateTime<Utc>,
    /// When the last of them died.
    pub last_seen: DateTime<Utc>,
    /// The most recent job of the group, for `warren jobs show`.
    pub example_id: JobId,
}

#[derive(sqlx::FromRow)]
struct DeadGroupRow {
    task: String,
    kind: String,
    message: String,
    count: i64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    example_id: Uuid,
}

impl Store {
    /// Dead jobs that died at or after `since` (all of them when `None`), grouped, largest
    /// group first. A job's time of death is its `finished_at`, or its last update when a
    /// row has none. The group key is in columns of its own (`last_error_kind`,
    /// `last_error_line`, which migration 10's trigger sets on every dead row), so that the
    /// `warren_jobs_dead_groups` index answers by an index-only scan instead of a read of
    /// every dead row (two seconds at ten million rows). Each group's example is then one
    /// index probe: the group's most recently finished job.
    pub async fn dead_groups(&self, since: Option<DateTime<Utc>>) -> Result<Vec<DeadGroup>, Error> {
        let rows: Vec<DeadGroupRow> = sqlx::query_as(
            "SELECT g.task, g.kind, g.message, g.count, g.first_seen, g.last_seen,
                    e.id AS example_id
             FROM (
                 SELECT task,
                        last_error_kind AS kind,
                        last_error_line AS message,
                        count(*) AS count,
                        min(coalesce(finished_at, updated_at)) AS first_seen,
                        max(coalesce(finished_at, updated_at)) AS last_seen
                 FROM warren_jobs
                 WHERE state = 'dead'
                   AND ($1::timestamptz IS NULL OR finished_at >= $1
                        OR (finished_at IS NULL AND updated_at >= $1))
                 GROUP BY task, last_error_kind, last_error_line
             ) g
             CROSS JOIN LATERAL (
                 SELECT id FROM warren_jobs
                 WHERE state = 'dead' AND task = g.task
                   AND last_error_kind = g.kind AND last_error_line = g.message
                 ORDER BY finished_at DESC NULLS LAST
                 LIMIT 1
             ) e
             ORDER BY g.count DESC, g.last_seen DESC",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("grouping dead jobs"))?;
        Ok(rows
            .into_iter()
            .map(|r| DeadGroup {
                task: r.task,
                kind: r.kind,
                message: r.message,
                count: r.count,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                example_id: JobId::from_uuid(r.example_id),
            })
            .collect())
    }
}
