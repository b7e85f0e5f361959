//! Jobs selected by a filter: the newest-first listing of `warren jobs list`, the counts a
//! dry run prints, and the batches in which bulk retries and cancels lock and change them.
//!
//! Every query here orders by `(enqueued_at, id)` and pages by keyset (a [`Cursor`], the last
//! row seen), never by `OFFSET`: a page costs the same however deep it is, and rows that
//! change state while an admin pages (or while a bulk operation runs) are neither skipped nor
//! seen twice. Migration 0004 adds the indexes these orders use.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;
use warren_core::{JobId, JobState};

use crate::admin::{cancel_in, retry_in};
use crate::{CancelOutcome, Error, RetryOutcome, Store};

/// Which jobs a listing or a bulk operation covers. Every field narrows the selection; the
/// default filter matches every job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobFilter {
    /// Only jobs in one of these states (any state when empty).
    pub states: Vec<JobState>,
    /// Only jobs of this task.
    pub task: Option<String>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs enqueued at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only jobs enqueued before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only jobs whose latest error message contains this text, ignoring case.
    pub error_contains: Option<String>,
}

impl JobFilter {
    /// Whether the filter matches every job.
    pub fn is_empty(&self) -> bool {
        *self == JobFilter::default()
    }

    /// Appends ` WHERE …` for this filter, and for rows older than `after` when given.
    fn push_where(&self, q: &mut QueryBuilder<Postgres>, after: Option<Cursor>) {
        q.push(" WHERE true");
        match self.states.as_slice() {
            [] => {}
            // One state is spelled as an equality so that the planner walks the
            // (state, enqueued_at, id) index in order instead of sorting.
            [one] => {
                q.push(" AND state = ").push_bind(one.as_str());
            }
            many => {
                let names: Vec<&'static str> = many.iter().map(|s| s.as_str()).collect();
                q.push(" AND state = ANY(").push_bind(names).push(")");
            }
        }
        if let Some(task) = &self.task {
            q.push(" AND task = ").push_bind(task.clone());
        }
        if let Some(queue) = &self.queue {
            q.push(" AND queue = ").push_bind(queue.clone());
        }
        if let Some(since) = self.since {
            q.push(" AND enqueued_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            q.push(" AND enqueued_at < ").push_bind(until);
        }
        if let Some(text) = &self.error_contains {
            // ILIKE on exactly this expression is what the trigram index of migration 10
            // serves; the admin's text is escaped, so `%` and `_` in it match themselves.
            q.push(" AND (errors -> -1 ->> 'message') ILIKE ")
                .push_bind(contains_pattern(text));
        }
        if let Some(c) = after {
            q.push(" AND (enqueued_at, id) < (")
                .push_bind(c.enqueued_at)
                .push(", ")
                .push_bind(c.id.as_uuid())
                .push(")");
        }
    }
}

/// A LIKE pattern matching any text that contains `text`: `%` around it, and its own `%`,
/// `_` and `\\` (LIKE's default escape character) escaped.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A position in a newest-first listing: the last job of a page. Printed as
/// `<enqueued_at in microseconds since the epoch>-<job id>`, which is all `--after` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last job's enqueue time.
    pub enqueued_at: DateTime<Utc>,
    /// The last job's id, which breaks ties between jobs enqueued in the same microsecond.
    pub id: JobId,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.enqueued_at.timestamp_micros(), self.id)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Cursor, String> {
        let bad = || {
            format!(
                "`{s}` is not a cursor: pass the `next` value a previous `jobs list` printed \
                 (microseconds-uuid)"
            )
        };
        let (micros, id) = s.split_once('-').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(Cursor {
            enqueued_at: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One job as a listing shows it: enough to pick it out, not its payload or history.
#[derive(Clone, Debug, Serialize)]
pub struct JobListing {
    /// The job's id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Its task name.
    pub task: String,
    /// Its state.
    pub state: JobState,
    /// The latest attempt (0 for a job that never ran).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When it was enqueued; listings are ordered by this, newest first.
    pub enqueued_at: DateTime<Utc>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker that ran its latest attempt.
    pub worker_id: Option<String>,
    /// The message of its latest error, if it failed at least once.
    pub last_error: Option<String>,
}

/// A row of a listing as Postgres returns it.
#[derive(sqlx::FromRow)]
struct ListingRow {
    id: Uuid,
    queue: String,
    task: String,
    state: String,
    attempt: i32,
    max_attempts: i32,
    enqueued_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    worker_id: Option<String>,
    last_error: Option<String>,
}

impl ListingRow {
    fn into_listing(self) -> Result<JobListing, Error> {
        let id = JobId::from_uuid(self.id);
        Ok(JobListing {
            id,
            state: self.state.parse().map_err(|reason| Error::Corrupt {
                job: id,
                field: "state",
                reason,
            })?,
            queue: self.queue,
            task: self.task,
            attempt: self.attempt.max(0) as u32,
            max_attempts: self.max_attempts.max(1) as u32,
            enqueued_at: self.enqueued_at,
            finished_at: self.finished_at,
            worker_id: self.worker_id,
            last_error: self.last_error,
        })
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Serialize)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<JobListing>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<Cursor>,
}

/// How many jobs a filter matches in one state, split by whether they have a payload (a job
/// without one cannot be retried).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchCount {
    /// The state.
    pub state: JobState,
    /// Whether these jobs have a JSON payload.
    pub has_payload: bool,
    /// How many.
    pub count: i64,
}

/// What one batch of a bulk operation did: each job locked, with its outcome.
#[derive(Clone, Debug)]
pub struct Batch<O> {
    /// The jobs of the batch, newest first, with what happened to each.
    pub outcomes: Vec<(JobId, O)>,
    /// Where the next batch starts; `None` when no job is left.
    pub next: Option<Cursor>,
}

const LISTING_COLUMNS: &str = "SELECT id, queue, task, state, attempt, max_attempts, enqueued_at, \
     finished_at, worker_id, errors -> -1 ->> 'message' AS last_error FROM warren_jobs";

impl Store {
    /// Up to `limit` jobs matching `filter`, newest first, starting after `after`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<JobPage, Error> {
        let limit = limit.max(1);
        let mut q = QueryBuilder::new(LISTING_COLUMNS);
        filter.push_where(&mut q, after);
        // One more than asked says whether another page exists without a count.
        q.push(" ORDER BY enqueued_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows: Vec<ListingRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("listing jobs"))?;
        let more = rows.len() > limit as usize;
        let jobs = rows
            .into_iter()
            .take(limit as usize)
            .map(ListingRow::into_listing)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (more, jobs.last()) {
            (true, Some(last)) => Some(Cursor {
                enqueued_at: last.enqueued_at,
                id: last.id,
            }),
            _ => None,
        };
        Ok(JobPage { jobs, next })
    }

    /// How many jobs `filter` matches, per state and payload presence: what a dry run reports.
    /// Exact. Two counts in one snapshot: per state, which an index-only scan of migration
    /// 10's `warren_jobs_not_succeeded` answers for the states bulk commands act on, and per
    /// state among the rare rows without a payload (`warren_jobs_no_payload`). Counting
    /// `payload IS NOT NULL` directly would visit every matching row (two seconds for
    /// 110,000 dead jobs of ten million).
    pub async fn count_matching(&self, filter: &JobFilter) -> Result<Vec<MatchCount>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("counting matching jobs"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(Error::query("counting matching jobs"))?;
        let mut all = QueryBuilder::new("SELECT state, count(*) AS n FROM warren_jobs");
        filter.push_where(&mut all, None);
        all.push(" GROUP BY 1");
        let all: Vec<(String, i64)> = all
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::query("counting matching jobs"))?;
        let mut bare = QueryBuilder::new("SELECT state, count(*) AS n FROM warren_jobs");
        filter.push_where(&mut bare, None);
        bare.push(" AND payload IS NULL GROUP BY 1");
        let bare: Vec<(String, i64)> = bare
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::query("counting matching jobs without a payload"))?;
        tx.commit()
            .await
            .map_err(Error::query("counting matching jobs"))?;
        let mut counts = Vec::new();
        for (state, n) in all {
            let without = bare
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            let state: JobState = state
                .parse()
                .map_err(|reason| Error::CorruptState { reason })?;
            // Same shape as a GROUP BY (state, has payload): no row for an empty group,
            // ordered by state name, then without a payload before with one.
            for (has_payload, count) in [(false, without), (true, n - without)] {
                if count > 0 {
                    counts.push(MatchCount {
                        state,
                        has_payload,
                        count,
                    });
                }
            }
        }
        counts.sort_by(|a, b| {
            (a.state.as_str(), a.has_payload).cmp(&(b.state.as_str(), b.has_payload))
        });
        Ok(counts)
    }

    /// Retries the next `limit` jobs matching `filter` after `after`, in one transaction: each
    /// by the same rule as [`Store::retry_job`]. Committed together or not at all, so an
    /// interrupted bulk retry leaves every job either retried once or untouched.
    pub async fn retry_batch(
        &self,
        filter: &JobFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Batch<RetryOutcome>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("starting a retry batch"))?;
        let (jobs, next) = lock_page(&mut tx, filter, after, limit).await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for id in jobs {
            outcomes.push((id, retry_in(&mut tx, id).await?));
        }
        tx.commit()
            .await
            .map_err(Error::query("committing a retry batch"))?;
        Ok(Batch { outcomes, next })
    }

    /// Cancels the next `limit` jobs matching `filter` after `after`, in one transaction: each
    /// by the same rule as [`Store::cancel_job`] (running jobs are signalled).
    pub async fn cancel_batch(
        &self,
        filter: &JobFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Batch<CancelOutcome>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("starting a cancel batch"))?;
        let (jobs, next) = lock_page(&mut tx, filter, after, limit).await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for id in jobs {
            outcomes.push((id, cancel_in(&mut tx, id).await?));
        }
        tx.commit()
            .await
            .map_err(Error::query("committing a cancel batch"))?;
        Ok(Batch { outcomes, next })
    }
}

