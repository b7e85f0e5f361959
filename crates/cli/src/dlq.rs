//! `warren dlq`: the parking queue `<ns>.dead.unread`, where dead letters without a readable
//! job id wait for an admin. Every other dead job is a `dead` row in Postgres (`warren jobs`).
//!
//! `list` and `show` read without taking: nothing is acked, and the messages return to the
//! queue, in order, when the reading channel closes. `replay` acks a message only after its
//! republish is confirmed. `replay` and `purge` change the queue, so they need `--yes`.

use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;
use warren_broker::Parked;
use warren_core::HeaderValue;

use crate::connection::ConnectionArgs;
use crate::exit::{NotFound, Usage};
use crate::output::{Align, Table, emit, emit_json, printable_line};

/// Bytes of a body shown by `list`.
const PREVIEW_BYTES: usize = 48;
/// Bytes of a body shown by `show`.
const SHOW_BYTES: usize = 4096;

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List parked dead letters (oldest first) without removing them.
    ///
    /// Example: warren dlq list --limit 50 --json
    List(DlqListArgs),
    /// Show one parked dead letter in full (its position as `list` numbers it).
    ///
    /// Example: warren dlq show 3
    Show(DlqShowArgs),
    /// Republish parked dead letters to the work queue they came from, confirmed, and only then
    /// remove them. Messages whose queue is unknown stay parked.
    ///
    /// Example: warren dlq replay --limit 10 --yes
    Replay(DlqReplayArgs),
    /// Drop every parked dead letter.
    ///
    /// Example: warren dlq purge --yes
    Purge(DlqPurgeArgs),
}

#[derive(Debug, clap::Args)]
pub struct DlqListArgs {
    /// Messages to read from the head of the queue.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DlqShowArgs {
    /// Position in the queue, from 1, as `warren dlq list` numbers it.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub position: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DlqReplayArgs {
    /// Messages to replay at most.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub limit: u32,
    /// Confirm: the messages leave the parking queue once republished.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DlqPurgeArgs {
    /// Confirm: every parked message is dropped for good.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One parked message as `list` and `show` print it. Field names are part of the JSON
/// interface.
#[derive(Debug, Serialize)]
struct Letter {
    position: usize,
    /// The `message_id` property, `null` when absent.
    message_id: Option<String>,
    /// `warren-dead-reason`, or the broker's `x-death` reason.
    reason: Option<String>,
    /// The Warren queue `replay` sends it to, `null` when unknown.
    queue: Option<String>,
    /// The RabbitMQ queue the broker last dead-lettered it from, if it did.
    dead_lettered_from: Option<String>,
    /// Deliveries the broker counted while it was parked (`x-delivery-count`; each look by
    /// `list` or `show` adds one), `null` if none.
    deliveries: Option<i64>,
    /// Body size in bytes.
    size: usize,
    /// The first bytes of the body, non-printable and non-ASCII bytes as `\xNN`.
    preview: String,
    /// Every header, as text (`show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Vec<(String, String)>>,
}

fn letter(p: &Parked, preview_bytes: usize, with_headers: bool) -> Letter {
    let body = &p.raw.body;
    let shown = &body[..body.len().min(preview_bytes)];
    let mut preview = escape_bytes(shown);
    if body.len() > shown.len() {
        preview.push('…');
    }
    Letter {
        position: p.position,
        message_id: p.raw.message_id.clone(),
        reason: p.reason(),
        queue: p.queue(),
        dead_lettered_from: p.death.as_ref().map(|d| d.queue.clone()),
        deliveries: p.deliveries,
        size: body.len(),
        preview,
        headers: with_headers.then(|| {
            p.raw
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), header_text(v)))
                .collect()
        }),
    }
}

/// Bytes as text: printable ASCII as it is, `\n`, `\r`, `\t` and `\\` escaped, every other
/// byte as `\xNN`, so a body that is not text, or is meant to drive a terminal, shows as inert
/// text.
fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

fn header_text(v: &HeaderValue) -> String {
    match v {
        HeaderValue::Str(s) => s.clone(),
        HeaderValue::Int(i) => i.to_string(),
        HeaderValue::Bytes(b) => escape_bytes(b),
        HeaderValue::Other(kind) => format!("({kind})"),
    }
}

