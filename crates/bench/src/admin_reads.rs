//! The admin-reads mode (`--admin-rows N`): how fast the `warren` CLI's read commands answer
//! on a large jobs table. It seeds the phase's private database with N rows in a realistic
//! mix of states, tasks, queues, errors and ages (`admin_reads/seed.sql`, `INSERT … SELECT
//! generate_series` in chunks), runs `VACUUM ANALYZE` as autovacuum would have by then, and
//! times each query behind a read command by calling the same `warren_store` function the
//! command calls, with the same arguments: once to warm the cache, then [`RUNS`] times. The
//! table shows each query's median (p50) and slowest (p99 column) run.
//!
//! With `--admin-database NAME` the rows go into a database that is kept: a later run with
//! the same name and row count migrates it and times the queries without seeding again.
//!
//! It replaces the default phases for that run: seeding ten million rows takes minutes, and
//! the default run measures the hot path, which this does not touch.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use warren_core::JobState;
use warren_store::{JobFilter, Store, StoreConfig, provision};

use crate::report::{Latency, Measure, Phase};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;

/// Timed runs per query, after one warm-up run.
const RUNS: usize = 5;
/// Rows inserted per statement: big enough to be fast, small enough to show progress.
const CHUNK: u64 = 1_000_000;
/// Days of history the rows are spread over.
const DAYS: u64 = 30;
/// The page size of `warren jobs list`.
const PAGE: u32 = 50;

/// The seed script; `{high}`, `{low}`, `{total}` and `{days}` are filled in per chunk.
const SEED: &str = include_str!("admin_reads/seed.sql");

/// Workers as `warren workers` lists them: a fleet of 40, a few long gone.
const WORKERS: &str = "
INSERT INTO warren_workers (id, hostname, pid, queues, concurrency, state, last_seen_at)
SELECT 'worker-' || i, 'host-' || (i % 10), 1000 + i, ARRAY['default', 'emails'], 64,
       CASE WHEN i % 8 = 0 THEN 'stopped' ELSE 'running' END,
       CASE WHEN i % 8 = 0 THEN now() - interval '2 days' ELSE now() END
FROM generate_series(1, 40) AS i";

pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Phase> {
    let rows = settings.admin_rows.unwrap_or(0);
    let (url, seeded) = match &settings.admin_database {
        Some(name) => kept(settings, name, rows).await?,
        None => (sandbox.database()?.url().to_owned(), false),
    };
    let started = Instant::now();
    if seeded {
        eprintln!("database already holds {rows} rows; analyzing it, not seeding");
        provision::execute_script(&url, "ANALYZE warren_jobs")
            .await
            .context("analyzing the kept table")?;
    } else {
        stoppable(stop, seed(&url, rows)).await?;
    }
    let seeding = started.elapsed();
    eprintln!(
        "{rows} rows ready in {:.0} s; timing the queries",
        seeding.as_secs_f64()
    );
    let mut config = StoreConfig::new(url);
    config.application_name = "warren-bench admin reads".to_owned();
    config.max_connections = 2;
    let store = Store::connect(&config)
        .await
        .context("connecting to the seeded database")?;
    let measured = stoppable(stop, time_queries(&store)).await;
    store.close().await;
    Ok(Phase {
        key: "admin_reads",
        title: "seeding the jobs table (rows/s)",
        jobs: rows,
        elapsed: seeding,
        measures: measured?,
    })
}

/// The kept database `name`: created if missing, migrated (so that a run after a new
/// migration measures it), and whether it already holds the `rows` rows of an earlier run.
async fn kept(settings: &Settings, name: &str, rows: u64) -> anyhow::Result<(String, bool)> {
    let admin = &settings.admin_database_url;
    if !provision::database_exists(admin, name).await? {
        provision::create_database(admin, name)
            .await
            .with_context(|| format!("creating database `{name}`"))?;
    }
    let url = provision::url_for_database(admin, name)?;
    let store = Store::connect(&StoreConfig::new(url.clone()))
        .await
        .with_context(|| format!("connecting to database `{name}`"))?;
    let counted = async {
        store
            .migrate()
            .await
            .with_context(|| format!("migrating database `{name}`"))?;
        let have: i64 = store
            .state_counts(None)
            .await?
            .iter()
            .map(|c| c.count)
            .sum();
        anyhow::Ok(have)
    }
    .await;
    store.close().await;
    let have = counted?;
    match u64::try_from(have) {
        Ok(0) => Ok((url, false)),
        Ok(n) if n == rows => Ok((url, true)),
        _ => anyhow::bail!(
            "database `{name}` holds {have} jobs, not {rows}: drop it or name another with \
             --admin-database"
        ),
    }
}

/// Inserts `rows` rows, oldest first, then vacuums and analyzes.
async fn seed(url: &str, rows: u64) -> anyhow::Result<()> {
    let mut high = rows;
    while high > 0 {
        let low = high.saturating_sub(CHUNK - 1).max(1);
        let script = SEED
            .replace("{high}", &high.to_string())
            .replace("{low}", &low.to_string())
            .replace("{total}", &rows.to_string())
            .replace("{days}", &DAYS.to_string());
        provision::execute_script(url, &script)
            .await
            .with_context(|| format!("seeding rows {high} down to {low}"))?;
        eprintln!("seeded {}/{rows} rows", rows - low + 1);
        high = low - 1;
    }
    provision::execute_script(url, WORKERS)
        .await
        .context("seeding the workers table")?;
    // Alone in its script: VACUUM cannot run inside the transaction a multi-statement script
    // runs in.
    provision::execute_script(url, "VACUUM ANALYZE warren_jobs")
        .await
        .context("vacuuming and analyzing the seeded table")?;
    Ok(())
}

