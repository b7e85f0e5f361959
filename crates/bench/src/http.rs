//! `--http`: the HTTP producer's enqueue rate and latency, beside the library's in the same
//! run (issue 9's targets).
//!
//! The service is the real `warren_producer::router()` served in-process on a loopback port,
//! on a RabbitMQ connection of its own, exactly as `warren-producer` builds it (without a
//! database: jobs without a delay or key never touch one). The library figures come from a
//! `warren_client::Client` on a second connection, as another process would have. Nothing
//! consumes: this measures enqueueing, up to RabbitMQ's confirm, and nothing after it.
//!
//! In order, each after a warm-up:
//!
//! 1. the library's `enqueue_many`, `--concurrency` callers each sending batches of
//!    `--http-batch` jobs: the denominator of the ratios;
//! 2. the library's one-job `enqueue`, the same number of callers: what a single request
//!    costs underneath, one confirm round trip per caller at a time;
//! 3. `POST /v1/jobs` from `--concurrency` keep-alive connections, each sending its next
//!    request when the last is answered: the single-request saturation rate;
//! 4. `POST /v1/jobs/batch` the same way, `--http-batch` jobs a request;
//! 5. `POST /v1/jobs` at half the rate measured in 3, open loop: every connection sends on a
//!    fixed schedule, staggered so that the whole load is evenly spread, and each latency is
//!    counted from the moment the request was *due*, so a slow answer that delays the next
//!    request shows up in that request's latency instead of hiding it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_producer::auth::{Tokens, new_token};
use warren_producer::contracts::Contracts;
use warren_producer::{AppState, Limits, no_delay, router};

use crate::report::{Latency, Measure, Phase, Report};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

/// Key of this scenario's phase.
pub(crate) const HTTP: &str = "http";

const LIBRARY_MANY: &str = "library_enqueue_many";
const LIBRARY_ONE: &str = "library_enqueue";
const SINGLE: &str = "single";
const BATCH: &str = "batch";
const PACED: &str = "single_half_rate";
const LIBRARY_PACED: &str = "library_enqueue_half_rate";

/// Issue 9's targets.
const SINGLE_TARGET_PERCENT: f64 = 50.0;
const BATCH_TARGET_PERCENT: f64 = 90.0;
const PACED_P99_TARGET_MS: f64 = 10.0;

/// Measures the five loads above in `sandbox`, until done or `stop`ped.
pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Phase> {
    let library = sandbox.connect("library").await?;
    let service = sandbox.connect("http producer").await?;
    let measured = stoppable(stop, drive(settings, &library, &service)).await;
    library.close().await;
    service.close().await;
    measured
}

async fn drive(
    settings: &Settings,
    library: &warren_broker::Broker,
    service: &warren_broker::Broker,
) -> anyhow::Result<Phase> {
    let server = Server::start(service).await?;
    let measured = run_loads(settings, library, &server).await;
    server.stop().await;
    measured
}

/// The producer service on a loopback port, and a token it accepts.
struct Server {
    addr: SocketAddr,
    authorization: HeaderValue,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(broker: &warren_broker::Broker) -> anyhow::Result<Server> {
        let client = Client::from_broker(broker.clone())
            .await
            .context("opening the producer's publishing channel")?;
        let (token, line) = new_token("bench", &[]).map_err(anyhow::Error::msg)?;
        let tokens = Tokens::parse(&line, "the benchmark's token").map_err(anyhow::Error::msg)?;
        // The repository's own contracts, as the service loads them by default.
        let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/payloads");
        let contracts = Contracts::load(schemas.as_ref(), false).map_err(anyhow::Error::msg)?;
        let state = AppState::new(client, None, tokens, contracts, Limits::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port for the producer")?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                axum::serve(listener.tap_io(no_delay), router(state))
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });
        Ok(Server {
            addr,
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))?,
            stop,
            task,
        })
    }

    /// Stops the service; by then every client connection is closed, so this is quick.
    async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("the producer did not stop within 5 s");
        }
    }
}

/// Jobs sent, how long it took, and each request's latency in milliseconds.
struct Run {
    jobs: u64,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn measure(mut self, key: &'static str, label: &'static str) -> Measure {
        Measure {
            key,
            label,
            jobs_per_sec: Some(self.rate()),
            latency: Latency::of(&mut self.latencies_ms),
        }
    }
}

