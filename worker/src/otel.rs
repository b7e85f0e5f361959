//! OpenTelemetry export of job spans over OTLP/HTTP (protobuf), on only when
//! OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise nothing here is built or run.
//!
//! The spans go through the async batch processor on the worker's tokio runtime and are
//! POSTed with the hyper 1 client already in the tree (one HTTP/1 connection per export; a
//! batch goes every few seconds, so pooling would buy nothing).

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use warren_runtime::TraceParent;

/// How long one export may take, connection included, before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running exporter; [`Exporter::shutdown`] flushes the spans still batched.
#[derive(Debug)]
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the exporter to `traces_url` (`…/v1/traces`), its spans named for
    /// `service_name`. Must run inside the tokio runtime: the batch processor spawns its task
    /// on it.
    pub(crate) fn start(
        traces_url: &str,
        service_name: &str,
    ) -> anyhow::Result<(Exporter, opentelemetry_sdk::trace::Tracer)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(Http1)
            .build()
            .with_context(|| format!("building the OTLP exporter to {traces_url}"))?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("warren-worker");
        Ok((Exporter { provider }, tracer))
    }

    /// Sends the spans still batched and stops the exporter.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans to the OTLP collector failed");
        }
    }
}

/// Makes a job's span the child of the span that enqueued it (the message's `traceparent`),
/// in the producer's trace; the [`warren_runtime::JobSpanHook`] of the worker binary.
pub(crate) fn link_parent(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    if let Err(e) = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
    {
        tracing::debug!(error = %e, "cannot link the job's span to its producer's");
    }
}

/// OTLP over plain HTTP/1 with hyper: the settings only take `http://` endpoints.
#[derive(Debug)]
struct Http1;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Http1 {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        tokio::time::timeout(EXPORT_TIMEOUT, send(request))
            .await
            .map_err(|_| format!("no answer from the OTLP collector within {EXPORT_TIMEOUT:?}"))?
    }
}

async fn send(
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
    let authority = request
        .uri()
        .authority()
        .ok_or("the OTLP endpoint has no host")?
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    // HTTP/1 needs a Host header; the exporter's request carries only an absolute URI.
    parts
        .headers
        .insert(http::header::HOST, http::HeaderValue::from_str(&authority)?);
    // The origin form: hyper's HTTP/1 client sends the URI as it is given.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    let response = sender
        .send_request(http::Request::from_parts(
            parts,
            http_body_util::Full::new(body),
        ))
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}
