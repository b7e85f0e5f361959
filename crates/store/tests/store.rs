//! warren-store against the real PostgreSQL: rows read back as written, and the migrator's
//! checksums. Each test has a database of its own (see warren-testkit).

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

use chrono::Utc;
use warren_core::{JobId, JobState};
use warren_store::{Error, ScheduledJob, Store, StoreConfig, WorkerInfo, provision};
use warren_testkit::TestEnv;

fn scheduled(payload: &str) -> ScheduledJob {
    ScheduledJob {
        id: JobId::new(),
        queue: "default".to_owned(),
        task: "t".to_owned(),
        payload: payload.to_owned(),
        max_attempts: 3,
        timeout_ms: Some(1500),
        run_at: Utc::now() - chrono::Duration::seconds(1),
        enqueued_at: Utc::now(),
        idempotency_key: Some("k1".to_owned()),
        traceparent: None,
    }
}

#[tokio::test]
async fn rows_read_back_as_written_and_unreadable_payloads_as_text() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let ok = scheduled(r#"{"n":1}"#);
    // Postgres' numeric holds 1e400; serde_json cannot.
    let odd = ScheduledJob {
        idempotency_key: None,
        ..scheduled(r#"{"n":1e400}"#)
    };
    store.schedule(&[ok.clone(), odd.clone()]).await?;

    let job = store.job(ok.id).await?.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!((job.attempt, job.max_attempts), (0, 3));
    assert_eq!(job.payload, Some(serde_json::json!({"n": 1})));
    assert_eq!(job.raw_body, None);
    assert_eq!(job.timeout_ms, Some(1500));
    assert_eq!(job.idempotency_key.as_deref(), Some("k1"));
    assert!(job.errors.is_empty() && job.duplicate_of.is_none());

    let odd_job = store.job(odd.id).await?.unwrap();
    assert_eq!(odd_job.payload, None);
    assert!(
        odd_job
            .raw_body
            .as_deref()
            .unwrap_or_default()
            .starts_with(r#"{"n": 1000000000"#),
        "{:?}",
        odd_job.raw_body
    );
    assert_eq!(store.jobs(&[ok.id, odd.id]).await?.len(), 2);
    assert!(store.job(JobId::new()).await?.is_none());

    let promotion = store.claim_due(10).await?;
    let due = promotion.jobs.iter().find(|d| d.id == ok.id).unwrap();
    assert_eq!(
        (due.attempt, due.max_attempts, due.timeout_ms),
        (0, 3, Some(1500))
    );
    assert_eq!(due.payload, r#"{"n": 1}"#);
    drop(promotion);

    let summary = store
        .latency_summary(Utc::now() - chrono::Duration::hours(1))
        .await?;
    assert_eq!(summary.finished, 0);
    assert!(summary.start_p50_ms.is_none());

    store
        .register_worker(&WorkerInfo {
            id: "w1".to_owned(),
            hostname: "h".to_owned(),
            pid: 7,
            queues: vec!["default".to_owned()],
            concurrency: 4,
            version: "1.2.3".to_owned(),
        })
        .await?;
    let workers = store.workers().await?;
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].pid, workers[0].concurrency), (7, 4));
    assert_eq!(
        (workers[0].state.as_str(), workers[0].processed),
        ("running", 0)
    );
    env.cleanup().await
}

async fn fresh_database(env: &TestEnv, suffix: &str) -> anyhow::Result<(String, Store)> {
    let name = format!("{}_{suffix}", env.name);
    provision::create_database(&env.admin_database_url, &name).await?;
    let url = provision::url_for_database(&env.admin_database_url, &name)?;
    Ok((name, Store::connect(&StoreConfig::new(&url)).await?))
}

#[tokio::test]
async fn an_edited_migration_is_refused_by_migrate_and_the_start_up_check() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    provision::execute_script(
        &env.database_url,
        "UPDATE warren_migrations SET checksum = sha256('something else') WHERE version = 2",
    )
    .await?;
    for result in [env.store.migrate().await, env.store.check_schema().await] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::MigrationChanged { version: 2, .. }),
            "{err:?}"
        );
        let shown = err.to_string();
        assert!(
            shown.contains("0002_promotion.sql") && shown.contains("never change"),
            "{shown}"
        );
    }
    env.cleanup().await
}

