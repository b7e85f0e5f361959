//! The limits scenario (`--limits`): a rate-limited task beside an unlimited one on the same
//! queue. Measures the unlimited task's throughput alone and then while a backlog of limited
//! jobs runs at its limit beside it, how long the first pass over that backlog (deferring it)
//! took, the limited task's achieved rate, and what each limited job cost: lease and token
//! calls (rows written to the limits' tables), deferrals, and CPU of this process (worker and
//! producer) beyond the unlimited jobs' own.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_runtime::Worker;
use warren_store::{Limit, Rate, Store};
use warren_testkit::wait_until;
use warren_worker::tasks::register_builtins;

use crate::end_to_end::{enqueue, with_worker};
use crate::report::{Measure, Phase};
use crate::sandbox::Sandbox;
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

/// The limited task: a built-in that does as little as the unlimited one.
const LIMITED: &str = "warren.echo";
/// Its rate, per second.
const RATE: u32 = 100;
/// Limited jobs: ten seconds' worth at the rate.
const LIMITED_JOBS: u64 = 10 * RATE as u64;

pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<Phase>> {
    let store = sandbox.database()?.connect("producer", Some(2)).await?;
    // Set before the worker starts, which reads the limits before it consumes.
    store
        .set_limit(&Limit {
            target: LIMITED.to_owned(),
            concurrency: None,
            rate: Some(Rate {
                count: RATE,
                period_ms: 1000,
            }),
            key_from: None,
            updated_at: Utc::now(),
        })
        .await
        .context("setting the rate limit")?;
    let builder = register_builtins(Worker::builder());
    let (phase, _stats) = with_worker(
        settings,
        sandbox,
        builder,
        stop,
        drive(settings, sandbox, &store),
    )
    .await?;
    store.close().await;
    Ok(vec![phase])
}

/// CPU time this process has used (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) are space-separated;
            // utime and stime are the 14th and 15th fields of the line.
            let rest = s.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    // Linux reports clock ticks of 1/100 s on every platform Warren runs on.
    Duration::from_millis(ticks * 10)
}

async fn wait_succeeded(
    store: &Store,
    task: &str,
    n: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!("{n} {task} jobs to succeed");
    wait_until(timeout, &what, || async {
        let done = store.succeeded_of_task(task).await?;
        Ok(if done as u64 >= n {
            Ok(())
        } else {
            Err(format!("{done} succeeded"))
        })
    })
    .await
}

async fn drive(settings: &Settings, sandbox: &Sandbox, store: &Store) -> anyhow::Result<Phase> {
    let client = Client::from_broker(sandbox.connect("producer").await?)
        .await
        .context("opening the client's publisher channel")?;
    let unlimited = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);
    let limited = NewJob::new(LIMITED, &payload(settings.payload_bytes)).queue(QUEUE);
    let n = settings.jobs;
    let timeout = settings.phase_timeout;

    enqueue(&client, &unlimited, settings.warmup).await?;
    wait_succeeded(store, TASK, settings.warmup, timeout).await?;

    // The unlimited task alone.
    let (cpu, start) = (cpu_time(), Instant::now());
    enqueue(&client, &unlimited, n).await?;
    wait_succeeded(store, TASK, settings.warmup + n, timeout).await?;
    let alone = start.elapsed();
    let cpu_alone = cpu_time().saturating_sub(cpu);

    // A backlog of limited jobs, enqueued at once: the first pass over it defers almost all
    // of them (the bucket holds a burst of 10). Timed until every one has a row.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = store.limit_writes().await?;
    let (cpu, start) = (cpu_time(), Instant::now());
    enqueue(&client, &limited, LIMITED_JOBS).await?;
    wait_until(timeout, "every limited job started or deferred", || async {
        let rows = store.rows_of_task(LIMITED).await?;
        Ok(if rows as u64 >= LIMITED_JOBS {
            Ok(())
        } else {
            Err(format!("{rows} have a row"))
        })
    })
    .await?;
    let first_pass = start.elapsed();
    // The unlimited task again, while the limited one runs at its limit beside it.
    let beside_start = Instant::now();
    enqueue(&client, &unlimited, n).await?;
    wait_succeeded(store, TASK, settings.warmup + 2 * n, timeout).await?;
    let beside = beside_start.elapsed();
    let limited_left = LIMITED_JOBS as i64 - store.succeeded_of_task(LIMITED).await?;
    wait_succeeded(store, LIMITED, LIMITED_JOBS, timeout).await?;
    let mixed = start.elapsed();
    let cpu_mixed = cpu_time().saturating_sub(cpu);
    // Postgres flushes table statistics within about a second of a transaction.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = store.limit_writes().await? - writes_before;
    let waits = store
        .limit_waits(Utc::now() - chrono::Duration::hours(1))
        .await?;
    let deferrals = waits
        .iter()
        .find(|w| w.task == LIMITED)
        .map_or(0, |w| w.deferrals);
    let starts = store.start_span(LIMITED).await?;

    let per = |x: f64| x / LIMITED_JOBS as f64;
    let cpu_extra = cpu_mixed.as_secs_f64() - cpu_alone.as_secs_f64();
    tracing::info!(
        alone_jobs_per_sec = n as f64 / alone.as_secs_f64(),
        beside_jobs_per_sec = n as f64 / beside.as_secs_f64(),
        limited_still_waiting = limited_left,
        first_pass_ms = first_pass.as_millis() as u64,
        limited_rate = (LIMITED_JOBS.saturating_sub(1)) as f64 / starts.as_secs_f64().max(1e-9),
        limit_calls_per_job = per(writes as f64),
        deferrals_per_job = per(deferrals as f64),
        cpu_us_per_limited_job = per(cpu_extra) * 1e6,
        "limits scenario"
    );
    println!(
        "limits: unlimited {:.0} jobs/s alone, {:.0} jobs/s beside {LIMITED_JOBS} jobs limited to {RATE}/s \
         ({limited_left} of them still waiting at the end); the first pass deferred the backlog in {:.0} ms \
         ({:.0} µs per job); limited task achieved {:.1}/s; per limited job: {:.2} lease/token calls, \
         {:.2} deferrals, {:.0} µs CPU of worker+producer beyond the unlimited jobs' (mixed run {:.1} s)",
        n as f64 / alone.as_secs_f64(),
        n as f64 / beside.as_secs_f64(),
        first_pass.as_secs_f64() * 1000.0,
        first_pass.as_secs_f64() * 1e6 / LIMITED_JOBS as f64,
        (LIMITED_JOBS.saturating_sub(1)) as f64 / starts.as_secs_f64().max(1e-9),
        per(writes as f64),
        per(deferrals as f64),
        per(cpu_extra) * 1e6,
        mixed.as_secs_f64(),
    );
    client.broker().close().await;
    Ok(Phase {
        key: "limits",
        title: "rate-limited task beside an unlimited one",
        jobs: n,
        elapsed: beside,
        measures: vec![
            Measure::rate("unlimited_alone", "unlimited task alone", n, alone),
            Measure::rate(
                "unlimited_beside_limited",
                "unlimited beside limited at its limit",
                n,
                beside,
            ),
            Measure::rate(
                "backlog_first_pass",
                "limited backlog deferred (first pass)",
                LIMITED_JOBS,
                first_pass,
            ),
            Measure::rate(
                "limited_achieved",
                "limited task achieved rate",
                LIMITED_JOBS.saturating_sub(1),
                starts,
            ),
        ],
    })
}