async fn run_loads(
    settings: &Settings,
    library: &warren_broker::Broker,
    server: &Server,
) -> anyhow::Result<Phase> {
    let clients = settings.concurrency;
    let batch = settings.http_batch;
    let payload = payload(settings.payload_bytes);
    let client = Client::from_broker(library.clone())
        .await
        .context("opening the library's publishing channel")?;
    let job = NewJob::new(TASK, &payload).queue(QUEUE);
    let one = json!({"task": TASK, "payload": &payload, "queue": QUEUE});
    let single_body = Bytes::from(one.to_string());
    let batch_body = Bytes::from(json!({ "jobs": vec![one; batch] }).to_string());

    let per_client = (settings.jobs / clients as u64).max(1);
    let batches_per_client = (settings.jobs / (clients * batch) as u64).max(1);
    let warm_per_client = (settings.warmup / clients as u64).max(1);

    library_one(&client, &job, clients, warm_per_client, None).await?;
    let many = library_many(&client, &job, clients, batch, batches_per_client).await?;
    let one_by_one = library_one(&client, &job, clients, per_client, None).await?;

    let single = Load {
        path: "/v1/jobs",
        body: single_body,
        jobs_per_request: 1,
        requests_per_client: warm_per_client,
        pace: None,
    };
    http(server, clients, single.clone()).await?;
    let saturated = http(
        server,
        clients,
        Load {
            requests_per_client: per_client,
            ..single.clone()
        },
    )
    .await?;
    let batched = http(
        server,
        clients,
        Load {
            path: "/v1/jobs/batch",
            body: batch_body,
            jobs_per_request: batch as u64,
            requests_per_client: batches_per_client,
            pace: None,
        },
    )
    .await?;
    // Half the saturation rate, spread over the connections; half as many requests, so the
    // paced run lasts about as long as the saturated one.
    let half_rate = saturated.rate() / 2.0;
    let paced = http(
        server,
        clients,
        Load {
            requests_per_client: (per_client / 2).max(1),
            pace: Some(Duration::from_secs_f64(clients as f64 / half_rate)),
            ..single
        },
    )
    .await?;
    // The library at the same pace and on as many callers: each call's publish-to-confirm
    // latency, the floor under the HTTP figure (RabbitMQ's confirm of a quorum-queue write).
    let library_paced = library_one(
        &client,
        &job,
        clients,
        (per_client / 2).max(1),
        Some(Duration::from_secs_f64(clients as f64 / half_rate)),
    )
    .await?;

    Ok(Phase {
        key: HTTP,
        title: "HTTP producer, single saturated",
        jobs: saturated.jobs,
        elapsed: saturated.elapsed,
        measures: vec![
            many.measure(LIBRARY_MANY, "library enqueue_many (batches)"),
            one_by_one.measure(LIBRARY_ONE, "library enqueue (one per call)"),
            saturated.measure(SINGLE, "HTTP single, saturated"),
            batched.measure(BATCH, "HTTP batch (per request)"),
            paced.measure(PACED, "HTTP single at half that rate"),
            library_paced.measure(LIBRARY_PACED, "library enqueue at that rate"),
        ],
    })
}

/// `callers` tasks, each enqueueing `batches` batches of `batch` jobs with `enqueue_many`.
async fn library_many(
    client: &Client,
    job: &NewJob,
    callers: usize,
    batch: usize,
    batches: u64,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let (client, job) = (client.clone(), job.clone());
        tasks.spawn(async move {
            for _ in 0..batches {
                for outcome in client.enqueue_many(vec![job.clone(); batch]).await {
                    outcome.context("library enqueue_many")?;
                }
            }
            anyhow::Ok(())
        });
    }
    join_all(tasks).await?;
    Ok(Run {
        jobs: callers as u64 * batches * batch as u64,
        elapsed: start.elapsed(),
        latencies_ms: Vec::new(),
    })
}

