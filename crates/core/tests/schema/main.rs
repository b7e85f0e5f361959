//! The message contract is written twice: in Rust as `warren_core::message`, where
//! `JobMessage::decode` is the authoritative validator, and as JSON Schema in
//! `schemas/message.schema.json` for producers in other languages. These tests fail when the two
//! drift apart: the set of headers, each header's limits and every example message must be
//! judged the same way by both, and the few places where they deliberately differ are listed in
//! one test.
//!
//! The schemas are checked by the small validator in `validator.rs` rather than by the
//! `jsonschema` crate. Even with its default features off (no HTTP stack), that crate brings
//! about 75 crates and took about three minutes to build on two cores, for a crate whose own
//! tests build in seconds. The validator implements exactly the keywords the schemas use and
//! refuses any other, so a schema that starts using a new keyword fails here loudly instead of
//! having that keyword silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use warren_core::message::{HEADERS, MAX_ATTEMPTS_LIMIT, MAX_IDEMPOTENCY_KEY_LEN};
use warren_core::{HeaderValue, JobMessage, QueueName, RawMessage, TaskName};

mod validator;

use validator::{audit_keywords, validate};

/// The worker's default body limit. Every example is far below it; body size is a deployment
/// setting, not part of the schema.
const MAX_BODY: usize = 1 << 20;

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Reads a schema, checking that it declares draft 2020-12 and that the validator below
/// understands every keyword and pattern in it.
fn schema_at(path: &Path) -> Value {
    let schema = read_json(path);
    assert_eq!(
        schema["$schema"].as_str(),
        Some(DRAFT_2020_12),
        "{} must declare JSON Schema draft 2020-12",
        path.display()
    );
    let mut problems = Vec::new();
    audit_keywords(&schema, "#", &mut problems);
    assert!(
        problems.is_empty(),
        "{} uses what this test's validator does not implement; extend the validator first:\n{}",
        path.display(),
        problems.join("\n")
    );
    schema
}

fn message_schema() -> Value {
    schema_at(&schemas_dir().join("message.schema.json"))
}

/// The payload schema of a task, when `schemas/payloads/` has one.
fn payload_schema(task: &str) -> Option<Value> {
    let path = schemas_dir()
        .join("payloads")
        .join(format!("{task}.schema.json"));
    path.exists().then(|| schema_at(&path))
}

/// The `*.json` files directly inside `dir`, sorted by name, with their contents.
fn json_files(dir: &Path) -> Vec<(String, Value)> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<(String, Value)> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), read_json(&path))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

fn minimal_example() -> Value {
    read_json(&schemas_dir().join("examples/minimal.json"))
}

