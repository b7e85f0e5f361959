//! The message contract: how a job travels through RabbitMQ.
//!
//! A job message is an AMQP message whose body is the payload as UTF-8 JSON and whose
//! properties and headers carry everything else:
//!
//! | where | name | type | required | meaning |
//! | --- | --- | --- | --- | --- |
//! | property | `message_id` | string (UUID) | yes | the job id |
//! | property | `content_type` | string | no | if present, must be `application/json` |
//! | property | `delivery_mode` | 2 | no | persistent; Warren's producers always set it |
//! | property | `timestamp` | unix seconds | no | when the job was enqueued (coarse) |
//! | header | `warren-task` | string | yes | the task name |
//! | header | `warren-attempt` | integer ≥ 1 | yes | which attempt this delivery is |
//! | header | `warren-max-attempts` | integer ≥ 1 | no | attempts allowed; the task's policy when absent |
//! | header | `warren-timeout-ms` | integer ≥ 1 | no | per-attempt timeout; the task's default when absent |
//! | header | `warren-idempotency-key` | string | no | at most one live or succeeded job per key |
//! | header | `warren-enqueued-at` | integer, unix ms | no | when the job was first enqueued |
//! | header | `warren-has-row` | integer 1 | no | set by Warren's promoter: the job has a row in Postgres to check before running |
//! | header | `traceparent` | string | no | W3C trace context; a malformed value is dropped |
//! | header | `tracestate` | string | no | W3C trace state, passed through |
//! | header | `warren-queue` | string | intake only | the Warren queue the job goes to when due |
//! | header | `warren-run-at` | integer, unix ms | intake only | when the job is due |
//!
//! The queue is not in a work message: the routing key on the work exchange is the queue name.
//! An *intake* message (a delayed job from a producer without database access) goes to the
//! `<namespace>.intake` queue instead and names its queue and due time in the two intake
//! headers; see [`crate::IntakeMessage`].
//! `schemas/message.schema.json` is the same contract for producers in other languages; a test
//! fails when the two drift apart.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::{JobId, TaskName};

/// The task name; required. It picks the handler.
pub const HEADER_TASK: &str = "warren-task";
/// Which attempt this delivery is, 1-based; required. A retry is published with it raised.
pub const HEADER_ATTEMPT: &str = "warren-attempt";
/// Attempts allowed, 1 to [`MAX_ATTEMPTS_LIMIT`]; the task's retry policy decides when absent.
pub const HEADER_MAX_ATTEMPTS: &str = "warren-max-attempts";
/// Per-attempt timeout in milliseconds; the task's or worker's default when absent.
pub const HEADER_TIMEOUT_MS: &str = "warren-timeout-ms";
/// At most one live or succeeded job per key, 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes.
pub const HEADER_IDEMPOTENCY_KEY: &str = "warren-idempotency-key";
/// When the job was first enqueued, in unix milliseconds; kept across retries so latency is
/// measured from the producer's enqueue.
pub const HEADER_ENQUEUED_AT: &str = "warren-enqueued-at";
/// Set on messages published from a Postgres row (delayed jobs, retries, transactional
/// enqueues). Such a job can be cancelled while queued, and a promoter that died between
/// publishing and committing publishes it twice, so a worker reads its row before running
/// it. Hot-path messages have no row yet and skip that round trip.
pub const HEADER_HAS_ROW: &str = "warren-has-row";
/// Set by a promoter on a job a rate limit deferred with a token reserved for it: the token's
/// time in unix milliseconds. The worker starts the job without taking another token (within
/// the reservation's grace; docs/limits.md). Checked like every other integer header.
pub const HEADER_LIMIT_TOKEN: &str = "warren-limit-token";
/// W3C trace context, so a handler's span joins the producer's trace. A malformed value is
/// dropped, never a reason to fail the job.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C trace state, passed through only alongside a valid [`HEADER_TRACEPARENT`].
pub const HEADER_TRACESTATE: &str = "tracestate";
/// Intake messages only: the Warren queue the job goes to when due.
pub const HEADER_QUEUE: &str = "warren-queue";
/// Intake messages only: when the job is due, in unix milliseconds.
pub const HEADER_RUN_AT: &str = "warren-run-at";
/// Set by Warren on messages it dead-letters itself (no job id could be read).
pub const HEADER_DEAD_REASON: &str = "warren-dead-reason";
/// Set by Warren on messages it parks for `warren dlq`: the Warren queue the message was
/// dead-lettered from, so that `warren dlq replay` knows where to send it back.
pub const HEADER_DEAD_QUEUE: &str = "warren-dead-queue";
/// The only content type a job body may declare (parameters such as a charset aside); an
/// absent content type is read as this.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Every header of the contract with its JSON-schema type and whether it is required, in one
/// place so the schema drift test can compare them with `schemas/message.schema.json`.
pub const HEADERS: &[(&str, &str, bool)] = &[
    (HEADER_TASK, "string", true),
    (HEADER_ATTEMPT, "integer", true),
    (HEADER_MAX_ATTEMPTS, "integer", false),
    (HEADER_TIMEOUT_MS, "integer", false),
    (HEADER_IDEMPOTENCY_KEY, "string", false),
    (HEADER_ENQUEUED_AT, "integer", false),
    (HEADER_HAS_ROW, "integer", false),
    (HEADER_LIMIT_TOKEN, "integer", false),
    (HEADER_TRACEPARENT, "string", false),
    (HEADER_TRACESTATE, "string", false),
    (HEADER_QUEUE, "string", false),
    (HEADER_RUN_AT, "integer", false),
];

