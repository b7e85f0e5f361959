//! Periodic schedules: a cron expression evaluated in a time zone, and which of its ticks are
//! due after an outage ([`CatchUp`]).
//!
//! Pure logic: the scheduler loop in warren-runtime asks [`CronSchedule::due`] what to fire,
//! the CLI uses [`CronSchedule::parse`] to reject bad input and [`CronSchedule::next_after`]
//! to show the next fire time. Ticks are instants (UTC); the time zone only decides which
//! instants match. DST follows croner's rules, described in `docs/scheduling.md`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// At most this many missed ticks are fired at once by [`CatchUp::All`]: the most recent
/// ones. A schedule every second that was down for a day does not flood the queue.
pub const CATCH_UP_ALL_MAX: usize = 1000;

/// How late a tick may be fired under [`CatchUp::None`]: a scheduler that is a few seconds
/// behind (a slow pass, a short database hiccup) still fires the tick; an outage does not.
pub const CATCH_UP_NONE_GRACE: TimeDelta = TimeDelta::seconds(5);

/// What a schedule does about ticks it missed while no scheduler ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Skip missed ticks: fire only a tick at most [`CATCH_UP_NONE_GRACE`] old.
    None,
    /// Fire the most recent missed tick once (the default).
    #[default]
    Last,
    /// Fire every missed tick, at most [`CATCH_UP_ALL_MAX`] (the most recent).
    All,
}

impl CatchUp {
    /// The name stored in Postgres and accepted by `--catch-up`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Last => "last",
            CatchUp::All => "all",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CatchUp {
    type Err = CronScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(CatchUp::None),
            "last" => Ok(CatchUp::Last),
            "all" => Ok(CatchUp::All),
            other => Err(CronScheduleError::CatchUp {
                value: other.to_owned(),
            }),
        }
    }
}

/// Why a schedule's definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronScheduleError {
    /// The cron expression does not parse.
    #[error(
        "cron expression '{expr}' is invalid: {reason} (expected 6 fields, seconds first: \
         'sec min hour day-of-month month day-of-week', or 5 without seconds)"
    )]
    Cron {
        /// The expression as given.
        expr: String,
        /// What the parser objected to.
        reason: String,
    },
    /// The time zone is not an IANA zone name.
    #[error("unknown time zone '{name}' (expected an IANA name such as UTC or Europe/Berlin)")]
    TimeZone {
        /// The name as given.
        name: String,
    },
    /// The catch-up policy is not one of the three.
    #[error("unknown catch-up policy '{value}' (expected none, last or all)")]
    CatchUp {
        /// The value as given.
        value: String,
    },
}

/// What a scheduler should do for one schedule now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The most recent tick at or before now: the schedule's new `last_fired_at`, whether or
    /// not it is fired, so that skipped ticks are not looked at again.
    pub latest: DateTime<Utc>,
    /// The ticks to fire, oldest first (empty when [`CatchUp::None`] skips them all).
    pub fire: Vec<DateTime<Utc>>,
}