fn ago(d: Duration) -> DateTime<Utc> {
    Utc::now() - TimeDelta::from_std(d).unwrap_or(TimeDelta::zero())
}

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// A `jobs list` filter.
fn filter(f: impl FnOnce(&mut JobFilter)) -> JobFilter {
    let mut filter = JobFilter::default();
    f(&mut filter);
    filter
}

/// Times one query: a warm-up run, then [`RUNS`] runs.
async fn time<T, F: AsyncFn() -> Result<T, warren_store::Error>>(
    key: &'static str,
    label: &'static str,
    query: F,
) -> anyhow::Result<Measure> {
    query().await.with_context(|| format!("running {label}"))?;
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        query().await.with_context(|| format!("running {label}"))?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Measure::latency(key, label, Latency::of(&mut samples)))
}

async fn time_queries(store: &Store) -> anyhow::Result<Vec<Measure>> {
    let list = async |f: JobFilter| store.list_jobs(&f, None, PAGE).await;
    let mut m = Vec::new();
    m.push(
        time("list", "jobs list (first page of 50)", async || {
            list(filter(|_| {})).await
        })
        .await?,
    );
    m.push(
        time("list_dead", "  --state dead", async || {
            list(filter(|f| f.states = vec![JobState::Dead])).await
        })
        .await?,
    );
    m.push(
        time("list_scheduled", "  --state scheduled", async || {
            list(filter(|f| f.states = vec![JobState::Scheduled])).await
        })
        .await?,
    );
    m.push(
        time("list_two_states", "  --state dead,cancelled", async || {
            list(filter(|f| {
                f.states = vec![JobState::Dead, JobState::Cancelled]
            }))
            .await
        })
        .await?,
    );
    m.push(
        time("list_task", "  --task task3 (one in 17)", async || {
            list(filter(|f| f.task = Some("task3".into()))).await
        })
        .await?,
    );
    m.push(
        time(
            "list_rare_task",
            "  --task report.yearly (rare)",
            async || list(filter(|f| f.task = Some("report.yearly".into()))).await,
        )
        .await?,
    );
    m.push(
        time("list_no_task", "  --task nosuch (none)", async || {
            list(filter(|f| f.task = Some("nosuch".into()))).await
        })
        .await?,
    );
    m.push(
        time("list_queue", "  --queue reports", async || {
            list(filter(|f| f.queue = Some("reports".into()))).await
        })
        .await?,
    );
    m.push(
        time("list_since", "  --since 1h", async || {
            list(filter(|f| f.since = Some(ago(HOUR)))).await
        })
        .await?,
    );
    m.push(
        time("list_until", "  --until 7d", async || {
            list(filter(|f| f.until = Some(ago(7 * DAY)))).await
        })
        .await?,
    );
    m.push(
        time("list_error", "  --error-contains 'timed out'", async || {
            list(filter(|f| f.error_contains = Some("timed out".into()))).await
        })
        .await?,
    );
    m.push(
        time(
            "list_dead_error",
            "  --state dead --error-contains",
            async || {
                list(filter(|f| {
                    f.states = vec![JobState::Dead];
                    f.error_contains = Some("mailbox".into());
                }))
                .await
            },
        )
        .await?,
    );
    m.push(
        time(
            "list_rare_error",
            "  --error-contains (no match)",
            async || list(filter(|f| f.error_contains = Some("no such error".into()))).await,
        )
        .await?,
    );
    m.push(
        time(
            "bulk_count",
            "bulk dry run --state dead --task",
            async || {
                store
                    .count_matching(&filter(|f| {
                        f.states = vec![JobState::Dead];
                        f.task = Some("task0".into());
                    }))
                    .await
            },
        )
        .await?,
    );
    m.push(
        time(
            "summary_states",
            "jobs summary: counts per state",
            async || store.state_totals(None).await,
        )
        .await?,
    );
    m.push(
        time("summary_queue", "  counts --queue emails", async || {
            store.state_totals(Some("emails")).await
        })
        .await?,
    );
    m.push(
        time(
            "summary_latency",
            "  latency of the last hour",
            async || store.latency_summary(ago(HOUR)).await,
        )
        .await?,
    );
    m.push(
        time("dead", "dead (all groups)", async || {
            store.dead_groups(None).await
        })
        .await?,
    );
    m.push(
        time("dead_since", "dead --since 1h", async || {
            store.dead_groups(Some(ago(HOUR))).await
        })
        .await?,
    );
    m.push(
        time("stats", "stats (1h)", async || {
            store.task_stats(ago(HOUR)).await
        })
        .await?,
    );
    m.push(
        time("stats_day", "stats --since 24h", async || {
            store.task_stats(ago(DAY)).await
        })
        .await?,
    );
    m.push(
        time("queues", "queues list (Postgres counts)", async || {
            store.queue_counts().await
        })
        .await?,
    );
    m.push(time("workers", "workers", async || store.workers().await).await?);
    m.push(
        time(
            "prune_succeeded",
            "prune --dry-run succeeded 7d",
            async || store.count_prunable(JobState::Succeeded, 7 * DAY).await,
        )
        .await?,
    );
    m.push(
        time("prune_dead", "prune --dry-run dead 7d", async || {
            store.count_prunable(JobState::Dead, 7 * DAY).await
        })
        .await?,
    );
    Ok(m)
}