/// The most attempts a message may claim. Anything above is treated as corrupt input rather
/// than a policy, so a bad header cannot make a job retry for weeks.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// The earliest time a message may carry (enqueued at, run at): 2000-01-01, in unix
/// milliseconds.
pub const MIN_TIME_MS: i64 = 946_684_800_000;
/// The latest time a message may carry (enqueued at, run at): 2200-01-01, in unix
/// milliseconds. Wider than any real schedule, narrow enough to catch seconds-for-milliseconds
/// mistakes and durations that overflow.
pub const MAX_TIME_MS: i64 = 7_258_118_400_000;
/// How deeply arrays and objects may nest in a payload: what serde_json's recursion limit,
/// which every handler's deserialisation runs into, lets through. Stated here so that error
/// messages can name it; a test pins it to serde_json's behaviour.
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// A header value as it arrives, with AMQP's many integer and string encodings folded into
/// the few shapes the contract cares about.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    /// Any AMQP string that is valid UTF-8.
    Str(String),
    /// Any AMQP integer or timestamp that fits an `i64`.
    Int(i64),
    /// A byte array, or a long string that is not UTF-8.
    Bytes(Vec<u8>),
    /// Any other AMQP type, named so errors can say what arrived instead.
    Other(&'static str),
}

impl HeaderValue {
    fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Str(_) => "string",
            HeaderValue::Int(_) => "integer",
            HeaderValue::Bytes(_) => "byte array",
            HeaderValue::Other(name) => name,
        }
    }
}

/// A message as the broker hands it over, before any interpretation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawMessage {
    /// The AMQP `message_id` property, where the job id travels.
    pub message_id: Option<String>,
    /// The AMQP `content_type` property; absent or JSON for a job.
    pub content_type: Option<String>,
    /// Unix seconds, from the AMQP `timestamp` property.
    pub timestamp: Option<u64>,
    /// The AMQP headers table, keyed by header name.
    pub headers: BTreeMap<String, HeaderValue>,
    /// The body as sent; for a job, the payload as UTF-8 JSON.
    pub body: Vec<u8>,
}

/// A decoded, validated job message.
#[derive(Clone, Debug)]
pub struct JobMessage {
    /// The job's identity, the same on every attempt.
    pub id: JobId,
    /// Which handler runs it.
    pub task: TaskName,
    /// Which attempt this is, 1-based, at most [`MAX_ATTEMPTS_LIMIT`].
    pub attempt: u32,
    /// Attempts allowed; `None` leaves it to the task's retry policy.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in milliseconds; `None` leaves it to the task or worker default.
    pub timeout_ms: Option<u64>,
    /// The key that makes at most one live or succeeded job of its kind.
    pub idempotency_key: Option<String>,
    /// When the producer first enqueued the job; now, if the message did not say.
    pub enqueued_at: DateTime<Utc>,
    /// W3C trace context, present only when well-formed.
    pub traceparent: Option<String>,
    /// W3C trace state, present only alongside a `traceparent`.
    pub tracestate: Option<String>,
    /// The job has a row in Postgres (see [`HEADER_HAS_ROW`]).
    pub has_row: bool,
    /// The time of a rate-limit token reserved for it (see [`HEADER_LIMIT_TOKEN`]).
    pub limit_token: Option<DateTime<Utc>>,
    /// The payload, checked to be one well-formed JSON value.
    pub payload: Box<RawValue>,
}