/// A parsed cron expression and the time zone it is read in.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses `expr` (6 fields with seconds first, or the classic 5 with seconds at 0) and
    /// the IANA time zone `timezone`.
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, CronScheduleError> {
        let tz: Tz = timezone.parse().map_err(|_| CronScheduleError::TimeZone {
            name: timezone.to_owned(),
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| CronScheduleError::Cron {
                expr: expr.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self { cron, tz })
    }

    /// The time zone it is read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `t`; `None` if the expression never matches again
    /// (say, the 30th of February).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// The ticks due at `now` for a schedule whose last fired tick is `after` (or that was
    /// created at `after`), under `catch_up`; `None` when no tick fell in `(after, now]`.
    pub fn due(&self, after: DateTime<Utc>, now: DateTime<Utc>, catch_up: CatchUp) -> Option<Due> {
        // Cheap test first: one forward step from the last tick.
        if self.next_after(after)? > now {
            return None;
        }
        let limit = match catch_up {
            CatchUp::None | CatchUp::Last => 1,
            CatchUp::All => CATCH_UP_ALL_MAX,
        };
        let mut cursor = self
            .cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok();
        let latest = cursor.as_ref()?.with_timezone(&Utc);
        let mut fire = Vec::new();
        while let Some(t) = cursor {
            let tick = t.with_timezone(&Utc);
            if tick <= after || fire.len() >= limit {
                break;
            }
            if catch_up == CatchUp::None && now - tick > CATCH_UP_NONE_GRACE {
                break;
            }
            fire.push(tick);
            cursor = self.cron.find_previous_occurrence(&t, false).ok();
        }
        fire.reverse();
        Some(Due { latest, fire })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn every_2s() -> CronSchedule {
        CronSchedule::parse("*/2 * * * * *", "UTC").expect("valid")
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let e = CronSchedule::parse("61 * * * * *", "UTC").expect_err("bad");
        assert!(e.to_string().contains("'61 * * * * *'"), "{e}");
        let e = CronSchedule::parse("not cron", "UTC").expect_err("bad");
        assert!(matches!(e, CronScheduleError::Cron { .. }), "{e}");
        let e = CronSchedule::parse("* * * * * *", "Mars/Olympus").expect_err("bad");
        assert_eq!(
            e,
            CronScheduleError::TimeZone {
                name: "Mars/Olympus".into()
            }
        );
        assert!("some".parse::<CatchUp>().is_err());
        assert_eq!("all".parse::<CatchUp>(), Ok(CatchUp::All));
    }

    #[test]
    fn five_fields_fire_at_second_zero() {
        let s = CronSchedule::parse("*/5 * * * *", "UTC").expect("valid");
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:01Z")),
            Some(utc("2026-01-01T00:05:00Z"))
        );
    }

    #[test]
    fn nothing_is_due_before_the_next_tick() {
        let s = every_2s();
        let last = utc("2026-01-01T00:00:02Z");
        assert_eq!(
            s.due(last, utc("2026-01-01T00:00:03.9Z"), CatchUp::Last),
            None
        );
        let due = s.due(last, utc("2026-01-01T00:00:04.1Z"), CatchUp::Last);
        assert_eq!(
            due,
            Some(Due {
                latest: utc("2026-01-01T00:00:04Z"),
                fire: vec![utc("2026-01-01T00:00:04Z")]
            })
        );
    }

    #[test]
    fn catch_up_policies_after_an_outage() {
        let s = every_2s();
        let last = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:00:11Z");
        let latest = utc("2026-01-01T00:00:10Z");
        let last_only = s.due(last, now, CatchUp::Last).expect("due");
        assert_eq!((last_only.latest, last_only.fire), (latest, vec![latest]));
        // 10 s is within the grace of 5 s of now (11 s); 8 s and earlier are not.
        let none = s.due(last, now, CatchUp::None).expect("due");
        assert_eq!(none.fire, vec![latest]);
        let late = s
            .due(last, utc("2026-01-01T00:00:17Z"), CatchUp::None)
            .expect("due");
        assert_eq!(late.fire, vec![utc("2026-01-01T00:00:16Z")]);
        let all = s.due(last, now, CatchUp::All).expect("due");
        assert_eq!(
            all.fire,
            (1..=5)
                .map(|i| last + TimeDelta::seconds(2 * i))
                .collect::<Vec<_>>()
        );
        let day = s
            .due(last, last + TimeDelta::days(1), CatchUp::All)
            .expect("due");
        assert_eq!(day.fire.len(), CATCH_UP_ALL_MAX);
        assert_eq!(day.fire.last(), Some(&(last + TimeDelta::days(1))));
    }

    #[test]
    fn none_skips_a_tick_older_than_the_grace() {
        let s = CronSchedule::parse("0 * * * * *", "UTC").expect("valid");
        let due = s
            .due(
                utc("2026-01-01T00:00:00Z"),
                utc("2026-01-01T00:01:30Z"),
                CatchUp::None,
            )
            .expect("due");
        assert_eq!(due.latest, utc("2026-01-01T00:01:00Z"));
        assert!(due.fire.is_empty());
    }

    #[test]
    fn time_zones_and_dst() {
        // 02:30 every day in Berlin. On 2026-03-29 clocks jump from 02:00 to 03:00: croner
        // fires a fixed-time job once, right after the gap (03:00 CEST = 01:00 UTC).
        let s = CronSchedule::parse("0 30 2 * * *", "Europe/Berlin").expect("valid");
        let before = utc("2026-03-28T12:00:00Z");
        assert_eq!(s.next_after(before), Some(utc("2026-03-29T01:00:00Z")));
        // On 2026-10-25 02:30 happens twice (CEST then CET): a fixed-time job fires once,
        // at the first.
        let fall = utc("2026-10-24T12:00:00Z");
        let first = s.next_after(fall).expect("tick");
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        let second = s.next_after(first).expect("tick");
        // An interval job fires in both passes of the repeated hour (02:00-03:00 twice): eight
        // quarter hours between 00:00 and 02:00 UTC, as real time passes them.
        let quarter = CronSchedule::parse("0 */15 * * * *", "Europe/Berlin").expect("valid");
        let mut t = utc("2026-10-24T23:59:59Z");
        let mut ticks = Vec::new();
        while let Some(n) = quarter
            .next_after(t)
            .filter(|n| *n < utc("2026-10-25T02:00:00Z"))
        {
            ticks.push(n);
            t = n;
        }
        assert_eq!(ticks.len(), 8, "{ticks:?}");
        // Nicknames work too.
        let hourly = CronSchedule::parse("@hourly", "UTC").expect("valid");
        assert_eq!(hourly.next_after(fall), Some(utc("2026-10-24T13:00:00Z")));
        assert_eq!(
            second,
            Tz::Europe__Berlin
                .with_ymd_and_hms(2026, 10, 26, 2, 30, 0)
                .single()
                .expect("unambiguous")
                .with_timezone(&Utc)
        );
    }
}
