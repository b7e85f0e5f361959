//! `--metrics-addr`: the worker's HTTP endpoints for operators. `/metrics` renders every
//! series the process recorded (`docs/observability.md` lists them), `/healthz` says the
//! process is up, and `/readyz` says whether it is consuming with both services reachable
//! (503 while starting, draining or cut off), so that a load balancer or Kubernetes can act
//! on it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use warren_runtime::Health;

/// How often the worker holding the fleet lock refreshes the fleet-wide gauges: a little
/// under Prometheus' usual 15 s scrape interval.
pub const FLEET_GAUGE_INTERVAL: Duration = Duration::from_secs(10);

/// Buckets of the `_seconds` histograms: from a millisecond (a no-op job's wait) to five
/// minutes (the default job timeout).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of the recorder's batch size, up to its largest batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Installs the process-wide Prometheus recorder; every `metrics` call from then on is kept.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(warren_store::RECORDER_BATCH_SIZE.to_owned()),
                BATCH_BUCKETS,
            )
        })
        .context("configuring the metrics histograms")?
        .install_recorder()
        .context("installing the metrics recorder")
}

#[derive(Clone)]
struct Endpoints {
    metrics: PrometheusHandle,
    health: Health,
}

/// The routes, for serving and for tests.
pub fn router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints { metrics, health })
}

async fn render(State(e): State<Endpoints>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.metrics.render(),
    )
}

async fn ready(State(e): State<Endpoints>) -> impl IntoResponse {
    let report = e.health.report();
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// Binds `addr` (failing at once if it cannot) and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Health,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-addr {addr}"))?;
    tracing::info!(addr = %addr, "serving /metrics, /healthz and /readyz");
    let app = router(metrics, health);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}