impl PartialEq for JobMessage {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.task == other.task
            && self.attempt == other.attempt
            && self.max_attempts == other.max_attempts
            && self.timeout_ms == other.timeout_ms
            && self.idempotency_key == other.idempotency_key
            && self.enqueued_at == other.enqueued_at
            && self.traceparent == other.traceparent
            && self.tracestate == other.tracestate
            && self.has_row == other.has_row
            && self.limit_token == other.limit_token
            && self.payload.get() == other.payload.get()
    }
}

/// Why a message could not be read as a job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeReason {
    /// The `message_id` property is absent or empty, so the failure cannot be recorded
    /// against any job.
    #[error("message has no message_id property; the job id travels there")]
    MissingId,
    /// The `message_id` is not a UUID; holds its first 80 characters.
    #[error("message_id `{0}` is not a UUID job id")]
    BadId(String),
    /// The content type is neither absent nor JSON; holds its first 80 characters.
    #[error("content_type is `{0}`, expected application/json")]
    ContentType(String),
    /// A required header is not there.
    #[error("required header `{0}` is missing")]
    MissingHeader(&'static str),
    /// A header has the wrong type or shape.
    #[error("header `{header}` must be {expected}, found {found}")]
    HeaderType {
        /// The header's name.
        header: &'static str,
        /// What the contract asks for.
        expected: &'static str,
        /// What arrived instead, described rather than copied in full.
        found: String,
    },
    /// An integer header is outside its allowed range.
    #[error("header `{header}` is {value}, outside the allowed range {min}..={max}")]
    OutOfRange {
        /// The header's name.
        header: &'static str,
        /// The value that arrived.
        value: i64,
        /// The smallest value allowed.
        min: i64,
        /// The largest value allowed.
        max: i64,
    },
    /// The `warren-task` header is not a valid task name; holds the rule it broke.
    #[error("header `warren-task`: {0}")]
    BadTask(String),
    /// The `warren-queue` header of an intake message is not a valid queue name; holds the
    /// rule it broke.
    #[error("header `warren-queue`: {0}")]
    BadQueue(String),
    /// The body is over the configured size limit.
    #[error("body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not UTF-8; holds the offset of the first invalid byte.
    #[error("body is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// The body is not one well-formed JSON value; holds serde_json's reason.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// Postgres refused the job's values (a worker found this when writing its row, not when
    /// decoding); holds the error chain.
    #[error("the database refused to store it: {0}")]
    Unstorable(String),
    /// The body is well-formed JSON that no handler can read (see [`check_payload`]).
    #[error("body is JSON that no handler can read: {0}")]
    Unreadable(PayloadError),
    /// The job asks for a longer attempt than the broker lets a delivery stay unacked: run,
    /// it would be redelivered by RabbitMQ (its `consumer_timeout`) while still running.
    #[error(
        "header `warren-timeout-ms` asks for {timeout_ms} ms, more than the {limit_ms} ms this \
         worker allows: RabbitMQ's consumer_timeout would take the delivery back while the job \
         still ran; enqueue it with a shorter timeout, or raise consumer_timeout on the broker \
         and --broker-consumer-timeout on the workers"
    )]
    TimeoutTooLong {
        /// The job's per-attempt timeout in milliseconds.
        timeout_ms: u64,
        /// The longest this worker allows, in milliseconds: the broker's consumer timeout
        /// less a margin.
        limit_ms: u64,
    },
}

/// Why a payload, though well-formed JSON, cannot be read by a worker, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at line {line}, column {column}")]
pub struct PayloadError {
    /// What is wrong, with a hint when serde_json's own words are terse.
    pub reason: String,
    /// 1-based, as serde_json counts.
    pub line: usize,
    /// 1-based, in bytes, as serde_json counts.
    pub column: usize,
}

