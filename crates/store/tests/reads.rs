//! The admin reads that migration 10 made fast, against the real PostgreSQL: they must still
//! answer what they answered before. Dead groups follow jobs in and out of `dead` (the
//! trigger-set group key), error search matches the admin's text as written, the bulk dry-run
//! count splits jobs without a payload, and per-state totals are exact on a small table.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

use warren_core::JobState;
use warren_store::{JobFilter, MatchCount, provision};
use warren_testkit::TestEnv;

/// A job row in `state` whose error history is `errors` (a JSON array), finished `ago`
/// seconds ago.
fn row(task: &str, state: &str, errors: &str, ago: i64, payload: bool) -> String {
    let payload = if payload { "'{}'::jsonb" } else { "NULL" };
    format!(
        "INSERT INTO warren_jobs (id, queue, task, payload, state, attempt, max_attempts,
                                  enqueued_at, finished_at, errors)
         VALUES (gen_random_uuid(), 'default', '{task}', {payload}, '{state}', 1, 3,
                 now() - interval '{ago} seconds' - interval '1 second',
                 now() - interval '{ago} seconds', '{errors}'::jsonb);"
    )
}

fn failure(kind: &str, message: &str) -> String {
    serde_json::json!([{ "attempt": 1, "kind": kind, "message": message }])
        .to_string()
        .replace('\'', "''")
}

#[tokio::test]
async fn dead_groups_follow_jobs_in_and_out_of_dead() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let timeout = failure("timeout", "attempt timed out\nafter 30s");
    let long = failure("error", &"x".repeat(700));
    let mut script = String::new();
    for ago in [30, 20, 10] {
        script.push_str(&row("mail", "dead", &timeout, ago, true));
    }
    script.push_str(&row("mail", "dead", &long, 5, true));
    // A success after a failed attempt has the same error history but is no dead job.
    script.push_str(&row("mail", "succeeded", &timeout, 1, true));
    provision::execute_script(&env.database_url, &script).await?;

    let groups = store.dead_groups(None).await?;
    assert_eq!(groups.len(), 2, "{groups:?}");
    let timed_out = &groups[0];
    assert_eq!(
        (
            timed_out.kind.as_str(),
            timed_out.message.as_str(),
            timed_out.count
        ),
        ("timeout", "attempt timed out", 3)
    );
    assert!(timed_out.first_seen < timed_out.last_seen);
    // The long message's first line, cut to what the index can hold.
    assert_eq!(groups[1].message, "x".repeat(500));

    // A retry takes a job out of its group; the example is the newest job still dead.
    let newest = timed_out.example_id;
    store.retry_job(newest).await?;
    let groups = store.dead_groups(None).await?;
    let timed_out = groups.iter().find(|g| g.kind == "timeout").unwrap();
    assert_eq!(timed_out.count, 2);
    assert_ne!(timed_out.example_id, newest);

    // Dead again, of another failure: the trigger files it under its new last error.
    provision::execute_script(
        &env.database_url,
        &format!(
            "UPDATE warren_jobs SET state = 'dead', finished_at = now(),
                    errors = errors || '{}'::jsonb
              WHERE id = '{}'",
            failure("panic", "boom"),
            newest.as_uuid()
        ),
    )
    .await?;
    let groups = store.dead_groups(None).await?;
    let counts: Vec<(&str, i64)> = groups.iter().map(|g| (g.kind.as_str(), g.count)).collect();
    assert_eq!(
        counts,
        [("timeout", 2), ("panic", 1), ("error", 1)],
        "{groups:?}"
    );
    let since = chrono::Utc::now() - chrono::Duration::seconds(15);
    let recent = store.dead_groups(Some(since)).await?;
    let counts: Vec<(&str, i64)> = recent.iter().map(|g| (g.kind.as_str(), g.count)).collect();
    assert_eq!(counts, [("panic", 1), ("error", 1)], "{recent:?}");
    env.cleanup().await
}

#[tokio::test]
async fn error_search_and_dry_run_counts_answer_as_before() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let mut script = String::new();
    script.push_str(&row(
        "t",
        "dead",
        &failure("error", "Coupon 50%_OFF refused"),
        3,
        true,
    ));
    script.push_str(&row(
        "t",
        "dead",
        &failure("error", "coupon 500 off refused"),
        2,
        true,
    ));
    // Bad input: no payload, so a retry could not send it again.
    script.push_str(&row(
        "t",
        "dead",
        &failure("permanent", "not JSON"),
        1,
        false,
    ));
    script.push_str(&row("t", "succeeded", "[]", 1, true));
    provision::execute_script(&env.database_url, &script).await?;

    let search = |text: &str| JobFilter {
        error_contains: Some(text.to_owned()),
        ..JobFilter::default()
    };
    // `%` and `_` match themselves, and case does not matter.
    let page = store.list_jobs(&search("50%_off"), None, 10).await?;
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(
        page.jobs[0].last_error.as_deref(),
        Some("Coupon 50%_OFF refused")
    );
    assert_eq!(
        store
            .list_jobs(&search("COUPON"), None, 10)
            .await?
            .jobs
            .len(),
        2
    );
    assert!(
        store
            .list_jobs(&search("no such"), None, 10)
            .await?
            .jobs
            .is_empty()
    );

    let dead = JobFilter {
        states: vec![JobState::Dead, JobState::Succeeded],
        task: Some("t".into()),
        ..JobFilter::default()
    };
    let count = |state, has_payload, count| MatchCount {
        state,
        has_payload,
        count,
    };
    assert_eq!(
        store.count_matching(&dead).await?,
        [
            count(JobState::Dead, false, 1),
            count(JobState::Dead, true, 2),
            count(JobState::Succeeded, true, 1),
        ]
    );
    assert_eq!(
        store.count_matching(&search("coupon")).await?,
        [count(JobState::Dead, true, 2)]
    );
    env.cleanup().await
}

#[tokio::test]
async fn state_totals_are_exact_on_a_small_table() -> anyhow::Result<()> {
    let env = TestEnv::new(&[]).await?;
    let store = &env.store;
    let mut script = String::new();
    for (state, n) in [("succeeded", 3), ("dead", 2), ("scheduled", 1)] {
        for _ in 0..n {
            script.push_str(&row("t", state, "[]", 1, true));
        }
    }
    script.push_str("ANALYZE warren_jobs;");
    provision::execute_script(&env.database_url, &script).await?;
    let totals = store.state_totals(None).await?;
    let got: Vec<(JobState, i64, bool)> = totals
        .iter()
        .map(|t| (t.state, t.count, t.approximate))
        .collect();
    assert_eq!(
        got,
        [
            (JobState::Scheduled, 1, false),
            (JobState::Queued, 0, false),
            (JobState::Running, 0, false),
            (JobState::Succeeded, 3, false),
            (JobState::Dead, 2, false),
            (JobState::Cancelled, 0, false),
        ]
    );
    let other = store.state_totals(Some("other")).await?;
    assert!(other.iter().all(|t| t.count == 0 && !t.approximate));
    env.cleanup().await
}
