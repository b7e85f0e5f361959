//! `warren queues pause / resume / purge` and the management-API columns of `warren queues`,
//! against real `warren-worker` processes, RabbitMQ and PostgreSQL.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState, QueueName};
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

mod support;

use support::*;

/// Where the management plugin listens on this machine (`deploy/services.sh` enables it).
const API_URL: &str = "http://127.0.0.1:15672";

async fn ready(env: &TestEnv, queue: &str) -> anyhow::Result<u32> {
    let depth = env.broker.queue_depth(&QueueName::new(queue)?).await?;
    Ok(depth.context("queue exists")?.ready)
}

async fn wait_ready(env: &TestEnv, queue: &str, n: u32) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} ready messages in `{queue}`"),
        || async {
            let r = ready(env, queue).await?;
            Ok(if r == n {
                Ok(())
            } else {
                Err(format!("{r} ready"))
            })
        },
    )
    .await
}

async fn wait_succeeded(env: &TestEnv, ids: &[JobId]) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(60),
        &format!("{} jobs to succeed", ids.len()),
        || async {
            let mut done = 0;
            for id in ids {
                if env.store.job(*id).await?.map(|j| j.state) == Some(JobState::Succeeded) {
                    done += 1;
                }
            }
            Ok(if done == ids.len() {
                Ok(())
            } else {
                Err(format!("{done} succeeded"))
            })
        },
    )
    .await
}

/// Waits until `n` worker processes of this env report `running`.
async fn wait_workers(env: &TestEnv, n: usize) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} workers running"),
        || async {
            let running = env
                .store
                .workers()
                .await?
                .iter()
                .filter(|w| w.state == "running")
                .count();
            Ok(if running == n {
                Ok(())
            } else {
                Err(format!("{running} running"))
            })
        },
    )
    .await
}

