//! The OpenAPI 3.1 document served at `GET /openapi.json`, made from [`crate::ROUTES`] so that
//! a route cannot be added without its description (a test checks both ways).

use serde_json::{Value, json};
use warren_core::message::MAX_IDEMPOTENCY_KEY_LEN;

use crate::contracts::Contracts;
use crate::{Limits, ROUTES};

/// Whether `path` matches the route pattern `pattern` (`{name}` matches one segment).
pub fn matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b))
                if (a.starts_with('{') && a.ends_with('}') && !b.is_empty()) || a == b => {}
            _ => return false,
        }
    }
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn unavailable() -> Value {
    let mut p = problem(
        "RabbitMQ or PostgreSQL unavailable, or a publish nacked; retry after `Retry-After` seconds",
    );
    p["headers"] = json!({ "Retry-After": { "schema": { "type": "integer" } } });
    p
}

fn unauthorized() -> Value {
    let mut p = problem("no, malformed or unknown bearer token");
    p["headers"] = json!({ "WWW-Authenticate": {
        "description": "`Bearer realm=\"warren\"`, with `error=\"invalid_token\"` when the token is not one of the service's (RFC 6750)",
        "schema": { "type": "string" }
    } });
    p
}

fn job_id_parameter() -> Value {
    json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }])
}

/// The description of one route.
fn operation(method: &str, path: &str, limits: &Limits) -> Value {
    let auth_errors = |mut responses: Value| {
        responses["401"] = unauthorized();
        responses["403"] = problem("the token may not use this task");
        responses
    };
    let body_errors = |mut responses: Value| {
        responses["400"] = problem("the body is not JSON");
        let mut timeout = problem(&format!(
            "the body did not arrive in full within {:?}, the request timeout; the connection \
             is closed",
            limits.request_timeout
        ));
        timeout["headers"] = json!({ "Connection": { "schema": { "const": "close" } } });
        responses["408"] = timeout;
        responses["413"] = problem(&format!(
            "the body is larger than {} bytes",
            limits.max_body_bytes
        ));
        let mut media = problem(
            "the body is not sent as application/json, or is sent with a content coding \
             (a Content-Encoding other than identity): send it uncompressed",
        );
        media["headers"] = json!({ "Accept-Encoding": {
            "description": "`identity`, when a content coding was refused (RFC 9110, section 15.5.16)",
            "schema": { "type": "string" }
        } });
        responses["415"] = media;
        responses["422"] = problem(
            "the job breaks its task's schema or has a bad option; `errors` lists each violation's JSON pointer",
        );
        responses["503"] = unavailable();
        responses
    };
    let json_body = |schema: &str| json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    match (method, path) {
        ("POST", "/v1/jobs") => json!({
            "operationId": "enqueueJob",
            "summary": "Enqueue one job; answered once RabbitMQ confirmed it or its scheduled row committed",
            "security": [{ "bearer": [] }],
            "parameters": [
                { "name": "Idempotency-Key", "in": "header", "required": false, "description": "the job's idempotency key, instead of the body's `idempotency_key`; given once. Its problems are reported at the pointer `/idempotency_key`, the detail naming the header", "schema": { "type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LEN } },
                { "name": "traceparent", "in": "header", "required": false, "schema": { "type": "string" } }
            ],
            "requestBody": json_body("Job"),
            "responses": body_errors(auth_errors(json!({
                "202": { "description": "accepted", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Accepted" } } } }
            })))
        }),
        ("POST", "/v1/jobs/batch") => {
            let mut responses = body_errors(auth_errors(json!({
                "200": { "description": "every job's result, in the order sent", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BatchAnswer" } } } }
            })));
            // Each job's own 422 is a result of the 200; the batch's is about the request.
            responses["422"] = problem(&format!(
                "the body is not a batch of 1 to {} jobs, or the request carries an \
                 Idempotency-Key header (each job of a batch takes its own `idempotency_key`)",
                limits.max_batch
            ));
            json!({
                "operationId": "enqueueBatch",
                "summary": format!("Enqueue up to {} jobs with pipelined confirms; one result per job, in order", limits.max_batch),
                "security": [{ "bearer": [] }],
                "requestBody": json_body("Batch"),
                "responses": responses
            })
        }
        ("GET", "/v1/jobs/{id}") => json!({
            "operationId": "getJob",
            "summary": "A job's state, attempts, timings, result and errors",
            "security": [{ "bearer": [] }],
            "parameters": job_id_parameter(),
            "responses": auth_errors(json!({
                "200": { "description": "the job's record", "content": { "application/json": { "schema": { "type": "object" } } } },
                "404": problem("not a job id, or no such job (a job published at once has no row until a worker starts it)"),
                "503": unavailable()
            }))
        }),
        ("POST", "/v1/jobs/{id}/cancel") => json!({
            "operationId": "cancelJob",
            "summary": "Cancel a job: a waiting one at once, a running one by signalling its worker",
            "security": [{ "bearer": [] }],
            "parameters": job_id_parameter(),
            "responses": auth_errors(json!({
                "200": { "description": "cancelled; it will never run", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Cancelled" } } } },
                "202": { "description": "running; its worker was told to stop it", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Cancelled" } } } },
                "404": problem("not a job id, or no such job"),
                "409": problem("the job has already finished"),
                "503": unavailable()
            }))
        }),
        ("GET", "/healthz") => json!({
            "operationId": "health", "summary": "The process is up",
            "responses": { "200": { "description": "up" } }
        }),
        ("GET", "/readyz") => json!({
            "operationId": "ready", "summary": "RabbitMQ and PostgreSQL (if configured) are reachable",
            "responses": { "200": { "description": "ready" }, "503": unavailable() }
        }),
        ("GET", "/metrics") => json!({
            "operationId": "metrics", "summary": "Prometheus metrics, series prefixed warren_producer_",
            "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": {} } } }
        }),
        ("GET", "/openapi.json") => json!({
            "operationId": "openapi", "summary": "This document",
            "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": {} } } }
        }),
        _ => json!({}),
    }
}

