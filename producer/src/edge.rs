//! What every request passes through once, around the routes: the answer layer, which applies
//! the request timeout, makes any error answered without a body problem+json, and counts and
//! times the request under its route.
//!
//! [`crate::router`] stacks it with tower-http's layers (request id, span) on the finished
//! routes as one service, which the returned `Router` holds as its only fallback. A layer
//! added with `Router::layer` is added to every route, each boxed, and axum's
//! `middleware::from_fn` and `map_response` box their futures too: each layer cost
//! allocations and dynamic calls per request. Stacked this way, the only box per request
//! besides the route's own is [`Answer`]'s future.
//!
//! The timeout is applied here rather than by tower-http's `TimeoutLayer` because a request
//! that runs out of time is answered in two ways: 408 when its body had not arrived in full
//! (the client's doing), 503 when it was waiting on RabbitMQ or PostgreSQL. The layer puts the
//! request's [`Deadline`] in its extensions; the body is read against it
//! ([`crate::request::read_body`]) and answers the 408 itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::problem::{PROBLEM_JSON, Problem};
use crate::request::Deadline;
use crate::telemetry::RouteMetrics;

/// Adds [`Answer`] around a service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AnswerLayer {
    /// The request timeout (`Limits::request_timeout`).
    pub(crate) timeout: Duration,
}

impl<S> Layer<S> for AnswerLayer {
    type Service = Answer<S>;

    fn layer(&self, inner: S) -> Answer<S> {
        Answer {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Bounds a request by its timeout, makes every error answer problem+json and records the
/// request's metrics.
#[derive(Clone, Debug)]
pub(crate) struct Answer<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Answer<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let metrics = RouteMetrics::of(request.method().as_str(), request.uri().path());
        let started = Instant::now();
        let deadline = Deadline {
            at: tokio::time::Instant::now() + self.timeout,
            timeout: self.timeout,
        };
        request.extensions_mut().insert(deadline);
        let answer = self.inner.call(request);
        Box::pin(async move {
            // `timeout_at` polls the request before its timer, so a body read against the
            // same deadline answers its 408 before this 503 can.
            let response = match tokio::time::timeout_at(deadline.at, answer).await {
                Ok(Ok(response)) => problemize(response),
                Err(_) => timed_out(deadline.timeout),
            };
            if let Some(metrics) = metrics {
                metrics.answered(response.status(), started.elapsed());
            }
            Ok(response)
        })
    }
}

/// The answer to a request that outlived its timeout while waiting on RabbitMQ or Postgres:
/// 503, like any other unavailability, so that clients retry it the same way.
fn timed_out(timeout: Duration) -> Response {
    Problem::unavailable(format!(
        "no answer within {timeout:?}, the request timeout (--request-timeout / \
         WARREN_REQUEST_TIMEOUT): RabbitMQ or PostgreSQL is slow or unreachable; nothing was \
         accepted, send it again"
    ))
    .into_response()
}

/// Turns any error answer made without a body (an extractor's rejection) into problem+json,
/// so that every error has the same shape.
fn problemize(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let mut problem = Problem::from_status(status);
    if status.is_server_error() {
        // Never an internal message; a fault here is this service's and is logged.
        tracing::error!(
            status = status.as_u16(),
            "answering an unexpected server error"
        );
        problem = Problem::unavailable("the service failed to answer; try again");
    }
    problem.into_response()
}
