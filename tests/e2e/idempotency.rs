use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_runtime::{JobContext, JobError, Worker};
use warren_testkit::TestEnv;
use warren_worker::tasks::register_builtins;

use crate::support::{enqueue_all, wait_all_terminal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_live_or_succeeded_job_is_not_run_again() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let builder = register_builtins(Worker::builder()).register(
        "charge",
        move |_ctx: JobContext, _p: Value| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, JobError>("charged")
            }
        },
    );
    let w1 = env.start_worker(builder, env.worker_config("w1")).await?;
    let client = Client::from_broker(env.broker.clone())
        .await?
        .with_store(env.store.clone());
    let charge = || NewJob::new("charge", &json!({ "order": 42 })).idempotency_key("order-42");

    // Five copies at once: they run concurrently, and exactly one may claim the key.
    let copies = (0..5).map(|_| charge()).collect::<Vec<_>>();
    let ids = enqueue_all(&client, copies).await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(30)).await?;
    let winners: Vec<_> = rows
        .values()
        .filter(|r| r.state == JobState::Succeeded)
        .collect();
    assert_eq!(winners.len(), 1, "{rows:?}");
    let original = winners[0].id;
    for r in rows.values().filter(|r| r.id != original) {
        assert_eq!(r.state, JobState::Cancelled);
        assert_eq!(
            r.duplicate_of,
            Some(original),
            "the duplicate points at the original"
        );
        assert!(
            r.errors[0]
                .message
                .contains("holds idempotency key `order-42`")
        );
    }

    // After it succeeded the key is still held: a later copy is a duplicate too...
    let later = client.enqueue(charge()).await?;
    let rows = wait_all_terminal(&env.store, &[later], Duration::from_secs(30)).await?;
    assert_eq!(rows[&later].duplicate_of, Some(original));
    // ...and a delayed copy through Postgres is answered with the original's id at once.
    let delayed = client
        .enqueue(charge().delay(Duration::from_secs(60)))
        .await?;
    assert_eq!(delayed, original);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged exactly once");

    // A dead job frees its key.
    let doomed = client
        .enqueue(NewJob::new("warren.fail", &json!({ "permanent": true })).idempotency_key("k2"))
        .await?;
    wait_all_terminal(&env.store, &[doomed], Duration::from_secs(30)).await?;
    let again = client
        .enqueue(NewJob::new("warren.echo", &json!("second try")).idempotency_key("k2"))
        .await?;
    let rows = wait_all_terminal(&env.store, &[again], Duration::from_secs(30)).await?;
    assert_eq!(rows[&again].state, JobState::Succeeded);
    w1.stop().await?;
    env.cleanup().await
}
