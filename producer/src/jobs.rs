//! The job routes: enqueue one, enqueue a batch, read one, cancel one.

use std::fmt::Write as _;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use warren_client::{JobId, NewJob};
use warren_core::ErrorChain;
use warren_core::message::is_traceparent;
use warren_store::CancelOutcome;

use crate::AppState;
use crate::auth::Caller;
use crate::problem::{Problem, RETRY_AFTER_SECS, Violation};
use crate::request::{
    Deadline, JobRequest, Payload, When, WireBatch, WireJob, parse_json, pointer, read_body,
};
use crate::telemetry::{self, JobOutcome};

/// The header a client may send the idempotency key in, instead of the body's field.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The answer for an accepted job.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The job's id; for a repeated idempotency key, the id of the job that holds it.
    pub id: JobId,
    /// `queued` (confirmed by RabbitMQ) or `scheduled` (a committed row, or on its way to
    /// one through the intake queue); for a repeated key, the holder's state.
    pub state: String,
    /// True when the idempotency key was already held: no new job was made.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A job that passed every check, ready to enqueue.
struct Prepared {
    job: NewJob,
    id: JobId,
    /// Whether it waits in Postgres rather than being published now.
    to_rows: bool,
    /// Whether its idempotency key came from the `Idempotency-Key` header rather than the
    /// body, so that a problem with the key names the header.
    key_from_header: bool,
}

impl AppState {
    /// Reads the job object `value` found at `at` on the slow path: its shape (422). When it
    /// is wrong, the payload's violations are reported too, so that one answer lists every
    /// mistake.
    fn read_job<'a>(
        &self,
        caller: &Caller,
        value: &'a Value,
        at: &str,
    ) -> Result<JobRequest<'a>, Problem> {
        JobRequest::from_value(value, at).map_err(|mut v| {
            if let Some(task) = value.get("task").and_then(Value::as_str)
                && caller.allows(task)
                && let Some(payload) = value.get("payload")
                && let Err(more) = self.contracts.check(task, Payload::Tree(payload), at)
            {
                v.extend(more);
            }
            invalid_job(at, v)
        })
    }

    /// Checks a job read from the body at `at`: the caller's right to its task (403) and its
    /// task's contract (422); the options are checked when it is enqueued.
    fn prepare(
        &self,
        caller: &Caller,
        request: JobRequest<'_>,
        at: &str,
        header_key: Option<String>,
        trace: Option<&(String, Option<String>)>,
    ) -> Result<Prepared, Problem> {
        if !caller.allows(request.task) {
            return Err(caller.refuse(request.task));
        }
        self.contracts
            .check(request.task, request.payload, at)
            .map_err(|v| invalid_job(at, v))?;
        let key_from_header = request.idempotency_key.is_none() && header_key.is_some();
        let key = match (request.idempotency_key, header_key) {
            (Some(body), Some(header)) if body != header.as_str() => {
                return Err(invalid_job(
                    at,
                    vec![Violation::new(
                        pointer(at, "idempotency_key"),
                        "differs from the Idempotency-Key header; give one key, in either place",
                    )],
                ));
            }
            (Some(body), _) => Some(body.to_owned()),
            (None, header) => header,
        };
        let id = JobId::new();
        let mut job = NewJob::new(request.task, &request.payload).id(id);
        if let Some(q) = request.queue {
            job = job.queue(q);
        }
        if let Some(n) = request.max_attempts {
            job = job.max_attempts(n);
        }
        if let Some(t) = request.timeout {
            job = job.timeout(t);
        }
        let keyed_row = key.is_some() && self.store.is_some();
        if let Some(k) = key {
            job = job.idempotency_key(k);
        }
        if let Some((tp, ts)) = trace {
            job = job.trace(tp, ts.as_deref());
        }
        let to_rows = match request.when {
            When::Now => keyed_row,
            When::After(d) => keyed_row || !d.is_zero(),
            When::At(t) => keyed_row || t > Utc::now(),
        };
        job = match request.when {
            When::Now => job,
            When::After(d) => job.delay(d),
            When::At(t) => job.run_at(t),
        };
        // The options `warren_client` checks (task and queue names, attempts, timeout, key,
        // times) are checked once, by the enqueue itself: its `Error::Invalid` becomes the
        // same 422 with the same pointers (`enqueue_failed`), per job in a batch.
        Ok(Prepared {
            job,
            id,
            to_rows,
            key_from_header,
        })
    }

    /// The answer for an enqueue that returned `id`.
    async fn accepted(&self, prepared_id: JobId, to_rows: bool, id: JobId) -> Accepted {
        telemetry::job(JobOutcome::Accepted);
        if id == prepared_id {
            let state = if to_rows { "scheduled" } else { "queued" };
            return Accepted {
                id,
                state: state.to_owned(),
                duplicate: false,
            };
        }
        // The key is held by another job: say where that one is.
        let state = match &self.store {
            Some(store) => match store.job(id).await {
                Ok(Some(record)) => record.state.to_string(),
                _ => "scheduled".to_owned(),
            },
            None => "scheduled".to_owned(),
        };
        Accepted {
            id,
            state,
            duplicate: true,
        }
    }
}

