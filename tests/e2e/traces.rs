//! Trace context end to end: a job enqueued with a `traceparent` runs in a `job` span that is
//! the child of that parent, in the JSON logs of the real `warren-worker` binary and in the
//! spans it exports over OTLP/HTTP to a receiver in this test.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use warren_client::{Client, NewJob};
use warren_core::{JobState, TraceParent};
use warren_testkit::{TestEnv, bin_path, wait_until};

use crate::support::wait_state;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver on 127.0.0.1: keeps every span POSTed to /v1/traces.
async fn otlp_receiver() -> anyhow::Result<(String, Arc<Mutex<Vec<Span>>>)> {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut kept = kept.lock().expect("lock");
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        kept.extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), spans))
}

/// The real worker binary with JSON logs at info and OTLP export to `endpoint`; its stderr
/// lines are collected into the returned list.
fn spawn_worker(env: &TestEnv, endpoint: &str) -> anyhow::Result<(Child, Arc<Mutex<Vec<String>>>)> {
    let queues: Vec<String> = env.queues.iter().map(ToString::to_string).collect();
    let mut child = Command::new(bin_path("warren-worker")?)
        .args(["--amqp-url", &env.amqp_url])
        .args(["--database-url", &env.database_url])
        .args(["--namespace", env.namespace()])
        .args(["--queues", &queues.join(",")])
        .args(["--worker-id", &format!("{}-traces", env.name)])
        .args(["--log-format", "json"])
        .env_remove("WARREN_MIGRATE")
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        // Export each batch within half a second rather than the default five.
        .env("OTEL_BSP_SCHEDULE_DELAY", "500")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting warren-worker")?;
    let stderr = child.stderr.take().context("worker stderr")?;
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().expect("lock").push(line);
        }
    });
    Ok((child, lines))
}

/// The JSON log lines that carry `job_id` at the top level.
fn job_lines(lines: &Mutex<Vec<String>>, job_id: &str) -> Vec<Value> {
    lines
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["job_id"] == job_id)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_becomes_the_job_spans_parent_in_logs_and_exported_spans() -> anyhow::Result<()>
{
    let env = TestEnv::new(&["default"]).await?;
    let (endpoint, spans) = otlp_receiver().await?;
    let (mut worker, lines) = spawn_worker(&env, &endpoint)?;
    let client = Client::from_broker(env.broker.clone()).await?;

    // A job that fails permanently, so that the worker logs `job is dead` inside its span.
    let traced = client
        .enqueue(
            NewJob::new("warren.fail", &json!({ "permanent": true }))
                .max_attempts(1)
                .trace(&format!("00-{TRACE_ID}-{PARENT_ID}-01"), None),
        )
        .await?;
    // A job enqueued without a trace context: the client gives it a fresh one.
    let untraced = client
        .enqueue(NewJob::new("warren.fail", &json!({ "permanent": true })).max_attempts(1))
        .await?;
    wait_state(&env.store, traced, JobState::Dead).await?;
    let row = wait_state(&env.store, untraced, JobState::Dead).await?;
    let fresh = row
        .traceparent
        .as_deref()
        .and_then(TraceParent::parse)
        .context("the client gave the untraced job a traceparent")?;
    assert_ne!(fresh.trace_id_hex(), TRACE_ID);

    for (job, trace_id, parent_id) in [
        (traced, TRACE_ID.to_owned(), PARENT_ID.to_owned()),
        (untraced, fresh.trace_id_hex(), fresh.parent_id_hex()),
    ] {
        let job_id = job.to_string();
        let logged = wait_until(
            Duration::from_secs(30),
            &format!("JSON log lines of job {job_id}"),
            || async {
                let found = job_lines(&lines, &job_id);
                Ok(
                    if found
                        .iter()
                        .any(|l| l["fields"]["message"] == "job is dead")
                    {
                        Ok(found)
                    } else {
                        Err(format!("{} lines so far", found.len()))
                    },
                )
            },
        )
        .await?;
        for line in &logged {
            assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
            // The job span itself, in the formatter's list, names the parent span.
            let span = line["spans"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "job"))
                .with_context(|| format!("no job span in {line}"))?;
            assert_eq!(span["trace_id"], trace_id.as_str(), "{line}");
            assert_eq!(span["parent_span_id"], parent_id.as_str(), "{line}");
            assert_eq!(span["job.id"], job_id.as_str(), "{line}");
        }

        let exported = wait_until(
            Duration::from_secs(30),
            &format!("the job span of {job_id} at the OTLP receiver"),
            || async {
                let spans = spans.lock().expect("lock");
                Ok(
                    match spans
                        .iter()
                        .find(|s| s.name == "job" && hex(&s.trace_id) == trace_id)
                    {
                        Some(span) => Ok(span.clone()),
                        None => Err(format!("{} spans received", spans.len())),
                    },
                )
            },
        )
        .await?;
        assert_eq!(hex(&exported.parent_span_id), parent_id);
        assert_ne!(
            hex(&exported.span_id),
            parent_id,
            "the job span is a span of its own"
        );
    }

    worker.start_kill()?;
    worker.wait().await?;
    env.cleanup().await
}

/// `warren enqueue`, the real binary, with `--json`; returns the new job's id.
async fn cli_enqueue(env: &TestEnv, extra: &[&str]) -> anyhow::Result<warren_core::JobId> {
    let out = Command::new(bin_path("warren")?)
        .args(["enqueue", "warren.noop", "--payload", "{}", "--json"])
        .args(extra)
        .env("WARREN_AMQP_URL", &env.amqp_url)
        .env("WARREN_NAMESPACE", env.namespace())
        .env_remove("TRACEPARENT")
        .stdin(Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "warren enqueue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    Ok(report["ids"][0]
        .as_str()
        .context("an id in the JSON report")?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_carries_a_traceparent_and_gives_jobs_without_one_a_fresh_trace()
-> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let worker = crate::support::builtin_worker(&env).await?;
    let given = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let traced = cli_enqueue(&env, &["--traceparent", &given]).await?;
    let first = cli_enqueue(&env, &[]).await?;
    let second = cli_enqueue(&env, &[]).await?;

    let row = wait_state(&env.store, traced, JobState::Succeeded).await?;
    assert_eq!(row.traceparent.as_deref(), Some(given.as_str()));
    let mut fresh = Vec::new();
    for id in [first, second] {
        let row = wait_state(&env.store, id, JobState::Succeeded).await?;
        let tp = row
            .traceparent
            .as_deref()
            .and_then(TraceParent::parse)
            .with_context(|| format!("job {id} has no valid traceparent: {row:?}"))?;
        assert!(tp.is_sampled());
        fresh.push(tp.trace_id_hex());
    }
    assert_ne!(fresh[0], fresh[1], "each job gets a trace of its own");
    assert!(!fresh.contains(&TRACE_ID.to_owned()));

    worker.stop().await?;
    env.cleanup().await
}
