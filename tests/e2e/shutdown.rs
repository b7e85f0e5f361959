use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState};
use warren_runtime::{JobContext, JobError, Worker, WorkerBuilder};
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

use crate::support::{count_in, count_state, enqueue_all, wait_all_terminal, wait_count};

type Runs = Arc<Mutex<HashMap<JobId, usize>>>;

fn slow_counting(runs: Runs) -> WorkerBuilder {
    Worker::builder().register("slow.counted", move |ctx: JobContext, _p: Value| {
        let runs = runs.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            *runs.lock().expect("lock").entry(ctx.id).or_default() += 1;
            Ok::<_, JobError>(ctx.attempt)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_loses_nothing_and_runs_nothing_twice() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let runs: Runs = Arc::default();
    let client = Client::from_broker(env.broker.clone()).await?;
    let jobs = (0..400)
        .map(|i| NewJob::new("slow.counted", &json!({ "i": i })))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;

    let mut cfg = env.worker_config("first");
    cfg.concurrency = 16;
    cfg.prefetch = 32;
    cfg.shutdown_grace = Duration::from_secs(5);
    let first = env.start_worker(slow_counting(runs.clone()), cfg).await?;
    wait_until(
        Duration::from_secs(30),
        "the first worker to finish some jobs",
        || async {
            let n = runs.lock().expect("lock").len();
            Ok(if n >= 50 {
                Ok(())
            } else {
                Err(format!("{n} done"))
            })
        },
    )
    .await?;
    let stopping = Instant::now();
    let stats = first.stop().await?;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}, over the grace period"
    );
    assert_eq!(
        stats.abandoned, 0,
        "in-flight jobs finished within the grace period"
    );
    let done_by_first = runs.lock().expect("lock").len();
    assert!(
        done_by_first < 400,
        "the first worker stopped early ({done_by_first} done)"
    );

    let second = env
        .start_worker(slow_counting(runs.clone()), env.worker_config("second"))
        .await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(120)).await?;
    second.stop().await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 400, "no job lost");
    {
        let runs = runs.lock().expect("lock");
        assert_eq!(runs.len(), 400);
        let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
        assert!(rows.values().all(|r| r.attempt == 1));
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_jobs_and_exits_within_the_grace_period() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let jobs = (0..60)
        .map(|_| NewJob::new("warren.sleep", &json!({ "ms": 300 })))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;

    let mut worker = WorkerProcess::spawn(
        &env,
        "proc",
        &["--concurrency", "8", "--shutdown-grace", "3s"],
    )?;
    wait_count(&env.store, JobState::Succeeded, 8).await?;
    worker.signal("TERM").await?;
    let signalled = Instant::now();
    let code = worker.wait(Duration::from_secs(10)).await?;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "a graceful shutdown exits 0");
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM; grace is 3s"
    );
    let running = count_in(&env.store, JobState::Running).await?;
    assert_eq!(
        running, 0,
        "in-flight jobs were finished and recorded, not left running"
    );

    let mut rest = WorkerProcess::spawn(&env, "proc2", &["--concurrency", "16"])?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    rest.signal("TERM").await?;
    rest.wait(Duration::from_secs(30)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 60);
    assert!(rows.values().all(|r| r.attempt == 1 && r.errors.is_empty()));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_outliving_the_grace_period_go_back_to_the_queue_unrecorded() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let jobs = (0..4)
        .map(|_| NewJob::new("warren.sleep", &json!({ "ms": 3000 })))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;

    let mut worker = WorkerProcess::spawn(
        &env,
        "short-grace",
        &["--concurrency", "4", "--shutdown-grace", "1s"],
    )?;
    wait_count(&env.store, JobState::Running, 4).await?;
    worker.signal("TERM").await?;
    let signalled = Instant::now();
    let code = worker.wait(Duration::from_secs(10)).await?;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_millis(1500),
        "exited {took:?} after SIGTERM; grace is 1s"
    );

    // Nothing was recorded as failed: the attempts were handed back, and another worker runs
    // them as the same attempt.
    let rows = env.store.jobs(&ids).await?;
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Running && r.errors.is_empty()),
        "{rows:?}"
    );
    let mut next = WorkerProcess::spawn(&env, "next", &["--concurrency", "4"])?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    next.signal("TERM").await?;
    next.wait(Duration::from_secs(30)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 4);
    assert!(
        rows.values().all(|r| r.attempt == 1 && r.errors.is_empty()),
        "{rows:?}"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_jobs_come_back() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let jobs = (0..2)
        .map(|_| NewJob::new("warren.sleep", &json!({ "ms": 2000 })))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;
    let mut worker = WorkerProcess::spawn(&env, "impatient", &["--shutdown-grace", "60s"])?;
    wait_count(&env.store, JobState::Running, 2).await?;
    worker.signal("TERM").await?;
    // Give the first signal time to start the graceful shutdown, then insist.
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.signal("TERM").await?;
    let code = worker.wait(Duration::from_secs(5)).await?;
    assert_eq!(
        code,
        Some(130),
        "the second signal cuts the 60 s grace short"
    );

    let mut next = WorkerProcess::spawn(&env, "next", &[])?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    next.signal("TERM").await?;
    next.wait(Duration::from_secs(30)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 2);
    env.cleanup().await
}
