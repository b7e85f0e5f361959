//! How the service refuses a request: the status, the problem+json body and the headers that
//! go with it, through `router()` against the real RabbitMQ and PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request};
use futures_lite::StreamExt;
use serde_json::{Value, json};
use support::{Answer, Options, app, get, post, send};
use warren_core::message::MAX_IDEMPOTENCY_KEY_LEN;
use warren_producer::Limits;
use warren_testkit::TestEnv;

const JSON: (&str, &str) = ("content-type", "application/json");

/// The only violation of a 422 answer.
fn only_violation(answer: &Answer) -> Value {
    answer.problem(422);
    let errors = answer.body["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(errors.len(), 1, "{:#}", answer.body);
    errors[0].clone()
}

#[tokio::test]
async fn a_batch_with_an_idempotency_key_header_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let batch = json!({"jobs": [{"task": "warren.echo", "payload": 1}]}).to_string();
    // Sent twice, as a client retrying it would: neither may make a job.
    for _ in 0..2 {
        let answer = send(
            &a.router,
            "POST",
            "/v1/jobs/batch",
            Some(&a.all),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "batch-1"),
            ],
            Body::from(batch.clone()),
        )
        .await;
        let violation = only_violation(&answer);
        let detail = answer.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("Idempotency-Key header")
                && detail.contains("POST /v1/jobs only")
                && detail.contains("`idempotency_key` field"),
            "{detail}"
        );
        // The header is no field of the body: the violation is the request's as a whole.
        assert_eq!(violation["pointer"], "", "{:#}", answer.body);
    }
    env.cleanup().await
}

