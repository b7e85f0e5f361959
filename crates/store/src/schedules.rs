//! Periodic schedules: the `warren_schedules` table, and firing a schedule's due ticks as
//! `scheduled` job rows keyed by (schedule, tick).
//!
//! Firing locks the schedule's row (`FOR UPDATE SKIP LOCKED`) for the length of one short
//! transaction, so a pause or a removal that has returned is never followed by a fire, and
//! two schedulers do not compute the same ticks at once. The unique index on
//! (schedule_name, schedule_tick) is what guarantees one job per tick regardless.

use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_core::JobId;
use warren_core::RetryPolicy;
use warren_core::cron::{CatchUp, Due};

use crate::{Error, Store};

/// A row of `warren_schedules`.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct Schedule {
    /// Its unique name.
    pub name: String,
    /// The cron expression (6 fields with seconds, or 5).
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// The task of the jobs it makes.
    pub task: String,
    /// Their payload.
    pub payload: serde_json::Value,
    /// The queue they are published to.
    pub queue: String,
    /// `none`, `last` or `all` (see [`CatchUp`]).
    pub catch_up: String,
    /// A paused schedule fires nothing.
    pub paused: bool,
    /// The most recent tick dealt with (fired, or skipped by `none`).
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The job made for the most recent fired tick.
    pub last_job_id: Option<uuid::Uuid>,
    /// When it was first added.
    pub created_at: DateTime<Utc>,
    /// When it was last added, paused or resumed.
    pub updated_at: DateTime<Utc>,
}

/// A schedule to add or replace. The caller validates the cron expression and time zone.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    /// Its unique name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone.
    pub timezone: String,
    /// The task of the jobs it makes.
    pub task: String,
    /// Their payload, as JSON text.
    pub payload: String,
    /// The queue they are published to.
    pub queue: String,
    /// What to do about missed ticks.
    pub catch_up: CatchUp,
}

/// What one fire did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// The ticks a job was inserted for, oldest first, with the job's id.
    pub jobs: Vec<(DateTime<Utc>, JobId)>,
}

/// A job a schedule made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ScheduleTick {
    /// The tick it was made for.
    pub tick: DateTime<Utc>,
    /// The job's id.
    pub job_id: uuid::Uuid,
    /// Its state now.
    pub state: String,
    /// Its attempt counter.
    pub attempt: i32,
}

/// The columns of [`Schedule`], as a literal so the queries below stay `&'static str`.
macro_rules! columns {
    () => {
        "name, cron, timezone, task, payload, queue, catch_up, paused, \
         last_fired_at, last_job_id, created_at, updated_at"
    };
}

