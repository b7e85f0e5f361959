use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState};
use warren_runtime::{JobContext, JobError, Worker, WorkerBuilder};
use warren_testkit::TestEnv;

use crate::support::{builtin_worker, count_state, enqueue_all, wait_all_terminal, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_job_runs_on_time_not_early() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    let client = Client::from_broker(env.broker.clone())
        .await?
        .with_store(env.store.clone());

    let id = client
        .enqueue(NewJob::new("warren.echo", &json!("later")).delay(Duration::from_secs(3)))
        .await?;
    let row = env
        .store
        .job(id)
        .await?
        .expect("a delayed job is a row at once");
    assert_eq!(row.state, JobState::Scheduled);
    let due = row.run_at.expect("run_at");

    let rows = wait_all_terminal(&env.store, &[id], Duration::from_secs(30)).await?;
    let row = &rows[&id];
    assert_eq!(row.state, JobState::Succeeded);
    let started = row.started_at.expect("started");
    assert!(
        started >= due,
        "ran {} ms early",
        (due - started).num_milliseconds()
    );
    let late = (started - due).to_std()?;
    assert!(
        late < Duration::from_secs(1),
        "started {late:?} after its time"
    );
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_enqueue_runs_only_if_the_transaction_commits() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    let client = Client::from_broker(env.broker.clone()).await?;

    let mut tx = env.store.begin().await?;
    let rolled_back = client
        .enqueue_tx(&mut tx, NewJob::new("warren.echo", &json!("no")))
        .await?;
    tx.rollback().await?;

    let mut tx = env.store.begin().await?;
    let committed = client
        .enqueue_tx(&mut tx, NewJob::new("warren.echo", &json!("yes")))
        .await?;
    tx.commit().await?;

    let rows = wait_all_terminal(&env.store, &[committed], Duration::from_secs(30)).await?;
    assert_eq!(rows[&committed].result, Some(json!("yes")));
    // The committed job was scheduled after the rolled-back one and the promoter has run it,
    // so it has been past the rolled-back one's time: that job does not exist.
    assert!(env.store.job(rolled_back).await?.is_none());
    worker.stop().await?;
    env.cleanup().await
}

type Runs = Arc<Mutex<HashMap<JobId, usize>>>;

fn counting(runs: Runs) -> WorkerBuilder {
    Worker::builder().register("counted", move |ctx: JobContext, _p: Value| {
        let runs = runs.clone();
        async move {
            *runs.lock().expect("lock").entry(ctx.id).or_default() += 1;
            Ok::<_, JobError>(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_promoters_run_each_scheduled_job_exactly_once() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let runs: Runs = Arc::default();
    let w1 = env
        .start_worker(counting(runs.clone()), env.worker_config("w1"))
        .await?;
    let w2 = env
        .start_worker(counting(runs.clone()), env.worker_config("w2"))
        .await?;
    let client = Client::from_broker(env.broker.clone())
        .await?
        .with_store(env.store.clone());

    let at = Utc::now() + chrono::Duration::seconds(1);
    let jobs = (0..1000)
        .map(|i| NewJob::new("counted", &json!({ "i": i })).run_at(at))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    w1.stop().await?;
    w2.stop().await?;

    assert_eq!(count_state(&rows, JobState::Succeeded), 1000);
    assert!(rows.values().all(|r| r.attempt == 1));
    {
        let runs = runs.lock().expect("lock");
        assert_eq!(runs.len(), 1000);
        let extra: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
        assert!(extra.is_empty(), "run more than once: {extra:?}");
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_only_producer_delays_jobs_through_the_intake_queue() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    // No store: this client can only talk to RabbitMQ.
    let client = Client::from_broker(env.broker.clone()).await?;
    let due = Utc::now() + chrono::Duration::seconds(2);
    let id = client
        .enqueue(NewJob::new("warren.echo", &json!("via intake")).run_at(due))
        .await?;
    let many = enqueue_all(
        &client,
        vec![
            NewJob::new("warren.echo", &json!(1)).run_at(due),
            NewJob::new("warren.echo", &json!(2)),
        ],
    )
    .await?;

    // A worker turns the intake message into a scheduled row well before it is due.
    wait_state(&env.store, id, JobState::Scheduled).await?;
    let mut all = many.clone();
    all.push(id);
    let rows = wait_all_terminal(&env.store, &all, Duration::from_secs(30)).await?;
    assert!(rows.values().all(|r| r.state == JobState::Succeeded));
    let started = rows[&id].started_at.expect("started");
    assert!(
        started >= due,
        "ran {} ms early",
        (due - started).num_milliseconds()
    );
    assert!((started - due).to_std()? < Duration::from_secs(1));
    assert_eq!(rows[&id].result, Some(json!("via intake")));
    assert!(rows[&many[0]].started_at.expect("started") >= due);
    worker.stop().await?;
    env.cleanup().await
}