#[tokio::test]
async fn a_database_migrated_before_checksums_gets_them_on_the_next_migrate() -> anyhow::Result<()>
{
    let env = TestEnv::new(&[]).await?;
    let (name, store) = fresh_database(&env, "legacy").await?;
    let url = provision::url_for_database(&env.admin_database_url, &name)?;
    store.migrate().await?;
    // What a database migrated by an earlier release looks like.
    provision::execute_script(&url, "ALTER TABLE warren_migrations DROP COLUMN checksum").await?;
    store.check_schema().await?;
    store.migrate().await?;
    store.check_schema().await?;
    // Recorded, and the same as a fresh database's.
    let recorded = |url: String| async move {
        let s = Store::connect(&StoreConfig::new(&url)).await?;
        // Tampering with each version in turn is refused: so each was recorded.
        for v in 1..=warren_store::SCHEMA_VERSION {
            provision::execute_script(
                &url,
                &format!(
                    "UPDATE warren_migrations SET checksum = checksum || '\\x00'::bytea WHERE version = {v}"
                ),
            )
            .await?;
            let err = s.check_schema().await.unwrap_err();
            assert!(
                matches!(err, Error::MigrationChanged { version, .. } if version == v),
                "{err:?}"
            );
            provision::execute_script(
                &url,
                &format!(
                    "UPDATE warren_migrations SET checksum = substring(checksum from 1 for 32) WHERE version = {v}"
                ),
            )
            .await?;
        }
        s.check_schema().await?;
        s.close().await;
        anyhow::Ok(())
    };
    recorded(url).await?;
    store.close().await;
    provision::drop_database(&env.admin_database_url, &name).await?;
    env.cleanup().await
}

/// A bulk cancel stopped after its first batch and run again cancels every job exactly once,
/// and pages never skip or repeat a job, even when hundreds share one enqueue time.
#[tokio::test]
async fn an_interrupted_bulk_cancel_run_again_does_each_job_once() -> anyhow::Result<()> {
    use warren_store::{CancelOutcome, JobFilter, RetryOutcome};
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let at = Utc::now();
    let rows: Vec<ScheduledJob> = (0..450)
        .map(|_| ScheduledJob {
            idempotency_key: None,
            enqueued_at: at,
            run_at: at + chrono::Duration::hours(1),
            ..scheduled("{}")
        })
        .collect();
    store.schedule(&rows).await?;
    let waiting = JobFilter {
        states: vec![JobState::Scheduled],
        ..JobFilter::default()
    };

    // Listing: 450 distinct ids over pages of 100.
    let mut listed = std::collections::BTreeSet::new();
    let mut after = None;
    loop {
        let page = store.list_jobs(&waiting, after, 100).await?;
        listed.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed.len(), 450);

    // One batch, then "interrupted".
    let first = store.cancel_batch(&waiting, None, 200).await?;
    assert_eq!(first.outcomes.len(), 200);
    assert!(first.next.is_some());
    // Run again from the start, as a user would.
    let mut cancelled = first.outcomes.len();
    let mut after = None;
    loop {
        let batch = store.cancel_batch(&waiting, after, 200).await?;
        for (_, outcome) in &batch.outcomes {
            assert!(
                matches!(outcome, CancelOutcome::Cancelled { .. }),
                "{outcome:?}"
            );
            cancelled += 1;
        }
        match batch.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(cancelled, 450);
    let counts = store
        .count_matching(&JobFilter {
            task: Some("t".into()),
            ..JobFilter::default()
        })
        .await?;
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].state, counts[0].count),
        (JobState::Cancelled, 450)
    );

    // Retried in bulk: each once; the scheduled copies no longer match `cancelled`.
    let was_cancelled = JobFilter {
        states: vec![JobState::Cancelled],
        ..JobFilter::default()
    };
    let mut retried = 0;
    let mut after = None;
    loop {
        let batch = store.retry_batch(&was_cancelled, after, 200).await?;
        retried += batch
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, RetryOutcome::Scheduled { .. }))
            .count();
        match batch.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(retried, 450);
    assert!(
        store
            .retry_batch(&was_cancelled, None, 200)
            .await?
            .outcomes
            .is_empty()
    );
    env.cleanup().await?;
    Ok(())
}
