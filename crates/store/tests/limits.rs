//! The limits' Postgres side against the real server: a token bucket grants what it holds and
//! reserves the rest at the rate, never past its horizon, and a batch of deferrals is one
//! statement that keeps each job's reserved token and skips rows that moved on.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use warren_core::{JobId, JobState};
use warren_store::Deferral;
use warren_testkit::TestEnv;

#[tokio::test]
async fn a_bucket_grants_its_tokens_and_reserves_the_rest_at_the_rate() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let store = env.store.clone();
    let horizon = Duration::from_secs(60);
    // 10 per second, burst 1: one token now, nine reserved 100 ms apart from about 100 ms.
    let first = store.take_tokens("t", "k", 10, 10.0, 1.0, horizon).await?;
    assert_eq!((first.granted, first.reserved), (1, 9), "{first:?}");
    assert!(first.next <= Duration::from_millis(100), "{first:?}");
    // The next caller queues behind those nine: its first token is due about a second out.
    let second = store.take_tokens("t", "k", 5, 10.0, 1.0, horizon).await?;
    assert_eq!((second.granted, second.reserved), (0, 5), "{second:?}");
    assert!(
        second.next > Duration::from_millis(800) && second.next <= Duration::from_millis(1000),
        "{second:?}"
    );
    // Another key has a bucket of its own.
    let other = store.take_tokens("t", "k2", 1, 10.0, 1.0, horizon).await?;
    assert_eq!((other.granted, other.reserved), (1, 0), "{other:?}");
    // Reservations stop at the horizon: 14 are held for the next 1.5 s, so within a 2 s
    // horizon only about 5 more fit, whatever is wanted.
    let capped = store
        .take_tokens("t", "k", 1000, 10.0, 1.0, Duration::from_secs(2))
        .await?;
    assert_eq!(capped.granted, 0, "{capped:?}");
    assert!(
        (4..=6).contains(&capped.reserved),
        "reserved {} within the horizon",
        capped.reserved
    );
    env.cleanup().await
}

fn deferral(id: JobId, attempt: u32, token_at: Option<chrono::DateTime<Utc>>) -> Deferral {
    Deferral {
        id,
        queue: "default".to_owned(),
        task: "warren.echo".to_owned(),
        payload: "{\"n\": 1}".to_owned(),
        attempt,
        max_attempts: 3,
        timeout_ms: None,
        // Due at once, for the promoter to claim.
        run_at: Utc::now() - TimeDelta::seconds(1),
        enqueued_at: Utc::now(),
        idempotency_key: None,
        traceparent: None,
        worker_id: "w1".to_owned(),
        limit_token_at: token_at,
    }
}

#[tokio::test]
async fn a_batch_of_deferrals_keeps_tokens_and_skips_stale_ones() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let store = env.store.clone();
    let token = Utc::now() + TimeDelta::seconds(30);
    let (a, b) = (JobId::new(), JobId::new());
    // Job b's second attempt is deferred in the same batch as its first: the later wins.
    let written = store
        .defer(&[
            deferral(a, 1, Some(token)),
            deferral(b, 1, None),
            deferral(b, 2, None),
        ])
        .await?;
    assert_eq!(written, vec![true, false, true]);
    let row = store.job(a).await?.unwrap();
    assert_eq!(row.state, JobState::Scheduled);
    // The deferred delivery's attempt is not counted: the row holds the attempts before it.
    assert_eq!(row.attempt, 0);
    // When due, the promoter gets the reserved token's time with the job.
    let promotion = store.claim_due(10).await?;
    let due = promotion.jobs.iter().find(|j| j.id == a).unwrap();
    assert_eq!(
        due.limit_token_at.map(|t| t.timestamp_millis()),
        Some(token.timestamp_millis())
    );
    promotion.finish(&[a], &[], Duration::ZERO).await?;
    assert_eq!(store.job(b).await?.unwrap().attempt, 1);
    // A deferral of an attempt the row has gone past is stale: nothing is written.
    let stale = store.defer(&[deferral(b, 1, None)]).await?;
    assert_eq!(stale, vec![false]);
    env.cleanup().await
}