/// `callers` tasks, each enqueueing `per_caller` jobs one `enqueue` at a time: back to back,
/// or one every `pace` staggered like the paced HTTP connections, recording each call's
/// latency from its due time.
async fn library_one(
    client: &Client,
    job: &NewJob,
    callers: usize,
    per_caller: u64,
    pace: Option<Duration>,
) -> anyhow::Result<Run> {
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..callers {
        let (client, job) = (client.clone(), job.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for k in 0..per_caller {
                let due = pace.map(|pace| {
                    start
                        + pace.mul_f64(i as f64 / callers as f64)
                        + pace * u32::try_from(k).unwrap_or(u32::MAX)
                });
                if let Some(due) = due {
                    tokio::time::sleep_until(due).await;
                }
                client
                    .enqueue(job.clone())
                    .await
                    .context("library enqueue")?;
                if let Some(due) = due {
                    latencies.push(due.elapsed().as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok(latencies)
        });
    }
    let latencies_ms: Vec<f64> = join_all(tasks).await?.into_iter().flatten().collect();
    Ok(Run {
        jobs: callers as u64 * per_caller,
        elapsed: start.elapsed(),
        latencies_ms,
    })
}

async fn join_all<T: 'static>(mut tasks: JoinSet<anyhow::Result<T>>) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        all.push(done.context("a load task panicked")??);
    }
    Ok(all)
}

/// One kind of HTTP load: `requests_per_client` POSTs of `body` to `path` on every
/// connection, back to back, or one every `pace` when given.
#[derive(Clone)]
struct Load {
    path: &'static str,
    body: Bytes,
    jobs_per_request: u64,
    requests_per_client: u64,
    pace: Option<Duration>,
}

