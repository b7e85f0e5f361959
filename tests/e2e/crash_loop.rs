use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::message::{HEADER_ATTEMPT, HEADER_TASK};
use warren_core::{FailureKind, HeaderValue, JobId, JobMessage, JobState, RawMessage};
use warren_runtime::Worker;
use warren_store::{RecordRow, Recorded, Recorder, RecorderConfig};
use warren_testkit::{TestEnv, WorkerProcess, wait_until};
use warren_worker::tasks::register_builtins;

use crate::support::{count_state, enqueue_all, wait_all_terminal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_worker_is_dead_lettered_after_the_delivery_limit()
-> anyhow::Result<()> {
    let delivery_limit = 2;
    let env = TestEnv::with_delivery_limit(&["default"], delivery_limit).await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let killer = client
        .enqueue(NewJob::new("warren.abort", &json!({})))
        .await?;
    let jobs = (0..20)
        .map(|i| NewJob::new("warren.echo", &json!(i)))
        .collect::<Vec<_>>();
    let ids = enqueue_all(&client, jobs).await?;

    // Restart the worker every time it dies, as a supervisor would, counting the deaths.
    // Prefetch 1: a crash returns every unacked delivery of the process, and RabbitMQ charges
    // each one a delivery, so a larger window would dead-letter innocent neighbours too
    // (see ARCHITECTURE.md, "Crash loops").
    let mut crashes = 0;
    let mut worker = None;
    for round in 0..10 {
        let mut w = WorkerProcess::spawn(
            &env,
            &format!("crashy-{round}"),
            &[
                "--enable-crash-task",
                "--concurrency",
                "1",
                "--prefetch",
                "1",
            ],
        )?;
        match w.wait(Duration::from_secs(5)).await {
            Ok(code) => {
                assert_ne!(code, Some(0), "the worker only exits here by crashing");
                crashes += 1;
            }
            Err(_) => {
                // Still running after 5 s: the killer message is gone from its queue.
                worker = Some(w);
                break;
            }
        }
    }
    let mut worker = worker.expect("a worker eventually stays up");
    assert!(
        crashes == delivery_limit as usize + 1,
        "{crashes} crashes with x-delivery-limit {delivery_limit}"
    );

    // The broker dead-lettered the killer; the surviving worker's reconciler consumed it from
    // `<ns>.dead` and recorded the job dead with the broker's reason, then acked it.
    let row = wait_until(
        Duration::from_secs(30),
        "the killer's row recorded dead by the reconciler",
        || async {
            Ok(match env.store.job(killer).await? {
                Some(row) if row.state == JobState::Dead => Ok(row),
                other => Err(format!("{:?}", other.map(|r| r.state))),
            })
        },
    )
    .await?;
    let error = row.errors.last().expect("the dead row says why");
    assert!(
        error.message.contains("delivery_limit"),
        "the reason names the delivery limit: {}",
        error.message
    );
    assert_eq!(error.kind, FailureKind::Permanent);
    assert!(row.payload.is_some(), "the message is kept: {row:?}");
    wait_until(
        Duration::from_secs(10),
        "an empty dead-letter queue",
        || async {
            let n = env.broker.dead_letter_depth().await?.map_or(0, |d| d.ready);
            Ok(if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} dead letters"))
            })
        },
    )
    .await?;
    assert_eq!(env.broker.parked_depth().await?.map(|d| d.ready), Some(0));

    // Everything else was done, by the workers that lived long enough and the last one.
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 20);
    worker.signal("TERM").await?;
    assert_eq!(worker.wait(Duration::from_secs(30)).await?, Some(0));
    env.cleanup().await
}

/// A job message on queue `other` as the promoter would publish attempt 2 of it.
fn second_attempt(task: &str) -> anyhow::Result<(RawMessage, JobMessage)> {
    let mut headers = BTreeMap::new();
    headers.insert(HEADER_TASK.to_owned(), HeaderValue::Str(task.to_owned()));
    headers.insert(HEADER_ATTEMPT.to_owned(), HeaderValue::Int(2));
    let raw = RawMessage {
        message_id: Some(JobId::new().to_string()),
        content_type: Some("application/json".to_owned()),
        timestamp: None,
        headers,
        body: br#"{"n": 1}"#.to_vec(),
    };
    let message = JobMessage::decode(&raw, 1 << 20)?;
    Ok((raw, message))
}

/// The fence as the reconciler meets it: a dead letter of the attempt a row is stuck
/// `running` at replaces that row, and one of a job that already succeeded changes nothing.
/// The broker dead-letters both for real (a reject on a queue no worker consumes), so they
/// carry a genuine `x-death`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replaces_a_running_row_and_never_a_terminal_one() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default", "other"]).await?;
    let mut cfg = env.worker_config("reconciler");
    cfg.queues = vec![env.queues[0].clone()];
    let worker = env
        .start_worker(register_builtins(Worker::builder()), cfg)
        .await?;
    let (recorder, _task) = Recorder::spawn(env.store.clone(), RecorderConfig::default());
    let publisher = env.broker.publisher().await?;
    let other = env.queues[1].clone();

    let (stuck_raw, stuck) = second_attempt("warren.echo")?;
    let (done_raw, done) = second_attempt("warren.echo")?;
    let timeout = Duration::from_secs(30);
    let running = RecordRow::attempt(&stuck, other.as_str(), "gone", 5, timeout);
    assert_eq!(recorder.record(running).await?, Recorded::Written);
    let succeeded = RecordRow::attempt(&done, other.as_str(), "gone", 5, timeout)
        .succeed(serde_json::value::RawValue::from_string("1".into())?);
    assert_eq!(recorder.record(succeeded).await?, Recorded::Written);

    let mut consumer = env.broker.consume(&other, 2, "test").await?;
    for raw in [&stuck_raw, &done_raw] {
        publisher.publish(other.as_str(), raw).await?;
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .expect("a delivery")?;
        delivery.dead_letter().await?;
    }

    let row = wait_until(Duration::from_secs(30), "the stuck row dead", || async {
        Ok(match env.store.job(stuck.id).await? {
            Some(row) if row.state == JobState::Dead => Ok(row),
            other => Err(format!("{:?}", other.map(|r| r.state))),
        })
    })
    .await?;
    assert_eq!(row.attempt, 2);
    let error = row.errors.last().expect("the reason is recorded");
    assert!(
        error.message.contains("rejected") && error.message.contains(".q.other"),
        "the broker's reason and queue: {}",
        error.message
    );
    wait_until(
        Duration::from_secs(10),
        "an empty dead-letter queue",
        || async {
            let n = env.broker.dead_letter_depth().await?.map_or(0, |d| d.ready);
            Ok(if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} dead letters"))
            })
        },
    )
    .await?;
    let kept = env.store.job(done.id).await?.map(|r| r.state);
    assert_eq!(
        kept,
        Some(JobState::Succeeded),
        "a terminal row is never changed"
    );
    assert_eq!(env.broker.parked_depth().await?.map(|d| d.ready), Some(0));

    consumer.close().await;
    worker.stop().await?;
    env.cleanup().await
}
