//! Built-in diagnostic tasks, for demos, benchmarks and tests:
//!
//! | task | payload | does |
//! | --- | --- | --- |
//! | `warren.noop` | anything | nothing; returns `null` |
//! | `warren.echo` | anything | returns the payload |
//! | `warren.sleep` | `{"ms": N}` | sleeps N ms (stops early when cancelled) |
//! | `warren.fail` | `{"times": N}` or `{"permanent": true}` | fails attempts 1..=N with a retryable error, then succeeds; or fails permanently |
//! | `warren.panic` | anything | panics (to show panics are recorded, not fatal) |
//! | `warren.abort` | anything | aborts the whole process; only with `--enable-crash-task` |

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use warren_runtime::{JobContext, JobError, WorkerBuilder};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepPayload {
    pub ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailPayload {
    #[serde(default)]
    pub times: u32,
    #[serde(default)]
    pub permanent: bool,
}

/// Registers every built-in task on `builder`.
pub fn register_builtins(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .register("warren.noop", |_ctx: JobContext, _payload: Value| async {
            Ok::<_, JobError>(Value::Null)
        })
        .register(
            "warren.echo",
            |_ctx: JobContext, payload: Value| async move { Ok::<_, JobError>(payload) },
        )
        .register("warren.sleep", sleep)
        .register("warren.fail", fail)
        .register("warren.panic", panic)
}

async fn sleep(ctx: JobContext, payload: SleepPayload) -> Result<Value, JobError> {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(payload.ms)) => Ok(json!({ "slept_ms": payload.ms })),
        () = ctx.cancelled() => Err(JobError::retryable("sleep cancelled")),
    }
}

/// `warren.fail`: public so tests can register it with a retry policy of their own.
pub async fn fail(ctx: JobContext, payload: FailPayload) -> Result<Value, JobError> {
    if payload.permanent {
        return Err(JobError::permanent(
            "warren.fail: asked to fail permanently",
        ));
    }
    if ctx.attempt <= payload.times {
        return Err(JobError::retryable(format!(
            "warren.fail: failing attempt {} of the first {}",
            ctx.attempt, payload.times
        )));
    }
    Ok(json!({ "succeeded_on_attempt": ctx.attempt }))
}

/// Registers `warren.abort`, which kills the worker process outright. It exists to prove that
/// a message that crashes its worker is dead-lettered by the broker after `x-delivery-limit`
/// deliveries instead of looping forever; never enable it in production.
pub fn register_crash_task(builder: WorkerBuilder) -> WorkerBuilder {
    builder.register(
        "warren.abort",
        |_ctx: JobContext, _payload: Value| async move {
            tracing::error!("warren.abort: aborting the process as asked");
            std::process::abort();
            #[allow(unreachable_code, reason = "gives the closure its return type")]
            Ok::<Value, JobError>(Value::Null)
        },
    )
}

async fn panic(_ctx: JobContext, _payload: Value) -> Result<Value, JobError> {
    panic!("warren.panic was asked to panic")
}
