//! Every error the service answers with: an RFC 7807 `application/problem+json` body with a
//! precise `detail`, and for bad jobs the JSON pointer of each violation.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client is told to wait after a 503 before trying again.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The `WWW-Authenticate` challenge of a 401 for missing or malformed credentials. RFC 6750
/// (section 3) asks every 401 to carry one, and a request without credentials to get no
/// error code in it.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"warren\"";

/// The `WWW-Authenticate` challenge of a 401 for a bearer token that is not recognised
/// (RFC 6750, section 3.1).
pub const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"warren\", error=\"invalid_token\"";

/// The header of a 415 for a content coding: the only coding the service takes is none
/// (RFC 9110, section 15.5.16).
static ACCEPT_IDENTITY: (HeaderName, HeaderValue) = (
    header::ACCEPT_ENCODING,
    HeaderValue::from_static("identity"),
);

/// One thing wrong with a request body, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// RFC 6901 JSON pointer into the request body, e.g. `/payload/ms` or `/jobs/3/delay`.
    pub pointer: String,
    /// What is wrong there.
    pub detail: String,
}

impl Violation {
    /// A violation at `pointer`.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// An RFC 7807 problem. `kind` is the last part of its `type` URI (`urn:warren:problem:<kind>`).
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// `urn:warren:problem:<kind>`, stable: clients may branch on it.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short, fixed summary of the kind.
    pub title: &'static str,
    /// The HTTP status, repeated in the body as RFC 7807 asks.
    pub status: u16,
    /// What exactly went wrong with this request, and what to do about it.
    pub detail: String,
    /// For bad jobs: each violation with its JSON pointer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Violation>,
    /// For a 401, the `WWW-Authenticate` challenge to answer with: a header, not part of the
    /// body. `None` answers a 401 with [`BEARER_CHALLENGE`].
    #[serde(skip)]
    challenge: Option<&'static str>,
    /// A header to answer with besides those every problem of its status gets (such as
    /// `Accept-Encoding` for a refused content coding): a header, not part of the body. A
    /// reference, so that a problem stays small enough to return by value.
    #[serde(skip)]
    header: Option<&'static (HeaderName, HeaderValue)>,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!("urn:warren:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            challenge: None,
            header: None,
        }
    }

    /// 400: the body is not JSON.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            detail,
        )
    }

    /// 401: no bearer token, or an `Authorization` header that is not `Bearer <token>`.
    /// Answered with `WWW-Authenticate: Bearer realm="warren"`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 401: a bearer token that is not in the tokens file. Answered with
    /// `WWW-Authenticate: Bearer realm="warren", error="invalid_token"`.
    pub fn invalid_token(detail: impl Into<String>) -> Self {
        let mut p = Self::unauthorized(detail);
        p.challenge = Some(INVALID_TOKEN_CHALLENGE);
        p
    }

    /// 403: the token may not use this task.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404: no such job, or no such route.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 405: the route exists, the method does not.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            detail,
        )
    }

    /// 409: the job's state does not allow what was asked (cancelling a finished job).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 408: the body did not arrive in full before the request timed out: `received` bytes of
    /// it had, of the `announced` length when the request declared one. Answered with
    /// `Connection: close`, since the rest of the body may still be on its way.
    pub fn body_timeout(timeout: Duration, received: usize, announced: Option<u64>) -> Self {
        let arrived = match announced {
            Some(len) => format!("{received} of the {len} bytes its Content-Length announced"),
            None => format!("{received} bytes of it"),
        };
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!(
                "the request body did not arrive in full within {timeout:?}, the request timeout \
                 of this service (--request-timeout / WARREN_REQUEST_TIMEOUT); {arrived} arrived. \
                 Nothing was accepted: send the request again with its whole body"
            ),
        )
    }

    /// 413: the body is larger than the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!(
                "the request body is larger than {limit} bytes, the limit of this service \
                 (--max-body-bytes / WARREN_MAX_BODY_BYTES); send smaller payloads or fewer jobs per batch"
            ),
        )
    }

    /// 415: the body is not declared as JSON.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = got.map_or("no Content-Type".to_owned(), |t| {
            format!("Content-Type `{t}`")
        });
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("the body must be JSON sent with `Content-Type: application/json`; got {got}"),
        )
    }

    /// 415: the body is sent with a content coding (`Content-Encoding` other than
    /// `identity`), `got`. The service decodes none, so RFC 9110 (sections 8.4.1 and 15.5.16)
    /// asks for a 415 rather than a failure to parse the coded bytes, with `Accept-Encoding`
    /// naming the codings it takes: only `identity`.
    pub fn unsupported_encoding(got: &str) -> Self {
        let mut p = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "the body is sent with `Content-Encoding: {got}`, and this service accepts no \
                 content codings: send the body uncompressed, without Content-Encoding"
            ),
        );
        p.header = Some(&ACCEPT_IDENTITY);
        p
    }

    /// 422: the job (or batch) is well-formed JSON but not an acceptable job.
    pub fn invalid(detail: impl Into<String>, errors: Vec<Violation>) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-job",
            "Invalid job",
            detail,
        );
        p.errors = errors;
        p
    }

    /// 503: the broker or the database is unavailable, a publish was nacked or its confirm
    /// did not come; the job was not accepted. Answered with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// Any status a middleware or extractor produced without a body.
    pub fn from_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        let detail = format!("the request failed with status {}", status.as_u16());
        let kind = title.to_ascii_lowercase().replace(' ', "-");
        Self::new(status, &kind, title, detail)
    }

    /// The HTTP status of this problem.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        // A 408 leaves the rest of the body unread on the connection: close it rather than
        // read what follows as the next request (RFC 9110, section 15.5.9).
        if status == StatusCode::REQUEST_TIMEOUT {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some((name, value)) = self.header {
            headers.insert(name.clone(), value.clone());
        }
        // Every 401, whichever way it was made, tells the client how to authenticate.
        if status == StatusCode::UNAUTHORIZED {
            let challenge = self.challenge.unwrap_or(BEARER_CHALLENGE);
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
