use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use warren_client::{Client, NewJob};
use warren_core::{FailureKind, JobState, QueueName};
use warren_runtime::{JobContext, JobError, TaskOptions, Worker};
use warren_testkit::TestEnv;
use warren_worker::tasks::register_builtins;

use crate::support::{builtin_worker, count_state, enqueue_all, wait_all_terminal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_each_succeed_exactly_once_with_results() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let builder = Worker::builder().register("count.echo", move |_ctx: JobContext, p: Value| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, JobError>(json!({ "echo": p }))
        }
    });
    let worker = env.start_worker(builder, env.worker_config("w1")).await?;

    let client = Client::from_broker(env.broker.clone()).await?;
    let jobs = (0..1000)
        .map(|i| NewJob::new("count.echo", &json!({ "i": i })))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;
    assert_eq!(ids.len(), 1000);

    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 1000);
    for (i, id) in ids.iter().enumerate() {
        let row = &rows[id];
        assert_eq!(row.attempt, 1, "job {id} ran once");
        assert_eq!(
            row.result,
            Some(json!({ "echo": { "i": i } })),
            "job {id} result stored"
        );
        assert!(row.errors.is_empty());
        assert!(row.started_at.is_some() && row.finished_at.is_some());
    }
    let stats = worker.stop().await?;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1000,
        "each handler ran exactly once"
    );
    assert_eq!(stats.succeeded, 1000);
    assert_eq!(
        env.store
            .state_counts(None)
            .await?
            .iter()
            .map(|c| c.count)
            .sum::<i64>(),
        1000
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_enqueue_fails_and_records_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let job = NewJob::new("warren.noop", &json!({})).queue("nobody-declared-this");
    let err = client
        .enqueue(job)
        .await
        .expect_err("publishing to a missing queue must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("unroutable") && msg.contains("nobody-declared-this"),
        "{msg}"
    );

    // enqueue_many reports the failure per job and still enqueues the routable one.
    let ok = NewJob::new("warren.noop", &json!({}));
    let bad = NewJob::new("warren.noop", &json!({})).queue("missing-too");
    let outcomes = client.enqueue_many(vec![ok, bad]).await;
    assert!(outcomes[0].is_ok());
    assert!(
        outcomes[1]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("unroutable"))
    );
    assert!(
        env.store.state_counts(None).await?.is_empty(),
        "nothing recorded"
    );

    // A job kept in Postgres first (delayed, in a transaction, or sent through the intake
    // queue) is refused the same way, instead of waiting `scheduled` for a queue no promoter
    // can publish it to.
    let stored = Client::from_broker(env.broker.clone())
        .await?
        .with_store(env.store.clone());
    let later = |queue: &str| {
        NewJob::new("warren.noop", &json!({}))
            .queue(queue)
            .delay(Duration::from_secs(60))
    };
    let unroutable = |e: &warren_client::Error| {
        let msg = e.to_string();
        msg.contains("unroutable") && msg.contains("missing-later")
    };
    for client in [&client, &stored] {
        let err = client
            .enqueue(later("missing-later"))
            .await
            .expect_err("a delayed job for a missing queue must fail");
        assert!(unroutable(&err), "{err}");
    }
    let outcomes = stored
        .enqueue_many(vec![
            later("default"),
            later("missing-later"),
            later("missing-later"),
        ])
        .await;
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert!(
        outcomes[1..]
            .iter()
            .all(|o| o.as_ref().is_err_and(unroutable)),
        "{outcomes:?}"
    );
    let mut tx = env.store.begin().await?;
    let err = stored
        .enqueue_tx(&mut tx, later("missing-later"))
        .await
        .expect_err("a transactional job for a missing queue must fail");
    assert!(unroutable(&err), "{err}");
    drop(tx);
    let counts = env.store.state_counts(None).await?;
    assert_eq!(
        counts.iter().map(|c| c.count).sum::<i64>(),
        1,
        "only the routable delayed job: {counts:?}"
    );
    env.cleanup().await
}