/// The body field a `warren_client::Problem` names.
fn field_of(field: &'static str) -> &'static str {
    match field {
        "trace" => "traceparent",
        other => other,
    }
}

/// A 422 for the job at `at`, its detail listing each violation. A violation of the job as a
/// whole (its pointer is `at`, such as a job that is not an object) is listed without its
/// pointer, which the detail has already named, or, for `""`, would print as nothing.
fn invalid_job(at: &str, violations: Vec<Violation>) -> Problem {
    telemetry::job(JobOutcome::Refused);
    let place = if at.is_empty() {
        "the job".to_owned()
    } else {
        format!("the job at {at}")
    };
    let detail = format!(
        "{place} is not acceptable: {}",
        violations
            .iter()
            .map(|v| if v.pointer == at {
                v.detail.clone()
            } else {
                format!("{}: {}", v.pointer, v.detail)
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    Problem::invalid(detail, violations)
}

/// A violation of the key sent in the `Idempotency-Key` header. Its pointer is the body field
/// the header stands in for, as for every problem with the key; the detail names the header,
/// since the body holds no such field.
fn header_key_violation(detail: &str) -> Violation {
    Violation::new(
        "/idempotency_key",
        format!("the Idempotency-Key header: {detail}"),
    )
}

/// The key sent in the `Idempotency-Key` header, if any. Given twice it is refused rather
/// than either copy being used silently: the two may name different keys.
fn header_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refused = |detail| invalid_job("", vec![header_key_violation(detail)]);
    if values.next().is_some() {
        return Err(refused(
            "given more than once; send one Idempotency-Key header with one key",
        ));
    }
    // Its length and characters are checked with the body's key, by the enqueue.
    let key = value
        .to_str()
        .map_err(|_| refused("must be visible ASCII"))?;
    Ok(Some(key.to_owned()))
}

/// The problem for an enqueue that failed, for the job at `at`; `key_from_header` when the
/// job's idempotency key was the `Idempotency-Key` header's.
fn enqueue_failed(e: &warren_client::Error, at: &str, key_from_header: bool) -> Problem {
    match e {
        warren_client::Error::Invalid { problems, .. } => {
            let v = problems
                .iter()
                .map(|p| match p.field {
                    "idempotency_key" if key_from_header => header_key_violation(&p.text),
                    field => Violation::new(pointer(at, field_of(field)), p.text.clone()),
                })
                .collect();
            invalid_job(at, v)
        }
        warren_client::Error::Broker(warren_broker::Error::Unroutable { .. }) => invalid_job(
            at,
            vec![Violation::new(pointer(at, "queue"), e.to_string())],
        ),
        _ => {
            telemetry::job(JobOutcome::Unavailable);
            tracing::warn!(error = %ErrorChain(e), "enqueue failed; answering 503");
            Problem::unavailable(format!(
                "{e}; the job was not accepted: send it again in a moment (with an idempotency \
                 key, a retry never makes a second job)"
            ))
        }
    }
}

/// Records the caller's token NAME on the request's span; the token itself is never logged.
fn record_caller(caller: &Caller) {
    tracing::Span::current().record("caller", caller.name.as_str());
}

/// The W3C trace context of the request, when its `traceparent` is well-formed (a malformed
/// one is ignored, as the W3C recommendation says, rather than failing the request).
fn trace_context(headers: &HeaderMap) -> Option<(String, Option<String>)> {
    let tp = headers.get("traceparent")?.to_str().ok()?.trim();
    if !is_traceparent(tp) {
        tracing::debug!("ignoring a malformed traceparent header");
        return None;
    }
    let ts = headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some((tp.to_owned(), ts))
}

/// `POST /v1/jobs`. It takes the request whole: a `HeaderMap` extractor would copy the
/// headers.
pub(crate) async fn post_job(State(s): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let deadline = parts.extensions.get::<Deadline>().copied();
    match post_job_inner(&s, &parts.headers, body, deadline).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn post_job_inner(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    deadline: Option<Deadline>,
) -> Result<Accepted, Problem> {
    let caller = s.tokens.authenticate(headers)?;
    record_caller(&caller);
    let bytes = read_body(headers, body, s.limits.max_body_bytes, deadline).await?;
    // The fast path reads a good job straight into its fields; anything else is read again
    // as a tree, which names each mistake.
    let wire = serde_json::from_slice::<WireJob<'_>>(&bytes).ok();
    let tree;
    let request = match wire.as_ref().and_then(JobRequest::from_wire) {
        Some(request) => request,
        None => {
            tree = parse_json(&bytes)?;
            s.read_job(&caller, &tree, "")?
        }
    };
    let header_key = header_key(headers)?;
    let trace = trace_context(headers);
    let p = s.prepare(&caller, request, "", header_key, trace.as_ref())?;
    let id = s
        .client
        .enqueue(p.job)
        .await
        .map_err(|e| enqueue_failed(&e, "", p.key_from_header))?;
    let accepted = s.accepted(p.id, p.to_rows, id).await;
    tracing::info!(caller = %caller.name, job.id = %accepted.id, state = %accepted.state, "job accepted");
    Ok(accepted)
}

/// One job's result in a batch answer.
#[derive(Debug, Serialize)]
pub struct BatchItem {
    /// The status this job alone would have had: 202, or the error's.
    pub status: u16,
    /// The job's id, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<JobId>,
    /// Its state, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// True when its idempotency key was already held.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Why it was not accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

impl BatchItem {
    fn refused(problem: Problem) -> Self {
        Self {
            status: problem.status,
            id: None,
            state: None,
            duplicate: false,
            problem: Some(problem),
        }
    }
}

/// The answer to a batch: one item per job, in the order sent.
#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    /// Jobs accepted.
    pub accepted: usize,
    /// Jobs not accepted; retry exactly these (those with status 503 as they are).
    pub failed: usize,
    /// One result per job, in order.
    pub results: Vec<BatchItem>,
}

/// `POST /v1/jobs/batch`.
pub(crate) async fn post_batch(State(s): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let deadline = parts.extensions.get::<Deadline>().copied();
    match post_batch_inner(&s, &parts.headers, body, deadline).await {
        Ok(answer) => {
            let retry = answer.results.iter().any(|r| r.status == 503);
            let mut response = (StatusCode::OK, Json(answer)).into_response();
            if retry {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            response
        }
        Err(p) => p.into_response(),
    }
}

async fn post_batch_inner(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    deadline: Option<Deadline>,
) -> Result<BatchAnswer, Problem> {
    let caller = s.tokens.authenticate(headers)?;
    record_caller(&caller);
    // One header cannot key many jobs; ignoring it would make a retried batch a second set
    // of jobs while the caller believes it keyed them. Refused before the body is read, as it
    // is wrong whatever the body holds.
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return Err(one_violation(
            "",
            "the Idempotency-Key header applies to POST /v1/jobs only; in a batch each job \
             takes its own `idempotency_key` field in the body: send the keys there and the \
             batch without the header"
                .to_owned(),
        ));
    }
    let bytes = read_body(headers, body, s.limits.max_body_bytes, deadline).await?;
    let max = s.limits.max_batch;
    // As for one job: the fast path when every job reads straight into its fields, else the
    // whole batch as a tree.
    let wire = serde_json::from_slice::<WireBatch<'_>>(&bytes).ok();
    let fast = wire.as_ref().and_then(|batch| {
        batch
            .jobs
            .iter()
            .map(JobRequest::from_wire)
            .collect::<Option<Vec<_>>>()
    });
    let tree;
    let jobs: Vec<Result<JobRequest<'_>, Problem>> = match fast {
        Some(jobs) => {
            check_count(jobs.len(), max)?;
            jobs.into_iter().map(Ok).collect()
        }
        None => {
            tree = parse_json(&bytes)?;
            batch_jobs(&tree, max)?
                .iter()
                .enumerate()
                .map(|(i, job)| s.read_job(&caller, job, &format!("/jobs/{i}")))
                .collect()
        }
    };
    let trace = trace_context(headers);
    let mut results: Vec<Option<BatchItem>> = Vec::with_capacity(jobs.len());
    let mut ready = Vec::new();
    // Each job's pointer, written into one buffer rather than allocated per job.
    let mut at = String::new();
    for (i, job) in jobs.into_iter().enumerate() {
        at.clear();
        let _ = write!(at, "/jobs/{i}");
        match job.and_then(|job| s.prepare(&caller, job, &at, None, trace.as_ref())) {
            Ok(p) => {
                results.push(None);
                ready.push((i, p.id, p.to_rows, p.job));
            }
            Err(problem) => results.push(Some(BatchItem::refused(problem))),
        }
    }
    let (meta, new_jobs): (Vec<_>, Vec<_>) = ready
        .into_iter()
        .map(|(i, id, to_rows, job)| ((i, id, to_rows), job))
        .unzip();
    let outcomes = s.client.enqueue_many(new_jobs).await;
    for ((i, prepared_id, to_rows), outcome) in meta.into_iter().zip(outcomes) {
        results[i] = Some(match outcome {
            Ok(id) => {
                let a = s.accepted(prepared_id, to_rows, id).await;
                BatchItem {
                    status: 202,
                    id: Some(a.id),
                    state: Some(a.state),
                    duplicate: a.duplicate,
                    problem: None,
                }
            }
            // A batch takes no Idempotency-Key header: every key is a job's field.
            Err(e) => BatchItem::refused(enqueue_failed(&e, &format!("/jobs/{i}"), false)),
        });
    }
    let results: Vec<BatchItem> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                BatchItem::refused(Problem::unavailable("the job's outcome is unknown"))
            })
        })
        .collect();
    let accepted = results.iter().filter(|r| r.status == 202).count();
    tracing::info!(caller = %caller.name, accepted, failed = results.len() - accepted, "batch answered");
    Ok(BatchAnswer {
        accepted,
        failed: results.len() - accepted,
        results,
    })
}

