//! How the service refuses a request: the status, the problem+json body and the headers that
//! go with it, through `router()` against the real RabbitMQ and PostgreSQL.

mod support;

use axum::body::Body;
use serde_json::{Value, json};
use support::{Answer, Options, app, get, post, send};
use warren_testkit::TestEnv;

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
