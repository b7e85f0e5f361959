use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one job for its whole life, across every attempt and every queue hop.
///
/// Job ids are UUIDv7: they sort by creation time, which keeps the jobs table's primary key
/// index append-mostly and lets people read roughly when a job was made from its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID, as read back from Postgres or a message. Any version is
    /// accepted: only ids this crate makes are guaranteed to be time-ordered.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The id as a UUID, for the database column and the `message_id` property.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A job id that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a job id: expected a UUID such as 0190f3c4-8a1e-7cc2-9d55-3b1f0c6a2e10")]
pub struct ParseJobIdError {
    /// The text that was refused, cut to its first 80 characters so that a pasted payload
    /// does not flood the error message.
    pub input: String,
}

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| ParseJobIdError {
                input: s.chars().take(80).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_round_trip() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b, "UUIDv7 ids made later sort later");
        assert_eq!(a.to_string().parse::<JobId>(), Ok(a));
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn bad_id_says_what_was_wrong() {
        let err = "nope".parse::<JobId>().unwrap_err();
        assert!(err.to_string().contains("`nope` is not a job id"));
    }
}
