//! Outages of one worker's own connections, made with a proxy the test controls (never by
//! stopping the shared services): an infrastructure failure must never spend a delivery, and
//! a producer whose broker dies mid-publish must return promptly saying what was confirmed.

use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_testkit::{Proxy, TestEnv, WorkerProcess, wait_until};
use warren_worker::tasks::register_builtins;

use crate::support::{count_state, enqueue_all, wait_all_terminal, wait_worker_started};

const POSTGRES: &str = "127.0.0.1:5432";
const RABBITMQ: &str = "127.0.0.1:5672";

/// Keyed jobs (which claim their key in Postgres before running) and delayed jobs from the
/// intake queue (which become rows) arrive while the worker's database is cut off. Before
/// the fix both were requeued at once on every failure, and the broker dead-lettered them
/// after `x-delivery-limit` tries, with no row.
#[tokio::test]
async fn a_database_outage_never_spends_a_delivery() -> anyhow::Result<()> {
    let env = TestEnv::with_delivery_limit(&["default"], 2).await?;
    let proxy = Proxy::start(POSTGRES).await?;
    let mut store_config = env.store_config.clone();
    store_config.url = proxy.url_through(&env.database_url, POSTGRES);
    store_config.acquire_timeout = Duration::from_secs(1);
    let worker = env
        .start_worker_via(
            register_builtins(warren_runtime::Worker::builder()),
            env.worker_config("w1"),
            env.broker_config.clone(),
            &store_config,
        )
        .await?;
    // Let the worker finish starting (registered in Postgres, consuming) before the cut.
    wait_worker_started(&env).await?;
    proxy.cut();

    let client = Client::connect(env.broker_config.clone()).await?;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(NewJob::new("warren.noop", &json!({ "i": i })).idempotency_key(format!("k{i}")));
    }
    // Without a store, a delayed job travels through the intake queue.
    for i in 0..3 {
        jobs.push(NewJob::new("warren.noop", &json!({ "d": i })).delay(Duration::from_millis(200)));
    }
    let ids = enqueue_all(&client, jobs).await?;
    // Long enough for the old code to spend every delivery many times over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();

    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 6, "{rows:?}");
    assert_eq!(
        env.broker.dead_letter_depth().await?.map(|d| d.ready),
        Some(0),
        "nothing may be dead-lettered because of an outage"
    );
    assert_eq!(
        env.broker.parked_depth().await?.map(|d| d.ready),
        Some(0),
        "nothing may be parked because of an outage"
    );
    worker.stop().await?;
    env.cleanup().await
}

