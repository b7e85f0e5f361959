//! Reading a request body: the content type, the size limit (enforced while reading, so an
//! oversize body is never buffered whole), JSON, and the job object field by field, so that
//! every mistake is reported with the JSON pointer of the field it concerns.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use warren_core::duration::parse_duration;

use crate::problem::{Problem, Violation};

/// The fields a job object may have; anything else is refused, so a typo (`max_attempt`) is
/// an error instead of an option silently ignored.
pub const JOB_FIELDS: &[&str] = &[
    "task",
    "payload",
    "queue",
    "delay",
    "run_at",
    "max_attempts",
    "timeout",
    "idempotency_key",
];

/// When a job should run, as the request asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// At once.
    Now,
    /// After this long.
    After(Duration),
    /// At this time.
    At(DateTime<Utc>),
}

/// A job as a request describes it, each field of the right JSON type, borrowed from the
/// parsed body (nothing is copied until the job is made). The values are checked further by
/// the task's contract and by `warren_client::NewJob`.
#[derive(Clone, Debug)]
pub struct JobRequest<'a> {
    /// The task name.
    pub task: &'a str,
    /// The payload, any JSON value.
    pub payload: Payload<'a>,
    /// The queue, when not the default.
    pub queue: Option<&'a str>,
    /// When to run it.
    pub when: When,
    /// Attempts in total.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// At most one live or succeeded job per key.
    pub idempotency_key: Option<&'a str>,
}

/// A job's payload as the request gave it.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Parsed into a tree, when the job was read field by field.
    Tree(&'a Value),
    /// The text it was sent as, when the job was read straight into its fields: it is
    /// published as it came, without being parsed into a tree and written out again.
    Text(&'a RawValue),
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Tree(value) => value.serialize(serializer),
            Self::Text(text) => text.serialize(serializer),
        }
    }
}

/// A job object as it is read on the fast path: straight into its fields, the payload kept as
/// text. Anything this cannot read (an unknown, duplicate or missing field, a value of the
/// wrong type) sends the body down the slow path instead, [`JobRequest::from_value`], which
/// names every mistake with its pointer; so this only has to be right about good jobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireJob<'a> {
    #[serde(borrow)]
    task: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
    queue: Option<String>,
    delay: Option<String>,
    run_at: Option<String>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
    idempotency_key: Option<String>,
}

/// A batch body as it is read on the fast path (see [`WireJob`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireBatch<'a> {
    /// The jobs, in order.
    #[serde(borrow)]
    pub jobs: Vec<WireJob<'a>>,
}

/// When a request times out, as the answer layer ([`crate::router`]) sets it in the request's
/// extensions: a body still arriving then is answered 408 rather than the 503 of a request
/// that waited on RabbitMQ or PostgreSQL.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// The instant the request times out.
    pub at: tokio::time::Instant,
    /// The request timeout it was set from, named in the answer.
    pub timeout: Duration,
}

/// Checks the content type and coding, then reads at most `limit` bytes of `body`, all of
/// them by `deadline` (a 408 otherwise).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline: Option<Deadline>,
) -> Result<Vec<u8>, Problem> {
    check_content_type(headers)?;
    check_content_encoding(headers)?;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A declared length over the limit is refused before a byte of the body is read.
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(Problem::too_large(limit));
    }
    let mut bytes = Vec::new();
    let Some(deadline) = deadline else {
        read_all(body, limit, &mut bytes).await?;
        return Ok(bytes);
    };
    // The body's own deadline is the request's, so that a body that never arrives in full
    // (a Content-Length larger than what is sent, a stalled upload) is answered as the
    // client's fault, 408, instead of as the services' 503 when the request times out. The
    // request's timeout polls the handler before its own timer, so at the same instant this
    // one answers first.
    let read = tokio::time::timeout_at(deadline.at, read_all(body, limit, &mut bytes)).await;
    match read {
        Ok(read) => read.map(|()| bytes),
        Err(_) => Err(Problem::body_timeout(
            deadline.timeout,
            bytes.len(),
            announced,
        )),
    }
}

/// Reads `body` into `bytes`, refusing it (413) as soon as it passes `limit`.
async fn read_all(body: Body, limit: usize, bytes: &mut Vec<u8>) -> Result<(), Problem> {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Problem::malformed(format!("the request body could not be read: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(Problem::too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(())
}

/// Parses a body as JSON (the slow path's first step); not JSON is a 400.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message ends with the line and column.
        Problem::malformed(format!("the body is not valid JSON: {e}"))
    })
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Problem::unsupported_media_type(None));
    };
    let text = value.to_str().unwrap_or("(not text)");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(Some(text)))
    }
}