/// Checks that `text` is one JSON value that workers can read: exactly the parse a handler's
/// payload goes through (serde_json's `from_str`, walking every value with `deserialize_any`,
/// the way `serde_json::Value` and any typed payload are read). Well-formed JSON can still fail
/// it: a number beyond `f64` (`1e400`), a string with a lone UTF-16 surrogate (`"\ud800"`),
/// or arrays and objects nested deeper than [`MAX_PAYLOAD_DEPTH`].
///
/// Producers call it before enqueueing (`warren-client`, `warren enqueue`) and [`JobMessage::decode`]
/// calls it on every message, so the two can never disagree. It allocates nothing beyond
/// serde_json's scratch buffer for escaped strings.
pub fn check_payload(text: &str) -> Result<(), PayloadError> {
    serde_json::from_str::<Readable>(text)
        .map(|Readable| ())
        .map_err(|e| {
            let full = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            let bare = full.strip_suffix(&position).unwrap_or(&full);
            let reason = if bare.starts_with("number out of range") {
                "number out of range: larger than a 64-bit float can hold".to_owned()
            } else if bare.starts_with("recursion limit exceeded") {
                format!(
                    "nested deeper than {MAX_PAYLOAD_DEPTH} arrays or objects, the most a worker reads"
                )
            } else if bare.contains("surrogate") || bare.contains("hex escape") {
                format!(
                    "{bare}: a \\u escape of half a UTF-16 surrogate pair (such as \\ud800 alone) is no character"
                )
            } else {
                bare.to_owned()
            };
            PayloadError {
                reason,
                line: e.line(),
                column: e.column(),
            }
        })
}

/// Checks that `text`, a payload [`check_payload`] passed, is one PostgreSQL can store:
/// no string or key holds U+0000, written `\u0000` (PostgreSQL's `jsonb` and `text` refuse
/// it). Producers call it before enqueueing, since every job's payload is kept in PostgreSQL:
/// in its scheduled row when it is delayed or keyed, in its retries, in the record of its
/// outcome. Decoding does not: a message some other producer sent with one is still run, and
/// its row keeps the payload as raw bytes.
pub fn check_storable(text: &str) -> Result<(), PayloadError> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find("\\u0000") {
        let at = from + found;
        // The backslash starts an escape unless it is itself escaped: an odd run of
        // backslashes ending at it. (`"\\u0000"` is the text \u0000, no NUL.)
        let run = bytes[..=at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if run % 2 == 1 {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = at - before.rfind('\n').map_or(0, |n| n + 1) + 1;
            return Err(PayloadError {
                reason: "a string holds U+0000 (\\u0000), which jsonb refuses, and every job's \
                         payload is kept in PostgreSQL"
                    .to_owned(),
                line,
                column,
            });
        }
        from = at + 1;
    }
    Ok(())
}

/// Any JSON value, read in full and thrown away: the checks of a real parse without keeping
/// anything. (`serde::de::IgnoredAny` would not do: serde_json skips it without parsing
/// numbers or escapes.)
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_entry::<Readable, Readable>()?.is_some() {}
        Ok(Readable)
    }
}

/// A message that is not a valid job, with whatever identity could still be read from it so
/// that the failure can be recorded against the job when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The job id, when the `message_id` could be read.
    pub job_id: Option<JobId>,
    /// The task header, when it was a string (cut to 200 characters), valid or not.
    pub task: Option<String>,
    /// The attempt header, when it was a non-negative integer.
    pub attempt: Option<u32>,
    /// What is wrong with the message.
    pub reason: DecodeReason,
}

