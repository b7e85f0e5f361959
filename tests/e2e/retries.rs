use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::{FailureKind, JobState, RetryPolicy};
use warren_runtime::{TaskOptions, Worker};
use warren_testkit::TestEnv;
use warren_worker::tasks::fail;

use crate::support::wait_all_terminal;

/// Short, exact delays (no jitter) so the recorded timestamps can be checked against them.
fn fast_policy() -> TaskOptions {
    TaskOptions {
        timeout: None,
        retry: RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(300),
            factor: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: 0.0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy_and_stop_at_max_attempts() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let builder = Worker::builder().register_with("warren.fail", fast_policy(), fail);
    let worker = env.start_worker(builder, env.worker_config("w1")).await?;
    let client = Client::from_broker(env.broker.clone()).await?;

    let twice = client
        .enqueue(NewJob::new("warren.fail", &json!({ "times": 2 })).max_attempts(5))
        .await?;
    let never = client
        .enqueue(NewJob::new("warren.fail", &json!({ "times": 10 })).max_attempts(3))
        .await?;
    let permanent = client
        .enqueue(NewJob::new("warren.fail", &json!({ "permanent": true })))
        .await?;
    let rows = wait_all_terminal(
        &env.store,
        &[twice, never, permanent],
        Duration::from_secs(60),
    )
    .await?;

    let r = &rows[&twice];
    assert_eq!((r.state, r.attempt), (JobState::Succeeded, 3), "{r:?}");
    assert_eq!(r.result, Some(json!({ "succeeded_on_attempt": 3 })));
    assert_eq!(r.errors.len(), 2);
    assert_eq!((r.errors[0].attempt, r.errors[1].attempt), (1, 2));
    assert!(r.errors.iter().all(|e| e.kind == FailureKind::Error));
    // Gaps between attempts: the policy's delay, plus promotion and delivery, which the
    // tolerance covers. Delay after attempt 1 is 300 ms, after attempt 2 is 600 ms.
    let gap1 = (r.errors[1].at - r.errors[0].at).to_std()?;
    let gap2 = (r.started_at.expect("started") - r.errors[1].at).to_std()?;
    let tolerance = Duration::from_millis(700);
    assert!(
        gap1 >= Duration::from_millis(300) && gap1 < Duration::from_millis(300) + tolerance,
        "gap after attempt 1: {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(600) && gap2 < Duration::from_millis(600) + tolerance,
        "gap after attempt 2: {gap2:?}"
    );

    let r = &rows[&never];
    assert_eq!(
        (r.state, r.attempt),
        (JobState::Dead, 3),
        "dead after exactly 3 attempts: {r:?}"
    );
    assert_eq!(
        r.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    let r = &rows[&permanent];
    assert_eq!((r.state, r.attempt), (JobState::Dead, 1));
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].kind, FailureKind::Permanent);

    // No fourth run of the exhausted job sneaks in later: a marker due at twice the delay a
    // fourth attempt would have waited (1.2 s) has been promoted and run from the same queue.
    let client = client.with_store(env.store.clone());
    let marker = client
        .enqueue(
            NewJob::new("warren.fail", &json!({ "times": 0 })).delay(Duration::from_millis(2400)),
        )
        .await?;
    let done = wait_all_terminal(&env.store, &[marker], Duration::from_secs(30)).await?;
    assert_eq!(done[&marker].state, JobState::Succeeded);
    let again = env.store.job(never).await?.expect("row");
    assert_eq!(
        (again.state, again.attempt, again.errors.len()),
        (JobState::Dead, 3, 3)
    );
    worker.stop().await?;
    env.cleanup().await
}
