use chrono::Utc;
use serde_json::value::to_raw_value;
use warren_core::{FailureKind, FailureRecord, JobId, JobState};
use warren_store::{RecordRow, Recorder, RecorderConfig};
use warren_testkit::TestEnv;

fn row(id: JobId, attempt: u32, state: JobState) -> RecordRow {
    let now = Utc::now();
    RecordRow {
        id,
        queue: "default".into(),
        task: "t".into(),
        payload: Some(to_raw_value(&1).expect("json")),
        raw_body: None,
        state,
        attempt,
        max_attempts: 5,
        timeout_ms: None,
        run_at: None,
        enqueued_at: now,
        started_at: Some(now),
        finished_at: (state != JobState::Running).then_some(now),
        result: (state == JobState::Succeeded)
            .then(|| to_raw_value(&format!("attempt {attempt}")).expect("json")),
        error: (state == JobState::Dead || state == JobState::Scheduled).then(|| FailureRecord {
            attempt,
            kind: FailureKind::Error,
            message: format!("attempt {attempt} failed"),
            worker: "w".into(),
            at: now,
        }),
        worker_id: format!("worker-of-attempt-{attempt}"),
        idempotency_key: None,
        traceparent: None,
        duplicate_of: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_outcomes_never_overwrite_newer_attempts_or_terminal_states() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let (recorder, task) = Recorder::spawn(env.store.clone(), RecorderConfig::default());

    // Attempt 2 is running when a late outcome of attempt 1 arrives: attempt 1 loses.
    let a = JobId::new();
    recorder.record(row(a, 2, JobState::Running)).await?;
    recorder.record(row(a, 1, JobState::Dead)).await?;
    let got = env.store.job(a).await?.expect("row exists");
    assert_eq!((got.state, got.attempt), (JobState::Running, 2));
    assert!(got.errors.is_empty(), "the stale failure was not appended");

    // Attempt 2 succeeds; a duplicate of the same attempt failing afterwards changes nothing.
    recorder.record(row(a, 2, JobState::Succeeded)).await?;
    recorder.record(row(a, 2, JobState::Dead)).await?;
    // Even a newer attempt cannot reopen a terminal job (only an admin retry can).
    recorder.record(row(a, 3, JobState::Running)).await?;
    let got = env.store.job(a).await?.expect("row exists");
    assert_eq!((got.state, got.attempt), (JobState::Succeeded, 2));
    assert_eq!(got.result, Some(serde_json::json!("attempt 2")));
    assert_eq!(got.worker_id.as_deref(), Some("worker-of-attempt-2"));

    // A retry schedule for attempt 1, then a duplicate outcome of attempt 1: ignored.
    let b = JobId::new();
    recorder.record(row(b, 1, JobState::Running)).await?;
    recorder.record(row(b, 1, JobState::Scheduled)).await?;
    recorder.record(row(b, 1, JobState::Succeeded)).await?;
    let got = env.store.job(b).await?.expect("row exists");
    assert_eq!((got.state, got.attempt), (JobState::Scheduled, 1));
    assert_eq!(got.errors.len(), 1);

    // Whatever order concurrent writes land in (one batch or several), the newest attempt's
    // outcome is what remains.
    let c = JobId::new();
    let writes = [
        row(c, 1, JobState::Running),
        row(c, 3, JobState::Succeeded),
        row(c, 2, JobState::Scheduled),
        row(c, 3, JobState::Running),
    ];
    let results = futures_join(writes.into_iter().map(|r| {
        let recorder = recorder.clone();
        async move { recorder.record(r).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let got = env.store.job(c).await?.expect("row exists");
    assert_eq!((got.state, got.attempt), (JobState::Succeeded, 3));

    drop(recorder);
    task.await?;
    env.cleanup().await
}

async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("write task panicked"));
    }
    out
}