impl JobMessage {
    /// Properties and headers for this message, in contract order. The publisher maps them
    /// onto AMQP types; nothing else about the wire format lives outside this module.
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let mut h = vec![
            (HEADER_TASK, HeaderValue::Str(self.task.to_string())),
            (HEADER_ATTEMPT, HeaderValue::Int(i64::from(self.attempt))),
            (
                HEADER_ENQUEUED_AT,
                HeaderValue::Int(self.enqueued_at.timestamp_millis()),
            ),
        ];
        if let Some(max) = self.max_attempts {
            h.push((HEADER_MAX_ATTEMPTS, HeaderValue::Int(i64::from(max))));
        }
        if let Some(ms) = self.timeout_ms {
            h.push((
                HEADER_TIMEOUT_MS,
                HeaderValue::Int(ms.min(i64::MAX as u64) as i64),
            ));
        }
        if let Some(key) = &self.idempotency_key {
            h.push((HEADER_IDEMPOTENCY_KEY, HeaderValue::Str(key.clone())));
        }
        if let Some(tp) = &self.traceparent {
            h.push((HEADER_TRACEPARENT, HeaderValue::Str(tp.clone())));
        }
        if let Some(ts) = &self.tracestate {
            h.push((HEADER_TRACESTATE, HeaderValue::Str(ts.clone())));
        }
        if self.has_row {
            h.push((HEADER_HAS_ROW, HeaderValue::Int(1)));
        }
        if let Some(at) = self.limit_token {
            h.push((HEADER_LIMIT_TOKEN, HeaderValue::Int(at.timestamp_millis())));
        }
        h
    }

    /// Reads a broker message as a job, checking every field the contract defines.
    /// `max_body` is the configured body size limit in bytes.
    pub fn decode(raw: &RawMessage, max_body: usize) -> Result<JobMessage, DecodeError> {
        // Read identity first and leniently, so that even a message failing later checks can
        // be recorded against its job.
        let identity = Identity::read(raw)?;
        Self::decode_fields(raw, max_body, identity.job_id).map_err(|reason| identity.error(reason))
    }

    /// Checks everything but the job id, in the order the contract lists it: properties,
    /// headers, then the body. The first field found wrong is the reason given.
    fn decode_fields(
        raw: &RawMessage,
        max_body: usize,
        id: JobId,
    ) -> Result<JobMessage, DecodeReason> {
        check_content_type(raw)?;
        let task = required_str(raw, HEADER_TASK)?;
        let task = TaskName::new(task).map_err(|e| DecodeReason::BadTask(e.reason.to_string()))?;
        let attempt = required_int(raw, HEADER_ATTEMPT, 1, i64::from(MAX_ATTEMPTS_LIMIT))? as u32;
        let max_attempts =
            optional_int(raw, HEADER_MAX_ATTEMPTS, 1, i64::from(MAX_ATTEMPTS_LIMIT))?
                .map(|m| m as u32);
        // Roughly 24 days: anything longer is a mistake, not a timeout.
        let timeout_ms =
            optional_int(raw, HEADER_TIMEOUT_MS, 1, i64::from(i32::MAX))?.map(|t| t as u64);
        let idempotency_key = idempotency_key(raw)?;
        let enqueued_at = enqueued_at(raw)?;
        let has_row = optional_int(raw, HEADER_HAS_ROW, 0, 1)? == Some(1);
        let limit_token = optional_int(raw, HEADER_LIMIT_TOKEN, MIN_TIME_MS, MAX_TIME_MS)?
            .and_then(DateTime::from_timestamp_millis);
        let (traceparent, tracestate) = trace_context(raw);
        let payload = payload(&raw.body, max_body)?;
        Ok(JobMessage {
            id,
            task,
            attempt,
            max_attempts,
            timeout_ms,
            idempotency_key,
            enqueued_at,
            traceparent,
            tracestate,
            has_row,
            limit_token,
            payload,
        })
    }

    /// The message as raw broker data, exactly as a publisher following the contract sends it.
    pub fn encode(&self) -> RawMessage {
        RawMessage {
            message_id: Some(self.id.to_string()),
            content_type: Some(CONTENT_TYPE_JSON.to_owned()),
            timestamp: u64::try_from(self.enqueued_at.timestamp()).ok(),
            headers: self
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            body: self.payload.get().as_bytes().to_vec(),
        }
    }
}

/// What a failed decode can still say about the message: its job id, and its task and
/// attempt as far as they are readable at all, so that the failure is recorded against the
/// job rather than lost.
struct Identity {
    job_id: JobId,
    task: Option<String>,
    attempt: Option<u32>,
}

impl Identity {
    /// Reads the job id, which must be there and valid, and the task and attempt leniently:
    /// a header of the wrong type is left out here and reported by the checks that follow.
    fn read(raw: &RawMessage) -> Result<Identity, DecodeError> {
        let no_identity = |reason| DecodeError {
            job_id: None,
            task: None,
            attempt: None,
            reason,
        };
        let job_id = match raw.message_id.as_deref() {
            None | Some("") => return Err(no_identity(DecodeReason::MissingId)),
            Some(s) => s
                .parse::<JobId>()
                .map_err(|_| no_identity(DecodeReason::BadId(s.chars().take(80).collect())))?,
        };
        let task = match raw.headers.get(HEADER_TASK) {
            Some(HeaderValue::Str(t)) => Some(t.chars().take(200).collect()),
            _ => None,
        };
        let attempt = match raw.headers.get(HEADER_ATTEMPT) {
            Some(HeaderValue::Int(a)) => u32::try_from(*a).ok(),
            _ => None,
        };
        Ok(Identity {
            job_id,
            task,
            attempt,
        })
    }

