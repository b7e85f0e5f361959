//! What every request passes through once, around the routes: the answer layer, which makes
//! any error answered without a body problem+json and counts and times the request under its
//! route.
//!
//! [`crate::router`] stacks it with tower-http's layers (request id, span, timeout) on the
//! finished routes as one service, which the returned `Router` holds as its only fallback. A
//! layer added with `Router::layer` is added to every route, each boxed, and axum's
//! `middleware::from_fn` and `map_response` box their futures too: each layer cost
//! allocations and dynamic calls per request. Stacked this way, the only box per request
//! besides the route's own is [`Answer`]'s future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::problem::{PROBLEM_JSON, Problem};
use crate::telemetry::RouteMetrics;

/// Adds [`Answer`] around a service.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AnswerLayer;

impl<S> Layer<S> for AnswerLayer {
    type Service = Answer<S>;

    fn layer(&self, inner: S) -> Answer<S> {
        Answer { inner }
    }
}

/// Makes every error answer problem+json and records the request's metrics.
#[derive(Clone, Debug)]
pub(crate) struct Answer<S> {
    inner: S,
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

    fn call(&mut self, request: Request) -> Self::Future {
        let metrics = RouteMetrics::of(request.method().as_str(), request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = answer.await;
            let response = problemize(response);
            if let Some(metrics) = metrics {
                metrics.answered(response.status(), started.elapsed());
            }
            Ok(response)
        })
    }
}

/// Turns any error answer made without a body (a timeout, an extractor's rejection) into
/// problem+json, so that every error has the same shape.
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
    if status == StatusCode::SERVICE_UNAVAILABLE {
        problem = Problem::unavailable(
            "no answer within the request timeout (--request-timeout / WARREN_REQUEST_TIMEOUT): \
             RabbitMQ or PostgreSQL is slow or unreachable; nothing was accepted, send it again",
        );
    } else if status.is_server_error() {
        // Never an internal message; a fault here is this service's and is logged.
        tracing::error!(
            status = status.as_u16(),
            "answering an unexpected server error"
        );
        problem = Problem::unavailable("the service failed to answer; try again");
    }
    problem.into_response()
}
