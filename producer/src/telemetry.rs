//! Prometheus metrics (every series prefixed `warren_producer_`) and the per-request span.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{ROUTES, Route};

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

/// What became of a job a request carried, as [`JOBS`] counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Confirmed by RabbitMQ or committed to Postgres.
    Accepted,
    /// Refused as it was sent (a 4xx).
    Refused,
    /// Not accepted because the broker or the database was not (a 503).
    Unavailable,
}

impl JobOutcome {
    const ALL: [JobOutcome; 3] = [Self::Accepted, Self::Refused, Self::Unavailable];

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The [`JOBS`] series, one per outcome, made on first use and kept: a batch counts each of
/// its jobs, and a registry lookup with fresh labels per job cost more than the count.
static JOB_COUNTERS: [OnceLock<Counter>; JobOutcome::ALL.len()] =
    [const { OnceLock::new() }; JobOutcome::ALL.len()];

/// Counts a job's outcome.
pub fn job(outcome: JobOutcome) {
    JOB_COUNTERS[outcome as usize]
        .get_or_init(|| metrics::counter!(JOBS, "outcome" => outcome.label()))
        .increment(1);
}

/// Statuses whose request counters are made once per route and kept; any other status is
/// counted through the registry's lookup.
const STATUSES: [(u16, &str); 14] = [
    (200, "200"),
    (202, "202"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (500, "500"),
    (503, "503"),
    (504, "504"),
];

/// One route's request metrics, each series made on first use and kept, so that recording a
/// request costs no label allocation and no registry lookup.
pub(crate) struct RouteMetrics {
    route: &'static Route,
    seconds: OnceLock<Histogram>,
    requests: [OnceLock<Counter>; STATUSES.len()],
}

static ROUTE_METRICS: [RouteMetrics; ROUTES.len()] = {
    let mut all = [const {
        RouteMetrics {
            route: &ROUTES[0],
            seconds: OnceLock::new(),
            requests: [const { OnceLock::new() }; STATUSES.len()],
        }
    }; ROUTES.len()];
    let mut i = 0;
    while i < ROUTES.len() {
        all[i].route = &ROUTES[i];
        i += 1;
    }
    all
};

impl RouteMetrics {
    /// The metrics of the route a request for `method` `path` goes to, if any (unrouted
    /// requests are not counted: their paths are the client's, not a bounded set). A path
    /// equal to a route's is preferred to one matching a pattern, as the router does.
    pub(crate) fn of(method: &str, path: &str) -> Option<&'static RouteMetrics> {
        let exact = ROUTE_METRICS
            .iter()
            .find(|m| m.route.method == method && m.route.path == path);
        exact.or_else(|| {
            ROUTE_METRICS
                .iter()
                .find(|m| m.route.method == method && crate::openapi::matches(m.route.path, path))
        })
    }

    /// Counts and times one request answered `status` after `elapsed`.
    pub(crate) fn answered(&self, status: StatusCode, elapsed: Duration) {
        let Route { method, path } = *self.route;
        self.seconds
            .get_or_init(
                || metrics::histogram!(REQUEST_SECONDS, "method" => method, "route" => path),
            )
            .record(elapsed.as_secs_f64());
        let code = status.as_u16();
        match STATUSES.iter().position(|(c, _)| *c == code) {
            Some(i) => self.requests[i]
                .get_or_init(|| {
                    metrics::counter!(REQUESTS, "method" => method, "route" => path, "status" => STATUSES[i].1)
                })
                .increment(1),
            None => metrics::counter!(REQUESTS, "method" => method, "route" => path, "status" => code.to_string())
                .increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_their_route_pattern_or_not_at_all() {
        let path = |method, path| RouteMetrics::of(method, path).map(|m| m.route.path);
        assert_eq!(path("POST", "/v1/jobs/batch"), Some("/v1/jobs/batch"));
        assert_eq!(
            path(
                "POST",
                "/v1/jobs/0190c2a4-0000-7000-8000-000000000000/cancel"
            ),
            Some("/v1/jobs/{id}/cancel")
        );
        assert_eq!(path("GET", "/v1/jobs/abc"), Some("/v1/jobs/{id}"));
        // Not a route: the client's paths and methods are not a bounded set of labels.
        assert_eq!(path("GET", "/v1/jobs/abc/cancel"), None);
        assert_eq!(path("DELETE", "/v1/jobs/abc"), None);
        assert_eq!(path("GET", "/nowhere"), None);
    }

    #[test]
    fn every_route_has_its_own_metrics() {
        for (route, metrics) in ROUTES.iter().zip(&ROUTE_METRICS) {
            assert_eq!(metrics.route, route);
        }
        assert_eq!(ROUTE_METRICS.len(), ROUTES.len());
    }
}