/// The broker connection dies while 20,000 confirms are pending. Before the fix each pending
/// confirm waited out its own timeout in turn, so the call hung for hours; now it returns
/// within about one confirm timeout, and every job it reports confirmed is in the queue.
#[tokio::test]
async fn a_broker_lost_mid_publish_ends_the_enqueue_promptly() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let proxy = Proxy::start(RABBITMQ).await?;
    let mut config = env.broker_config.clone();
    config.url = proxy.url_through(&env.amqp_url, RABBITMQ);
    config.confirm_timeout = Duration::from_secs(3);
    config.connect_timeout = Duration::from_secs(2);
    let client = Client::connect(config).await?;
    let jobs = (0..20_000)
        .map(|i| NewJob::new("warren.noop", &json!({ "i": i })))
        .collect::<Vec<_>>();
    let publishing = tokio::spawn(async move { client.enqueue_many(jobs).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    // A guard against a hang, not a speed target: the publisher's own bounds end it far
    // sooner (one confirm timeout and one recovery wait).
    let results = tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .map_err(|_| anyhow::anyhow!("enqueue_many still waiting 120 s after the broker died"))??;
    let confirmed = results.iter().filter(|r| r.is_ok()).count();
    let failed = results.len() - confirmed;
    assert_eq!(results.len(), 20_000);
    assert!(failed > 0, "the cut must fail some jobs");
    // Every job reported confirmed really is in the queue (more may be: unconfirmed ones
    // the broker took before the cut).
    let depth = env
        .broker
        .queue_depth(&env.queues[0])
        .await?
        .map_or(0, |d| d.ready as usize);
    assert!(
        depth >= confirmed,
        "{confirmed} confirmed but only {depth} in the queue"
    );
    env.cleanup().await
}

/// A consumer whose connection is cut opens a new one itself, with its whole prefetch window:
/// a lost connection is not a poison message, so it costs no careful mode. Every delivery
/// that was unacked on the lost connection comes back on the new one.
#[tokio::test]
async fn a_consumer_whose_connection_is_cut_reconnects_with_its_window() -> anyhow::Result<()> {
    const WINDOW: usize = 8;
    let env = TestEnv::new(&["default"]).await?;
    let proxy = Proxy::start(RABBITMQ).await?;
    let mut config = env.broker_config.clone();
    config.url = proxy.url_through(&env.amqp_url, RABBITMQ);
    let broker = warren_broker::Broker::connect(config).await?;
    let mut consumer = broker
        .consume(&env.queues[0], WINDOW as u16, "reconnecting")
        .await?;
    let client = Client::connect(env.broker_config.clone()).await?;
    let jobs = (0..20)
        .map(|i| NewJob::new("warren.noop", &json!({ "i": i })))
        .collect();
    let ids = enqueue_all(&client, jobs).await?;

    // A guard against a hang: a consumer left with a window of 1 would never hand out the
    // second delivery of a group below.
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .map_err(|_| anyhow::anyhow!("no delivery within 60 s"))?
            .ok_or_else(|| anyhow::anyhow!("the consumer ended"))?
            .map_err(anyhow::Error::from)
    };
    next().await?;
    next().await?;
    proxy.cut();
    proxy.restore();

    let mut seen = std::collections::BTreeSet::new();
    let mut held = Vec::new();
    while seen.len() < ids.len() {
        let delivery = next().await?;
        seen.insert(delivery.raw.message_id.clone().unwrap_or_default());
        held.push(delivery);
        // A whole window held unacked at once.
        if held.len() == WINDOW {
            for d in held.drain(..) {
                d.ack().await?;
            }
        }
    }
    for d in held.drain(..) {
        d.ack().await?;
    }
    let expected: std::collections::BTreeSet<String> =
        ids.iter().map(ToString::to_string).collect();
    assert_eq!(seen, expected, "every job is delivered after the cut");
    assert!(
        !consumer.is_careful(),
        "a lost connection must not cost the prefetch window"
    );
    consumer.close().await;
    env.cleanup().await
}

/// Starts a worker running the built-in tasks whose Postgres connections go through `proxy`.
async fn worker_behind(
    env: &TestEnv,
    proxy: &Proxy,
    grace: Duration,
) -> anyhow::Result<warren_testkit::RunningWorker> {
    let mut store_config = env.store_config.clone();
    store_config.url = proxy.url_through(&env.database_url, POSTGRES);
    let mut config = env.worker_config("w1");
    config.shutdown_grace = grace;
    env.start_worker_via(
        register_builtins(warren_runtime::Worker::builder()),
        config,
        env.broker_config.clone(),
        &store_config,
    )
    .await
}

/// A cancel whose NOTIFY is sent while the worker's LISTEN connection is down is read back
/// from the row when the worker reconnects. Before the fix the job ran to its end and was
/// recorded `succeeded`, although the admin had been told its worker would cancel it.
#[tokio::test]
async fn a_cancel_sent_while_the_worker_cannot_listen_still_stops_the_job() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let proxy = Proxy::start(POSTGRES).await?;
    let worker = worker_behind(&env, &proxy, Duration::from_secs(10)).await?;
    let client = Client::connect(env.broker_config.clone()).await?;
    let id = client
        .enqueue(NewJob::new("warren.sleep", &json!({ "ms": 20_000 })))
        .await?;
    crate::support::wait_state(&env.store, id, JobState::Running).await?;

    proxy.cut();
    let outcome = env.store.cancel_job(id).await?;
    assert!(
        matches!(outcome, warren_store::CancelOutcome::Signalled { .. }),
        "{outcome:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    // Well before the job's own 20 s are up.
    let rows = wait_all_terminal(&env.store, &[id], Duration::from_secs(12)).await?;
    assert_eq!(rows[&id].state, JobState::Cancelled);
    assert!(rows[&id].cancel_requested_at.is_some());
    worker.stop().await?;
    env.cleanup().await
}

