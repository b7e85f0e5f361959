use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState};
use warren_runtime::Worker;
use warren_store::Store;
use warren_testkit::{RunningWorker, TestEnv, wait_until};
use warren_worker::tasks::register_builtins;

/// Waits until every job in `ids` has a row in a terminal state; returns the rows by id.
pub(crate) async fn wait_all_terminal(
    store: &Store,
    ids: &[JobId],
    timeout: Duration,
) -> anyhow::Result<HashMap<JobId, warren_store::JobRecord>> {
    wait_until(
        timeout,
        &format!("{} jobs to reach a terminal state", ids.len()),
        || async {
            let rows = store.jobs(ids).await?;
            let done = rows.iter().filter(|r| r.state.is_terminal()).count();
            if done == ids.len() {
                Ok(Ok(rows.into_iter().map(|r| (r.id, r)).collect()))
            } else {
                Ok(Err(format!("{done} of {} terminal", ids.len())))
            }
        },
    )
    .await
}

pub(crate) fn count_state(
    rows: &HashMap<JobId, warren_store::JobRecord>,
    state: JobState,
) -> usize {
    rows.values().filter(|r| r.state == state).count()
}

/// How many jobs are in `state`.
pub(crate) async fn count_in(store: &Store, state: JobState) -> anyhow::Result<i64> {
    Ok(store
        .state_counts(None)
        .await?
        .iter()
        .find(|c| c.state == state)
        .map_or(0, |c| c.count))
}

/// Waits until at least `n` jobs are in `state`.
pub(crate) async fn wait_count(store: &Store, state: JobState, n: i64) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} jobs {state}"),
        || async {
            let have = count_in(store, state).await?;
            Ok(if have >= n {
                Ok(())
            } else {
                Err(format!("{have} {state}"))
            })
        },
    )
    .await
}

/// Waits until job `id` is in `state`; returns its row.
pub(crate) async fn wait_state(
    store: &Store,
    id: JobId,
    state: JobState,
) -> anyhow::Result<warren_store::JobRecord> {
    wait_until(
        Duration::from_secs(30),
        &format!("job {id} to be {state}"),
        || async {
            Ok(match store.job(id).await? {
                Some(row) if row.state == state => Ok(row),
                other => Err(format!("{:?}", other.map(|r| r.state))),
            })
        },
    )
    .await
}

/// An in-process worker running the worker binary's built-in tasks on `env`'s queues.
pub(crate) async fn builtin_worker(env: &TestEnv) -> anyhow::Result<RunningWorker> {
    env.start_worker(
        register_builtins(Worker::builder()),
        env.worker_config("w1"),
    )
    .await
}

/// Enqueues `jobs`, failing the test on the first that is refused; returns their ids.
pub(crate) async fn enqueue_all(client: &Client, jobs: Vec<NewJob>) -> anyhow::Result<Vec<JobId>> {
    Ok(client
        .enqueue_many(jobs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?)
}

/// Waits until a worker has started: it registered itself in Postgres and consumes `env`'s
/// first queue.
pub(crate) async fn wait_worker_started(env: &TestEnv) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(30), "the worker to start", || async {
        let workers = env.store.workers().await?;
        let depth = env.broker.queue_depth(&env.queues[0]).await?;
        let consumers = depth.map_or(0, |d| d.consumers);
        Ok(
            if workers.iter().any(|w| w.state == "running") && consumers > 0 {
                Ok(())
            } else {
                Err(format!("{} workers, {consumers} consumers", workers.len()))
            },
        )
    })
    .await
}

/// A free port on 127.0.0.1 (bound, read and released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A plain HTTP/1.0 GET of a worker's metrics address: the status code and the body.
pub(crate) async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP head in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
