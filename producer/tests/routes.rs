//! The service through `router()`, against the real RabbitMQ and PostgreSQL.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use serde_json::json;
use support::{Options, app, get, post, send};
use warren_producer::{Limits, ROUTES};
use warren_runtime::Worker;
use warren_testkit::{Proxy, TestEnv, wait_until};
use warren_worker::tasks::register_builtins;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_posted_job_runs_and_its_result_is_read_back() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let worker = env
        .start_worker(
            register_builtins(Worker::builder()),
            env.worker_config("w1"),
        )
        .await?;
    let answer = send(
        &a.router,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[
            ("content-type", "application/json"),
            ("traceparent", TRACEPARENT),
        ],
        Body::from(json!({"task": "warren.echo", "payload": {"hello": "http"}}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 202, "{:#}", answer.body);
    assert_eq!(answer.body["state"], "queued");
    assert!(answer.headers.contains_key("x-request-id"));
    let id = answer.body["id"].as_str().unwrap_or_default().to_owned();
    let record = wait_until(Duration::from_secs(30), "the job to succeed", || async {
        let r = get(&a.router, &format!("/v1/jobs/{id}"), &a.all).await;
        Ok(if r.status == 200 && r.body["state"] == "succeeded" {
            Ok(r.body)
        } else {
            Err(format!("{} {}", r.status, r.body))
        })
    })
    .await?;
    assert_eq!(record["result"], json!({"hello": "http"}));
    assert_eq!(record["attempt"], 1);
    assert_eq!(
        record["traceparent"], TRACEPARENT,
        "trace context reaches the job"
    );
    worker.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn credentials_are_checked_before_anything_else() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let job = json!({"task": "warren.echo", "payload": 1});
    let none = send(
        &a.router,
        "POST",
        "/v1/jobs",
        None,
        &[("content-type", "application/json")],
        Body::from(job.to_string()),
    )
    .await;
    assert!(
        none.problem(401)["detail"]
            .as_str()
            .unwrap_or("")
            .contains("no credentials")
    );
    let wrong = post(&a.router, "/v1/jobs", "wrn_not-a-token", &job).await;
    wrong.problem(401);
    let basic = send(
        &a.router,
        "POST",
        "/v1/jobs",
        None,
        &[
            ("content-type", "application/json"),
            ("authorization", "Basic dTpw"),
        ],
        Body::from(job.to_string()),
    )
    .await;
    assert!(
        basic.problem(401)["detail"]
            .as_str()
            .unwrap_or("")
            .contains("malformed")
    );
    let other_task = post(&a.router, "/v1/jobs", &a.sleepy, &job).await;
    let detail = other_task.problem(403)["detail"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        detail.contains("`sleepy`") && detail.contains("warren.echo"),
        "{detail}"
    );
    let allowed = post(
        &a.router,
        "/v1/jobs",
        &a.sleepy,
        &json!({"task": "warren.sleep", "payload": {"ms": 1}}),
    )
    .await;
    assert_eq!(allowed.status, 202, "{:#}", allowed.body);
    // A limited token cannot read jobs of other tasks either.
    let delayed = post(
        &a.router,
        "/v1/jobs",
        &a.all,
        &json!({"task": "warren.echo", "payload": 1, "delay": "1h"}),
    )
    .await;
    let id = delayed.body["id"].as_str().unwrap_or_default();
    get(&a.router, &format!("/v1/jobs/{id}"), &a.sleepy)
        .await
        .problem(403);
    send(
        &a.router,
        "GET",
        &format!("/v1/jobs/{id}"),
        None,
        &[],
        Body::empty(),
    )
    .await
    .problem(401);
    env.cleanup().await
}

#[tokio::test]
async fn bad_bodies_get_precise_problems() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let limits = Limits {
        max_body_bytes: 4096,
        max_batch: 3,
        ..Limits::default()
    };
    let a = app(
        &env,
        Options {
            limits,
            ..Options::default()
        },
    )
    .await?;
    let r = &a.router;

    let malformed = send(
        r,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[("content-type", "application/json")],
        Body::from("{\"task\": \"warren.echo\",\n \"payload\": }"),
    )
    .await;
    let d = malformed.problem(400)["detail"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(d.contains("line 2"), "{d}");

    let text = send(
        r,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[("content-type", "text/plain")],
        Body::from("{}"),
    )
    .await;
    assert!(
        text.problem(415)["detail"]
            .as_str()
            .unwrap_or("")
            .contains("text/plain")
    );

    // Declared too long: refused on the header. Streamed without a length: refused while read.
    let big = "x".repeat(5000);
    let declared = send(
        r,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[
            ("content-type", "application/json"),
            ("content-length", "5000"),
        ],
        Body::from(big.clone()),
    )
    .await;
    declared.problem(413);
    let chunks = futures_lite::stream::iter(
        (0..50).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 100]))),
    );
    let streamed = send(
        r,
        "POST",
        "/v1/jobs/batch",
        Some(&a.all),
        &[("content-type", "application/json")],
        Body::from_stream(chunks),
    )
    .await;
    streamed.problem(413);

    let cases = [
        (
            json!({"task": "warren.sleep", "payload": {"ms": "ten"}}),
            "/payload/ms",
        ),
        (
            json!({"task": "warren.sleep", "payload": {"ms": 1, "extra": true}}),
            "/payload",
        ),
        (json!({"task": "no.such.task", "payload": {}}), "/task"),
        (
            json!({"task": "warren.echo", "payload": 1, "delay": "-5s"}),
            "/delay",
        ),
        (
            json!({"task": "warren.echo", "payload": 1, "queue": "bad queue"}),
            "/queue",
        ),
        (
            json!({"task": "warren.echo", "payload": 1, "max_attempts": 0}),
            "/max_attempts",
        ),
        (
            json!({"task": "warren.echo", "payload": 1, "run_at": "tomorrow"}),
            "/run_at",
        ),
        (
            json!({"task": "warren.echo", "payload": 1, "attempts": 3}),
            "/attempts",
        ),
        (json!({"task": "warren.echo"}), "/payload"),
        (
            json!({"task": "warren.sleep", "payload": {"ms": -1}, "delay": "x"}),
            "/payload/ms",
        ),
        (
            json!({"task": "warren.echo", "payload": 1, "queue": "nobody-declared-this"}),
            "/queue",
        ),
    ];
    for (body, pointer) in cases {
        let answer = post(r, "/v1/jobs", &a.all, &body).await;
        answer.problem(422);
        assert!(
            answer.pointers().iter().any(|p| p == pointer),
            "{body}: expected a violation at {pointer}, got {:#}",
            answer.body
        );
    }

    // Well-formed JSON a worker could not read (a number no 64-bit float holds), in a payload
    // whose schema accepts anything: the job is refused with the payload's pointer, on its
    // own and in a batch beside a good job, which is accepted.
    let unreadable = r#"{"task": "warren.echo", "payload": {"n": 1e400}}"#;
    let answer = send(
        r,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[("content-type", "application/json")],
        Body::from(unreadable),
    )
    .await;
    answer.problem(422);
    assert_eq!(answer.pointers(), ["/payload"], "{:#}", answer.body);
    let answer = send(
        r,
        "POST",
        "/v1/jobs/batch",
        Some(&a.all),
        &[("content-type", "application/json")],
        Body::from(format!(
            r#"{{"jobs": [{{"task": "warren.echo", "payload": 1}}, {unreadable}]}}"#
        )),
    )
    .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["accepted"], 1);
    assert_eq!(answer.body["results"][0]["status"], 202);
    assert_eq!(answer.body["results"][1]["status"], 422);
    assert_eq!(
        answer.body["results"][1]["problem"]["errors"][0]["pointer"],
        "/jobs/1/payload"
    );

    let oversize = post(
        r,
        "/v1/jobs/batch",
        &a.all,
        &json!({"jobs": vec![json!({"task": "warren.echo", "payload": 1}); 4]}),
    )
    .await;
    assert!(
        oversize.problem(422)["detail"]
            .as_str()
            .unwrap_or("")
            .contains("more than 3")
    );
    assert_eq!(oversize.pointers(), ["/jobs"]);

    send(r, "GET", "/v2/nothing", None, &[], Body::empty())
        .await
        .problem(404);
    let wrong = send(r, "DELETE", "/v1/jobs", None, &[], Body::empty()).await;
    wrong.problem(405);
    assert_eq!(wrong.headers["allow"], "POST");
    env.cleanup().await
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_job() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let job = json!({"task": "warren.echo", "payload": {"n": 1}});
    let send_keyed = |key: &'static str| {
        let r = a.router.clone();
        let token = a.all.clone();
        let job = job.clone();
        async move {
            send(
                &r,
                "POST",
                "/v1/jobs",
                Some(&token),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                Body::from(job.to_string()),
            )
            .await
        }
    };
    let first = send_keyed("order-42").await;
    assert_eq!(first.status, 202, "{:#}", first.body);
    assert_eq!(
        first.body["state"], "scheduled",
        "keyed jobs become rows first"
    );
    let again = send_keyed("order-42").await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["duplicate"], true);
    // The same key in a batch, and in the body, is the same job too.
    let batch = post(
        &a.router,
        "/v1/jobs/batch",
        &a.all,
        &json!({"jobs": [
            {"task": "warren.echo", "payload": 2, "idempotency_key": "order-42"},
            {"task": "warren.echo", "payload": 3, "idempotency_key": "order-43"}
        ]}),
    )
    .await;
    assert_eq!(
        batch.body["results"][0]["id"], first.body["id"],
        "{:#}",
        batch.body
    );
    assert_ne!(batch.body["results"][1]["id"], first.body["id"]);
    let conflicting = send(
        &a.router,
        "POST",
        "/v1/jobs",
        Some(&a.all),
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "a"),
        ],
        Body::from(
            json!({"task": "warren.echo", "payload": 1, "idempotency_key": "b"}).to_string(),
        ),
    )
    .await;
    conflicting.problem(422);
    let rows = env
        .store
        .jobs(&[first.body["id"].as_str().unwrap_or_default().parse()?])
        .await?;
    assert_eq!(rows.len(), 1, "exactly one job holds the key");
    env.cleanup().await
}