async fn enqueue(client: &Client, queue: &str, n: usize, ms: u64) -> anyhow::Result<Vec<JobId>> {
    let jobs = (0..n).map(|_| NewJob::new("warren.sleep", &json!({ "ms": ms })).queue(queue));
    client
        .enqueue_many(jobs)
        .await
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_waits_across_the_fleet_and_runs_after_resume() -> anyhow::Result<()> {
    with_env(&["default", "other"], async |env| {
        let client = Client::from_broker(env.broker.clone()).await?;
        // One worker before the pause, one started while it holds: both must honour it.
        let mut first = WorkerProcess::spawn(env, "a", &["--concurrency", "2"])?;
        wait_workers(env, 1).await?;

        let run = warren(env, &["queues", "pause", "default"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        ensure!(run.stdout.contains("paused queue `default`"), "{run:?}");
        // A worker serves `default`: no note.
        ensure!(!run.stdout.contains("note:"), "{run:?}");
        let again = warren(env, &["queues", "pause", "default", "--json"]).await?;
        ensure!(
            again.json()?
                == json!({"queue": "default", "paused": true, "changed": false, "known": true}),
            "{again:?}"
        );
        // A name nothing knows is paused (a worker started later honours it), but said to be
        // unknown, in case it is a typo.
        let typo = warren(env, &["queues", "pause", "defualt"]).await?;
        ensure!(
            typo.code == Some(0)
                && typo
                    .stdout
                    .contains("note: no job, worker or pause has named queue `defualt`")
                && typo.stdout.contains("warren queues resume defualt"),
            "{typo:?}"
        );
        let undone = warren(env, &["queues", "resume", "defualt", "--json"]).await?;
        ensure!(
            undone.json()?
                == json!({"queue": "defualt", "paused": false, "changed": true, "known": true}),
            "{undone:?}"
        );
        let mut second = WorkerProcess::spawn(env, "b", &["--concurrency", "2"])?;
        wait_workers(env, 2).await?;

        let waiting = enqueue(&client, "default", 20, 10).await?;
        // The other queue keeps flowing: once these ran on both workers, the paused jobs have
        // had every chance to start.
        let markers = enqueue(&client, "other", 8, 200).await?;
        wait_succeeded(env, &markers).await?;
        wait_ready(env, "default", 20).await?;
        for id in &waiting {
            ensure!(
                env.store.job(*id).await?.is_none(),
                "job {id} started while its queue was paused"
            );
        }

        let queues = warren(env, &["queues", "list", "--json"]).await?.json()?;
        let default = queues
            .as_array()
            .and_then(|a| a.iter().find(|q| q["queue"] == "default"))
            .context("default queue listed")?;
        ensure!(default["paused"] == true, "{queues}");
        ensure!(default["ready"] == 20, "{queues}");
        let workers = warren(env, &["workers"]).await?;
        ensure!(
            workers.stdout.matches("default(paused)").count() == 2,
            "{workers:?}"
        );

        let run = warren(env, &["queues", "resume", "default"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        ensure!(run.stdout.contains("resumed queue `default`"), "{run:?}");
        wait_succeeded(env, &waiting).await?;
        let queues = warren(env, &["queues", "show", "default", "--json"])
            .await?
            .json()?;
        ensure!(queues[0]["paused"] == false, "{queues}");

        for worker in [&mut first, &mut second] {
            worker.signal("TERM").await?;
            ensure!(worker.wait(Duration::from_secs(30)).await? == Some(0));
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_lets_running_jobs_finish_and_returns_prefetched_ones() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let client = Client::from_broker(env.broker.clone()).await?;
        let mut worker =
            WorkerProcess::spawn(env, "a", &["--concurrency", "1", "--prefetch", "4"])?;
        wait_workers(env, 1).await?;
        let ids = enqueue(&client, "default", 4, 2_000).await?;
        // The first is running; the other three sit in the worker's prefetch buffer.
        wait_until(Duration::from_secs(30), "a job to start", || async {
            let running = env.store.job(ids[0]).await?.map(|j| j.state);
            Ok(if running == Some(JobState::Running) {
                Ok(())
            } else {
                Err(format!("{running:?}"))
            })
        })
        .await?;
        ensure!(
            ready(env, "default").await? == 0,
            "all four were prefetched"
        );

        let run = warren(env, &["queues", "pause", "default"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        // The prefetched three go back to RabbitMQ; the running one finishes and is acked.
        wait_ready(env, "default", 3).await?;
        wait_succeeded(env, &ids[..1]).await?;
        for id in &ids[1..] {
            ensure!(env.store.job(*id).await?.is_none(), "{id} ran while paused");
        }

        warren(env, &["queues", "resume", "default"]).await?;
        wait_succeeded(env, &ids).await?;
        worker.signal("TERM").await?;
        ensure!(worker.wait(Duration::from_secs(30)).await? == Some(0));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn purge_records_every_purged_job_and_parks_what_it_cannot_read() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let client = Client::from_broker(env.broker.clone()).await?;
        let ids = enqueue(&client, "default", 30, 1).await?;
        let publisher = env.broker.publisher().await?;
        let mut no_id = warren_core::RawMessage {
            message_id: None,
            content_type: Some("application/json".to_owned()),
            timestamp: None,
            headers: Default::default(),
            body: b"{}".to_vec(),
        };
        no_id.headers.insert(
            warren_core::message::HEADER_TASK.to_owned(),
            warren_core::HeaderValue::Str("warren.echo".to_owned()),
        );
        publisher.publish("default", &no_id).await?;
        wait_ready(env, "default", 31).await?;

        // Without a terminal there is nobody to say yes: refused, nothing touched.
        let refused = warren(env, &["queues", "purge", "default"]).await?;
        ensure!(refused.code == Some(2), "{refused:?}");
        ensure!(refused.stderr.contains("--yes"), "{refused:?}");
        ensure!(ready(env, "default").await? == 31);

        let plan = warren(env, &["queues", "purge", "default", "--dry-run", "--json"]).await?;
        ensure!(
            plan.json()? == json!({"queue": "default", "ready": 31}),
            "{plan:?}"
        );
        ensure!(ready(env, "default").await? == 31);

        let run = warren(env, &["queues", "purge", "default", "--yes", "--json"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        ensure!(
            run.json()?
                == json!({"queue": "default", "cancelled": 30, "already_final": 0, "parked": 1, "interrupted": false}),
            "{run:?}"
        );
        ensure!(ready(env, "default").await? == 0);
        for id in &ids {
            let job = env.store.job(*id).await?.context("purged job has a row")?;
            ensure!(job.state == JobState::Cancelled, "{job:?}");
            ensure!(job.started_at.is_none(), "{job:?}");
            let reason = job.errors.last().map(|e| e.message.clone()).unwrap_or_default();
            ensure!(reason.contains("purged from queue `default`"), "{reason}");
        }
        let parked = warren(env, &["dlq", "list", "--json"]).await?.json()?;
        ensure!(parked.as_array().map(Vec::len) == Some(1), "{parked}");

        let missing = warren(env, &["queues", "purge", "nope", "--yes"]).await?;
        ensure!(missing.code == Some(3), "{missing:?}");
        Ok(())
    })
    .await
}

fn line<'a>(list: &'a Value, queue: &str) -> anyhow::Result<&'a Value> {
    list.as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == queue))
        .with_context(|| format!("{queue} in {list}"))
}

#[tokio::test]
async fn unacked_counts_and_rates_come_from_the_management_api_when_it_answers()
-> anyhow::Result<()> {
    with_env(&["default", "reports"], async |env| {
        let client = Client::from_broker(env.broker.clone()).await?;
        enqueue(&client, "default", 3, 1).await?;
        // A paused queue is listed even before anything ran on it.
        warren(env, &["queues", "pause", "default"]).await?;
        // `reports` is a queue only RabbitMQ knows: declared (by the env), never served, and
        // no job row names it.
        enqueue(&client, "reports", 2, 1).await?;

        let vars = [
            ("WARREN_AMQP_URL", env.amqp_url.as_str()),
            ("WARREN_DATABASE_URL", env.database_url.as_str()),
            ("WARREN_NAMESPACE", env.namespace()),
            ("WARREN_RABBITMQ_API_URL", API_URL),
        ];
        // The API refreshes its figures every few seconds (collect_statistics_interval).
        let list = wait_until(
            Duration::from_secs(30),
            "the API to count 3 ready",
            || async {
                let run = warren_with(&vars, &["queues", "list", "--json"]).await?;
                ensure!(run.code == Some(0), "{run:?}");
                let list = run.json()?;
                let q = line(&list, "default")?;
                ensure!(q["broker_stats"] == "management", "{list}");
                let reports = line(&list, "reports")?;
                Ok(if q["ready"] == 3 && reports["ready"] == 2 {
                    Ok(list)
                } else {
                    Err(list.to_string())
                })
            },
        )
        .await?;
        let q = line(&list, "default")?;
        ensure!(q["unacked"] == 0 && q["consumers"] == 0, "{list}");
        ensure!(q["publish_rate"].is_number(), "{list}");

        // Without the API: a passive declare, and the columns it cannot fill marked n/a.
        let run = warren(env, &["queues", "list"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        ensure!(run.stdout.contains("n/a"), "{run:?}");
        let list = warren(env, &["queues", "list", "--json"]).await?.json()?;
        let q = line(&list, "default")?;
        ensure!(
            q["broker_stats"] == "amqp" && q["unacked"].is_null(),
            "{list}"
        );
        ensure!(q["ready"] == 3, "{list}");
        // AMQP cannot list queues: the one only RabbitMQ knows is left out.
        ensure!(line(&list, "reports").is_err(), "{list}");

        // An API that does not answer is a warning, not a failure.
        let vars = [
            ("WARREN_AMQP_URL", env.amqp_url.as_str()),
            ("WARREN_DATABASE_URL", env.database_url.as_str()),
            ("WARREN_NAMESPACE", env.namespace()),
            ("WARREN_RABBITMQ_API_URL", "http://127.0.0.1:1"),
        ];
        let run = warren_with(&vars, &["queues", "list", "--json"]).await?;
        ensure!(run.code == Some(0), "{run:?}");
        ensure!(
            run.stderr.contains("management API") && run.stderr.contains("n/a"),
            "{run:?}"
        );
        ensure!(line(&run.json()?, "default")?["broker_stats"] == "amqp");
        Ok(())
    })
    .await
}