/// Runs `load` on `clients` keep-alive connections, opened before the clock starts.
async fn http(server: &Server, clients: usize, load: Load) -> anyhow::Result<Run> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(server).await?);
    }
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let load = load.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(load.requests_per_client as usize);
            // Connection i starts i/clients of a period late, so the load is even.
            let first = load
                .pace
                .map(|pace| start + pace.mul_f64(i as f64 / clients as f64));
            for k in 0..load.requests_per_client {
                let due = match (first, load.pace) {
                    (Some(first), Some(pace)) => {
                        let due = first + pace * u32::try_from(k).unwrap_or(u32::MAX);
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    _ => tokio::time::Instant::now(),
                };
                conn.post(load.path, load.body.clone()).await?;
                latencies.push(due.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let latencies_ms: Vec<f64> = join_all(tasks).await?.into_iter().flatten().collect();
    Ok(Run {
        jobs: latencies_ms.len() as u64 * load.jobs_per_request,
        elapsed: start.elapsed(),
        latencies_ms,
    })
}

/// A keep-alive HTTP/1.1 connection to the service.
///
/// The connection's I/O future is polled by the task that sends the requests rather than by
/// a task of its own: the load generator shares two cores with the service and RabbitMQ, and
/// a second task per connection would add a wake-up to every request.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    authorization: HeaderValue,
}

impl Conn {
    async fn open(server: &Server) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(server.addr)
            .await
            .context("connecting to the producer")?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the producer")?;
        Ok(Conn {
            sender,
            connection: Box::pin(connection),
            authorization: server.authorization.clone(),
        })
    }

    /// Sends one POST and fails unless every job in it was accepted.
    async fn post(&mut self, path: &'static str, body: Bytes) -> anyhow::Result<()> {
        let request = hyper::Request::post(path)
            .header(HOST, "bench")
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::select! {
            answered = exchange => answered?,
            closed = self.connection.as_mut() => {
                closed.context("the connection to the producer failed")?;
                anyhow::bail!("the producer closed the connection");
            }
        };
        // A batch answers 200 with a count of failures; looking for it in the text keeps the
        // load generator's CPU (which the service and RabbitMQ share) off JSON parsing.
        let accepted = status == 202 || (status == 200 && contains(&body, br#""failed":0"#));
        anyhow::ensure!(
            accepted,
            "POST {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The scenario's verdicts: each HTTP rate as a percentage of the library's in the same
/// run, and the latency target, as table lines and as JSON. `None` for a run without the
/// HTTP phase.
pub(crate) fn summary(report: &Report<'_>) -> Option<(String, Value)> {
    let phase = report.phases.iter().find(|p| p.key == HTTP)?;
    let get = |key: &str| phase.measures.iter().find(|m| m.key == key);
    let rate = |key: &str| get(key).and_then(|m| m.jobs_per_sec);
    let many = rate(LIBRARY_MANY)?;
    let percent = |key: &str| rate(key).map(|r| 100.0 * r / many.max(f64::EPSILON));
    let single = percent(SINGLE)?;
    let batch = percent(BATCH)?;
    let single_of_one = 100.0 * rate(SINGLE)? / rate(LIBRARY_ONE)?.max(f64::EPSILON);
    let p99 = get(PACED)?.latency?.p99_ms;
    let floor_p99 = get(LIBRARY_PACED).and_then(|m| m.latency).map(|l| l.p99_ms);
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let lines = [
        format!(
            "HTTP single / enqueue_many     {single:>8.1}%  (target >= {SINGLE_TARGET_PERCENT}%: {})",
            verdict(single >= SINGLE_TARGET_PERCENT)
        ),
        format!(
            "HTTP batch / enqueue_many      {batch:>8.1}%  (target >= {BATCH_TARGET_PERCENT}%: {})",
            verdict(batch >= BATCH_TARGET_PERCENT)
        ),
        format!("HTTP single / library enqueue  {single_of_one:>8.1}%"),
        format!(
            "p99 at half saturation         {p99:>6.1} ms  (target <= {PACED_P99_TARGET_MS} ms: {})",
            verdict(p99 <= PACED_P99_TARGET_MS)
        ),
    ]
    .into_iter()
    .chain(floor_p99.map(|f| format!("  library enqueue p99 at that rate {f:>6.1} ms  (the broker's confirm, the floor)")))
    .collect::<Vec<_>>();
    let text = lines.iter().map(|l| format!("{l}\n")).collect();
    let json = json!({
        "single_percent_of_enqueue_many": single,
        "batch_percent_of_enqueue_many": batch,
        "single_percent_of_enqueue": single_of_one,
        "half_rate_p99_ms": p99,
        "library_half_rate_p99_ms": floor_p99,
        "single_target_met": single >= SINGLE_TARGET_PERCENT,
        "batch_target_met": batch >= BATCH_TARGET_PERCENT,
        "latency_target_met": p99 <= PACED_P99_TARGET_MS,
    });
    Some((text, json))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn rate(key: &'static str, jobs_per_sec: f64, latency: Option<Latency>) -> Measure {
        Measure {
            key,
            label: key,
            jobs_per_sec: Some(jobs_per_sec),
            latency,
        }
    }

    #[test]
    fn verdicts_compare_each_http_rate_with_enqueue_many_of_the_same_run() {
        let settings = crate::settings::Args::try_parse_from(["warren-bench", "--http"])
            .map_err(|e| e.to_string())
            .and_then(crate::settings::Args::validate)
            .expect("valid flags");
        let latency = |p99_ms| {
            Some(Latency {
                p50_ms: 1.0,
                p99_ms,
            })
        };
        let report = Report {
            settings: &settings,
            phases: vec![Phase {
                key: HTTP,
                title: "http",
                jobs: 4_000,
                elapsed: Duration::from_secs(1),
                measures: vec![
                    rate(LIBRARY_MANY, 10_000.0, None),
                    rate(LIBRARY_ONE, 5_000.0, None),
                    rate(SINGLE, 4_000.0, latency(30.0)),
                    rate(BATCH, 9_500.0, latency(200.0)),
                    rate(PACED, 2_000.0, latency(12.5)),
                ],
            }],
        };
        let (text, json) = summary(&report).expect("the HTTP phase is there");
        assert_eq!(json["single_percent_of_enqueue_many"], 40.0);
        assert_eq!(json["batch_percent_of_enqueue_many"], 95.0);
        assert_eq!(json["single_percent_of_enqueue"], 80.0);
        assert_eq!(json["half_rate_p99_ms"], 12.5);
        assert_eq!(json["single_target_met"], false);
        assert_eq!(json["batch_target_met"], true);
        assert_eq!(json["latency_target_met"], false);
        assert!(text.contains("40.0%") && text.contains("12.5 ms"), "{text}");
        let other = Report {
            settings: &settings,
            phases: Vec::new(),
        };
        assert!(summary(&other).is_none());
    }

    #[test]
    fn batch_answers_are_recognised_by_their_failure_count() {
        assert!(contains(
            br#"{"accepted":100,"failed":0,"results":[]}"#,
            br#""failed":0"#
        ));
        assert!(!contains(
            br#"{"accepted":99,"failed":1,"results":[]}"#,
            br#""failed":0"#
        ));
    }
}
