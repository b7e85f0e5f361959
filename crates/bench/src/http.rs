//! `--http`: the HTTP producer's enqueue rate and latency, beside the library's in the same
//! run (issue 9's targets).
//!
//! The service is the real `warren_producer::router()` served in-process on a loopback port,
//! on a RabbitMQ connection of its own, exactly as `warren-producer` builds it (without a
//! database: jobs without a delay or key never touch one). The library figures come from a
//! `warren_client::Client` on a second connection, as another process would have. Nothing
//! consumes: this measures enqueueing, up to RabbitMQ's confirm, and nothing after it.
//!
//! Loads 1 to 4 are each measured in three rounds, taking turns (1, 2, 3, 4, 1, 2, …), after
//! a warm-up, so that a slow spell of the shared machine weighs on all of them alike; then 5
//! and 6 run once:
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
//!    request shows up in that request's latency instead of hiding it;
//! 6. the library's one-job `enqueue` on the same schedule: the publish-to-confirm latency
//!    underneath, the floor under 5's p99.
//!
//! The HTTP loads come from a thread of their own, as from a separate client process. Each
//! row's `cpu/10k` is this process's CPU time per 10,000 jobs during that load, less that
//! thread's: the service (or the library's callers) and the I/O threads of both RabbitMQ
//! connections. The library rows have no HTTP, so their difference is what HTTP costs the
//! service.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren_client::{Client, NewJob};
use warren_producer::auth::{Tokens, new_token};
use warren_producer::contracts::Contracts;
use warren_producer::{AppState, Limits, no_delay, router};

use crate::report::{Extra, Latency, Measure, Measured, Phase, Report, Usage};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::usage::{Sample, thread_cpu};
use crate::workload::{QUEUE, TASK, payload};

/// Key of this scenario's phase.
pub(crate) const HTTP: &str = "http";

const LIBRARY_MANY: &str = "library_enqueue_many";
const LIBRARY_ONE: &str = "library_enqueue";
const SINGLE: &str = "single";
const BATCH: &str = "batch";
const PACED: &str = "single_half_rate";
const LIBRARY_PACED: &str = "library_enqueue_half_rate";

/// Rounds each saturated load is measured in, taking turns with the others.
const ROUNDS: u64 = 3;

/// Issue 9's targets.
const SINGLE_TARGET_PERCENT: f64 = 50.0;
const BATCH_TARGET_PERCENT: f64 = 90.0;
const PACED_P99_TARGET_MS: f64 = 10.0;

/// Measures the five loads above in `sandbox`, until done or `stop`ped.
pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
) -> anyhow::Result<Measured> {
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
) -> anyhow::Result<Measured> {
    let server = Server::start(service).await?;
    let measured = run_loads(settings, library, &server).await;
    server.stop().await;
    measured
}

/// The producer service on a loopback port, and a token it accepts.
struct Server {
    addr: SocketAddr,
    authorization: String,
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
            authorization: format!("Bearer {token}"),
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
#[derive(Default)]
struct Run {
    jobs: u64,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    /// This process's CPU time meanwhile: the load generator, the service and both RabbitMQ
    /// connections' I/O threads.
    cpu: Duration,
    /// The HTTP load generator's share of `cpu` (its thread's).
    load_generator_cpu: Duration,
}

impl Run {
    /// Counts `other` (another round of the same load) in.
    fn add(&mut self, mut other: Run) {
        self.jobs += other.jobs;
        self.elapsed += other.elapsed;
        self.latencies_ms.append(&mut other.latencies_ms);
        self.cpu += other.cpu;
        self.load_generator_cpu += other.load_generator_cpu;
    }

    fn rate(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The load's table row, and its CPU column.
    fn measure(mut self, key: &'static str, label: &'static str) -> (Measure, Extra) {
        let usage = Usage {
            cpu_secs: self
                .cpu
                .saturating_sub(self.load_generator_cpu)
                .as_secs_f64(),
            jobs: self.jobs,
            peak_rss_bytes: None,
        };
        let measure = Measure {
            key,
            label,
            jobs_per_sec: Some(self.rate()),
            latency: Latency::of(&mut self.latencies_ms),
        };
        (measure, Extra::measure(HTTP, key, None, Some(usage)))
    }
}

/// When a load started, by the clock and by this process's CPU time.
struct Started {
    at: tokio::time::Instant,
    cpu: Duration,
}

impl Started {
    fn now() -> anyhow::Result<Started> {
        Ok(Started {
            at: tokio::time::Instant::now(),
            cpu: Sample::of(None)?.cpu,
        })
    }