#[tokio::test]
async fn a_batch_answers_each_job_in_order() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let answer = post(
        &a.router,
        "/v1/jobs/batch",
        &a.all,
        &json!({"jobs": [
            {"task": "warren.echo", "payload": 0},
            {"task": "warren.sleep", "payload": {"ms": -1}},
            {"task": "warren.echo", "payload": 2, "max_atempts": 2},
            {"task": "warren.echo", "payload": 3, "delay": "1h"},
            {"task": "warren.echo", "payload": 4, "queue": "nobody-declared-this"},
            "not a job"
        ]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    let results = answer.body["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [202, 422, 422, 202, 422, 422]);
    assert_eq!(answer.body["accepted"], 2);
    assert_eq!(answer.body["failed"], 4);
    assert_eq!(results[0]["state"], "queued");
    assert_eq!(results[3]["state"], "scheduled");
    let pointer = |i: usize| results[i]["problem"]["errors"][0]["pointer"].clone();
    assert_eq!(pointer(1), "/jobs/1/payload/ms");
    assert_eq!(pointer(2), "/jobs/2/max_atempts");
    assert_eq!(pointer(4), "/jobs/4/queue");
    assert_eq!(pointer(5), "/jobs/5");
    // The scheduled one is a row already.
    let id = results[3]["id"].as_str().unwrap_or_default();
    let row = get(&a.router, &format!("/v1/jobs/{id}"), &a.all).await;
    assert_eq!(row.body["state"], "scheduled", "{:#}", row.body);
    env.cleanup().await
}

#[tokio::test]
async fn jobs_are_read_and_cancelled() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let later = post(
        &a.router,
        "/v1/jobs",
        &a.all,
        &json!({"task": "warren.echo", "payload": 1, "run_at": "2100-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(later.body["state"], "scheduled", "{:#}", later.body);
    let id = later.body["id"].as_str().unwrap_or_default().to_owned();
    let record = get(&a.router, &format!("/v1/jobs/{id}"), &a.all).await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body["run_at"], "2100-01-01T00:00:00Z");
    let cancel = post(
        &a.router,
        &format!("/v1/jobs/{id}/cancel"),
        &a.all,
        &json!({}),
    )
    .await;
    assert_eq!(cancel.status, 200, "{:#}", cancel.body);
    assert_eq!(cancel.body["outcome"], "cancelled");
    assert_eq!(cancel.body["previous"], "scheduled");
    post(
        &a.router,
        &format!("/v1/jobs/{id}/cancel"),
        &a.all,
        &json!({}),
    )
    .await
    .problem(409);
    let unknown = uuid::Uuid::now_v7();
    get(&a.router, &format!("/v1/jobs/{unknown}"), &a.all)
        .await
        .problem(404);
    get(&a.router, "/v1/jobs/not-a-uuid", &a.all)
        .await
        .problem(404);
    post(
        &a.router,
        &format!("/v1/jobs/{unknown}/cancel"),
        &a.all,
        &json!({}),
    )
    .await
    .problem(404);

    // Without a database: delayed jobs go through the intake queue; reads answer 503.
    let bare = app(
        &env,
        Options {
            with_store: false,
            ..Options::default()
        },
    )
    .await?;
    let delayed = post(
        &bare.router,
        "/v1/jobs",
        &bare.all,
        &json!({"task": "warren.echo", "payload": 1, "delay": "10m"}),
    )
    .await;
    assert_eq!(delayed.status, 202, "{:#}", delayed.body);
    assert_eq!(delayed.body["state"], "scheduled");
    get(&bare.router, &format!("/v1/jobs/{id}"), &bare.all)
        .await
        .problem(503);
    env.cleanup().await
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let r = &a.router;
    assert_eq!(
        send(r, "GET", "/healthz", None, &[], Body::empty())
            .await
            .status,
        200
    );
    let ready = send(r, "GET", "/readyz", None, &[], Body::empty()).await;
    assert_eq!(ready.status, 200, "{:#}", ready.body);
    assert_eq!(ready.body["database"], "ok");
    post(
        r,
        "/v1/jobs",
        &a.all,
        &json!({"task": "warren.noop", "payload": null}),
    )
    .await;
    let metrics = send(r, "GET", "/metrics", None, &[], Body::empty()).await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.contains(
            "warren_producer_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"202\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("warren_producer_jobs_total{outcome=\"accepted\"}"),
        "{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("warren_"),
            "series without the prefix: {line}"
        );
    }

    // The document and the routes agree, both ways.
    let doc = send(r, "GET", "/openapi.json", None, &[], Body::empty())
        .await
        .body;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .map(move |(m, _)| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, routed);
    for route in ROUTES {
        let path = route
            .path
            .replace("{id}", &uuid::Uuid::now_v7().to_string());
        let answer = send(
            r,
            route.method,
            &path,
            Some(&a.all),
            &[("content-type", "application/json")],
            Body::from("{}"),
        )
        .await;
        assert!(
            answer.status != 405
                && answer.body["detail"]
                    .as_str()
                    .is_none_or(|d| !d.starts_with("no route")),
            "{} {} is documented but not routed: {:#}",
            route.method,
            route.path,
            answer.body
        );
        for status in doc["paths"][route.path][route.method.to_ascii_lowercase()]["responses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(s, _)| s)
        {
            assert!(status.parse::<u16>().is_ok(), "{status}");
        }
    }
    env.cleanup().await
}

#[tokio::test]
async fn a_broker_outage_is_503_and_never_a_false_accept() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let proxy = Proxy::start("127.0.0.1:5672").await?;
    let mut config = env.broker_config.clone();
    config.url = proxy.url_through(&config.url, "127.0.0.1:5672");
    config.confirm_timeout = Duration::from_secs(2);
    let broker = warren_client::Broker::connect(config).await?;
    let a = app(
        &env,
        Options {
            broker: Some(broker),
            with_store: false,
            ..Options::default()
        },
    )
    .await?;
    let job = json!({"task": "warren.echo", "payload": 1});
    assert_eq!(post(&a.router, "/v1/jobs", &a.all, &job).await.status, 202);
    proxy.cut();
    let down = post(&a.router, "/v1/jobs", &a.all, &job).await;
    down.problem(503);
    let batch = post(
        &a.router,
        "/v1/jobs/batch",
        &a.all,
        &json!({"jobs": [job, job]}),
    )
    .await;
    assert_eq!(batch.status, 200);
    assert!(batch.headers.contains_key("retry-after"));
    assert_eq!(batch.body["accepted"], 0, "{:#}", batch.body);
    assert_eq!(batch.body["results"][0]["status"], 503);
    send(&a.router, "GET", "/readyz", None, &[], Body::empty())
        .await
        .problem(503);

    // A broker that takes the connection but never answers: the request timeout answers.
    let quiet = Proxy::start("127.0.0.1:5672").await?;
    let mut config = env.broker_config.clone();
    config.url = quiet.url_through(&config.url, "127.0.0.1:5672");
    let broker = warren_client::Broker::connect(config).await?;
    let watched = broker.clone();
    let limits = Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let slow = app(
        &env,
        Options {
            broker: Some(broker),
            with_store: false,
            limits,
            ..Options::default()
        },
    )
    .await?;
    quiet.blackhole();
    // The blackhole drops the open connection first; a publish racing that drop fails at
    // once (its confirm is lost with the connection). Once the loss is noticed, a publish
    // waits for the new connection, which the blackhole never lets finish.
    wait_until(
        Duration::from_secs(10),
        "the producer to notice its connection dropped",
        || async {
            Ok(if watched.is_connected() {
                Err("still connected".to_owned())
            } else {
                Ok(())
            })
        },
    )
    .await?;
    let timed_out_before = timed_out(&slow.router).await;
    let hung = post(&slow.router, "/v1/jobs", &slow.all, &job).await;
    assert!(
        hung.problem(503)["detail"]
            .as_str()
            .unwrap_or("")
            .contains("request timeout")
    );
    // The timeout is counted as the 503 it was answered with, under its route.
    assert_eq!(timed_out(&slow.router).await, timed_out_before + 1);
    env.cleanup().await
}

/// The count of `POST /v1/jobs` requests answered 503, read from `/metrics`.
async fn timed_out(router: &axum::Router) -> u64 {
    const SERIES: &str =
        "warren_producer_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"503\"} ";
    let metrics = send(router, "GET", "/metrics", None, &[], Body::empty()).await;
    let text = metrics.body.as_str().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(SERIES))
        .map_or(0, |n| {
            n.trim().parse().expect("a counter is a whole number")
        })
}
