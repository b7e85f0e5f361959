//! Human durations for flags and CLI arguments: `250ms`, `30s`, `5m`, `2h`, `1d`, or
//! combinations such as `1m30s`. A bare number is refused: the unit is where mistakes hide.

use std::time::Duration;

/// Parses a human duration, saying what is wrong with a bad one.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration: expected e.g. 500ms, 30s, 5m, 2h".to_owned());
    }
    let mut total = Duration::ZERO;
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
        // Saturating here would turn a typo into an "almost forever" that overflows later,
        // wherever the duration is added to a clock.
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    Ok(total)
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
            "18446744073709551615s18446744073709551615s",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too long"),
                "{huge}"
            );
        }
        assert!(parse_duration("99999999999999999999s").is_err());
    }
}
