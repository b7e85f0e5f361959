//! Poison messages that lapin cannot parse, published by a raw AMQP client: each must cost
//! only itself. The worker keeps running without a restart, the poison ends in the broker's
//! dead-letter queue, and every valid job around it succeeds.

use std::time::Duration;

use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_testkit::raw_amqp::{RawField, RawProperties, RawPublisher, nested_table, table};
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

use crate::support::{builtin_worker, count_state, enqueue_all, wait_all_terminal};

/// A message whose `message_id` is not UTF-8: lapin fails the whole frame.
fn non_utf8_message_id() -> RawProperties {
    RawProperties {
        content_type: Some(b"application/json".to_vec()),
        headers: Some(table(&[
            (
                b"warren-task",
                RawField::LongString(b"warren.noop".to_vec()),
            ),
            (b"warren-attempt", RawField::LongLong(1)),
        ])),
        delivery_mode: Some(2),
        message_id: Some(vec![0xff, 0xfe, b'x']),
    }
}

async fn publish_raw(env: &TestEnv, queue: &str, props: &RawProperties) -> anyhow::Result<()> {
    let mut raw = RawPublisher::connect(&env.amqp_url).await?;
    raw.publish(
        &env.broker_config.topology.work_exchange(),
        queue,
        props,
        b"{}",
    )
    .await?;
    raw.close().await
}

async fn wait_dead_letters(env: &TestEnv, n: u32) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} message(s) parked for `warren dlq`"),
        || async {
            // A frame lapin cannot parse also kills the reconciler's connection when it
            // reaches `<ns>.dead`; that queue's own delivery limit then parks it.
            let depth = env.broker.parked_depth().await?;
            Ok(match depth {
                Some(d) if d.ready >= n => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await
}

fn noop_jobs(n: usize) -> anyhow::Result<Vec<NewJob>> {
    (0..n)
        .map(|i| Ok(NewJob::new("warren.noop", &json!({ "i": i }))))
        .collect()
}

/// The issue's reproduction: 1 unparseable message among 20 valid confirmed jobs, all in the
/// queue before the worker starts, so all of them are prefetched together.
#[tokio::test]
async fn an_unparseable_message_costs_only_itself() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let client = Client::connect(env.broker_config.clone()).await?;
    let mut ids = enqueue_all(&client, noop_jobs(10)?).await?;
    publish_raw(&env, "default", &non_utf8_message_id()).await?;
    ids.extend(enqueue_all(&client, noop_jobs(10)?).await?);

    let worker = builtin_worker(&env).await?;
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 20, "{rows:?}");
    wait_dead_letters(&env, 1).await?;
    assert!(
        !worker.handle.is_finished(),
        "the worker must keep running after a poison message"
    );

    // The worker still consumes: 20 valid jobs published after it all succeed.
    let after = enqueue_all(&client, noop_jobs(20)?).await?;
    let rows = wait_all_terminal(&env.store, &after, Duration::from_secs(60)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 20);
    // The poison is dead-lettered once and only it: no valid job followed it there. It went
    // on to the parking queue, since no job id can be read from it.
    assert_eq!(env.broker.parked_depth().await?.map(|d| d.ready), Some(1));
    assert_eq!(
        env.broker.dead_letter_depth().await?.map(|d| d.ready),
        Some(0)
    );
    let stats = worker.stop().await?;
    assert_eq!(stats.succeeded, 40);
    env.cleanup().await
}

/// A header table nested as deep as fits in one frame: the real worker binary parses it
/// without overflowing lapin's I/O thread, records it as bad input, and goes on.
#[tokio::test]
async fn the_deepest_header_table_that_fits_a_frame_does_not_overflow_the_stack()
-> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let mut raw = RawPublisher::connect(&env.amqp_url).await?;
    let room = raw.frame_max() - 200;
    // Each level costs 7 bytes: a 1-byte key with its length, the type tag, a 4-byte length.
    let depth = room / 7;
    let deep = nested_table(depth, table(&[(b"leaf", RawField::LongLong(1))]));
    let mut props = non_utf8_message_id();
    let id = warren_core::JobId::new();
    props.message_id = Some(id.to_string().into_bytes());
    props.headers = Some(table(&[
        (
            b"warren-task",
            RawField::LongString(b"warren.noop".to_vec()),
        ),
        (b"warren-attempt", RawField::LongLong(1)),
        (b"deep", RawField::Table(deep)),
    ]));
    raw.publish(
        &env.broker_config.topology.work_exchange(),
        "default",
        &props,
        b"{}",
    )
    .await?;
    raw.close().await?;

    let mut worker = WorkerProcess::spawn(&env, "deep", &[])?;
    let client = Client::connect(env.broker_config.clone()).await?;
    let after = enqueue_all(&client, noop_jobs(20)?).await?;
    let rows = wait_all_terminal(&env.store, &after, Duration::from_secs(60)).await?;
    assert_eq!(count_state(&rows, JobState::Succeeded), 20);
    // Headers outside the contract are ignored: the job itself is valid and runs once.
    let row = crate::support::wait_state(&env.store, id, JobState::Succeeded).await?;
    assert_eq!(row.attempt, 1);
    assert!(
        worker.child.try_wait()?.is_none(),
        "the worker must survive a {depth}-deep header table"
    );
    worker.signal("TERM").await?;
    assert_eq!(worker.wait(Duration::from_secs(30)).await?, Some(0));
    env.cleanup().await
}