/// The `jobs` array of a batch body, at most `max` long.
fn batch_jobs(value: &Value, max: usize) -> Result<&Vec<Value>, Problem> {
    let Value::Object(fields) = value else {
        return Err(one_violation(
            "",
            "a batch must be an object `{\"jobs\": [...]}`".to_owned(),
        ));
    };
    if let Some(other) = fields.keys().find(|k| *k != "jobs") {
        return Err(one_violation(
            &pointer("", other),
            format!("unknown field `{other}`; a batch has only `jobs`"),
        ));
    }
    match fields.get("jobs") {
        Some(Value::Array(jobs)) => check_count(jobs.len(), max).map(|()| jobs),
        _ => Err(one_violation(
            "/jobs",
            "required: an array of jobs".to_owned(),
        )),
    }
}

/// A batch of `count` jobs is neither empty nor over `max`.
fn check_count(count: usize, max: usize) -> Result<(), Problem> {
    let detail = if count == 0 {
        "the batch is empty; send at least one job".to_owned()
    } else if count > max {
        format!(
            "the batch has {count} jobs, more than {max}, the limit of this service \
             (--max-batch / WARREN_MAX_BATCH); split it"
        )
    } else {
        return Ok(());
    };
    Err(one_violation("/jobs", detail))
}

/// A 422 with one violation, at `pointer`, worded as `detail`.
fn one_violation(pointer: &str, detail: String) -> Problem {
    Problem::invalid(detail.clone(), vec![Violation::new(pointer, detail)])
}