    fn error(self, reason: DecodeReason) -> DecodeError {
        DecodeError {
            job_id: Some(self.job_id),
            task: self.task,
            attempt: self.attempt,
            reason,
        }
    }
}

/// An absent or empty content type is taken as JSON; any other must be JSON, with or without
/// parameters such as a charset.
fn check_content_type(raw: &RawMessage) -> Result<(), DecodeReason> {
    match raw.content_type.as_deref() {
        Some(ct)
            if !ct.is_empty()
                && !ct.eq_ignore_ascii_case(CONTENT_TYPE_JSON)
                && !ct.to_ascii_lowercase().starts_with("application/json;") =>
        {
            Err(DecodeReason::ContentType(ct.chars().take(80).collect()))
        }
        _ => Ok(()),
    }
}

fn idempotency_key(raw: &RawMessage) -> Result<Option<String>, DecodeReason> {
    let Some(key) = optional_str(raw, HEADER_IDEMPOTENCY_KEY)? else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(DecodeReason::HeaderType {
            header: HEADER_IDEMPOTENCY_KEY,
            expected: "a string of 1 to 255 bytes",
            found: format!("{} bytes", key.len()),
        });
    }
    // Postgres `text` cannot hold NUL, and no other control character belongs in a key a
    // person may have to type into `warren jobs` to find a job.
    if key.chars().any(char::is_control) {
        return Err(DecodeReason::HeaderType {
            header: HEADER_IDEMPOTENCY_KEY,
            expected: "a string without control characters",
            found: format!("{:?}", key.chars().take(80).collect::<String>()),
        });
    }
    Ok(Some(key.to_owned()))
}

/// When the job was first enqueued: the millisecond header, else the coarse AMQP timestamp,
/// else now (a producer need not say).
fn enqueued_at(raw: &RawMessage) -> Result<DateTime<Utc>, DecodeReason> {
    // Year 2000 to year 2200 in unix milliseconds: wider than any real clock, narrow enough
    // to catch seconds-for-milliseconds mistakes.
    let at = match optional_int(raw, HEADER_ENQUEUED_AT, MIN_TIME_MS, MAX_TIME_MS)? {
        Some(ms) => DateTime::from_timestamp_millis(ms),
        None => raw
            .timestamp
            .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0)),
    };
    Ok(at.unwrap_or_else(Utc::now))
}

/// The W3C trace context. It never fails a job: tracing is an aid, so a malformed
/// `traceparent` is dropped, and a `tracestate` without a valid `traceparent` goes with it.
fn trace_context(raw: &RawMessage) -> (Option<String>, Option<String>) {
    let traceparent = optional_str(raw, HEADER_TRACEPARENT)
        .ok()
        .flatten()
        .filter(|tp| is_traceparent(tp))
        .map(str::to_owned);
    let tracestate = optional_str(raw, HEADER_TRACESTATE)
        .ok()
        .flatten()
        .filter(|_| traceparent.is_some())
        .map(str::to_owned);
    (traceparent, tracestate)
}

/// The body as a payload: within the size limit, UTF-8, one JSON value, and readable by
/// every handler, checked in that order so the cheapest refusal comes first.
fn payload(body: &[u8], max_body: usize) -> Result<Box<RawValue>, DecodeReason> {
    if body.len() > max_body {
        return Err(DecodeReason::TooLarge {
            size: body.len(),
            limit: max_body,
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| DecodeReason::NotUtf8(e.valid_up_to()))?;
    let payload = serde_json::from_str::<Box<RawValue>>(text)
        .map_err(|e| DecodeReason::NotJson(e.to_string()))?;
    // Well-formed is not enough: a payload no handler can read is bad input now, with the
    // reason and the spot, rather than a confusing failure inside the handler.
    check_payload(text).map_err(DecodeReason::Unreadable)?;
    Ok(payload)
}

/// Whether `s` is a W3C `traceparent` of version 00: `00-<32 hex>-<16 hex>-<2 hex>`, with
/// neither id all zeros.
pub fn is_traceparent(s: &str) -> bool {
    crate::TraceParent::parse(s).is_some()
}

pub(crate) fn required_str<'a>(
    raw: &'a RawMessage,
    header: &'static str,
) -> Result<&'a str, DecodeReason> {
    optional_str(raw, header)?.ok_or(DecodeReason::MissingHeader(header))
}