/// Publishes 2,400 jobs from 16 tasks at once on the client's one channel, alternating
/// between `default` and `other`, and checks that each got its own outcome: accepted for
/// `default`, refused with an error naming `refusal` for `other`, and that `default` holds
/// exactly the jobs reported accepted.
async fn mixed_publishes(
    env: &TestEnv,
    other: &'static str,
    refusal: &'static str,
) -> anyhow::Result<()> {
    let client = Client::from_broker(env.broker.clone()).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..150 {
                let queue = if (t + i) % 2 == 0 { "default" } else { other };
                let id = warren_core::JobId::new();
                let job = NewJob::new("warren.noop", &json!({ "t": t, "i": i }))
                    .queue(queue)
                    .id(id);
                outcomes.push((queue, id, client.enqueue(job).await));
            }
            outcomes
        });
    }
    let mut accepted = HashSet::new();
    let mut wrong = Vec::new();
    while let Some(outcomes) = tasks.join_next().await {
        for (queue, id, outcome) in outcomes? {
            match &outcome {
                Ok(_) if queue == "default" => {
                    accepted.insert(id.to_string());
                }
                Err(e) if queue == other && e.to_string().contains(refusal) => {}
                _ => wrong.push(format!("{id} to {queue}: {outcome:?}")),
            }
        }
    }
    let mut drain = env.broker.drain(&QueueName::new("default")?).await?;
    let mut queued = HashSet::new();
    loop {
        let batch = drain.next_batch(500).await?;
        if batch.is_empty() {
            break;
        }
        queued.extend(batch.into_iter().filter_map(|d| d.raw.message_id));
    }
    drain.close().await;
    assert!(
        wrong.is_empty(),
        "{} of 2400 publishes got another's outcome, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    assert_eq!(
        queued, accepted,
        "the queue holds exactly the jobs reported accepted"
    );
    Ok(())
}

/// RabbitMQ numbers confirms in the order messages reach it; lapin numbers them when a
/// publish starts. Publishes racing on one channel must not swap numbers: a queue that
/// refuses every message (`x-overflow: reject-publish`, length 0) gets a nack for each, and a
/// nack given to a message of `default` would report as refused a job that will run, and as
/// accepted a job RabbitMQ threw away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_each_get_their_own_nack() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let connection =
        lapin::Connection::connect(&env.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let full = env.broker.topology().queue_name_of("full");
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(0),
    );
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(full.as_str().into(), Default::default(), args)
        .await?;
    channel
        .queue_bind(
            full.as_str().into(),
            env.broker.topology().work_exchange().into(),
            "full".into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    let outcome = mixed_publishes(&env, "full", "nack").await;
    channel
        .queue_delete(full.as_str().into(), Default::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    outcome?;
    env.cleanup().await
}

/// lapin hands a `basic.return` to whichever confirm it completes next, often another
/// message's when publishes race on one channel. Jobs for a queue RabbitMQ does not have are
/// refused before anything is sent, so no return can be misdelivered and each caller gets
/// its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_to_a_missing_queue_leave_the_others_alone() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    mixed_publishes(&env, "missing-q", "unroutable").await?;
    env.cleanup().await
}