/// Refuses a body sent with a content coding (RFC 9110, section 8.4.1): the service decodes
/// none, and the coded bytes would otherwise be refused as malformed JSON, which sends the
/// client looking for a mistake in its JSON. `identity`, the absence of a coding, is allowed.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), Problem> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("(not text)");
        if text
            .split(',')
            .map(str::trim)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        {
            return Err(Problem::unsupported_encoding(text));
        }
    }
    Ok(())
}

impl<'a> JobRequest<'a> {
    /// A job read on the fast path, or `None` when one of its options does not parse (the
    /// slow path then says which).
    pub fn from_wire(wire: &'a WireJob<'_>) -> Option<Self> {
        let mut v = Vec::new();
        let when = schedule(wire.delay.as_deref(), wire.run_at.as_deref(), "", &mut v);
        let timeout = match wire.timeout.as_deref() {
            Some(t) => Some(parse_duration(t).ok()?),
            None => None,
        };
        v.is_empty().then_some(JobRequest {
            task: &wire.task,
            payload: Payload::Text(wire.payload),
            queue: wire.queue.as_deref(),
            when,
            max_attempts: wire.max_attempts,
            timeout,
            idempotency_key: wire.idempotency_key.as_deref(),
        })
    }

    /// Reads a job object found at `at` (a JSON pointer, `""` for the whole body); every
    /// problem is reported, each with its pointer.
    pub fn from_value(value: &'a Value, at: &str) -> Result<Self, Vec<Violation>> {
        let Value::Object(fields) = value else {
            return Err(vec![Violation::new(
                pointer(at, ""),
                format!("a job must be a JSON object, got {}", kind(value)),
            )]);
        };
        let mut v = Vec::new();
        for name in fields.keys() {
            if !JOB_FIELDS.contains(&name.as_str()) {
                v.push(Violation::new(
                    pointer(at, name),
                    format!(
                        "unknown field `{name}`; a job has {}",
                        JOB_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let task = string(fields, at, "task", &mut v, true);
        let payload = fields.get("payload").unwrap_or_else(|| {
            v.push(Violation::new(
                pointer(at, "payload"),
                "required; give the task's input (any JSON value, `null` for none)",
            ));
            &Value::Null
        });
        let queue = string(fields, at, "queue", &mut v, false);
        let when = when(fields, at, &mut v);
        let max_attempts = match fields.get("max_attempts") {
            None | Some(Value::Null) => None,
            Some(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    v.push(Violation::new(
                        pointer(at, "max_attempts"),
                        format!("must be a whole number from 1 to 1000, got {n}"),
                    ));
                    None
                }
            },
        };
        let timeout = string(fields, at, "timeout", &mut v, false).and_then(|t| {
            parse_duration(t)
                .map_err(|e| v.push(Violation::new(pointer(at, "timeout"), e)))
                .ok()
        });
        let idempotency_key = string(fields, at, "idempotency_key", &mut v, false);
        match (task, v.is_empty()) {
            (Some(task), true) => Ok(JobRequest {
                task,
                payload: Payload::Tree(payload),
                queue,
                when,
                max_attempts,
                timeout,
                idempotency_key,
            }),
            _ => Err(v),
        }
    }
}

/// `at` + `/field`, escaped as RFC 6901 asks.
pub fn pointer(at: &str, field: &str) -> String {
    if field.is_empty() {
        return at.to_owned();
    }
    format!("{at}/{}", field.replace('~', "~0").replace('/', "~1"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field: `None` when absent or null (a violation if `required`), or of another type.
fn string<'a>(
    fields: &'a Map<String, Value>,
    at: &str,
    name: &str,
    v: &mut Vec<Violation>,
    required: bool,
) -> Option<&'a str> {
    match fields.get(name) {
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => {
            if required {
                v.push(Violation::new(pointer(at, name), "required, a string"));
            }
            None
        }
        Some(other) => {
            v.push(Violation::new(
                pointer(at, name),
                format!("must be a string, got {}", kind(other)),
            ));
            None
        }
    }
}

fn when(fields: &Map<String, Value>, at: &str, v: &mut Vec<Violation>) -> When {
    let delay = string(fields, at, "delay", v, false);
    let run_at = string(fields, at, "run_at", v, false);
    schedule(delay, run_at, at, v)
}

/// When a job with this `delay` and `run_at` runs; a violation for each that is wrong.
fn schedule(delay: Option<&str>, run_at: Option<&str>, at: &str, v: &mut Vec<Violation>) -> When {
    match (delay, run_at) {
        (Some(_), Some(_)) => {
            v.push(Violation::new(
                pointer(at, "run_at"),
                "give `delay` or `run_at`, not both",
            ));
            When::Now
        }
        (Some(d), None) => match parse_duration(d) {
            Ok(d) => When::After(d),
            Err(e) => {
                v.push(Violation::new(
                    pointer(at, "delay"),
                    format!("{e} (a delay is a non-negative duration such as `30s`, `5m`, `2h`)"),
                ));
                When::Now
            }
        },
        (None, Some(t)) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => When::At(t.with_timezone(&Utc)),
            Err(e) => {
                v.push(Violation::new(
                    pointer(at, "run_at"),
                    format!("`{t}` is not an RFC 3339 time such as 2026-12-01T09:30:00Z: {e}"),
                ));
                When::Now
            }
        },
        (None, None) => When::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(value: Value) -> Vec<String> {
        JobRequest::from_value(&value, "/jobs/2")
            .unwrap_err()
            .into_iter()
            .map(|v| v.pointer)
            .collect()
    }

    #[test]
    fn every_mistake_is_named_by_its_pointer() {
        assert_eq!(
            pointers(json!({"task": 1, "payload": {}, "delay": "-5s", "max_atempts": 3})),
            ["/jobs/2/max_atempts", "/jobs/2/task", "/jobs/2/delay"]
        );
        assert_eq!(pointers(json!({"payload": 1})), ["/jobs/2/task"]);
        assert_eq!(pointers(json!([1])), ["/jobs/2"]);
        assert_eq!(
            pointers(
                json!({"task": "t", "payload": 1, "delay": "1s", "run_at": "2030-01-01T00:00:00Z"})
            ),
            ["/jobs/2/run_at"]
        );
        assert_eq!(
            pointers(json!({"task": "t", "payload": 1, "max_attempts": -1, "timeout": "soon"})),
            ["/jobs/2/max_attempts", "/jobs/2/timeout"]
        );
    }

    #[test]
    fn a_good_job_reads_whole() {
        let body = json!({"task": "t", "payload": {"a": 1}, "delay": "30s", "max_attempts": 3,
                          "timeout": "2m", "idempotency_key": "k", "queue": "q"});
        let job = JobRequest::from_value(&body, "").unwrap();
        assert_eq!(job.when, When::After(Duration::from_secs(30)));
        assert_eq!(job.timeout, Some(Duration::from_secs(120)));
        assert_eq!(job.max_attempts, Some(3));
        assert_eq!(pointer("", "a/b~c"), "/a~1b~0c");
    }

    /// The fast path reads a good job exactly as the slow path does, passes its payload on as
    /// sent, and gives up (to the slow path, which names the mistake) on anything else.
    #[test]
    fn the_fast_path_agrees_with_the_slow_path_or_gives_up() {
        let text = r#"{"task": "t", "payload": {"a": [1, "é"]}, "run_at": "2030-01-01T00:00:00Z",
                      "max_attempts": 3, "timeout": "2m", "idempotency_key": "k", "queue": "q"}"#;
        let tree: Value = serde_json::from_str(text).unwrap();
        let wire: WireJob<'_> = serde_json::from_str(text).unwrap();
        let (slow, fast) = (
            JobRequest::from_value(&tree, "").unwrap(),
            JobRequest::from_wire(&wire).unwrap(),
        );
        assert_eq!(
            (slow.task, slow.queue, slow.when, slow.max_attempts),
            (fast.task, fast.queue, fast.when, fast.max_attempts)
        );
        assert_eq!(
            (slow.timeout, slow.idempotency_key),
            (fast.timeout, fast.idempotency_key)
        );
        let Payload::Text(raw) = fast.payload else {
            panic!("the fast path keeps the payload's text")
        };
        assert_eq!(raw.get(), r#"{"a": [1, "é"]}"#);
        assert_eq!(
            serde_json::to_value(fast.payload).unwrap(),
            serde_json::to_value(slow.payload).unwrap()
        );

        for bad in [
            r#"{"task": "t", "payload": 1, "delay": "-5s"}"#,
            r#"{"task": "t", "payload": 1, "timeout": "soon"}"#,
            r#"{"task": "t", "payload": 1, "delay": "1s", "run_at": "2030-01-01T00:00:00Z"}"#,
        ] {
            let wire: WireJob<'_> = serde_json::from_str(bad).unwrap();
            assert!(JobRequest::from_wire(&wire).is_none(), "{bad}");
        }
        // JSON a worker could not read still reads as text here: the enqueue's check of the
        // payload refuses it, with its reason (docs/producer.md).
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for odd in [r#"{"n": 1e400}"#, r#""\ud800""#, deep.as_str()] {
            let body = format!(r#"{{"task": "t", "payload": {odd}}}"#);
            let wire: WireJob<'_> = serde_json::from_str(&body).unwrap();
            assert_eq!(wire.payload.get(), odd);
        }
        for unreadable in [
            r#"{"task": "t"}"#,
            r#"{"task": null, "payload": 1}"#,
            r#"{"task": "t", "payload": 1, "max_attempts": -1}"#,
            r#"{"task": "t", "payload": 1, "max_atempts": 3}"#,
            r#"{"task": "t", "payload": 1, "task": "u"}"#,
        ] {
            assert!(
                serde_json::from_str::<WireJob<'_>>(unreadable).is_err(),
                "{unreadable}"
            );
        }
    }
}