/// Every malformed form the hardening issue found, published by a raw AMQP client to the
/// real worker binary: each message ends as a row or in the dead-letter queue, the worker
/// keeps running, and 20 valid jobs published right after the corpus all succeed.
#[tokio::test]
async fn the_raw_corpus_is_accounted_for_and_the_jobs_after_it_succeed() -> anyhow::Result<()> {
    use warren_core::JobId;
    let env = TestEnv::new(&["default"]).await?;
    let valid = |task: &[u8], id: JobId| RawProperties {
        content_type: Some(b"application/json".to_vec()),
        headers: Some(table(&[
            (b"warren-task", RawField::LongString(task.to_vec())),
            (b"warren-attempt", RawField::LongLong(1)),
        ])),
        delivery_mode: Some(2),
        message_id: Some(id.to_string().into_bytes()),
    };
    let mut rows: Vec<(JobId, JobState)> = Vec::new();
    let mut corpus: Vec<(RawProperties, Vec<u8>)> = Vec::new();
    let mut dead = |props: RawProperties, body: &[u8], id: JobId, state: JobState| {
        rows.push((id, state));
        corpus.push((props, body.to_vec()));
    };

    // Rows: NUL in the task and in the idempotency key, JSON no handler can read, a body
    // over the limit, a task nobody handles, and a header nested as deep as a frame allows.
    let id = JobId::new();
    dead(valid(b"bad\0task", id), b"{}", id, JobState::Dead);
    let id = JobId::new();
    let mut keyed = valid(b"warren.echo", id);
    keyed.headers = Some(table(&[
        (
            b"warren-task",
            RawField::LongString(b"warren.echo".to_vec()),
        ),
        (b"warren-attempt", RawField::LongLong(1)),
        (
            b"warren-idempotency-key",
            RawField::LongString(b"k\0ey".to_vec()),
        ),
    ]));
    dead(keyed, b"{}", id, JobState::Dead);
    let id = JobId::new();
    dead(
        valid(b"warren.echo", id),
        br#"{"n":1e400}"#,
        id,
        JobState::Dead,
    );
    let id = JobId::new();
    dead(
        valid(b"warren.echo", id),
        br#""\ud800""#,
        id,
        JobState::Dead,
    );
    let id = JobId::new();
    let deep_array = [vec![b'['; 60_000], vec![b']'; 60_000]].concat();
    dead(valid(b"warren.echo", id), &deep_array, id, JobState::Dead);
    let id = JobId::new();
    dead(
        valid(b"warren.echo", id),
        &vec![b' '; 2 << 20],
        id,
        JobState::Dead,
    );
    let id = JobId::new();
    dead(
        valid(b"nobody.home", id),
        br#"{"kept": true}"#,
        id,
        JobState::Dead,
    );
    let id = JobId::new();
    let mut deep = valid(b"warren.noop", id);
    let depth = (131_072 - 400) / 7;
    deep.headers = Some(table(&[
        (
            b"warren-task",
            RawField::LongString(b"warren.noop".to_vec()),
        ),
        (b"warren-attempt", RawField::LongLong(1)),
        (b"deep", RawField::Table(nested_table(depth, table(&[])))),
    ]));
    dead(deep, b"{}", id, JobState::Succeeded);

    // Dead letters: three frames lapin cannot parse (a message_id, a content_type and a
    // header name that are not UTF-8) and a message with no job id at all.
    let mut poison_id = non_utf8_message_id();
    poison_id.message_id = Some(vec![0xc3, 0x28]);
    let mut poison_type = valid(b"warren.noop", JobId::new());
    poison_type.content_type = Some(b"application/\xffjson".to_vec());
    let mut poison_key = valid(b"warren.noop", JobId::new());
    poison_key.headers = Some(table(&[(b"warren-\xfe", RawField::LongLong(1))]));
    let mut no_id = valid(b"warren.noop", JobId::new());
    no_id.message_id = None;
    let dead_letters = 4;
    for props in [poison_id, poison_type, poison_key, no_id] {
        corpus.push((props, b"{}".to_vec()));
    }

    let mut raw = RawPublisher::connect(&env.amqp_url).await?;
    let exchange = env.broker_config.topology.work_exchange();
    for (props, body) in &corpus {
        raw.publish(&exchange, "default", props, body).await?;
    }
    raw.close().await?;
    let client = Client::connect(env.broker_config.clone()).await?;
    let after = enqueue_all(&client, noop_jobs(20)?).await?;

    let mut worker = WorkerProcess::spawn(&env, "corpus", &[])?;
    let done = wait_all_terminal(&env.store, &after, Duration::from_secs(120)).await?;
    assert_eq!(count_state(&done, JobState::Succeeded), 20);
    let ids: Vec<JobId> = rows.iter().map(|(id, _)| *id).collect();
    let recorded = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    for (id, state) in &rows {
        assert_eq!(recorded[id].state, *state, "{:?}", recorded[id]);
    }
    assert_eq!(
        recorded[&ids[6]].payload,
        Some(json!({ "kept": true })),
        "a job for an unknown task keeps its payload, so it can be retried"
    );
    wait_dead_letters(&env, dead_letters).await?;
    assert!(
        worker.child.try_wait()?.is_none(),
        "the worker kept running"
    );
    worker.signal("TERM").await?;
    assert_eq!(worker.wait(Duration::from_secs(30)).await?, Some(0));
    env.cleanup().await
}
