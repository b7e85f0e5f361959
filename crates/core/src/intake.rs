//! Intake messages: delayed jobs from producers without database access. They go to the
//! `<namespace>.intake` queue with the two intake headers, and a worker writes them to
//! Postgres as scheduled jobs (see `warren_runtime`'s intake loop).

use chrono::{DateTime, Utc};

use crate::QueueName;
use crate::message::{
    DecodeError, DecodeReason, HEADER_QUEUE, HEADER_RUN_AT, HeaderValue, JobMessage, MAX_TIME_MS,
    MIN_TIME_MS, RawMessage, required_int, required_str,
};

/// A delayed job sent through the intake queue: the job, where it goes, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct IntakeMessage {
    /// The job itself, exactly as it will be published when due.
    pub job: JobMessage,
    /// The Warren queue the job is published to when due (the `warren-queue` header).
    pub queue: QueueName,
    /// When the job falls due (the `warren-run-at` header, unix milliseconds on the wire).
    pub run_at: DateTime<Utc>,
}

impl IntakeMessage {
    /// The message as raw broker data: the job's own properties and headers plus the two
    /// intake headers. [`IntakeMessage::decode`] reads it back.
    pub fn encode(&self) -> RawMessage {
        let mut raw = self.job.encode();
        raw.headers.insert(
            HEADER_QUEUE.to_owned(),
            HeaderValue::Str(self.queue.to_string()),
        );
        raw.headers.insert(
            HEADER_RUN_AT.to_owned(),
            HeaderValue::Int(self.run_at.timestamp_millis()),
        );
        raw
    }

    /// Reads an intake message: a valid job message plus a valid queue and due time.
    pub fn decode(raw: &RawMessage, max_body: usize) -> Result<IntakeMessage, DecodeError> {
        let job = JobMessage::decode(raw, max_body)?;
        let fail = |reason| DecodeError {
            job_id: Some(job.id),
            task: Some(job.task.to_string()),
            attempt: Some(job.attempt),
            reason,
        };
        let queue = required_str(raw, HEADER_QUEUE).map_err(fail)?;
        let queue = QueueName::new(queue)
            .map_err(|e| fail(DecodeReason::BadQueue(e.reason.to_string())))?;
        let ms = required_int(raw, HEADER_RUN_AT, MIN_TIME_MS, MAX_TIME_MS).map_err(fail)?;
        let run_at = DateTime::from_timestamp_millis(ms).ok_or_else(|| {
            fail(DecodeReason::OutOfRange {
                header: HEADER_RUN_AT,
                value: ms,
                min: MIN_TIME_MS,
                max: MAX_TIME_MS,
            })
        })?;
        Ok(IntakeMessage { job, queue, run_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::sample;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn intake_messages_round_trip_and_need_queue_and_time() {
        let intake = IntakeMessage {
            job: sample(),
            queue: QueueName::new("emails").unwrap(),
            run_at: DateTime::from_timestamp_millis(1_800_000_000_000).unwrap(),
        };
        let raw = intake.encode();
        assert_eq!(IntakeMessage::decode(&raw, LIMIT), Ok(intake.clone()));
        let mut m = raw.clone();
        m.headers.remove(HEADER_QUEUE);
        assert_eq!(
            IntakeMessage::decode(&m, LIMIT).unwrap_err().reason,
            DecodeReason::MissingHeader(HEADER_QUEUE)
        );
        let mut m = raw;
        m.headers.insert(HEADER_RUN_AT.into(), HeaderValue::Int(5));
        assert!(matches!(
            IntakeMessage::decode(&m, LIMIT).unwrap_err().reason,
            DecodeReason::OutOfRange { .. }
        ));
    }
}
