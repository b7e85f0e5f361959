//! warren-producer: the HTTP service through which any service, in any language, enqueues
//! Warren jobs.
//!
//! It is a thin HTTP face on `warren-client`: a job is answered `202` only once RabbitMQ has
//! confirmed it (or its `scheduled` row is committed), every payload is checked against its
//! task's contract (`schemas/payloads/<task>.schema.json`) before it is published, callers
//! authenticate with bearer tokens whose SHA-256 digests are in a tokens file, and every error
//! is an RFC 7807 `application/problem+json` body. [`router`] builds the whole service from an
//! [`AppState`]; `main` only parses flags, connects and serves.
//!
//! It deliberately holds no job logic of its own: checking options, publishing with confirms,
//! scheduling and idempotency are `warren-client`'s; reading and cancelling are
//! `warren-store`'s.

#![warn(missing_docs)]

pub mod auth;
pub mod contracts;
mod edge;
mod jobs;
pub mod openapi;
pub mod problem;
pub mod request;
pub mod settings;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use warren_client::{Broker, Client, Store};

pub use jobs::{Accepted, BatchAnswer, BatchItem, Cancelled, IDEMPOTENCY_KEY};

use crate::auth::Tokens;
use crate::contracts::Contracts;
use crate::problem::Problem;

/// Limits on what one request may ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body; larger ones get 413 before they are buffered whole.
    pub max_body_bytes: usize,
    /// Most jobs in one batch; more get 422.
    pub max_batch: usize,
    /// Longest a request may take; a slower one gets 503 (its job, if any, is not accepted),
    /// or 408 when its body had not arrived in full by then.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// 1 MiB bodies, batches of 1,000, 30 s per request.
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch: 1000,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What every request handler shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Behind an `Arc` because axum clones the state for every request, and a client clone
    /// clones its channel handles.
    client: Arc<Client>,
    store: Option<Store>,
    tokens: Arc<Tokens>,
    contracts: Arc<Contracts>,
    limits: Limits,
}

impl AppState {
    /// The service's state. With a `store`, delayed and keyed jobs are written as rows (so a
    /// repeated idempotency key returns the first job's id) and jobs can be read and
    /// cancelled; without, delayed jobs go through the intake queue.
    pub fn new(
        client: Client,
        store: Option<Store>,
        tokens: Tokens,
        contracts: Contracts,
        limits: Limits,
    ) -> Self {
        let client = match &store {
            Some(store) => client.with_store(store.clone()).keyed_through_store(true),
            None => client,
        };
        Self {
            client: Arc::new(client),
            store,
            tokens: Arc::new(tokens),
            contracts: Arc::new(contracts),
            limits,
        }
    }

    /// The broker connection, e.g. to close it on shutdown.
    pub fn broker(&self) -> &Broker {
        self.client.broker()
    }
}

/// One route of the service: the single list both [`router`] and the OpenAPI document are
/// made from (a test checks the document against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern, `{id}` for a parameter (axum's and OpenAPI's syntax alike).
    pub path: &'static str,
}

/// Every route the service answers.
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/v1/jobs",
    },
    Route {
        method: "POST",
        path: "/v1/jobs/batch",
    },
    Route {
        method: "GET",
        path: "/v1/jobs/{id}",
    },
    Route {
        method: "POST",
        path: "/v1/jobs/{id}/cancel",
    },
    Route {
        method: "GET",
        path: "/healthz",
    },
    Route {
        method: "GET",
        path: "/readyz",
    },
    Route {
        method: "GET",
        path: "/metrics",
    },
    Route {
        method: "GET",
        path: "/openapi.json",
    },
];

fn handler(route: &Route) -> MethodRouter<AppState> {
    match (route.method, route.path) {
        ("POST", "/v1/jobs") => post(jobs::post_job),
        ("POST", "/v1/jobs/batch") => post(jobs::post_batch),
        ("GET", "/v1/jobs/{id}") => get(jobs::get_job),
        ("POST", "/v1/jobs/{id}/cancel") => post(jobs::cancel_job),
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/openapi.json") => get(openapi_json),
        _ => unreachable!("every entry of ROUTES has a handler; a test builds the router"),
    }
}

/// Request ids are UUIDv7 (time-ordered, like job ids) unless the client sent `x-request-id`.
#[derive(Clone, Copy, Debug)]
struct MakeRequestUuid7;

impl MakeRequestId for MakeRequestUuid7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let mut text = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// Turns off Nagle's algorithm on an accepted connection: an answer is one small write, and
/// waiting to coalesce it with more (there is none) only adds the peer's delayed-ACK time to
/// its latency.
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
    }
}

/// The whole service: every route in [`ROUTES`], with request ids, a span per request,
/// metrics, the request timeout, and problem+json for every error.
///
/// The layers wrap the finished routes as one service, the returned router's only fallback,
/// so that each runs once per request without boxing (`edge` says why).
pub fn router(state: AppState) -> Router {
    // Installed before the first request, so that no count is recorded into the void.
    if let Err(e) = telemetry::handle() {
        tracing::warn!("{e}; /metrics will answer 503");
    }
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = state.limits.request_timeout;
    let mut routes = Router::new();
    for route in ROUTES {
        routes = routes.route(route.path, handler(route));
    }
    let routes = routes
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state);
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid7))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(TraceLayer::new_for_http().make_span_with(|r: &Request| {
            let id = r
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!(
                "request",
                method = %r.method(),
                path = %r.uri().path(),
                request_id = %id,
                caller = tracing::field::Empty,
            )
        }))
        // It applies the request timeout too, so that a timed-out request is answered
        // problem+json and counted like any other (`edge` says why it is not tower-http's).
        .layer(edge::AnswerLayer { timeout })
        .service(routes);
    Router::new().fallback_service(service)
}

async fn no_route(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!(
        "no route {method} {}; the routes are listed at GET /openapi.json",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> Response {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| openapi::matches(r.path, uri.path()))
        .map(|r| r.method)
        .collect();
    let mut response = Problem::method_not_allowed(format!(
        "{} does not take {method}; it takes {}",
        uri.path(),
        allowed.join(", ")
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    response
}

/// `GET /healthz`: the process is up and answering.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// How long a readiness probe waits for each service.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /readyz`: RabbitMQ and (if configured) Postgres answer.
async fn readyz(State(s): State<AppState>) -> Response {
    let broker = match tokio::time::timeout(PROBE_TIMEOUT, s.broker().dead_letter_depth()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    let database = match &s.store {
        None => None,
        Some(store) => Some(
            match tokio::time::timeout(PROBE_TIMEOUT, store.check_schema()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            },
        ),
    };
    let mut failures = Vec::new();
    if let Err(e) = &broker {
        failures.push(format!("RabbitMQ: {e}"));
    }
    if let Some(Err(e)) = &database {
        failures.push(format!("PostgreSQL: {e}"));
    }
    if !failures.is_empty() {
        return Problem::unavailable(format!("not ready: {}", failures.join("; "))).into_response();
    }
    Json(json!({
        "status": "ready",
        "broker": "ok",
        "database": if database.is_some() { "ok" } else { "not configured" },
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics() -> Response {
    match telemetry::handle() {
        Ok(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}

/// `GET /openapi.json`.
async fn openapi_json(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(openapi::document(&s.contracts, &s.limits))
}
