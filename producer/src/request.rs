//! Reading a request body: the content type, the size limit (enforced while reading, so an
//! oversize body is never buffered whole), JSON, and the job object field by field, so that
//! every mistake is reported with the JSON pointer of the field it concerns.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use futures_lite::StreamExt;
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

/// A job as a request describes it, each field of the right JSON type. The values are
/// checked further by the task's contract and by `warren_client::NewJob`.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// The task name.
    pub task: String,
    /// The payload, any JSON value.
    pub payload: Value,
    /// The queue, when not the default.
    pub queue: Option<String>,
    /// When to run it.
    pub when: When,
    /// Attempts in total.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// At most one live or succeeded job per key.
    pub idempotency_key: Option<String>,
}

/// Checks the content type, then reads at most `limit` bytes of `body` and parses them as JSON.
pub async fn read_json(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, Problem> {
    check_content_type(headers)?;
    // A declared length over the limit is refused before a byte of the body is read.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(Problem::too_large(limit));
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Problem::malformed(format!("the request body could not be read: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(Problem::too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
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

impl JobRequest {
    /// Reads a job object found at `at` (a JSON pointer, `""` for the whole body); every
    /// problem is reported, each with its pointer.
    pub fn from_value(value: &Value, at: &str) -> Result<Self, Vec<Violation>> {
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
        let payload = match fields.get("payload") {
            Some(p) => p.clone(),
            None => {
                v.push(Violation::new(
                    pointer(at, "payload"),
                    "required; give the task's input (any JSON value, `null` for none)",
                ));
                Value::Null
            }
        };
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
            parse_duration(&t)
                .map_err(|e| v.push(Violation::new(pointer(at, "timeout"), e)))
                .ok()
        });
        let idempotency_key = string(fields, at, "idempotency_key", &mut v, false);
        match (task, v.is_empty()) {
            (Some(task), true) => Ok(JobRequest {
                task,
                payload,
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
fn string(
    fields: &Map<String, Value>,
    at: &str,
    name: &str,
    v: &mut Vec<Violation>,
    required: bool,
) -> Option<String> {
    match fields.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
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
    match (delay, run_at) {
        (Some(_), Some(_)) => {
            v.push(Violation::new(
                pointer(at, "run_at"),
                "give `delay` or `run_at`, not both",
            ));
            When::Now
        }
        (Some(d), None) => match parse_duration(&d) {
            Ok(d) => When::After(d),
            Err(e) => {
                v.push(Violation::new(
                    pointer(at, "delay"),
                    format!("{e} (a delay is a non-negative duration such as `30s`, `5m`, `2h`)"),
                ));
                When::Now
            }
        },
        (None, Some(t)) => match DateTime::parse_from_rfc3339(&t) {
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
        let job = JobRequest::from_value(
            &json!({"task": "t", "payload": {"a": 1}, "delay": "30s", "max_attempts": 3,
                    "timeout": "2m", "idempotency_key": "k", "queue": "q"}),
            "",
        )
        .unwrap();
        assert_eq!(job.when, When::After(Duration::from_secs(30)));
        assert_eq!(job.timeout, Some(Duration::from_secs(120)));
        assert_eq!(job.max_attempts, Some(3));
        assert_eq!(pointer("", "a/b~c"), "/a~1b~0c");
    }
}