#[tokio::test]
async fn every_401_carries_a_bearer_challenge() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let id = uuid::Uuid::now_v7();
    let routes = [
        ("POST", "/v1/jobs".to_owned()),
        ("POST", "/v1/jobs/batch".to_owned()),
        ("GET", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
    ];
    let json = ("content-type", "application/json");
    for (method, path) in &routes {
        for (credentials, challenge) in [
            (None, r#"Bearer realm="warren""#),
            (Some("Basic dTpw"), r#"Bearer realm="warren""#),
            (Some("Bearer "), r#"Bearer realm="warren""#),
            (
                Some("Bearer wrn_not-a-token"),
                r#"Bearer realm="warren", error="invalid_token""#,
            ),
        ] {
            let headers: Vec<(&str, &str)> = match credentials {
                Some(c) => vec![json, ("authorization", c)],
                None => vec![json],
            };
            let answer = send(&a.router, method, path, None, &headers, Body::from("{}")).await;
            answer.problem(401);
            assert_eq!(
                answer
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some(challenge),
                "{method} {path} with {credentials:?}: {:#}",
                answer.body
            );
        }
    }
    env.cleanup().await
}

#[tokio::test]
async fn an_invalid_task_name_is_answered_with_the_rule_it_breaks() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let strict = app(&env, Options::default()).await?;
    let open = app(
        &env,
        Options {
            allow_unknown: true,
            ..Options::default()
        },
    )
    .await?;
    for (task, reason) in [
        (
            "warren\0echo".to_owned(),
            "only ASCII letters, digits and . _ - : are allowed",
        ),
        (
            "warren echo".to_owned(),
            "only ASCII letters, digits and . _ - : are allowed",
        ),
        ("a".repeat(300), "it is longer than 120 bytes"),
        ("1warren".to_owned(), "it must start with an ASCII letter"),
    ] {
        let job = json!({"task": task, "payload": 1});
        let refused = post(&strict.router, "/v1/jobs", &strict.all, &job).await;
        let violation = only_violation(&refused);
        assert_eq!(violation["pointer"], "/task", "{:#}", refused.body);
        assert_eq!(violation["detail"], reason, "{task:?}: {:#}", refused.body);
        // As the service that allows unknown tasks answers it, through the enqueue's check.
        let unchecked = post(&open.router, "/v1/jobs", &open.all, &job).await;
        assert_eq!(only_violation(&unchecked), violation, "{task:?}");

        let batch = post(
            &strict.router,
            "/v1/jobs/batch",
            &strict.all,
            &json!({"jobs": [job]}),
        )
        .await;
        assert_eq!(batch.status, 200, "{:#}", batch.body);
        let problem = &batch.body["results"][0]["problem"];
        assert_eq!(problem["errors"][0]["pointer"], "/jobs/0/task");
        assert_eq!(problem["errors"][0]["detail"], reason, "{:#}", batch.body);
    }
    // A valid name without a contract is still an unknown task.
    let unknown = post(
        &strict.router,
        "/v1/jobs",
        &strict.all,
        &json!({"task": "warren.nope", "payload": 1}),
    )
    .await;
    let violation = only_violation(&unknown);
    assert!(
        violation["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("unknown task `warren.nope`")),
        "{violation:#}"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_job_id_that_is_not_utf8_is_not_a_job_id() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    for (get_path, cancel_path) in [
        ("/v1/jobs/not-a-uuid", "/v1/jobs/not-a-uuid/cancel"),
        ("/v1/jobs/%FF%FE", "/v1/jobs/%FF%FE/cancel"),
    ] {
        let read = get(&a.router, get_path, &a.all).await;
        let cancel = post(&a.router, cancel_path, &a.all, &json!({})).await;
        for answer in [read, cancel] {
            let detail = answer.problem(404)["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("is not a job id"), "{get_path}: {detail}");
            assert_eq!(answer.body["type"], "urn:warren:problem:not-found");
        }
    }
    // Credentials are still checked first.
    send(
        &a.router,
        "GET",
        "/v1/jobs/%FF%FE",
        None,
        &[],
        Body::empty(),
    )
    .await
    .problem(401);
    env.cleanup().await
}

/// A payload holding U+0000 (`\u0000`), which PostgreSQL cannot store, is a 422 at its
/// pointer. It used to fail the insert of a delayed job's row: a 503 the client would retry
/// forever, and in a batch a 503 for every delayed job of it, good ones too.
#[tokio::test]
async fn a_payload_postgres_cannot_store_is_refused_alone() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let bad = json!({"task": "warren.echo", "payload": {"s": "a\u{0}b"}, "delay": "1h"});
    let answer = post(&a.router, "/v1/jobs", &a.all, &bad).await;
    let violation = only_violation(&answer);
    assert_eq!(violation["pointer"], "/payload", "{:#}", answer.body);
    assert!(
        violation["detail"]
            .as_str()
            .is_some_and(|d| d.contains("PostgreSQL cannot store") && d.contains("U+0000")),
        "{:#}",
        answer.body
    );

    let good = json!({"task": "warren.echo", "payload": {"s": "ab"}, "delay": "1h"});
    let batch = post(
        &a.router,
        "/v1/jobs/batch",
        &a.all,
        &json!({"jobs": [good, bad]}),
    )
    .await;
    assert_eq!(batch.status, 200, "{:#}", batch.body);
    let results = &batch.body["results"];
    assert_eq!(results[0]["status"], 202, "{:#}", batch.body);
    assert_eq!(results[0]["state"], "scheduled", "{:#}", batch.body);
    assert_eq!(results[1]["status"], 422, "{:#}", batch.body);
    assert_eq!(
        results[1]["problem"]["errors"][0]["pointer"], "/jobs/1/payload",
        "{:#}",
        batch.body
    );
    env.cleanup().await
}

/// A delayed job for a queue RabbitMQ does not have is a 422 at `/queue`, as an immediate one
/// is, with or without a database: it used to be accepted and then wait `scheduled` for ever.
#[tokio::test]
async fn a_delayed_job_for_a_missing_queue_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    for with_store in [true, false] {
        let a = app(
            &env,
            Options {
                with_store,
                ..Options::default()
            },
        )
        .await?;
        for when in [json!({"delay": "1s"}), json!({})] {
            let mut job = json!({"task": "warren.echo", "payload": 1, "queue": "nosuch"});
            if let (Some(job), Some(when)) = (job.as_object_mut(), when.as_object()) {
                job.extend(when.clone());
            }
            let answer = post(&a.router, "/v1/jobs", &a.all, &job).await;
            let violation = only_violation(&answer);
            assert_eq!(violation["pointer"], "/queue", "{:#}", answer.body);
            assert!(
                violation["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("warren queues declare nosuch")),
                "{:#}",
                answer.body
            );
        }
    }
    assert!(env.store.state_counts(None).await?.is_empty());
    env.cleanup().await
}

/// How many `POST {path}` requests `/metrics` counts as answered `status`.
async fn answered(router: &axum::Router, path: &str, status: u16) -> u64 {
    let series = format!(
        "warren_producer_requests_total{{method=\"POST\",route=\"{path}\",status=\"{status}\"}} "
    );
    let metrics = send(router, "GET", "/metrics", None, &[], Body::empty()).await;
    let text = metrics.body.as_str().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |n| {
            n.trim().parse().expect("a counter is a whole number")
        })
}

/// A body sent with a content coding is a 415 with `Accept-Encoding: identity` (RFC 9110,
/// sections 8.4.1 and 15.5.16), on both POST routes. The service decodes none, and the coded
/// bytes used to be answered 400 "malformed JSON", sending the client looking for a mistake
/// in its JSON.
#[tokio::test]
async fn a_body_with_a_content_coding_is_415_with_accept_encoding() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    // The first bytes of a gzip stream, as a compressing client sends them.
    let gzip: &'static [u8] = &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
    for path in ["/v1/jobs", "/v1/jobs/batch"] {
        for coding in ["gzip", "br", "identity, gzip", "X-Custom"] {
            let answer = send(
                &a.router,
                "POST",
                path,
                Some(&a.all),
                &[JSON, ("content-encoding", coding)],
                Body::from(gzip),
            )
            .await;
            let detail = answer.problem(415)["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(&format!("`Content-Encoding: {coding}`"))
                    && detail.contains("accepts no content codings")
                    && detail.contains("send the body uncompressed"),
                "{path} {coding}: {detail}"
            );
            assert_eq!(
                answer
                    .headers
                    .get("accept-encoding")
                    .and_then(|v| v.to_str().ok()),
                Some("identity"),
                "{path} {coding}"
            );
        }
    }
    // `identity` is the absence of a coding: the body is read as it is.
    let job = json!({"task": "warren.echo", "payload": 1}).to_string();
    let plain = send(
        &a.router,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[JSON, ("content-encoding", "identity")],
        Body::from(job.clone()),
    )
    .await;
    assert_eq!(plain.status, 202, "{:#}", plain.body);
    // A 415 for the content type says nothing of codings.
    let text = send(
        &a.router,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[("content-type", "text/plain")],
        Body::from(job),
    )
    .await;
    text.problem(415);
    assert!(!text.headers.contains_key("accept-encoding"));
    env.cleanup().await
}

/// Two `Idempotency-Key` headers are refused: the first used to be used silently, though the
/// second may name another key.
#[tokio::test]
async fn two_idempotency_key_headers_are_refused() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let job = json!({"task": "warren.echo", "payload": 1}).to_string();
    let answer = send(
        &a.router,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[
            JSON,
            ("idempotency-key", "order-1"),
            ("idempotency-key", "order-2"),
        ],
        Body::from(job),
    )
    .await;
    let violation = only_violation(&answer);
    assert_eq!(
        violation["pointer"], "/idempotency_key",
        "{:#}",
        answer.body
    );
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the Idempotency-Key header: given more than once"),
        "{detail}"
    );
    assert!(env.store.state_counts(None).await?.is_empty());
    env.cleanup().await
}

