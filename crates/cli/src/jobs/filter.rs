//! The filter flags shared by `jobs list`, the bulk `jobs retry` / `jobs cancel` and
//! `dead retry` / `dead cancel`: parsed by clap, then turned into the store's `JobFilter`.

use chrono::{DateTime, Utc};
use warren_core::JobState;
use warren_core::duration::parse_duration;
use warren_store::JobFilter;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct FilterArgs {
    /// Only jobs in these states (comma-separated or repeated): scheduled, queued, running,
    /// succeeded, dead, cancelled.
    #[arg(long, value_name = "STATE", value_delimiter = ',')]
    pub state: Vec<JobState>,

    /// Only jobs of this task.
    #[arg(long)]
    pub task: Option<String>,

    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,

    /// Only jobs enqueued at or after this time: a duration back from now (15m, 2h, 7d) or an
    /// RFC 3339 time (2026-12-01T06:00:00Z).
    #[arg(long, value_name = "WHEN", value_parser = parse_when, allow_hyphen_values = true)]
    pub since: Option<DateTime<Utc>>,

    /// Only jobs enqueued before this time (same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when, allow_hyphen_values = true)]
    pub until: Option<DateTime<Utc>>,

    /// Only jobs whose latest error message contains this text (ignoring case).
    #[arg(long, value_name = "TEXT")]
    pub error_contains: Option<String>,
}

impl FilterArgs {
    pub(crate) fn to_filter(&self) -> JobFilter {
        JobFilter {
            states: self.state.clone(),
            task: self.task.clone(),
            queue: self.queue.clone(),
            since: self.since,
            until: self.until,
            error_contains: self.error_contains.clone(),
        }
    }
}

/// A point in time given as a duration back from now or as an RFC 3339 time.
pub(crate) fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&Utc));
    }
    let back = parse_duration(s).map_err(|e| {
        if s.trim_start().starts_with('-') {
            // `-2h`: the duration parser says why a sign is wrong.
            e
        } else {
            format!("`{s}` is neither a duration back from now (15m, 2h, 7d) nor an RFC 3339 time")
        }
    })?;
    let back = chrono::TimeDelta::from_std(back).map_err(|_| format!("`{s}` is too long ago"))?;
    Utc::now()
        .checked_sub_signed(back)
        .ok_or_else(|| format!("`{s}` is too long ago"))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_back_or_rfc3339() {
        let at = parse_when("2026-12-01T06:00:00Z").unwrap();
        assert_eq!(at.timestamp(), 1_796_104_800);
        let ago = Utc::now() - parse_when("2h").unwrap();
        assert!((ago.num_seconds() - 7_200).abs() < 5, "{ago}");
        assert!(parse_when("yesterday").unwrap_err().contains("neither"));
        assert!(
            parse_when("-2h")
                .unwrap_err()
                .contains("cannot be negative")
        );
    }
}