/// The example document as the broker hands it to a worker: the conversion that a producer's
/// AMQP client and Warren's consumer perform between them.
fn to_raw(doc: &Value) -> RawMessage {
    let props = &doc["properties"];
    // AMQP carries message_id and content_type as short strings; a producer that put a number
    // there would have it sent as its text.
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    RawMessage {
        message_id: props.get("message_id").map(text),
        content_type: props.get("content_type").map(text),
        timestamp: props.get("timestamp").and_then(Value::as_u64),
        headers: doc["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, value)| (name.clone(), header_value(value)))
            .collect(),
        body: doc
            .get("body")
            .map(|body| serde_json::to_vec(body).expect("a JSON value serialises"))
            .unwrap_or_default(),
    }
}

/// How a header written as JSON arrives at a worker. Types the contract never uses keep the
/// names the broker crate gives them, as they would on the wire.
fn header_value(value: &Value) -> HeaderValue {
    match value {
        Value::String(s) => HeaderValue::Str(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => HeaderValue::Int(i),
            None if n.is_u64() => HeaderValue::Other("timestamp"),
            None => HeaderValue::Other("float"),
        },
        Value::Bool(_) => HeaderValue::Other("boolean"),
        Value::Null => HeaderValue::Other("void"),
        Value::Array(_) => HeaderValue::Other("array"),
        Value::Object(_) => HeaderValue::Other("table"),
    }
}

/// Both verdicts on one document, with the reasons, for assertion messages.
struct Verdict {
    schema_errors: Vec<String>,
    decoded: Result<JobMessage, String>,
}

impl Verdict {
    fn of(schema: &Value, doc: &Value) -> Verdict {
        Verdict {
            schema_errors: validate(schema, doc),
            decoded: JobMessage::decode(&to_raw(doc), MAX_BODY).map_err(|e| e.to_string()),
        }
    }

    /// (schema accepts, decode accepts).
    fn accepted(&self) -> (bool, bool) {
        (self.schema_errors.is_empty(), self.decoded.is_ok())
    }

    fn explain(&self) -> String {
        let decode = match &self.decoded {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("rejected: {e}"),
        };
        let schema = if self.schema_errors.is_empty() {
            "accepted".to_owned()
        } else {
            format!("rejected: {}", self.schema_errors.join("; "))
        };
        format!("schema {schema}; decode {decode}")
    }
}

#[test]
fn schema_headers_are_exactly_the_rust_contract_headers() {
    let schema = message_schema();
    let headers = &schema["properties"]["headers"];
    let required: BTreeSet<&str> = headers["required"]
        .as_array()
        .expect("headers.required is an array")
        .iter()
        .map(|name| name.as_str().expect("required header names are strings"))
        .collect();
    let described = headers["properties"]
        .as_object()
        .expect("headers.properties is an object");
    let in_schema: BTreeMap<&str, (&str, bool)> = described
        .iter()
        .map(|(name, header)| {
            let ty = header["type"].as_str().unwrap_or_else(|| {
                panic!(
                    "header `{name}` must have exactly one JSON type, has {}",
                    header["type"]
                )
            });
            (name.as_str(), (ty, required.contains(name.as_str())))
        })
        .collect();
    let in_rust: BTreeMap<&str, (&str, bool)> = HEADERS
        .iter()
        .map(|&(name, ty, required)| (name, (ty, required)))
        .collect();
    assert_eq!(
        in_schema, in_rust,
        "headers in schemas/message.schema.json (name -> (type, required)) differ from \
         warren_core::message::HEADERS"
    );
    for name in &required {
        assert!(
            described.contains_key(*name),
            "required header `{name}` is not described"
        );
    }
    assert_ne!(
        headers["additionalProperties"],
        json!(false),
        "producers may add headers of their own"
    );
}

#[test]
fn schema_requires_the_job_id_and_describes_every_field() {
    let schema = message_schema();
    assert_eq!(
        schema["properties"]["properties"]["required"],
        json!(["message_id"])
    );

    fn walk(schema: &Value, at: &str, missing: &mut Vec<String>) {
        for (name, field) in schema["properties"].as_object().into_iter().flatten() {
            let here = format!("{at}/{name}");
            if field["description"].as_str().is_none_or(str::is_empty) {
                missing.push(here.clone());
            }
            walk(field, &here, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&schema, "#", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn schema_limits_are_the_rust_constants() {
    let schema = message_schema();
    let header = |name: &str| schema["properties"]["headers"]["properties"][name].clone();
    assert_eq!(
        header("warren-attempt")["maximum"],
        json!(MAX_ATTEMPTS_LIMIT)
    );
    assert_eq!(
        header("warren-max-attempts")["maximum"],
        json!(MAX_ATTEMPTS_LIMIT)
    );
    assert_eq!(
        header("warren-idempotency-key")["maxLength"],
        json!(MAX_IDEMPOTENCY_KEY_LEN)
    );
}

#[test]
fn every_valid_example_passes_the_schema_and_decodes() {
    let schema = message_schema();
    let examples = json_files(&schemas_dir().join("examples"));
    assert!(
        examples.len() >= 4,
        "expected at least 4 valid examples, found {}",
        examples.len()
    );
    for (file, doc) in &examples {
        let verdict = Verdict::of(&schema, doc);
        assert_eq!(
            verdict.accepted(),
            (true, true),
            "{file}: {}",
            verdict.explain()
        );
        let Ok(msg) = verdict.decoded else {
            unreachable!("asserted above")
        };

        let routing_key = doc["routing_key"].as_str().unwrap_or_default();
        if let Err(e) = QueueName::new(routing_key) {
            panic!("{file}: routing_key is not a queue name: {e}");
        }
        let message_id = doc["properties"]["message_id"].as_str().unwrap_or_default();
        assert!(
            msg.id.to_string().eq_ignore_ascii_case(message_id),
            "{file}: job id changed"
        );
        let payload: Value = serde_json::from_str(msg.payload.get()).expect("payload is JSON");
        assert_eq!(payload, doc["body"], "{file}: payload changed");
        // Every contract header the example sets must come out of decode unchanged: a value
        // that decode silently drops (a malformed traceparent, say) does not belong in a valid
        // example.
        let decoded: BTreeMap<&str, HeaderValue> = msg.headers().into_iter().collect();
        for &(name, _, _) in HEADERS {
            if let Some(value) = doc["headers"].get(name) {
                assert_eq!(
                    decoded.get(name),
                    Some(&header_value(value)),
                    "{file}: header `{name}` did not survive decode"
                );
            }
        }

        if let Some(payload_schema) = payload_schema(msg.task.as_str()) {
            let errors = validate(&payload_schema, &doc["body"]);
            assert!(
                errors.is_empty(),
                "{file}: body does not fit its task's schema: {errors:?}"
            );
        }
    }
}

#[test]
fn every_invalid_example_fails_both_the_schema_and_decode() {
    let schema = message_schema();
    let examples = json_files(&schemas_dir().join("examples/invalid"));
    assert!(
        examples.len() >= 4,
        "expected at least 4 invalid examples, found {}",
        examples.len()
    );
    for (file, doc) in &examples {
        let verdict = Verdict::of(&schema, doc);
        assert_eq!(
            verdict.accepted(),
            (false, false),
            "{file}: {}",
            verdict.explain()
        );
    }
}

/// Every integer or string limit of a header is tried just inside and just outside, on both
/// sides, so a range changed on one side only fails here.
#[test]
fn header_limits_agree_at_their_boundaries() {
    let schema = message_schema();
    let minimal = minimal_example();
    let judge = |name: &str, value: Value, expect_ok: bool| {
        let mut doc = minimal.clone();
        doc["headers"][name] = value.clone();
        let verdict = Verdict::of(&schema, &doc);
        let expected = (expect_ok, expect_ok);
        let shown = value.to_string().chars().take(40).collect::<String>();
        assert_eq!(
            verdict.accepted(),
            expected,
            "`{name}` = {shown}: {}",
            verdict.explain()
        );
    };

    let mut limits_checked = 0;
    let described = schema["properties"]["headers"]["properties"]
        .as_object()
        .expect("object");
    for (name, header) in described {
        // Intake-only headers are ignored on work messages; IntakeMessage::decode checks
        // them, and its unit tests cover their limits.
        if [
            warren_core::message::HEADER_QUEUE,
            warren_core::message::HEADER_RUN_AT,
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let int_limit = |k: &str| header.get(k).map(|v| v.as_i64().expect("integer limit"));
        let len_limit = |k: &str| header.get(k).map(|v| v.as_u64().expect("length limit"));
        if let Some(min) = int_limit("minimum") {
            judge(name, json!(min), true);
            judge(name, json!(min - 1), false);
            limits_checked += 1;
        }
        if let Some(max) = int_limit("maximum") {
            judge(name, json!(max), true);
            judge(name, json!(max + 1), false);
            limits_checked += 1;
        }
        let repeat = |n: u64| json!("k".repeat(usize::try_from(n).expect("small length")));
        if let Some(min) = len_limit("minLength") {
            judge(name, repeat(min), true);
            if min > 0 {
                judge(name, repeat(min - 1), false);
            }
            limits_checked += 1;
        }
        if let Some(max) = len_limit("maxLength") {
            judge(name, repeat(max), true);
            judge(name, repeat(max + 1), false);
            limits_checked += 1;
        }
    }
    // Six integer headers with two limits each (warren-has-row is 0..=1), and the
    // idempotency key's two lengths.
    assert_eq!(
        limits_checked, 14,
        "the schema's header limits changed; review this test"
    );
}

#[test]
fn name_and_id_rules_agree() {
    let schema = message_schema();
    let minimal = minimal_example();
    let longest = "a".repeat(120);
    let too_long = "a".repeat(121);
    let good_names = [
        "a",
        "email.send",
        "billing:invoice-v2",
        "x_1",
        "Z9",
        longest.as_str(),
    ];
    let bad_names = [
        "",
        "1abc",
        "has space",
        "émail",
        "a/b",
        "-a",
        too_long.as_str(),
    ];

    for (names, ok) in [(&good_names[..], true), (&bad_names[..], false)] {
        for &name in names {
            let mut doc = minimal.clone();
            doc["headers"]["warren-task"] = json!(name);
            let verdict = Verdict::of(&schema, &doc);
            assert_eq!(
                verdict.accepted(),
                (ok, ok),
                "task `{name}`: {}",
                verdict.explain()
            );
            assert_eq!(TaskName::new(name).is_ok(), ok, "TaskName `{name}`");

            // The queue is not in the message, so decode never sees it; QueueName is its rule.
            let mut doc = minimal.clone();
            doc["routing_key"] = json!(name);
            let schema_ok = validate(&schema, &doc).is_empty();
            assert_eq!(
                (schema_ok, QueueName::new(name).is_ok()),
                (ok, ok),
                "queue `{name}`"
            );
        }
    }

    let good_ids = [
        "0190f3c4-8a1e-7cc2-9d55-3b1f0c6a2e10",
        "0190F3C4-8A1E-7CC2-9D55-3B1F0C6A2E10",
    ];
    let bad_ids = [
        "",
        "42",
        "job-42",
        "0190f3c4-8a1e-7cc2-9d55-3b1f0c6a2e1",
        "0190f3c4-8a1e-7cc2-9d55-3b1f0c6a2e1g",
        "0190f3c4-8a1e-7cc2-9d55-3b1f0c6a2e100",
    ];
    for (ids, ok) in [(&good_ids[..], true), (&bad_ids[..], false)] {
        for &id in ids {
            let mut doc = minimal.clone();
            doc["properties"]["message_id"] = json!(id);
            let verdict = Verdict::of(&schema, &doc);
            assert_eq!(
                verdict.accepted(),
                (ok, ok),
                "message_id `{id}`: {}",
                verdict.explain()
            );
        }
    }
}

/// The schema tells producers what to send, so in a few places it is stricter than what a
/// worker tolerates, and in one place JSON Schema cannot say what decode checks. Each case is
/// stated in the field's description; this is the complete list. If decode changes so that a
/// case below starts to agree, remove the case and its note in the schema.
#[test]
fn the_known_differences_are_exactly_the_documented_ones() {
    let schema = message_schema();
    let minimal = minimal_example();
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, (bool, bool)); 6] = [
        (
            "malformed traceparent: decode drops it",
            |d| {
                d["headers"]["traceparent"] = json!("garbage");
            },
            (false, true),
        ),
        (
            "content_type with parameters",
            |d| {
                d["properties"]["content_type"] = json!("application/json; charset=utf-8");
            },
            (false, true),
        ),
        (
            "content_type in upper case",
            |d| {
                d["properties"]["content_type"] = json!("APPLICATION/JSON");
            },
            (false, true),
        ),
        (
            "job id in simple form",
            |d| {
                d["properties"]["message_id"] = json!("0190f3c48a1e7cc29d553b1f0c6a2e10");
            },
            (false, true),
        ),
        (
            "transient delivery_mode: decode never sees it",
            |d| {
                d["properties"]["delivery_mode"] = json!(1);
            },
            (false, true),
        ),
        (
            "idempotency key of 255 characters but 510 bytes: maxLength counts characters",
            |d| {
                d["headers"]["warren-idempotency-key"] = json!("é".repeat(255));
            },
            (true, false),
        ),
    ];
    for (what, edit, expected) in cases {
        let mut doc = minimal.clone();
        edit(&mut doc);
        let verdict = Verdict::of(&schema, &doc);
        assert_eq!(
            verdict.accepted(),
            expected,
            "{what}: {}",
            verdict.explain()
        );
    }
}

#[test]
fn payload_schemas_match_the_builtin_tasks() {
    let files = json_files(&schemas_dir().join("payloads"));
    for (file, _) in &files {
        let task = file.strip_suffix(".schema.json").unwrap_or_else(|| {
            panic!("payloads/{file}: name payload schemas `<task>.schema.json`")
        });
        assert!(
            TaskName::new(task).is_ok(),
            "payloads/{file}: `{task}` is not a task name"
        );
        // Reading it through payload_schema also audits its keywords.
        assert!(payload_schema(task).is_some());
    }
    let tasks: BTreeSet<&str> = files
        .iter()
        .filter_map(|(f, _)| f.strip_suffix(".schema.json"))
        .collect();
    for task in [
        "warren.noop",
        "warren.echo",
        "warren.sleep",
        "warren.fail",
        "warren.panic",
    ] {
        assert!(
            tasks.contains(task),
            "no payload schema for built-in task {task}"
        );
    }

    // These mirror the worker's serde types (SleepPayload and FailPayload in worker/src/tasks.rs,
    // both `deny_unknown_fields`), which this crate cannot depend on.
    let cases = [
        ("warren.sleep", json!({"ms": 0}), true),
        ("warren.sleep", json!({"ms": 250}), true),
        ("warren.sleep", json!({"ms": u64::MAX}), true),
        ("warren.sleep", json!({}), false),
        ("warren.sleep", json!({"ms": -1}), false),
        ("warren.sleep", json!({"ms": 1.5}), false),
        ("warren.sleep", json!({"ms": "250"}), false),
        ("warren.sleep", json!({"ms": 1, "extra": true}), false),
        ("warren.sleep", json!(250), false),
        ("warren.fail", json!({}), true),
        ("warren.fail", json!({"times": 3}), true),
        ("warren.fail", json!({"permanent": true}), true),
        (
            "warren.fail",
            json!({"times": u32::MAX, "permanent": false}),
            true,
        ),
        ("warren.fail", json!({"times": -1}), false),
        (
            "warren.fail",
            json!({"times": u64::from(u32::MAX) + 1}),
            false,
        ),
        ("warren.fail", json!({"permanent": "yes"}), false),
        ("warren.fail", json!({"time": 3}), false),
        ("warren.noop", json!(null), true),
        ("warren.echo", json!({"anything": [1, "two"]}), true),
        ("warren.panic", json!("boom"), true),
    ];
    for (task, payload, ok) in cases {
        let schema = payload_schema(task).unwrap_or_else(|| panic!("no schema for {task}"));
        let errors = validate(&schema, &payload);
        assert_eq!(
            errors.is_empty(),
            ok,
            "{task} payload {payload}: {errors:?}"
        );
    }
}

#[test]
fn the_validator_reports_what_is_wrong_and_where() {
    let schema = message_schema();
    let mut doc = minimal_example();
    doc["headers"]["warren-attempt"] = json!("1");
    doc["properties"]
        .as_object_mut()
        .expect("object")
        .remove("message_id");
    doc["extra"] = json!(true);
    let errors = validate(&schema, &doc);
    assert_eq!(
        errors,
        [
            "#/extra: not allowed here",
            "#/headers/warren-attempt: is a string, expected integer",
            "#/properties: missing required property `message_id`",
        ],
    );
}
