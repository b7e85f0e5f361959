//! What every phase sends, so that the phases differ only in what happens to a message, never
//! in the message itself: the same task, the same payload size, the same headers and
//! durability, published in the same chunks.

use chrono::Utc;
use serde_json::value::RawValue;
use warren_core::{JobId, JobMessage, RawMessage, TaskName};

/// The built-in task that does nothing, so the end-to-end phase measures Warren, not a
/// handler.
pub(crate) const TASK: &str = "warren.noop";

/// The one work queue each phase declares in its own namespace.
pub(crate) const QUEUE: &str = "bench";

/// Jobs handed to one `publish_many` / `enqueue_many` call. Both stamp `enqueued_at` when a
/// chunk is prepared, so a chunk of the whole run would make every job look enqueued at the
/// start; a thousand keeps the stamps within a few milliseconds of the real publish while
/// leaving the publisher's confirm window (512) full nearly all the time.
pub(crate) const CHUNK: usize = 1_000;

/// `{"pad":""}`: the smallest payload [`payload`] can pad.
pub(crate) const MIN_PAYLOAD_BYTES: usize = 10;

/// A JSON object of exactly `bytes` bytes (at least [`MIN_PAYLOAD_BYTES`]).
pub(crate) fn payload(bytes: usize) -> Box<RawValue> {
    let pad = "x".repeat(bytes.saturating_sub(MIN_PAYLOAD_BYTES));
    let text = format!(r#"{{"pad":"{pad}"}}"#);
    // An object holding a string of `x`s is valid JSON by construction.
    RawValue::from_string(text).unwrap_or_else(|_| unreachable!("padded object is valid JSON"))
}

/// The message of a fresh `warren.noop` job, byte for byte what `Client::enqueue_many`
/// publishes: the ceiling phase sends these so it carries the same headers and body size.
pub(crate) fn noop_message(task: &TaskName, payload: &RawValue) -> RawMessage {
    JobMessage {
        id: JobId::new(),
        task: task.clone(),
        attempt: 1,
        max_attempts: None,
        timeout_ms: None,
        idempotency_key: None,
        enqueued_at: Utc::now(),
        traceparent: None,
        tracestate: None,
        has_row: false,
        limit_token: None,
        payload: payload.to_owned(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::message::HEADER_ENQUEUED_AT;

    #[test]
    fn payload_has_the_requested_size() {
        for bytes in [MIN_PAYLOAD_BYTES, 11, 100, 4096] {
            let p = payload(bytes);
            assert_eq!(p.get().len(), bytes);
            assert!(serde_json::from_str::<serde_json::Value>(p.get()).is_ok());
        }
    }

    #[test]
    fn ceiling_messages_look_like_enqueued_jobs() {
        let task = TaskName::new(TASK).expect("valid task name");
        let raw = noop_message(&task, &payload(100));
        assert_eq!(raw.body.len(), 100);
        assert!(raw.headers.contains_key(HEADER_ENQUEUED_AT));
        let decoded = JobMessage::decode(&raw, 1 << 20).expect("decodes as a job");
        assert_eq!(decoded.task.as_str(), TASK);
    }
}