    fn run(&self, jobs: u64, latencies_ms: Vec<f64>) -> anyhow::Result<Run> {
        Ok(Run {
            jobs,
            elapsed: self.at.elapsed(),
            latencies_ms,
            cpu: Sample::of(None)?.cpu.saturating_sub(self.cpu),
            load_generator_cpu: Duration::ZERO,
        })
    }
}

async fn run_loads(
    settings: &Settings,
    library: &warren_broker::Broker,
    server: &Server,
) -> anyhow::Result<Measured> {
    let clients = settings.concurrency;
    let batch = settings.http_batch;
    let payload = payload(settings.payload_bytes);
    let client = Client::from_broker(library.clone())
        .await
        .context("opening the library's publishing channel")?;
    let job = NewJob::new(TASK, &payload).queue(QUEUE);
    let one = json!({"task": TASK, "payload": &payload, "queue": QUEUE});
    let auth = &server.authorization;
    let single_request = Request::post("/v1/jobs", auth, &one.to_string());
    let batch_request = Request::post(
        "/v1/jobs/batch",
        auth,
        &json!({ "jobs": vec![one; batch] }).to_string(),
    );

    // Each load runs in ROUNDS parts, the four loads taking turns, so that a slow spell of
    // the shared machine (RabbitMQ's disk, another process) weighs on each alike instead of
    // on whichever ran then; a load's figures are its rounds taken together.
    let jobs_per_round = settings.jobs / ROUNDS;
    let per_client = (jobs_per_round / clients as u64).max(1);
    let batches_per_client = (jobs_per_round / (clients * batch) as u64).max(1);
    let warm_per_client = (settings.warmup / clients as u64).max(1);

    let single = Load {
        request: single_request,
        jobs_per_request: 1,
        requests_per_client: warm_per_client,
        pace: None,
    };
    let batched_load = Load {
        request: batch_request,
        jobs_per_request: batch as u64,
        requests_per_client: batches_per_client,
        pace: None,
    };
    library_one(&client, &job, clients, warm_per_client, None).await?;
    http(server, clients, single.clone()).await?;
    let (mut many, mut one_by_one, mut saturated, mut batched) = (
        Run::default(),
        Run::default(),
        Run::default(),
        Run::default(),
    );
    for _ in 0..ROUNDS {
        many.add(library_many(&client, &job, clients, batch, batches_per_client).await?);
        one_by_one.add(library_one(&client, &job, clients, per_client, None).await?);
        let load = Load {
            requests_per_client: per_client,
            ..single.clone()
        };
        saturated.add(http(server, clients, load).await?);
        batched.add(http(server, clients, batched_load.clone()).await?);
    }
    // Half the saturation rate, spread over the connections; as many requests as a round,
    // so the paced run lasts about as long as two rounds of the saturated one.
    let half_rate = saturated.rate() / 2.0;
    let paced = http(
        server,
        clients,
        Load {
            requests_per_client: per_client,
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
        per_client,
        Some(Duration::from_secs_f64(clients as f64 / half_rate)),
    )
    .await?;

    let (jobs, elapsed) = (saturated.jobs, saturated.elapsed);
    let (measures, extras) = [
        many.measure(LIBRARY_MANY, "library enqueue_many (batches)"),
        one_by_one.measure(LIBRARY_ONE, "library enqueue (one per call)"),
        saturated.measure(SINGLE, "HTTP single, saturated"),
        batched.measure(BATCH, "HTTP batch (per request)"),
        paced.measure(PACED, "HTTP single at half that rate"),
        library_paced.measure(LIBRARY_PACED, "library enqueue at that rate"),
    ]
    .into_iter()
    .unzip();
    Ok(Measured {
        phase: Phase {
            key: HTTP,
            title: "HTTP producer, single saturated",
            jobs,
            elapsed,
            measures,
        },
        extras,
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
    let started = Started::now()?;
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
    started.run(callers as u64 * batches * batch as u64, Vec::new())
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
    let started = Started::now()?;
    let start = started.at;
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
    started.run(callers as u64 * per_caller, latencies_ms)
}

async fn join_all<T: 'static>(mut tasks: JoinSet<anyhow::Result<T>>) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        all.push(done.context("a load task panicked")??);
    }
    Ok(all)
}

/// One kind of HTTP load: `requests_per_client` copies of `request` on every
/// connection, back to back, or one every `pace` when given.
#[derive(Clone)]
struct Load {
    request: Request,
    jobs_per_request: u64,
    requests_per_client: u64,
    pace: Option<Duration>,
}

/// Runs `load` on `clients` keep-alive connections, opened before the clock starts.
///
/// The connections are driven from a thread of their own, on a single-threaded runtime, as
/// a separate client process would be: the load generator's wake-ups stay off the service's
/// runtime threads, and its CPU time is read apart from the service's (its thread's
/// `/proc/thread-self/stat`), so that a row's `cpu/10k` is the service's alone.
async fn http(server: &Server, clients: usize, load: Load) -> anyhow::Result<Run> {
    let addr = server.addr;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load-generator".to_owned())
        .spawn(move || {
            let run = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the load generator's runtime")
                .and_then(|rt| rt.block_on(generate(addr, clients, load)));
            // The receiver only goes away if the benchmark is stopping anyway.
            let _ = tx.send(run);
        })
        .context("starting the load generator's thread")?;
    rx.await.context("the load generator's thread panicked")?
}

/// [`http`]'s load, on the load generator's thread.
async fn generate(addr: SocketAddr, clients: usize, load: Load) -> anyhow::Result<Run> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(addr).await?);
    }
    let own_cpu = thread_cpu()?;
    let started = Started::now()?;
    let start = started.at;
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
                conn.post(&load.request).await?;
                latencies.push(due.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let latencies_ms: Vec<f64> = join_all(tasks).await?.into_iter().flatten().collect();
    let mut run = started.run(
        latencies_ms.len() as u64 * load.jobs_per_request,
        latencies_ms,
    )?;
    run.load_generator_cpu = thread_cpu()?.saturating_sub(own_cpu);
    Ok(run)
}

/// A keep-alive HTTP/1.1 connection to the service, the way a load generator such as `wrk`
/// drives one: each request is written whole from bytes encoded once, and each answer is read
/// by its `content-length`.
///
/// The load generator shares the two cores with the service and RabbitMQ, so every
/// microsecond it spends is taken from what is measured. A full HTTP client (hyper's, used
/// here before) costs about as much per request again as the service's whole HTTP layer: a
/// request builder, a header map, and a channel with a wake-up between the caller and the
/// connection. The service sees the same bytes either way.
struct Conn {
    stream: TcpStream,
    answer: Vec<u8>,
}

/// Longest answer head the load generator reads; the service's are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .context("connecting to the producer")?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            answer: Vec::with_capacity(4096),
        })
    }

    /// Sends one encoded request and fails unless every job in it was accepted.
    async fn post(&mut self, request: &Request) -> anyhow::Result<()> {
        self.stream
            .write_all(&request.bytes)
            .await
            .context("sending a request to the producer")?;
        let (status, body) = self.read_answer().await?;
        // A batch answers 200 with a count of failures; looking for it in the text keeps the
        // load generator's CPU off JSON parsing.
        let accepted = status == 202 || (status == 200 && contains(body, br#""failed":0"#));
        anyhow::ensure!(
            accepted,
            "POST {} answered {status}: {}",
            request.path,
            String::from_utf8_lossy(body)
        );
        Ok(())
    }

    /// Reads one whole answer: its status and its body.
    async fn read_answer(&mut self) -> anyhow::Result<(u16, &[u8])> {
        self.answer.clear();
        let head_end = loop {
            if let Some(i) = find(&self.answer, b"\r\n\r\n") {
                break i + 4;
            }
            anyhow::ensure!(
                self.answer.len() < MAX_HEAD,
                "the producer's answer head is over {MAX_HEAD} bytes"
            );
            self.fill().await?;
        };
        let (status, length) = parse_head(&self.answer[..head_end])?;
        while self.answer.len() < head_end + length {
            self.fill().await?;
        }
        anyhow::ensure!(
            self.answer.len() == head_end + length,
            "the producer sent more than one answer to one request"
        );
        Ok((status, &self.answer[head_end..]))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let n = self
            .stream
            .read_buf(&mut self.answer)
            .await
            .context("reading the producer's answer")?;
        anyhow::ensure!(n > 0, "the producer closed the connection");
        Ok(())
    }
}

/// A request encoded once: what [`Conn::post`] writes.
#[derive(Clone)]
struct Request {
    path: &'static str,
    bytes: Bytes,
}

impl Request {
    fn post(path: &'static str, authorization: &str, body: &str) -> Request {
        let bytes = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\nauthorization: {authorization}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        Request {
            path,
            bytes: Bytes::from(bytes),
        }
    }
}

/// The status code and `content-length` of an HTTP/1.1 answer head (through its blank line).
fn parse_head(head: &[u8]) -> anyhow::Result<(u16, usize)> {
    let text = std::str::from_utf8(head).context("the producer's answer head is not text")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .context("the producer's answer has no content-length (the load generator reads no other framing)")?;
    Ok((status, length))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
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
    fn answer_heads_give_their_status_and_length() {
        let head = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 57\r\n\r\n";
        assert_eq!(parse_head(head).unwrap(), (202, 57));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let e = parse_head(chunked).unwrap_err().to_string();
        assert!(e.contains("no content-length"), "{e}");
        let e = parse_head(b"HTTP/2 200\r\n\r\n").unwrap_err().to_string();
        assert!(e.contains("not an HTTP/1.1 status line"), "{e}");
        let request = Request::post("/v1/jobs", "Bearer t", "{}");
        assert_eq!(
            &request.bytes[..],
            b"POST /v1/jobs HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer t\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
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
