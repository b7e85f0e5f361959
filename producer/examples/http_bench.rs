//! HTTP enqueue throughput and latency, beside the library's `enqueue_many` in the same run:
//!
//! ```sh
//! cargo run --release -p warren-producer --example http_bench -- [JOBS] [CLIENTS] [BATCH]
//! ```
//!
//! Runs in a sandbox of its own (a fresh database and RabbitMQ namespace on the local
//! services, removed at the end). No worker consumes: it measures enqueueing only. The
//! server is the real `router()` on a loopback port; the clients keep their connections
//! alive. Prints the library's rate, the HTTP single and batch rates with their ratios to it,
//! and the latency of single requests at half the single-request saturation rate.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use warren_client::{Client, NewJob};
use warren_producer::auth::{Tokens, new_token};
use warren_producer::contracts::Contracts;
use warren_producer::{AppState, Limits, router};
use warren_testkit::TestEnv;

/// A keep-alive HTTP/1.1 connection that sends POSTs and reads their answers.
struct Conn {
    stream: BufReader<TcpStream>,
    token: String,
}

impl Conn {
    async fn open(port: u16, token: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            token: token.to_owned(),
        })
    }

    async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One kind of load: `per_client` requests to `path`, each carrying `jobs_per_request` jobs,
/// spaced by `pace` on each connection when given.
#[derive(Clone)]
struct Load {
    path: &'static str,
    body: String,
    jobs_per_request: usize,
    per_client: usize,
    pace: Option<Duration>,
}

/// Runs `load` from each of `clients` connections; returns (jobs per second, sorted
/// latencies).
async fn http_run(
    port: u16,
    token: &str,
    clients: usize,
    load: Load,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let Load {
        path,
        body,
        jobs_per_request,
        per_client,
        pace,
    } = load;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut conn = Conn::open(port, token).await?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            let mut tick = pace.map(tokio::time::interval);
            for _ in 0..per_client {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let sent = Instant::now();
                let (status, answer) = conn.post(path, &body).await?;
                anyhow::ensure!(
                    status == 202 || status == 200,
                    "{status}: {}",
                    String::from_utf8_lossy(&answer)
                );
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    Ok(((clients * per_client * jobs_per_request) as f64 / secs, all))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let jobs = args.first().copied().unwrap_or(20_000);
    let clients = args.get(1).copied().unwrap_or(64);
    let batch = args.get(2).copied().unwrap_or(100);
    let env = TestEnv::new(&["default"]).await?;
    let result = run(&env, jobs, clients, batch).await;
    env.cleanup().await?;
    result
}

async fn run(env: &TestEnv, jobs: usize, clients: usize, batch: usize) -> anyhow::Result<()> {
    let client = Client::from_broker(env.broker.clone()).await?;
    let (token, line) = new_token("bench", &[]).map_err(anyhow::Error::msg)?;
    let tokens = Tokens::parse(&line, "bench").map_err(anyhow::Error::msg)?;
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/payloads");
    let contracts = Contracts::load(schemas.as_ref(), false).map_err(anyhow::Error::msg)?;
    let state = AppState::new(
        client.clone(),
        Some(env.store.clone()),
        tokens,
        contracts,
        Limits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let payload = json!({"ms": 1});
    // The library: enqueue_many in batches of `batch`, `clients` callers at once.
    let start = Instant::now();
    let per_caller = jobs / clients / batch;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_caller {
                let batch_jobs = (0..batch).map(|_| NewJob::new("warren.sleep", &payload));
                for r in client.enqueue_many(batch_jobs).await {
                    r?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let library = (clients * per_caller * batch) as f64 / start.elapsed().as_secs_f64();

    // The library one job at a time from the same number of callers: what a single HTTP
    // request costs underneath (one confirm round trip per caller at a time).
    let start = Instant::now();
    let per_single_caller = jobs / clients;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_single_caller {
                client
                    .enqueue(NewJob::new("warren.sleep", &payload))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let library_single = (clients * per_single_caller) as f64 / start.elapsed().as_secs_f64();

    let one = json!({"task": "warren.sleep", "payload": payload}).to_string();
    let many = json!({"jobs": vec![json!({"task": "warren.sleep", "payload": payload}); batch]})
        .to_string();
    let single_load = Load {
        path: "/v1/jobs",
        body: one,
        jobs_per_request: 1,
        per_client: jobs / clients,
        pace: None,
    };
    let (single, _) = http_run(port, &token, clients, single_load.clone()).await?;
    let batch_load = Load {
        path: "/v1/jobs/batch",
        body: many,
        jobs_per_request: batch,
        per_client: per_caller,
        pace: None,
    };
    let (batched, _) = http_run(port, &token, clients, batch_load).await?;
    // Latency at half the single-request saturation rate, spread over the clients.
    let pace = Duration::from_secs_f64(clients as f64 / (single / 2.0));
    let paced_load = Load {
        per_client: (jobs / clients / 2).max(10),
        pace: Some(pace),
        ..single_load
    };
    let (paced, lat) = http_run(port, &token, clients, paced_load).await?;

    println!("jobs {jobs}, clients {clients}, batch {batch} (keep-alive, loopback)");
    println!("library enqueue_many     {library:>9.0} jobs/s");
    println!(
        "library enqueue          {library_single:>9.0} jobs/s  (one job per call, {clients} callers)"
    );
    println!(
        "HTTP single              {single:>9.0} jobs/s  {:>5.1}% of the library (target >= 50%), {:.1}% of enqueue",
        100.0 * single / library,
        100.0 * single / library_single
    );
    println!(
        "HTTP batch of {batch:<4}       {batched:>9.0} jobs/s  {:>5.1}% of the library (target >= 90%)",
        100.0 * batched / library
    );
    println!(
        "HTTP single at {paced:.0} req/s (half saturation): p50 {:.2} ms, p99 {:.2} ms (target p99 <= 10 ms)",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