/// With Postgres partitioned away (connections hang rather than fail), the worker's whole
/// shutdown still fits its grace period, counts nothing it could not record, and loses
/// nothing: the jobs run again once the database is back. Before the fix each call made
/// during shutdown waited out a 10 s pool timeout in turn (38.8 s for a 3 s grace period),
/// and the outcomes were counted as succeeded although none was recorded.
#[tokio::test]
async fn shutdown_fits_its_grace_period_while_postgres_is_unreachable() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let proxy = Proxy::start(POSTGRES).await?;
    let grace = Duration::from_secs(3);
    let worker = worker_behind(&env, &proxy, grace).await?;
    wait_worker_started(&env).await?;
    proxy.blackhole();

    let client = Client::connect(env.broker_config.clone()).await?;
    let ids = enqueue_all(
        &client,
        (0..4)
            .map(|i| NewJob::new("warren.noop", &json!({ "i": i })))
            .collect::<Vec<_>>(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = tokio::time::Instant::now();
    let stats = worker.stop().await?;
    let took = started.elapsed();
    // The grace period is the contract; a second on top covers scheduling on a busy machine.
    assert!(
        took <= grace + Duration::from_secs(1),
        "shutdown took {took:?} with a {grace:?} grace period"
    );
    assert_eq!(
        stats.succeeded, 0,
        "nothing was recorded, so nothing succeeded: {stats:?}"
    );

    proxy.restore();
    let again = crate::support::builtin_worker(&env).await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(30)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 4);
    again.stop().await?;
    env.cleanup().await
}

/// Waits until the worker's log says `text`.
async fn log_says(log: &std::path::Path, text: &str) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("the worker to log `{text}`"),
        || async {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            Ok(if said.contains(text) {
                Ok(())
            } else {
                Err(said.lines().last().unwrap_or("nothing").to_owned())
            })
        },
    )
    .await
}

/// A worker started while Postgres and RabbitMQ are both unreachable (a whole system coming
/// up in any order) waits for each, saying so, and then runs jobs; it used to exit at once
/// with status 1.
#[tokio::test]
async fn a_worker_started_before_its_services_waits_for_them() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let pg = Proxy::start(POSTGRES).await?;
    let amqp = Proxy::start(RABBITMQ).await?;
    pg.cut();
    amqp.cut();
    let dir = tempfile_dir(&env.name)?;
    let log = dir.join("worker.log");
    let mut worker = WorkerProcess::spawn_via(
        &env,
        "early",
        &amqp.url_through(&env.amqp_url, RABBITMQ),
        &pg.url_through(&env.database_url, POSTGRES),
        &[],
        &log,
    )?;
    let result = async {
        log_says(&log, "PostgreSQL is not reachable; waiting for it").await?;
        anyhow::ensure!(worker.is_running()?, "the worker exited instead of waiting");
        pg.restore();
        log_says(&log, "PostgreSQL is reachable").await?;
        log_says(&log, "RabbitMQ is not reachable; waiting for it").await?;
        anyhow::ensure!(worker.is_running()?, "the worker exited instead of waiting");
        amqp.restore();
        log_says(&log, "RabbitMQ is reachable").await?;

        let client = Client::from_broker(env.broker.clone()).await?;
        let ids = enqueue_all(&client, vec![NewJob::new("warren.noop", &json!({}))]).await?;
        let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
        assert_eq!(count_state(&rows, JobState::Succeeded), 1, "{rows:?}");
        worker.signal("TERM").await?;
        assert_eq!(worker.wait(Duration::from_secs(30)).await?, Some(0));
        // Written to a file, not a terminal: plain text, no colour codes.
        let said = std::fs::read_to_string(&log)?;
        anyhow::ensure!(
            !said.contains('\u{1b}'),
            "colour codes in a log file: {said}"
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await?;
    result
}

fn tempfile_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("warren-{name}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
