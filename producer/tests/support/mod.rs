//! Shared by the producer's test files: a router on a test env, and requests through it.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use warren_client::{Broker, Client};
use warren_producer::auth::{Tokens, new_token};
use warren_producer::contracts::Contracts;
use warren_producer::{AppState, Limits, router};
use warren_testkit::TestEnv;

/// The repository's task contracts.
pub(crate) fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/payloads")
}

/// A router on `env` and its two tokens: `all` may use every task, `sleepy` only
/// `warren.sleep`.
pub(crate) struct App {
    pub router: Router,
    pub all: String,
    pub sleepy: String,
}

/// How to build the app under test.
pub(crate) struct Options {
    pub with_store: bool,
    pub allow_unknown: bool,
    pub limits: Limits,
    pub broker: Option<Broker>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            with_store: true,
            allow_unknown: false,
            limits: Limits::default(),
            broker: None,
        }
    }
}

pub(crate) async fn app(env: &TestEnv, options: Options) -> anyhow::Result<App> {
    let (all, all_line) = new_token("all", &[]).map_err(anyhow::Error::msg)?;
    let (sleepy, sleepy_line) =
        new_token("sleepy", &["warren.sleep".to_owned()]).map_err(anyhow::Error::msg)?;
    let tokens = Tokens::parse(&format!("{all_line}\n{sleepy_line}\n"), "test")
        .map_err(anyhow::Error::msg)?;
    let contracts =
        Contracts::load(&schemas_dir(), options.allow_unknown).map_err(anyhow::Error::msg)?;
    let broker = options.broker.unwrap_or_else(|| env.broker.clone());
    let client = Client::from_broker(broker).await?;
    let store = options.with_store.then(|| env.store.clone());
    let state = AppState::new(client, store, tokens, contracts, options.limits);
    Ok(App {
        router: router(state),
        all,
        sleepy,
    })
}

/// One answer: status, headers, and the body as JSON (`Value::String` when it is not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts a problem+json answer with `status`; returns its body.
    pub(crate) fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{:#}", self.body);
        assert!(
            self.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:warren:problem:")),
            "{:#}",
            self.body
        );
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if status == 503 {
            assert!(
                self.headers.contains_key("retry-after"),
                "503 without Retry-After"
            );
        }
        &self.body
    }

    /// The pointers of a problem's violations.
    pub(crate) fn pointers(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|v| v["pointer"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Sends one request through the router.
pub(crate) async fn send(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(router, request.body(body).expect("a well-formed request")).await
}

/// Sends one request, built by the caller (for a header that is not text, say), through the
/// router.
pub(crate) async fn answer(router: &Router, request: Request<Body>) -> Answer {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs `body` as JSON with `token`.
pub(crate) async fn post(router: &Router, path: &str, token: &str, body: &Value) -> Answer {
    send(
        router,
        "POST",
        path,
        Some(token),
        &[("content-type", "application/json")],
        Body::from(body.to_string()),
    )
    .await
}

/// GETs `path` with `token`.
pub(crate) async fn get(router: &Router, path: &str, token: &str) -> Answer {
    send(router, "GET", path, Some(token), &[], Body::empty()).await
}
