//! Timestamps, durations and relative times as users write them.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 (`2023-11-14T22:13:20.123Z`, offsets allowed) → ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{s:?} is out of range"))
}

/// ms since the epoch → `2023-11-14T22:13:20.123Z` (or the number, if out of range).
pub fn format_rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&fmt).ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `"250ms"`, `"1s"`, `"10s"`, `"1m"`, `"15m"`, `"1h"`, `"1d"`, `"7d"`, `"1w"` → ms.
/// A positive integer count and a unit; no overflow.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; use ms, s, m, h, d or w (e.g. 10s)"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} must start with a number (e.g. 10s)"));
    }
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?}: {num} is too large"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; use ms, s, m, h, d or w"
            ))
        }
    };
    if n == 0 {
        return Err(format!("{s:?} must be positive"));
    }
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `"now"`, `"now-15m"`, `"now+1h"`, integer ms since the epoch, or RFC 3339.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(now_ms);
        }
        let (sign, d) = match rest.split_at(1) {
            ("-", d) => (-1, d),
            ("+", d) => (1, d),
            _ => {
                return Err(format!(
                    "{s:?}: expected now, now-<duration> or now+<duration>"
                ))
            }
        };
        let d = parse_duration_ms(d)?;
        return now_ms
            .checked_add(sign * d)
            .ok_or_else(|| format!("{s:?} is out of range"));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return s
            .parse()
            .map_err(|_| format!("{s:?} is not a valid ms timestamp"));
    }
    parse_rfc3339_ms(s)
        .map_err(|_| format!("{s:?} is not a time: use ms since the epoch, RFC 3339, or now-15m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("1w"), Ok(604_800_000));
        for bad in [
            "",
            "10",
            "s",
            "0s",
            "1y",
            "-1s",
            "1.5s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert!(parse_duration_ms("9999999999999999d")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn times() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("now-15m", now), Ok(now - 900_000));
        assert_eq!(parse_time("now+1h", now), Ok(now + 3_600_000));
        assert_eq!(parse_time("1700000000123", now), Ok(1_700_000_000_123));
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z", now),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.123+01:00", now),
            Ok(1_700_000_000_123)
        );
        for bad in ["yesterday", "now*2", "now-", "2023-13-01T00:00:00Z"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