/// A queue found missing is taken as missing for a second without asking RabbitMQ again (a
/// client sending to a misspelt queue must not cost a passive declare a job), then asked
/// again: once it is declared, jobs go to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_found_missing_is_asked_about_again_after_a_second() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let job = || NewJob::new("warren.noop", &json!({})).queue("declared-late");
    let unroutable = |r: Result<warren_core::JobId, warren_client::Error>| {
        r.is_err_and(|e| e.to_string().contains("unroutable"))
    };
    assert!(unroutable(client.enqueue(job()).await));
    let refused_at = std::time::Instant::now();
    env.broker
        .declare(&[QueueName::new("declared-late")?])
        .await?;
    let again = client.enqueue(job()).await;
    // Within the second, the answer is the remembered one (unless this machine took the
    // whole second to declare a queue, when there is nothing to tell).
    if refused_at.elapsed() < Duration::from_millis(900) {
        assert!(unroutable(again), "asked again at once");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.enqueue(job()).await?;
    let depth = env
        .broker
        .queue_depth(&QueueName::new("declared-late")?)
        .await?
        .map(|d| d.ready);
    env.broker
        .delete_topology(&[QueueName::new("declared-late")?])
        .await?;
    assert!(depth.is_some_and(|ready| ready >= 1), "{depth:?}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_and_timeout_are_recorded_as_readable_failures() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let once = TaskOptions {
        timeout: Some(Duration::from_millis(300)),
        retry: warren_core::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
    };
    let builder = register_builtins(Worker::builder()).register_with(
        "slow",
        once,
        |ctx: JobContext, _p: Value| async move {
            // Ignores cancellation on purpose: the runtime must abort it anyway.
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, JobError>(ctx.attempt)
        },
    );
    let worker = env.start_worker(builder, env.worker_config("w1")).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let panicky = client
        .enqueue(NewJob::new("warren.panic", &json!({})).max_attempts(1))
        .await?;
    let slow = client.enqueue(NewJob::new("slow", &json!({}))).await?;

    let rows = wait_all_terminal(&env.store, &[panicky, slow], Duration::from_secs(30)).await?;
    let p = &rows[&panicky];
    assert_eq!(p.state, JobState::Dead);
    assert_eq!(p.errors.len(), 1);
    assert_eq!(p.errors[0].kind, FailureKind::Panic);
    assert!(
        p.errors[0]
            .message
            .contains("warren.panic was asked to panic"),
        "{}",
        p.errors[0].message
    );

    let s = &rows[&slow];
    assert_eq!(s.state, JobState::Dead);
    assert_eq!(s.errors[0].kind, FailureKind::Timeout);
    assert!(
        s.errors[0].message.contains("timed out after 300ms"),
        "{}",
        s.errors[0].message
    );

    // The worker survived both and still runs jobs.
    let after = client
        .enqueue(NewJob::new("warren.echo", &json!("still alive")))
        .await?;
    let rows = wait_all_terminal(&env.store, &[after], Duration::from_secs(30)).await?;
    assert_eq!(rows[&after].result, Some(json!("still alive")));
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_of_the_wrong_type_fails_clearly_without_running() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let bad = client
        .enqueue(NewJob::new("warren.sleep", &json!({ "ms": "soon" })))
        .await?;
    let rows = wait_all_terminal(&env.store, &[bad], Duration::from_secs(30)).await?;
    let row = &rows[&bad];
    assert_eq!(
        row.state,
        JobState::Dead,
        "a payload that cannot fit is never retried"
    );
    assert_eq!(row.attempt, 1);
    assert_eq!(row.errors[0].kind, FailureKind::BadInput);
    let msg = &row.errors[0].message;
    assert!(
        msg.contains("payload does not fit task `warren.sleep`")
            && msg.contains("SleepPayload")
            && msg.contains("invalid type: string"),
        "{msg}"
    );
    assert_eq!(
        row.payload,
        Some(json!({ "ms": "soon" })),
        "the payload is kept for inspection"
    );
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_job_timeout_overrides_the_task_and_is_retried() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let job = NewJob::new("warren.sleep", &json!({ "ms": 10_000 }))
        .timeout(Duration::from_millis(200))
        .max_attempts(2);
    let id = client.enqueue(job).await?;
    let rows = wait_all_terminal(&env.store, &[id], Duration::from_secs(30)).await?;
    let row = &rows[&id];
    assert_eq!((row.state, row.attempt), (JobState::Dead, 2), "{row:?}");
    assert_eq!(row.timeout_ms, Some(200));
    assert!(
        row.errors.iter().all(|e| e.kind == FailureKind::Timeout),
        "{row:?}"
    );
    assert_eq!(row.errors.len(), 2, "a timeout is retryable: two attempts");
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_queue_is_deleted_stops_with_a_clear_error() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = builtin_worker(&env).await?;
    // Let it settle into consuming, then pull the queue out from under it.
    let client = Client::from_broker(env.broker.clone()).await?;
    let id = client
        .enqueue(NewJob::new("warren.noop", &json!({})))
        .await?;
    wait_all_terminal(&env.store, &[id], Duration::from_secs(30)).await?;
    env.broker.delete_topology(&env.queues).await?;

    let outcome = tokio::time::timeout(Duration::from_secs(30), worker.handle).await??;
    let err = outcome.expect_err("a worker without its queue must not carry on half-deaf");
    // Deleting the topology takes the work, intake and dead-letter queues at once: whichever
    // consumer hears of it first stops the worker.
    assert!(
        matches!(&err, warren_runtime::Error::ConsumerLost { queue }
            if ["default", "intake", "dead"].contains(&queue.as_str())),
        "{err}"
    );
    assert!(err.to_string().contains("restart the worker"), "{err}");
    env.cleanup().await
}

/// A dead-letter queue declared by an older Warren (no delivery limit, no parking queue
/// behind it) has other arguments than the current one, and RabbitMQ refuses to change them.
/// Workers keep it as it is, with a warning, instead of refusing to start.
#[tokio::test]
async fn a_worker_starts_on_a_dead_letter_queue_from_an_older_version() -> anyhow::Result<()> {
    use warren_testkit::raw_amqp::{RawField, RawPublisher, table};
    let env = TestEnv::new(&["default"]).await?;
    env.broker.delete_topology(&env.queues).await?;
    let mut raw = RawPublisher::connect(&env.amqp_url).await?;
    let old_args = table(&[(b"x-queue-type", RawField::LongString(b"quorum".to_vec()))]);
    raw.declare_queue(&env.broker_config.topology.dead_letter_queue(), &old_args)
        .await?;
    raw.close().await?;

    let worker = builtin_worker(&env).await?;
    crate::support::wait_worker_started(&env).await?;
    let client = Client::connect(env.broker_config.clone()).await?;
    let ids = enqueue_all(
        &client,
        (0..5)
            .map(|i| NewJob::new("warren.noop", &json!({ "i": i })))
            .collect(),
    )
    .await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(30)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 5);
    worker.stop().await?;
    env.cleanup().await
}