pub(crate) async fn run(command: DlqCommand, connection: &ConnectionArgs) -> anyhow::Result<()> {
    // Refuse before connecting: a missing --yes is a usage error whatever the broker says.
    match &command {
        DlqCommand::Replay(a) if !a.yes => {
            return Err(Usage(
                "`warren dlq replay` republishes parked messages and removes them from the parking queue; look first with `warren dlq list`, then add --yes".into(),
            )
            .into());
        }
        DlqCommand::Purge(a) if !a.yes => {
            return Err(Usage(
                "`warren dlq purge` drops every parked message for good; look first with `warren dlq list`, then add --yes".into(),
            )
            .into());
        }
        _ => {}
    }
    let broker = connection.broker("dlq").await?;
    let parking = broker.topology().parking_queue();
    let result = async {
        match command {
            DlqCommand::List(args) => {
                let parked = broker
                    .peek_parked(args.limit as usize)
                    .await
                    .with_context(|| format!("reading the parking queue `{parking}`"))?;
                let letters: Vec<Letter> =
                    parked.iter().map(|p| letter(p, PREVIEW_BYTES, false)).collect();
                if args.json {
                    emit_json(&letters)
                } else if letters.is_empty() {
                    emit(&format!("no parked dead letters in `{parking}`\n"))
                } else {
                    emit(&render(&letters))
                }
            }
            DlqCommand::Show(args) => {
                let n = args.position as usize;
                let parked = broker
                    .peek_parked(n)
                    .await
                    .with_context(|| format!("reading the parking queue `{parking}`"))?;
                let Some(p) = parked.get(n - 1) else {
                    return Err(NotFound(format!(
                        "no parked dead letter at position {n}: `{parking}` holds {}; see `warren dlq list`",
                        parked.len()
                    ))
                    .into());
                };
                let l = letter(p, SHOW_BYTES, true);
                if args.json {
                    emit_json(&l)
                } else {
                    emit(&render_one(&l))
                }
            }
            DlqCommand::Replay(args) => {
                let publisher = broker
                    .publisher()
                    .await
                    .context("opening a publishing channel")?;
                let report = broker
                    .replay_parked(&publisher, args.limit as usize)
                    .await
                    .with_context(|| {
                        format!("replaying from `{parking}` (what was not confirmed stays parked; run it again)")
                    })?;
                if args.json {
                    emit_json(&serde_json::json!({
                        "replayed": report.replayed,
                        "skipped": report.skipped,
                    }))
                } else {
                    let mut text = format!("replayed {} dead letter(s)\n", report.replayed);
                    if !report.skipped.is_empty() {
                        text.push_str(&format!(
                            "left {} parked: no queue to replay them to (positions {:?}); inspect with `warren dlq show`\n",
                            report.skipped.len(),
                            report.skipped
                        ));
                    }
                    emit(&text)
                }
            }
            DlqCommand::Purge(args) => {
                let purged = broker
                    .purge_parked()
                    .await
                    .with_context(|| format!("purging `{parking}`"))?;
                if args.json {
                    emit_json(&serde_json::json!({ "purged": purged }))
                } else {
                    emit(&format!("purged {purged} dead letter(s) from `{parking}`\n"))
                }
            }
        }
    }
    .await;
    broker.close().await;
    result
}

fn render(letters: &[Letter]) -> String {
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("MESSAGE ID", Align::Left),
        ("QUEUE", Align::Left),
        ("SIZE", Align::Right),
        ("REASON", Align::Left),
        ("BODY", Align::Left),
    ]);
    for l in letters {
        table.row(vec![
            l.position.to_string(),
            l.message_id
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), |id| printable_line(id).into_owned()),
            l.queue.clone().unwrap_or_else(|| "-".to_owned()),
            l.size.to_string(),
            printable_line(l.reason.as_deref().unwrap_or("-")).into_owned(),
            l.preview.clone(),
        ]);
    }
    table.render()
}

fn render_one(l: &Letter) -> String {
    let mut fields: Vec<(String, String)> = vec![
        ("position".into(), l.position.to_string()),
        (
            "message id".into(),
            l.message_id.clone().unwrap_or_else(|| "(none)".into()),
        ),
        (
            "reason".into(),
            l.reason.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "queue".into(),
            l.queue.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "dead-lettered from".into(),
            l.dead_lettered_from.clone().unwrap_or_else(|| "-".into()),
        ),
        ("size".into(), format!("{} bytes", l.size)),
    ];
    for (k, v) in l.headers.iter().flatten() {
        fields.push((format!("header {k}"), v.clone()));
    }
    fields.push(("body".into(), l.preview.clone()));
    // Header names come from whoever published the message: kept to one line like the
    // values (a newline in a name cannot forge a field), and the label column as wide as
    // the longest name, so that no name runs into its value.
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| {
            (
                printable_line(k).into_owned(),
                printable_line(v).into_owned(),
            )
        })
        .collect();
    let width = fields
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in &fields {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;
    use warren_core::RawMessage;

    #[test]
    fn a_letter_without_id_shows_none_and_an_escaped_preview() {
        let mut raw = RawMessage {
            message_id: None,
            content_type: None,
            timestamp: None,
            headers: Default::default(),
            body: b"\x00\xffhi\n".to_vec(),
        };
        raw.headers.insert(
            "warren-dead-reason".into(),
            HeaderValue::Str("message has no message_id property".into()),
        );
        raw.headers.insert(
            "warren-dead-queue".into(),
            HeaderValue::Str("default".into()),
        );
        let p = Parked {
            position: 1,
            raw,
            death: None,
            deliveries: None,
        };
        let l = letter(&p, PREVIEW_BYTES, false);
        assert_eq!(l.preview, "\\x00\\xffhi\\n");
        let text = render(&[l]);
        assert!(text.contains("(none)"), "{text}");
        assert!(text.contains("default"), "{text}");
        assert!(text.contains("message has no message_id"), "{text}");
    }

    #[test]
    fn show_keeps_long_header_names_apart_from_their_values_and_escapes_them() {
        let mut raw = RawMessage {
            message_id: None,
            content_type: None,
            timestamp: None,
            headers: Default::default(),
            body: b"{}".to_vec(),
        };
        raw.headers.insert(
            "warren-dead-reason".into(),
            HeaderValue::Str("no id".into()),
        );
        // A name that would clear the screen and forge a `body` line.
        raw.headers
            .insert("e\u{1b}[2J\nbody".into(), HeaderValue::Str("forged".into()));
        let p = Parked {
            position: 1,
            raw,
            death: None,
            deliveries: None,
        };
        let text = render_one(&letter(&p, PREVIEW_BYTES, true));
        assert!(
            text.contains("header warren-dead-reason  no id\n"),
            "{text}"
        );
        assert!(
            text.contains("header e\\u{1b}[2J\\nbody    forged\n"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        let bodies = text.lines().filter(|l| l.starts_with("body")).count();
        assert_eq!(bodies, 1, "{text}");
        assert!(text.starts_with("position                   1\n"), "{text}");
    }
}