/// The OpenAPI 3.1 document of the service, with the task names its contracts know.
pub fn document(contracts: &Contracts, limits: &Limits) -> Value {
    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = operation(route.method, route.path, limits);
    }
    let tasks: Vec<&str> = contracts.tasks().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "warren-producer",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Enqueue Warren jobs over HTTP. Errors are RFC 7807 application/problem+json."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Job": {
                    "type": "object",
                    "required": ["task", "payload"],
                    "additionalProperties": false,
                    "properties": {
                        "task": { "type": "string", "description": "a task with a contract in schemas/payloads", "examples": tasks },
                        "payload": { "description": "the task's input, checked against its schema" },
                        "queue": { "type": "string", "default": "default" },
                        "delay": { "type": "string", "examples": ["30s", "5m", "1h30m"] },
                        "run_at": { "type": "string", "format": "date-time" },
                        "max_attempts": { "type": "integer", "minimum": 1, "maximum": 1000 },
                        "timeout": { "type": "string", "examples": ["30s"] },
                        "idempotency_key": { "type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LEN }
                    }
                },
                "Batch": {
                    "type": "object",
                    "required": ["jobs"],
                    "additionalProperties": false,
                    "properties": { "jobs": { "type": "array", "minItems": 1, "maxItems": limits.max_batch, "items": { "$ref": "#/components/schemas/Job" } } }
                },
                "Accepted": {
                    "type": "object",
                    "required": ["id", "state"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "state": { "enum": ["queued", "scheduled", "running", "succeeded"] },
                        "duplicate": { "type": "boolean", "description": "the idempotency key was held: this is the holder's id" }
                    }
                },
                "BatchAnswer": {
                    "type": "object",
                    "required": ["accepted", "failed", "results"],
                    "properties": {
                        "accepted": { "type": "integer" },
                        "failed": { "type": "integer" },
                        "results": { "type": "array", "items": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": { "type": "integer" },
                                "id": { "type": "string", "format": "uuid" },
                                "state": { "type": "string" },
                                "duplicate": { "type": "boolean" },
                                "problem": { "$ref": "#/components/schemas/Problem" }
                            }
                        } }
                    }
                },
                "Cancelled": {
                    "type": "object",
                    "required": ["id", "outcome"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "outcome": { "enum": ["cancelled", "signalled"] },
                        "previous": { "type": "string" }
                    }
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": { "type": "string", "examples": ["urn:warren:problem:invalid-job"] },
                        "title": { "type": "string" },
                        "status": { "type": "integer" },
                        "detail": { "type": "string" },
                        "errors": { "type": "array", "items": {
                            "type": "object",
                            "required": ["pointer", "detail"],
                            "properties": { "pointer": { "type": "string" }, "detail": { "type": "string" } }
                        } }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_one_segment_per_parameter() {
        assert!(matches("/v1/jobs/{id}", "/v1/jobs/abc"));
        assert!(!matches("/v1/jobs/{id}", "/v1/jobs/abc/cancel"));
        assert!(!matches("/v1/jobs/{id}", "/v1/jobs/"));
        assert!(matches("/healthz", "/healthz"));
    }
}
