//! Typed tasks end to end: a payload type names its task, the client enqueues values of it,
//! the worker registers its handler by type, and the handler's output is the job's result.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_runtime::{JobContext, JobError, Task, Worker};
use warren_testkit::TestEnv;

use crate::support::wait_all_terminal;

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

impl Task for Add {
    const NAME: &'static str = "math.add";
    const QUEUE: &'static str = "math";
    type Output = i64;

    fn retry_policy() -> warren_core::RetryPolicy {
        warren_core::RetryPolicy {
            max_attempts: 2,
            ..warren_core::RetryPolicy::default()
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Shout {
    text: String,
}

impl Task for Shout {
    const NAME: &'static str = "text.shout";
    const QUEUE: &'static str = "math";
    type Output = String;
}

async fn add(_ctx: JobContext, job: Add) -> Result<i64, JobError> {
    job.a
        .checked_add(job.b)
        .ok_or_else(|| JobError::permanent("overflow"))
}

async fn shout(_ctx: JobContext, job: Shout) -> Result<String, JobError> {
    Ok(job.text.to_uppercase())
}

#[tokio::test]
async fn typed_tasks_run_and_record_their_output() -> anyhow::Result<()> {
    let env = TestEnv::new(&["math"]).await?;
    let builder = Worker::builder().task::<Add>(add).task::<Shout>(shout);
    let worker = env.start_worker(builder, env.worker_config("w1")).await?;
    let client = Client::connect(env.broker_config.clone()).await?;

    let sum = client.enqueue(Add { a: 2, b: 40 }).await?;
    let loud = client
        .enqueue(NewJob::of(&Shout { text: "hi".into() }))
        .await?;
    let overflow = client.enqueue(Add { a: i64::MAX, b: 1 }).await?;
    let rows =
        wait_all_terminal(&env.store, &[sum, loud, overflow], Duration::from_secs(30)).await?;
    assert_eq!(rows[&sum].state, JobState::Succeeded);
    assert_eq!(rows[&sum].result, Some(json!(42)));
    assert_eq!(rows[&sum].queue, "math", "the task's queue");
    assert_eq!(rows[&sum].max_attempts, 2, "the task's retry policy");
    assert_eq!(rows[&loud].result, Some(json!("HI")));
    assert_eq!(rows[&overflow].state, JobState::Dead);

    // Every problem of a job is reported at once, before anything is sent.
    let err = client
        .enqueue(
            NewJob::of(&Shout { text: "x".into() })
                .max_attempts(0)
                .queue("no such"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_attempts:") && err.contains("queue:"),
        "{err}"
    );
    worker.stop().await?;
    env.cleanup().await
}
