use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobMessage, JobState};
use warren_runtime::{JobContext, JobError, Worker, WorkerBuilder};
use warren_testkit::{TestEnv, wait_until};

use crate::support::wait_all_terminal;

fn counting(runs: Arc<AtomicUsize>) -> WorkerBuilder {
    Worker::builder().register("counted", move |_ctx: JobContext, _p: Value| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, JobError>("done")
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_message_of_a_succeeded_job_is_not_run_again() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let client = Client::from_broker(env.broker.clone()).await?;
    let id = JobId::new();
    let job = || NewJob::new("counted", &json!({"n": 1})).id(id);

    let worker = env
        .start_worker(counting(runs.clone()), env.worker_config("w1"))
        .await?;
    client.enqueue(job()).await?;
    let rows = wait_all_terminal(&env.store, &[id], Duration::from_secs(30)).await?;
    assert_eq!(rows[&id].state, JobState::Succeeded);
    worker.stop().await?;
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The same message again, as if the first worker had died between commit and ack: take
    // it with a bare consumer and close the channel without acking, so the broker requeues
    // it flagged `redelivered`.
    client.enqueue(job()).await?;
    let queue = &env.queues[0];
    let mut peek = env.broker.consume(queue, 1, "peek").await?;
    let first = tokio::time::timeout(Duration::from_secs(30), peek.next())
        .await?
        .expect("a delivery")?;
    assert!(!first.redelivered);
    let decoded = JobMessage::decode(&first.raw, 1 << 20).expect("valid message");
    assert_eq!(decoded.id, id);
    peek.close().await;

    // The broker takes the message back when the peeking connection closes; wait until it
    // is ready again, so the next worker surely gets it as a redelivery.
    wait_until(
        Duration::from_secs(30),
        "the peeked message to be back in the queue",
        || async {
            let depth = env.broker.queue_depth(queue).await?.expect("queue exists");
            Ok(if depth.ready == 1 {
                Ok(())
            } else {
                Err(format!("{} ready", depth.ready))
            })
        },
    )
    .await?;

    let worker = env
        .start_worker(counting(runs.clone()), env.worker_config("w2"))
        .await?;
    // A job published after the redelivery finishes after it has started (the consume loop
    // starts deliveries in order, and returned messages come first): then a graceful stop
    // lets the redelivery finish and counts it.
    let sentinel = client
        .enqueue(NewJob::new("counted", &json!({"n": 2})))
        .await?;
    wait_all_terminal(&env.store, &[sentinel], Duration::from_secs(30)).await?;
    let stats = worker.stop().await?;
    assert_eq!(stats.skipped, 1, "the redelivery was recognised: {stats:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the handler did not run the redelivery a second time (only the sentinel)"
    );
    let row = env.store.job(id).await?.expect("row");
    assert_eq!((row.state, row.attempt), (JobState::Succeeded, 1));
    env.cleanup().await
}
