//! Logging setup: text or JSON lines on stderr, filtered by `RUST_LOG`, and the job's ids at
//! the top of every JSON line.
//!
//! tracing-subscriber's JSON formatter puts span fields under `span` (the innermost span) and
//! `spans` (all of them), so a handler's own span would hide the job's ids one level down. A
//! log shipper should not have to search a list: every JSON line written inside a job starts
//! with `"trace_id"` and `"job_id"` as top-level keys (see docs/observability.md).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The ids of one job, kept in its `job` span's extensions for the JSON formatter.
#[derive(Debug, Default)]
struct JobIds {
    trace_id: String,
    job_id: String,
}

impl Visit for JobIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, &format!("{value:?}"));
    }
}

impl JobIds {
    fn record(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => value.clone_into(&mut self.trace_id),
            "job.id" => value.clone_into(&mut self.job_id),
            _ => {}
        }
    }
}

/// Keeps the ids of each `job` span (opened by `warren_runtime`'s executor) where the JSON
/// formatter finds them. Other spans cost one comparison of their name.
#[derive(Debug)]
pub(crate) struct JobIdsLayer;

impl<S> Layer<S> for JobIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if meta.name() != "job" || !meta.target().starts_with("warren_runtime") {
            return;
        }
        let mut ids = JobIds::default();
        attrs.record(&mut ids);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }
}

/// Wraps the JSON formatter: a line written inside a job gets `"trace_id"` and `"job_id"`
/// first, at the top level, the rest of the line unchanged.
#[derive(Debug)]
pub(crate) struct JobJson<F>(pub(crate) F);

impl<S, N, F> FormatEvent<S, N> for JobJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = ctx.event_scope().and_then(|scope| {
            scope.into_iter().find_map(|span| {
                let ext = span.extensions();
                ext.get::<JobIds>()
                    .map(|ids| (ids.trace_id.clone(), ids.job_id.clone()))
            })
        });
        let Some((trace_id, job_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The inner formatter writes one JSON object; the ids are hex and a UUID, so they
        // need no escaping.
        match line.strip_prefix('{') {
            Some(rest) => {
                write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"job_id\":\"{job_id}\",{rest}"
                )
            }
            None => writer.write_str(&line),
        }
    }
}