fn optional_str<'a>(
    raw: &'a RawMessage,
    header: &'static str,
) -> Result<Option<&'a str>, DecodeReason> {
    match raw.headers.get(header) {
        None => Ok(None),
        Some(HeaderValue::Str(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeReason::HeaderType {
            header,
            expected: "a string",
            found: other.type_name().to_owned(),
        }),
    }
}

pub(crate) fn required_int(
    raw: &RawMessage,
    header: &'static str,
    min: i64,
    max: i64,
) -> Result<i64, DecodeReason> {
    optional_int(raw, header, min, max)?.ok_or(DecodeReason::MissingHeader(header))
}

fn optional_int(
    raw: &RawMessage,
    header: &'static str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, DecodeReason> {
    match raw.headers.get(header) {
        None => Ok(None),
        Some(HeaderValue::Int(v)) if (min..=max).contains(v) => Ok(Some(*v)),
        Some(HeaderValue::Int(v)) => Err(DecodeReason::OutOfRange {
            header,
            value: *v,
            min,
            max,
        }),
        Some(other) => Err(DecodeReason::HeaderType {
            header,
            expected: "an integer",
            found: other.type_name().to_owned(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    /// A valid message with every optional field set; other modules' tests use it too.
    pub(crate) fn sample() -> JobMessage {
        JobMessage {
            id: JobId::new(),
            task: TaskName::new("email.send").unwrap(),
            attempt: 1,
            max_attempts: Some(5),
            timeout_ms: Some(30_000),
            idempotency_key: Some("order-42".into()),
            enqueued_at: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
            has_row: false,
            limit_token: Some(DateTime::from_timestamp_millis(1_764_000_001_000).unwrap()),
            payload: RawValue::from_string(r#"{"to":"a@example.com"}"#.into()).unwrap(),
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let msg = sample();
        assert_eq!(JobMessage::decode(&msg.encode(), LIMIT), Ok(msg));
    }

    #[test]
    fn minimal_message_decodes_with_defaults() {
        let mut raw = RawMessage {
            message_id: Some(JobId::new().to_string()),
            body: b"null".to_vec(),
            ..RawMessage::default()
        };
        raw.headers
            .insert(HEADER_TASK.into(), HeaderValue::Str("t".into()));
        raw.headers
            .insert(HEADER_ATTEMPT.into(), HeaderValue::Int(1));
        let msg = JobMessage::decode(&raw, LIMIT).unwrap();
        assert_eq!(msg.max_attempts, None);
        assert_eq!(msg.timeout_ms, None);
        assert_eq!(msg.payload.get(), "null");
    }

    fn reason_of(raw: &RawMessage) -> DecodeError {
        JobMessage::decode(raw, LIMIT).unwrap_err()
    }

    #[test]
    fn each_broken_field_gives_its_own_reason_and_keeps_the_id() {
        let good = sample().encode();
        let id = sample_id(&good);

        let mut m = good.clone();
        m.message_id = None;
        assert_eq!(reason_of(&m).reason, DecodeReason::MissingId);

        let mut m = good.clone();
        m.message_id = Some("42".into());
        assert!(matches!(reason_of(&m).reason, DecodeReason::BadId(_)));

        let mut m = good.clone();
        m.headers.remove(HEADER_TASK);
        let e = reason_of(&m);
        assert_eq!(e.reason, DecodeReason::MissingHeader(HEADER_TASK));
        assert_eq!(e.job_id, Some(id));

        let mut m = good.clone();
        m.headers
            .insert(HEADER_ATTEMPT.into(), HeaderValue::Str("1".into()));
        assert!(
            reason_of(&m)
                .to_string()
                .contains("`warren-attempt` must be an integer, found string")
        );

        let mut m = good.clone();
        m.headers.insert(HEADER_ATTEMPT.into(), HeaderValue::Int(0));
        assert!(matches!(
            reason_of(&m).reason,
            DecodeReason::OutOfRange { .. }
        ));

        let mut m = good.clone();
        m.body = vec![0xff, 0xfe];
        assert_eq!(reason_of(&m).reason, DecodeReason::NotUtf8(0));

        let mut m = good.clone();
        m.body = b"{not json".to_vec();
        assert!(reason_of(&m).to_string().starts_with("body is not JSON"));

        let mut m = good.clone();
        m.body = vec![b' '; 100];
        assert!(matches!(
            JobMessage::decode(&m, 10).unwrap_err().reason,
            DecodeReason::TooLarge {
                size: 100,
                limit: 10
            }
        ));

        let mut m = good;
        m.content_type = Some("text/plain".into());
        assert!(matches!(reason_of(&m).reason, DecodeReason::ContentType(_)));
    }

    fn sample_id(raw: &RawMessage) -> JobId {
        raw.message_id.as_deref().unwrap().parse().unwrap()
    }

    #[test]
    fn payloads_no_worker_can_read_are_refused_with_the_spot() {
        let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        let cases = [
            (r#"{"n":1e400}"#, "number out of range", 1, 10),
            (r#"{"n":-1e400}"#, "number out of range", 1, 11),
            (r#"["\ud800"]"#, "hex escape", 1, 9),
            (r#"{"\udc00":1}"#, "surrogate", 1, 8),
            (&deep, "nested deeper than", 1, 128),
        ];
        for (text, reason, line, column) in cases {
            // serde_json's RawValue, which is all decoding used to check, lets them all pass.
            assert!(serde_json::from_str::<Box<RawValue>>(text).is_ok());
            let err = check_payload(text).unwrap_err();
            assert!(err.reason.contains(reason), "{err}");
            assert_eq!((err.line, err.column), (line, column), "{err}");
            // And they really are what handlers choke on.
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
        }
        let ok = format!(
            "{}1{}",
            "[".repeat(MAX_PAYLOAD_DEPTH),
            "]".repeat(MAX_PAYLOAD_DEPTH)
        );
        for text in [r#"{"n":1e300,"s":"\ud83d\ude00"}"#, "null", " 1 ", &ok] {
            assert_eq!(check_payload(text), Ok(()), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
        }
        assert!(check_payload("[1] x").is_err(), "one value only");
    }

    #[test]
    fn payloads_with_a_nul_are_not_storable_and_say_where() {
        let cases = [
            (r#"{"s":"a\u0000b"}"#, 1, 8),
            ("[1,\n \"\\\\\\u0000\"]", 2, 5),
            (r#"{"\u0000":1}"#, 1, 3),
        ];
        for (text, line, column) in cases {
            assert_eq!(check_payload(text), Ok(()), "readable: {text}");
            let err = check_storable(text).unwrap_err();
            assert!(err.reason.contains("U+0000"), "{err}");
            assert_eq!((err.line, err.column), (line, column), "{text}: {err}");
            // It really is a NUL once read.
            assert!(
                serde_json::from_str::<serde_json::Value>(text)
                    .unwrap()
                    .to_string()
                    .contains("\\u0000")
            );
        }
        // An escaped backslash before u0000 is the text \u0000, not a NUL.
        for text in [r#"{"s":"\\u0000"}"#, r#""\u0001""#, "{}"] {
            assert_eq!(check_storable(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn decode_refuses_an_unreadable_payload_as_bad_input() {
        let mut m = sample().encode();
        m.body = br#"{"n":1e400}"#.to_vec();
        let e = JobMessage::decode(&m, LIMIT).unwrap_err();
        assert!(matches!(e.reason, DecodeReason::Unreadable(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "body is JSON that no handler can read: number out of range: larger than a 64-bit \
             float can hold at line 1, column 10"
        );
    }

    #[test]
    fn malformed_traceparent_is_dropped_not_fatal() {
        let mut raw = sample().encode();
        raw.headers.insert(
            HEADER_TRACEPARENT.into(),
            HeaderValue::Str("garbage".into()),
        );
        assert_eq!(JobMessage::decode(&raw, LIMIT).unwrap().traceparent, None);
        assert!(!is_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
    }
}