impl Store {
    /// Adds a schedule, or replaces the definition of the one with that name (its paused
    /// state and last fired tick are kept). Returns whether it was new, and whether it is
    /// paused.
    pub async fn upsert_schedule(&self, s: &NewSchedule) -> Result<(bool, bool), Error> {
        sqlx::query_as(
            "INSERT INTO warren_schedules (name, cron, timezone, task, payload, queue, catch_up)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
             ON CONFLICT (name) DO UPDATE
               SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, task = EXCLUDED.task,
                   payload = EXCLUDED.payload, queue = EXCLUDED.queue,
                   catch_up = EXCLUDED.catch_up, updated_at = now()
             RETURNING (xmax = 0), paused",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.task)
        .bind(&s.payload)
        .bind(&s.queue)
        .bind(s.catch_up.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("adding the schedule"))
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM warren_schedules ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading the schedules"))
    }

    /// The schedule named `name`, if there is one.
    pub async fn schedule_named(&self, name: &str) -> Result<Option<Schedule>, Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM warren_schedules WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::query("reading the schedule"))
    }

    /// The jobs schedule `name` made that are still in `warren_jobs`, oldest tick first, at
    /// most `limit` (the most recent).
    pub async fn schedule_ticks(&self, name: &str, limit: i64) -> Result<Vec<ScheduleTick>, Error> {
        sqlx::query_as(
            "SELECT tick, job_id, state, attempt FROM (
                 SELECT schedule_tick AS tick, id AS job_id, state, attempt FROM warren_jobs
                 WHERE schedule_name = $1 ORDER BY schedule_tick DESC LIMIT $2) t
             ORDER BY tick",
        )
        .bind(name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading the schedule's jobs"))
    }

    /// Removes a schedule; it fires nothing more once this returns (jobs it already made
    /// are left alone). Returns `false` if there was none.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM warren_schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(Error::query("removing the schedule"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Pauses or resumes a schedule. Returns `None` if there is none, else whether it changed.
    /// A resumed schedule treats the ticks it missed while paused by its catch-up policy.
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Option<bool>, Error> {
        let was: Option<bool> = sqlx::query_scalar(
            "UPDATE warren_schedules s SET paused = $2, updated_at = now()
             FROM (SELECT name, paused FROM warren_schedules WHERE name = $1 FOR UPDATE) old
             WHERE s.name = old.name
             RETURNING old.paused",
        )
        .bind(name)
        .bind(paused)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::query("pausing or resuming the schedule"))?;
        Ok(was.map(|was| was != paused))
    }

    /// Fires schedule `name` if it is still there and not paused: `decide` is given its row,
    /// locked, and says which ticks are due; a job is inserted for each, due at its tick, and
    /// the row's last fired tick and job are updated, in one transaction. Returns `None` if
    /// the schedule is gone, paused, being fired by another scheduler, or not due.
    pub async fn fire_schedule(
        &self,
        name: &str,
        decide: impl FnOnce(&Schedule) -> Option<Due>,
    ) -> Result<Option<Fired>, Error> {
        let what = "firing the schedule";
        let mut tx = self.pool.begin().await.map_err(Error::query(what))?;
        let row: Option<Schedule> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM warren_schedules WHERE name = $1 AND NOT paused FOR UPDATE SKIP LOCKED"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::query(what))?;
        let Some(row) = row else { return Ok(None) };
        let Some(due) = decide(&row) else {
            return Ok(None);
        };
        let ids: Vec<JobId> = due.fire.iter().map(|_| JobId::new()).collect();
        let inserted: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO warren_jobs (id, queue, task, payload, state, attempt, max_attempts,
                                     run_at, enqueued_at, schedule_name, schedule_tick)
             SELECT u.id, $3, $4, $5, 'scheduled', 0, $6, u.tick, now(), $2, u.tick
             FROM UNNEST($1::uuid[], $7::timestamptz[]) AS u(id, tick)
             ON CONFLICT DO NOTHING
             RETURNING id, schedule_tick",
        )
        .bind(ids.iter().map(JobId::as_uuid).collect::<Vec<_>>())
        .bind(&row.name)
        .bind(&row.queue)
        .bind(&row.task)
        .bind(&row.payload)
        .bind(RetryPolicy::default().max_attempts as i32)
        .bind(&due.fire)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::query("inserting the schedule's jobs"))?;
        let mut jobs: Vec<(DateTime<Utc>, JobId)> = inserted
            .into_iter()
            .map(|(id, tick)| (tick, JobId::from_uuid(id)))
            .collect();
        jobs.sort_by_key(|(tick, _)| *tick);
        sqlx::query(
            "UPDATE warren_schedules
             SET last_fired_at = GREATEST(last_fired_at, $2),
                 last_job_id = COALESCE($3, last_job_id)
             WHERE name = $1",
        )
        .bind(&row.name)
        .bind(due.latest)
        .bind(jobs.last().map(|(_, id)| id.as_uuid()))
        .execute(&mut *tx)
        .await
        .map_err(Error::query("recording the schedule's last tick"))?;
        tx.commit().await.map_err(Error::query(what))?;
        Ok(Some(Fired { jobs }))
    }
}