/// The job `id` names, after checking the caller may see its task.
async fn find_job(
    s: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(warren_store::Store, warren_store::JobRecord), Problem> {
    let caller = s.tokens.authenticate(headers)?;
    record_caller(&caller);
    let Some(store) = s.store.clone() else {
        return Err(Problem::unavailable(
            "this producer has no database (--database-url / WARREN_DATABASE_URL), so it \
             cannot read or cancel jobs; use `warren jobs show` or configure one",
        ));
    };
    let id: JobId = id
        .parse()
        .map_err(|_| Problem::not_found(format!("`{id}` is not a job id (a UUID)")))?;
    let record = store
        .job(id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %ErrorChain(&e), "reading a job failed; answering 503");
            Problem::unavailable(format!(
                "reading job {id} from Postgres failed: {e}; try again"
            ))
        })?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no job {id} is recorded. A job published at once gets its row when a worker \
                 starts it, so a job accepted moments ago may not be found yet"
            ))
        })?;
    if !caller.allows(&record.task) {
        return Err(caller.refuse(&record.task));
    }
    Ok((store, record))
}

/// The `{id}` segment of a job route (`/v1/jobs/{id}...`) as text. A segment that does not
/// percent-decode to UTF-8 is kept as it was sent: it is no more a job id than any other text
/// that is not a UUID, and is answered the same way (404), rather than with the path
/// extractor's bare 400.
fn id_text(id: Result<Path<String>, PathRejection>, uri: &Uri) -> String {
    match id {
        Ok(Path(id)) => id,
        Err(_) => uri.path().split('/').nth(3).unwrap_or_default().to_owned(),
    }
}

