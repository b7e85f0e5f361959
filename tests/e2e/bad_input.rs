//! The bad-input corpus: broken messages published raw to the work queue. Every one must be
//! accounted for (a `dead` row with the reason and the raw bytes, or a dead letter with the
//! reason in a header), none may crash the worker or be retried, and valid jobs around them
//! must still succeed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::message::{
    HEADER_ATTEMPT, HEADER_DEAD_REASON, HEADER_ENQUEUED_AT, HEADER_IDEMPOTENCY_KEY,
    HEADER_MAX_ATTEMPTS, HEADER_TASK, HEADER_TIMEOUT_MS,
};
use warren_core::{FailureKind, HeaderValue, JobId, JobState, RawMessage};
use warren_runtime::Worker;
use warren_testkit::{TestEnv, wait_until};
use warren_worker::tasks::register_builtins;

use crate::support::wait_all_terminal;

fn good(task: &str, body: &[u8]) -> RawMessage {
    let mut headers = BTreeMap::new();
    headers.insert(HEADER_TASK.to_owned(), HeaderValue::Str(task.to_owned()));
    headers.insert(HEADER_ATTEMPT.to_owned(), HeaderValue::Int(1));
    RawMessage {
        message_id: Some(JobId::new().to_string()),
        content_type: Some("application/json".to_owned()),
        timestamp: None,
        headers,
        body: body.to_vec(),
    }
}

fn with(mut m: RawMessage, header: &str, value: Option<HeaderValue>) -> RawMessage {
    match value {
        Some(v) => m.headers.insert(header.to_owned(), v),
        None => m.headers.remove(header),
    };
    m
}

/// (message, expected state, fragment of the recorded reason)
fn corpus_with_ids() -> Vec<(RawMessage, JobState, &'static str)> {
    let s = |v: &str| Some(HeaderValue::Str(v.to_owned()));
    let i = |v: i64| Some(HeaderValue::Int(v));
    let dead = JobState::Dead;
    vec![
        (
            good("warren.echo", &[0xff, 0xfe, 0x00]),
            dead,
            "body is not UTF-8",
        ),
        (
            good("warren.echo", b"not json at all"),
            dead,
            "body is not JSON",
        ),
        (good("warren.echo", b""), dead, "body is not JSON"),
        (good("warren.echo", b"{\"a\":"), dead, "body is not JSON"),
        (
            good("warren.echo", b"{} trailing"),
            dead,
            "body is not JSON",
        ),
        (
            good("warren.echo", &vec![b' '; 5000]),
            dead,
            "over the limit of 4096 bytes",
        ),
        (
            {
                let mut m = good("warren.echo", b"{}");
                m.content_type = Some("text/plain".into());
                m
            },
            dead,
            "content_type is `text/plain`",
        ),
        (
            with(good("x", b"{}"), HEADER_TASK, None),
            dead,
            "required header `warren-task` is missing",
        ),
        (
            with(good("x", b"{}"), HEADER_TASK, i(7)),
            dead,
            "`warren-task` must be a string, found integer",
        ),
        (
            with(good("x", b"{}"), HEADER_TASK, s("has space")),
            dead,
            "only ASCII letters",
        ),
        (
            with(good("x", b"{}"), HEADER_TASK, s("")),
            dead,
            "it is empty",
        ),
        // NUL cannot be stored in Postgres `text`: the row must still be written.
        (
            with(good("x", b"{}"), HEADER_TASK, s("bad\u{0}task")),
            dead,
            "header `warren-task`",
        ),
        (
            with(
                good("warren.echo", b"{}"),
                HEADER_IDEMPOTENCY_KEY,
                s("key\u{0}with-nul"),
            ),
            dead,
            "without control characters",
        ),
        (
            with(
                good("x", b"{}"),
                HEADER_TASK,
                Some(HeaderValue::Other("boolean")),
            ),
            dead,
            "found boolean",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_ATTEMPT, None),
            dead,
            "`warren-attempt` is missing",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_ATTEMPT, s("1")),
            dead,
            "`warren-attempt` must be an integer, found string",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_ATTEMPT, i(0)),
            dead,
            "`warren-attempt` is 0, outside",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_ATTEMPT, i(-1)),
            dead,
            "`warren-attempt` is -1, outside",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_ATTEMPT, i(5000)),
            dead,
            "`warren-attempt` is 5000, outside",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_MAX_ATTEMPTS, i(0)),
            dead,
            "`warren-max-attempts` is 0",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_TIMEOUT_MS, i(0)),
            dead,
            "`warren-timeout-ms` is 0",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_TIMEOUT_MS, s("5s")),
            dead,
            "`warren-timeout-ms` must be an integer",
        ),
        (
            with(good("warren.echo", b"{}"), HEADER_IDEMPOTENCY_KEY, s("")),
            dead,
            "`warren-idempotency-key` must be a string of 1 to 255 bytes",
        ),
        (
            with(
                good("warren.echo", b"{}"),
                HEADER_ENQUEUED_AT,
                i(1_700_000_000),
            ),
            dead,
            "`warren-enqueued-at` is 1700000000",
        ),
        (
            good("no.such.task", b"{}"),
            dead,
            "no handler for task `no.such.task`",
        ),
        (
            good("warren.sleep", b"{\"ms\":\"x\"}"),
            dead,
            "payload does not fit task `warren.sleep`",
        ),
        (
            good("warren.sleep", b"{\"ms\":1,\"extra\":2}"),
            dead,
            "unknown field `extra`",
        ),
        (
            good("warren.sleep", b"null"),
            dead,
            "payload does not fit task `warren.sleep`",
        ),
        (
            with(
                with(good("warren.echo", b"{}"), HEADER_ATTEMPT, i(4)),
                HEADER_MAX_ATTEMPTS,
                i(3),
            ),
            dead,
            "`warren-attempt` is 4, outside the allowed range 1..=3",
        ),
        // Valid JSON that Postgres cannot hold as jsonb: the job still runs and is recorded,
        // its payload and result kept as raw text instead of failing the batch.
        (
            good("warren.echo", br#"{"nul":"\u0000"}"#),
            JobState::Succeeded,
            "",
        ),
    ]
}

