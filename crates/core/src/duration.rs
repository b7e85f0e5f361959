//! Human durations for flags and CLI arguments: `250ms`, `30s`, `5m`, `2h`, `1d`, or
//! combinations such as `1m30s` or `1d12h`. A bare number is refused: the unit is where
//! mistakes hide.

use std::time::Duration;

/// The units, largest first: the order they must appear in.
const UNITS: [&str; 5] = ["d", "h", "m", "s", "ms"];

/// Parses a human duration, saying what is wrong with a bad one.
///
/// Accepted: one or more `<whole number><unit>` parts, units `d`, `h`, `m`, `s`, `ms`, each
/// at most once and largest first (`1h30m`, `2m500ms`), with no spaces between parts and
/// surrounding whitespace ignored. Refused, each with its reason: a bare number (`30`), a
/// repeated unit (`1h1h`, which is more likely a typo than a wish for `2h`), units out of
/// order (`30s1m`), fractions (`1.5h`), a sign (`-5s`: a duration cannot be negative), and
/// anything that overflows.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration: expected e.g. 500ms, 30s, 5m, 2h".to_owned());
    }
    if let Some(unsigned) = s.strip_prefix('-') {
        // Said only of what would otherwise be a duration; `--json` taken as a value (the
        // flag before it lacked one) is not a duration at all.
        if parse_duration(unsigned).is_ok() {
            return Err(format!("`{input}`: a duration cannot be negative"));
        }
        return Err(format!(
            "`{input}` is not a duration: expected e.g. 500ms, 30s, 5m, 2h"
        ));
    }
    let mut total = Duration::ZERO;
    // Index in UNITS of the last unit seen: each part must use a smaller one.
    let mut previous: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{input}` is not a duration: expected a number before `{rest}`"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{input}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let too_long = || format!("`{input}` is too long a duration to represent");
        let secs = |factor: u64| {
            n.checked_mul(factor)
                .map(Duration::from_secs)
                .ok_or_else(too_long)
        };
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => secs(60)?,
            "h" => secs(3_600)?,
            "d" => secs(86_400)?,
            "" => return Err(format!("`{input}` has no unit: write e.g. {n}s or {n}ms")),
            other => {
                return Err(format!(
                    "`{input}`: unknown unit `{other}` (use ms, s, m, h or d)"
                ));
            }
        };
        if let Some(rank) = UNITS.iter().position(|u| *u == unit) {
            match previous {
                Some(p) if p == rank => {
                    return Err(format!(
                        "`{input}` repeats the unit `{unit}`: write each unit once, e.g. 2h or 1h30m"
                    ));
                }
                Some(p) if p > rank => {
                    return Err(format!(
                        "`{input}`: units go from largest to smallest (d, h, m, s, ms), e.g. 1m30s"
                    ));
                }
                _ => previous = Some(rank),
            }
        }
        // Saturating here would turn a typo into an "almost forever" that overflows later,
        // wherever the duration is added to a clock.
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    Ok(total)
}

/// The longest age [`parse_age`] takes: 100 years of 365 days.
pub const MAX_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses an age reaching back from now (`--older-than 7d`, a retention): a duration, as
/// [`parse_duration`] reads it, of at most [`MAX_AGE`]. A longer one (`99999999d`) would put
/// the cut-off before any date the database or the calendar holds.
pub fn parse_age(input: &str) -> Result<Duration, String> {
    let age = parse_duration(input)?;
    if age > MAX_AGE {
        return Err(format!(
            "`{}` is too long: an age reaches back at most 36500d (100 years)",
            input.trim()
        ));
    }
    Ok(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms"),
            Ok(Duration::from_millis(93_784_005))
        );
    }

    #[test]
    fn refuses_a_repeated_unit_units_out_of_order_and_a_sign() {
        let repeated = parse_duration("1h1h").unwrap_err();
        assert!(repeated.contains("repeats the unit `h`"), "{repeated}");
        assert!(parse_duration("1m30s30s").is_err());
        let order = parse_duration("30s1m").unwrap_err();
        assert!(order.contains("largest to smallest"), "{order}");
        assert!(parse_duration("5ms1s").is_err());
        let negative = parse_duration("-5s").unwrap_err();
        assert_eq!(negative, "`-5s`: a duration cannot be negative");
        let flag = parse_duration("--json").unwrap_err();
        assert!(flag.contains("is not a duration"), "{flag}");
        assert!(parse_duration("+5s").is_err());
        assert!(parse_duration("1.5h").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn refuses_with_a_reason() {
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("s")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("").unwrap_err().contains("empty"));
        for huge in [
            "213503982334602d",
            "18446744073709551615s18446744073709551615ms",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too long"),
                "{huge}"
            );
        }
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn ages_reach_back_at_most_a_hundred_years() {
        assert_eq!(parse_age("36500d"), Ok(MAX_AGE));
        assert_eq!(parse_age(" 7d "), Ok(Duration::from_secs(7 * 86_400)));
        let err = parse_age("36500d1s").unwrap_err();
        assert!(err.contains("too long") && err.contains("36500d"), "{err}");
        assert!(parse_age("99999999d").unwrap_err().contains("too long"));
        assert!(parse_age("7").unwrap_err().contains("no unit"));
    }
}
