//! Prometheus metrics (every series prefixed `warren_producer_`) and the per-request span.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `method`, `route` (the route's pattern) and `status`.
pub const REQUESTS: &str = "warren_producer_requests_total";
/// Time to answer, by `method` and `route`, in seconds.
pub const REQUEST_SECONDS: &str = "warren_producer_request_duration_seconds";
/// Jobs by `outcome`: `accepted` (confirmed or committed), `refused` (bad job, 4xx) or
/// `unavailable` (broker or database, 503).
pub const JOBS: &str = "warren_producer_jobs_total";

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use (the `metrics` facade has one
/// global recorder, so every router in a process shares it).
pub fn handle() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_SECONDS.to_owned()),
                    &[
                        0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                    ],
                )
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
            metrics::describe_counter!(REQUESTS, "HTTP requests answered");
            metrics::describe_histogram!(
                REQUEST_SECONDS,
                metrics::Unit::Seconds,
                "time to answer an HTTP request"
            );
            metrics::describe_counter!(JOBS, "jobs by outcome: accepted, refused, unavailable");
            Ok(handle)
        })
        .clone()
}

/// Counts a job's outcome.
pub fn job(outcome: &'static str) {
    metrics::counter!(JOBS, "outcome" => outcome).increment(1);
}

/// Middleware on matched routes: counts and times each request under its route pattern.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_SECONDS, "method" => method.clone(), "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}