fn corpus_without_ids() -> Vec<(RawMessage, &'static str)> {
    vec![
        (
            {
                let mut m = good("warren.echo", b"{}");
                m.message_id = None;
                m
            },
            "no message_id",
        ),
        (
            {
                let mut m = good("warren.echo", b"{}");
                m.message_id = Some("not-a-uuid".into());
                m
            },
            "`not-a-uuid` is not a UUID",
        ),
        (
            {
                let mut m = good("warren.echo", b"{}");
                m.message_id = Some(String::new());
                m
            },
            "no message_id",
        ),
        (
            RawMessage {
                body: vec![0, 1, 2],
                ..RawMessage::default()
            },
            "no message_id",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_message_is_accounted_for_and_valid_jobs_still_succeed() -> anyhow::Result<()>
{
    let env = TestEnv::new(&["default"]).await?;
    let mut cfg = env.worker_config("w1");
    cfg.max_body_bytes = 4096;
    let worker = env
        .start_worker(register_builtins(Worker::builder()), cfg)
        .await?;
    let client = Client::from_broker(env.broker.clone()).await?;
    let publisher = env.broker.publisher().await?;
    let queue = env.queues[0].as_str();

    let with_ids = corpus_with_ids();
    let without_ids = corpus_without_ids();
    assert!(with_ids.len() + without_ids.len() >= 25);
    let mut valid = Vec::new();
    for (m, _, _) in &with_ids {
        publisher.publish(queue, m).await?;
        valid.push(
            client
                .enqueue(NewJob::new("warren.echo", &json!({ "ok": valid.len() })))
                .await?,
        );
    }
    for (m, _) in &without_ids {
        publisher.publish(queue, m).await?;
        valid.push(
            client
                .enqueue(NewJob::new("warren.echo", &json!({ "ok": valid.len() })))
                .await?,
        );
    }

    let rows = wait_all_terminal(&env.store, &valid, Duration::from_secs(60)).await?;
    assert!(
        rows.values().all(|r| r.state == JobState::Succeeded),
        "valid jobs around bad ones succeed"
    );

    let ids: Vec<JobId> = with_ids
        .iter()
        .map(|(m, _, _)| m.message_id.as_deref().expect("has id").parse())
        .collect::<Result<_, _>>()?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    for ((m, state, reason), id) in with_ids.iter().zip(&ids) {
        let row = &rows[id];
        assert_eq!(row.state, *state, "{reason}: {row:?}");
        if *state == JobState::Dead {
            assert_eq!(row.errors.len(), 1, "recorded once, never retried: {row:?}");
            assert_eq!(row.errors[0].kind, FailureKind::BadInput);
            assert!(
                row.errors[0].message.contains(reason),
                "expected `{reason}` in `{}`",
                row.errors[0].message
            );
            let kept = row.payload.is_some()
                || row.raw_body.as_deref() == Some(&*String::from_utf8_lossy(&m.body));
            assert!(kept, "the input is kept: {row:?}");
        } else {
            assert!(
                row.raw_body.as_deref().is_some_and(|b| b.contains("nul")),
                "unstorable payload kept raw: {row:?}"
            );
        }
    }

    // Messages without a job id went through the dead-letter queue to the parking queue
    // (the reconciler moves them there), the reason in a header.
    wait_until(
        Duration::from_secs(30),
        "the parked dead letters",
        || async {
            let depth = env.broker.parked_depth().await?.map_or(0, |d| d.ready);
            Ok(if depth as usize == without_ids.len() {
                Ok(())
            } else {
                Err(format!("{depth} parked dead letters"))
            })
        },
    )
    .await?;
    let parked = env.broker.peek_parked(100).await?;
    assert_eq!(parked.len(), without_ids.len());
    let mut reasons = Vec::new();
    for p in &parked {
        match p.raw.headers.get(HEADER_DEAD_REASON) {
            Some(HeaderValue::Str(r)) => reasons.push(r.clone()),
            other => anyhow::bail!("dead letter without a reason header: {other:?}"),
        }
        assert_eq!(
            p.queue().as_deref(),
            Some(queue),
            "the origin queue is kept"
        );
    }
    for (_, reason) in &without_ids {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "no dead letter says `{reason}`: {reasons:?}"
        );
    }

    let stats = worker.stop().await?;
    assert_eq!(stats.unrecorded, 0);
    env.cleanup().await
}

/// A body far over the limit is recorded dead with a bounded prefix of it, its full size and
/// its SHA-256: before, a 20 MiB body was stored whole in the row and printed whole.
#[tokio::test]
async fn an_oversized_body_keeps_a_bounded_prefix_its_size_and_digest() -> anyhow::Result<()> {
    use sha2::Digest;
    let env = TestEnv::new(&["default"]).await?;
    let worker = crate::support::builtin_worker(&env).await?;
    let body: Vec<u8> = (0..5 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let id = publish_foreign(&env, good("warren.echo", &body)).await?;
    let row = crate::support::wait_state(&env.store, id, JobState::Dead).await?;
    let kept = row.raw_body.as_deref().unwrap_or_default();
    assert_eq!(kept.len(), warren_store::RAW_BODY_KEPT);
    assert!(body.starts_with(kept.as_bytes()));
    assert_eq!(row.body_size, Some(body.len() as i64));
    let digest: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(row.body_sha256.as_deref(), Some(digest.as_str()));
    worker.stop().await?;
    env.cleanup().await
}

/// Publishes `message` to `default` as a foreign producer would; returns its job id.
async fn publish_foreign(env: &TestEnv, message: RawMessage) -> anyhow::Result<JobId> {
    let id: JobId = message.message_id.as_deref().unwrap_or_default().parse()?;
    env.broker
        .publisher()
        .await?
        .publish("default", &message)
        .await?;
    Ok(id)
}

/// Runs a foreign `flaky` job with `body` on a worker whose `flaky` fails its first `failing`
/// attempts, and returns its row once the job has ended.
async fn foreign_flaky_job(
    env: &TestEnv,
    failing: u32,
    body: &[u8],
) -> anyhow::Result<warren_store::JobRecord> {
    let builder = Worker::builder().register(
        "flaky",
        move |ctx: warren_runtime::JobContext, payload: serde_json::Value| async move {
            if ctx.attempt <= failing {
                return Err(warren_runtime::JobError::retryable("this attempt fails"));
            }
            Ok(payload)
        },
    );
    let worker = env.start_worker(builder, env.worker_config("w1")).await?;
    let id = publish_foreign(env, good("flaky", body)).await?;
    let mut rows = wait_all_terminal(&env.store, &[id], Duration::from_secs(60)).await?;
    worker.stop().await?;
    rows.remove(&id)
        .ok_or_else(|| anyhow::anyhow!("no row for job {id}"))
}

/// A job from a foreign producer whose payload Postgres cannot store as `jsonb` (a string with
/// U+0000) and whose first attempt fails: its retry must still run, and the job end
/// `succeeded`, not wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_job_with_a_payload_postgres_cannot_store_is_retried() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let row = foreign_flaky_job(&env, 1, br#"{"note":"nul \u0000 here"}"#).await?;
    assert_eq!(row.state, JobState::Succeeded, "{row:?}");
    env.cleanup().await
}

/// The same job with a body over what a row keeps as bytes cannot be published again from its
/// row: its failed attempt ends it `dead`, saying why, rather than leaving it `scheduled` for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_job_too_big_to_keep_as_bytes_ends_dead_when_it_fails() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let pad = "x".repeat(warren_store::RAW_BODY_KEPT + 10);
    let body = format!(r#"{{"note":"nul \u0000 here","pad":"{pad}"}}"#);
    let row = foreign_flaky_job(&env, u32::MAX, body.as_bytes()).await?;
    assert_eq!(row.state, JobState::Dead);
    let last = row
        .errors
        .last()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        last.contains("this attempt fails") && last.contains("not retried"),
        "{last}"
    );
    env.cleanup().await
}