/// A bad key in the `Idempotency-Key` header is reported at `/idempotency_key`, the field it
/// stands in for, and its detail names the header, whether the producer refused it or the
/// client's own check did. The body has no such field, yet the client's reasons (length,
/// control characters) used to read as if it had.
#[tokio::test]
async fn a_bad_idempotency_key_header_is_named_in_the_detail() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let job = json!({"task": "warren.echo", "payload": 1});
    let long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
    let too_long = format!("got {}", long.len());
    for (key, reason) in [
        (HeaderValue::from_static(""), "got 0"),
        (HeaderValue::from_str(&long)?, too_long.as_str()),
        (HeaderValue::from_static("a\tb"), "control characters"),
        (HeaderValue::from_bytes("clé".as_bytes())?, "visible ASCII"),
    ] {
        let request = Request::builder()
            .method("POST")
            .uri("/v1/jobs")
            .header("authorization", format!("Bearer {}", a.all))
            .header(JSON.0, JSON.1)
            .header("idempotency-key", key.clone())
            .body(Body::from(job.to_string()))?;
        let answer = support::answer(&a.router, request).await;
        let violation = only_violation(&answer);
        assert_eq!(
            violation["pointer"], "/idempotency_key",
            "{:#}",
            answer.body
        );
        let detail = violation["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("the Idempotency-Key header: ") && detail.contains(reason),
            "{key:?}: {detail}"
        );
        assert_eq!(
            answer.body["detail"],
            format!("the job is not acceptable: /idempotency_key: {detail}")
        );
    }
    // The same mistake in the body's field is the field's: no header is named.
    let mut keyed = job.clone();
    keyed["idempotency_key"] = json!(long);
    let answer = post(&a.router, "/v1/jobs", &a.all, &keyed).await;
    let violation = only_violation(&answer);
    assert_eq!(
        violation["pointer"], "/idempotency_key",
        "{:#}",
        answer.body
    );
    let detail = violation["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&too_long) && !detail.contains("header"),
        "{detail}"
    );
    assert!(env.store.state_counts(None).await?.is_empty());
    env.cleanup().await
}

