//! Jobs per state for display (`warren jobs summary`), fast on any table size: a state the
//! planner's statistics put at fewer than [`EXACT_UP_TO`] rows is counted exactly (an
//! index-only scan of a few hundred thousand entries at most); a larger one, in practice
//! `succeeded` on a big table, is given as the statistics' estimate and marked approximate.
//! Counting ten million `succeeded` rows exactly takes over a second whatever the index.
//! [`Store::state_counts`] stays exact, for whoever needs an exact figure.

use serde::Serialize;
use warren_core::JobState;

use crate::{Error, Store};

/// The largest estimated count that is still counted exactly.
pub const EXACT_UP_TO: i64 = 1_000_000;

/// Jobs in one state, exactly or as estimated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateTotal {
    /// The state.
    pub state: JobState,
    /// How many jobs are in it (zero included).
    pub count: i64,
    /// Whether `count` is the planner statistics' estimate rather than a count.
    pub approximate: bool,
}

/// The statistics' estimate of rows in each state (in `$1`'s queue when given): rows at the
/// last ANALYZE times the state's frequency among the sampled rows (times the queue's). A
/// value outside the most-common lists, or a table never analyzed, estimates 0, and is then
/// counted exactly.
const ESTIMATES: &str = "
WITH freq AS (
    SELECT s.attname, f.val, f.freq
    FROM pg_stats s,
         unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS f(val, freq)
    WHERE s.schemaname = current_schema() AND s.tablename = 'warren_jobs'
      AND s.attname IN ('state', 'queue')
)
SELECT st.state,
       (greatest(c.reltuples, 0)
        * coalesce((SELECT freq FROM freq WHERE attname = 'state' AND val = st.state), 0)
        * CASE WHEN $1::text IS NULL THEN 1
               ELSE coalesce((SELECT freq FROM freq WHERE attname = 'queue' AND val = $1), 0)
          END)::int8 AS estimate
FROM unnest($2::text[]) AS st(state), pg_class c
WHERE c.oid = 'warren_jobs'::regclass";

impl Store {
    /// Every state with its count, in lifecycle order; see the module's doc for which are
    /// exact.
    pub async fn state_totals(&self, queue: Option<&str>) -> Result<Vec<StateTotal>, Error> {
        let names: Vec<&'static str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        let estimates: Vec<(String, i64)> = sqlx::query_as(ESTIMATES)
            .bind(queue)
            .bind(names)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("counting jobs per state"))?;
        let mut totals = Vec::with_capacity(JobState::ALL.len());
        for state in JobState::ALL {
            let estimate = estimates
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map_or(0, |(_, n)| *n);
            if estimate > EXACT_UP_TO {
                totals.push(StateTotal {
                    state,
                    count: estimate,
                    approximate: true,
                });
                continue;
            }
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM warren_jobs
                 WHERE state = $1 AND ($2::text IS NULL OR queue = $2)",
            )
            .bind(state.as_str())
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::query("counting jobs in one state"))?;
            totals.push(StateTotal {
                state,
                count,
                approximate: false,
            });
        }
        Ok(totals)
    }
}