/// `GET /v1/jobs/{id}`.
pub(crate) async fn get_job(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match find_job(&s, &headers, &id_text(id, &uri)).await {
        Ok((_, record)) => Json(record).into_response(),
        Err(p) => p.into_response(),
    }
}

/// What a cancel did.
#[derive(Debug, Serialize)]
pub struct Cancelled {
    /// The job.
    pub id: JobId,
    /// `cancelled` (it was waiting and will never run) or `signalled` (it is running; its
    /// worker was told to stop it).
    pub outcome: &'static str,
    /// The state it was cancelled from, for `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// `POST /v1/jobs/{id}/cancel`.
pub(crate) async fn cancel_job(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (store, record) = match find_job(&s, &headers, &id_text(id, &uri)).await {
        Ok(found) => found,
        Err(p) => return p.into_response(),
    };
    let id = record.id;
    match store.cancel_job(id).await {
        Ok(CancelOutcome::Cancelled { previous }) => Json(Cancelled {
            id,
            outcome: "cancelled",
            previous: Some(previous.to_string()),
        })
        .into_response(),
        Ok(CancelOutcome::Signalled { .. }) => (
            StatusCode::ACCEPTED,
            Json(Cancelled {
                id,
                outcome: "signalled",
                previous: None,
            }),
        )
            .into_response(),
        Ok(CancelOutcome::AlreadyFinal { state }) => Problem::conflict(format!(
            "job {id} is already {state}; there is nothing to cancel"
        ))
        .into_response(),
        Ok(CancelOutcome::NotFound) => {
            Problem::not_found(format!("no job {id} is recorded")).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "cancelling a job failed; answering 503");
            Problem::unavailable(format!(
                "cancelling job {id} in Postgres failed: {e}; try again"
            ))
            .into_response()
        }
    }
}