/// A job that is not a JSON object is refused in plain words. The violation's pointer, the
/// job's own, used to be printed before its reason: empty for a single job ("the job is not
/// acceptable: : a job must be ..."), and the job's place a second time in a batch.
#[tokio::test]
async fn a_job_that_is_not_an_object_is_refused_in_plain_words() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    for (body, kind) in [
        ("[]", "an array"),
        (r#""a job""#, "a string"),
        ("1", "a number"),
        ("null", "null"),
    ] {
        let answer = send(
            &a.router,
            "POST",
            "/v1/jobs",
            Some(&a.all),
            &[JSON],
            Body::from(body),
        )
        .await;
        let violation = only_violation(&answer);
        assert_eq!(violation["pointer"], "", "{:#}", answer.body);
        assert_eq!(
            answer.body["detail"],
            format!("the job is not acceptable: a job must be a JSON object, got {kind}"),
            "{body}"
        );
    }

    let batch = post(
        &a.router,
        "/v1/jobs/batch",
        &a.all,
        &json!({"jobs": [[], {"task": "warren.echo", "payload": 1}]}),
    )
    .await;
    assert_eq!(batch.status, 200, "{:#}", batch.body);
    let refused = &batch.body["results"][0];
    assert_eq!(refused["status"], 422, "{:#}", batch.body);
    assert_eq!(
        refused["problem"]["detail"],
        "the job at /jobs/0 is not acceptable: a job must be a JSON object, got an array"
    );
    assert_eq!(refused["problem"]["errors"][0]["pointer"], "/jobs/0");
    assert_eq!(batch.body["results"][1]["status"], 202, "{:#}", batch.body);

    // A batch that is not an object is refused whole, as the request.
    for body in ["[]", r#"[{"task": "warren.echo", "payload": 1}]"#, "1"] {
        let answer = send(
            &a.router,
            "POST",
            "/v1/jobs/batch",
            Some(&a.all),
            &[JSON],
            Body::from(body),
        )
        .await;
        let violation = only_violation(&answer);
        assert_eq!(violation["pointer"], "", "{:#}", answer.body);
        assert_eq!(
            answer.body["detail"], r#"a batch must be an object `{"jobs": [...]}`"#,
            "{body}"
        );
    }
    env.cleanup().await
}

/// A body that stops arriving before its `Content-Length` is the client's doing: once the
/// request timeout passes, 408, naming the limit, with `Connection: close`, and counted as
/// the 408 it is. It used to wait out the timeout and answer 503, blaming RabbitMQ and
/// PostgreSQL.
#[tokio::test]
async fn a_body_that_never_arrives_in_full_is_408() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let timeout = Duration::from_millis(300);
    let a = app(
        &env,
        Options {
            limits: Limits {
                request_timeout: timeout,
                ..Limits::default()
            },
            ..Options::default()
        },
    )
    .await?;
    let sent = r#"{"task": "warren.echo", "payload": "#;
    for path in ["/v1/jobs", "/v1/jobs/batch"] {
        let before = answered(&a.router, path, 408).await;
        // Some bytes, then neither more nor an end: a client that promised more than it sent.
        let stalled = futures_lite::stream::once(Ok::<_, std::io::Error>(Bytes::from_static(
            sent.as_bytes(),
        )))
        .chain(futures_lite::stream::pending());
        let started = Instant::now();
        let answer = send(
            &a.router,
            "POST",
            path,
            Some(&a.all),
            &[JSON, ("content-length", "100")],
            Body::from_stream(stalled),
        )
        .await;
        let waited = started.elapsed();
        let detail = answer.problem(408)["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("did not arrive in full within 300ms")
                && detail.contains("--request-timeout")
                && detail.contains(&format!("{} of the 100 bytes", sent.len())),
            "{path}: {detail}"
        );
        assert_eq!(
            answer
                .headers
                .get("connection")
                .and_then(|v| v.to_str().ok()),
            Some("close"),
            "{path}"
        );
        assert!(!answer.headers.contains_key("retry-after"), "{path}");
        assert!(
            waited >= timeout && waited < Duration::from_secs(5),
            "{path}: answered after {waited:?}"
        );
        assert_eq!(answered(&a.router, path, 408).await, before + 1, "{path}");
    }
    assert!(env.store.state_counts(None).await?.is_empty());
    env.cleanup().await
}