/// The next page of matching jobs, locked: the jobs to act on and the cursor after the page.
///
/// The page is chosen first without locks, so that its end (the cursor) does not depend on
/// which rows the locks keep. Then its rows are locked in id order, the order the recorder's
/// batches lock in, so the two never deadlock, and the filter is checked again under the
/// lock: a job that stopped matching while the batch waited for it is left out, not changed.
async fn lock_page(
    tx: &mut PgConnection,
    filter: &JobFilter,
    after: Option<Cursor>,
    limit: u32,
) -> Result<(Vec<JobId>, Option<Cursor>), Error> {
    let mut q = QueryBuilder::new("SELECT id, enqueued_at FROM warren_jobs");
    filter.push_where(&mut q, after);
    q.push(" ORDER BY enqueued_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit.max(1)));
    let page: Vec<(Uuid, DateTime<Utc>)> = q
        .build_query_as()
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::query("selecting a batch of jobs"))?;
    let next = match page.last() {
        Some((id, at)) if page.len() >= limit.max(1) as usize => Some(Cursor {
            enqueued_at: *at,
            id: JobId::from_uuid(*id),
        }),
        _ => None,
    };
    if page.is_empty() {
        return Ok((Vec::new(), next));
    }
    let ids: Vec<Uuid> = page.iter().map(|(id, _)| *id).collect();
    let mut q = QueryBuilder::new("SELECT id FROM warren_jobs");
    filter.push_where(&mut q, None);
    q.push(" AND id = ANY(")
        .push_bind(ids)
        .push(") ORDER BY id FOR UPDATE");
    let mut locked: Vec<Uuid> = q
        .build_query_scalar()
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::query("locking a batch of jobs"))?;
    // Acted on newest first, as listed; the locks are already held.
    let order: std::collections::HashMap<Uuid, usize> = page
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    locked.sort_by_key(|id| order.get(id).copied().unwrap_or(usize::MAX));
    Ok((locked.into_iter().map(JobId::from_uuid).collect(), next))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_prints() {
        let c = Cursor {
            enqueued_at: DateTime::from_timestamp_micros(1_764_570_000_123_456).unwrap(),
            id: JobId::new(),
        };
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        let err = "nope".parse::<Cursor>().unwrap_err();
        assert!(err.contains("is not a cursor"), "{err}");
    }

    #[test]
    fn filters_become_bound_conditions() {
        let filter = JobFilter {
            states: vec![JobState::Dead],
            task: Some("email".into()),
            error_contains: Some("50%_off".into()),
            ..JobFilter::default()
        };
        let mut q = QueryBuilder::new("SELECT id FROM warren_jobs");
        filter.push_where(&mut q, None);
        assert_eq!(
            q.sql().as_str(),
            "SELECT id FROM warren_jobs WHERE true AND state = $1 AND task = $2 AND \
             (errors -> -1 ->> 'message') ILIKE $3"
        );
        assert_eq!(contains_pattern("50%_off"), "%50\\%\\_off%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
        assert!(JobFilter::default().is_empty() && !filter.is_empty());
    }
}
