//! Human-written sizes and durations: `64MiB`, `512KiB`, `30s`, `1500ms`.

use std::time::Duration;
use thiserror::Error;

/// A size or duration string that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    /// Not a size: names the input and the accepted forms.
    #[error("{0:?} is not a size: write a whole number with an optional unit B, KiB, MiB or GiB (e.g. 64MiB)")]
    BadSize(String),
    /// Not a duration: names the input and the accepted forms.
    #[error("{0:?} is not a duration: write a whole number with a unit ms, s, m or h (e.g. 30s, 1500ms)")]
    BadDuration(String),
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return None;
    }
    let n = s[..digits].parse().ok()?;
    Some((n, s[digits..].trim()))
}

/// Parses a byte size. Binary units only (KiB = 1024 B), so a limit means
/// exactly what wasm pages can hold; a bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::BadSize(s.to_owned());
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parses a duration with a mandatory unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let bad = || UnitError::BadDuration(s.to_owned());
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let secs_mult = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs_mult).map(Duration::from_secs).ok_or_else(bad)
}

/// Formats a byte count in the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// Formats a duration in the largest unit that divides it, as
/// [`parse_duration`] reads it (`30s`, `2m`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, mult) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= mult && ms.is_multiple_of(mult) {
            return format!("{}{unit}", ms / mult);
        }
    }
    format!("{ms}ms")
}

/// Unix milliseconds as an ISO 8601 / RFC 3339 UTC timestamp,
/// `2026-12-07T06:10:00.123Z`.
pub fn format_iso8601(ms: u64) -> Option<String> {
    // Four-digit years only (up to 9999-12-31): anything later is not a time.
    if ms >= 253_402_300_800_000 {
        return None;
    }
    let human = format_utc(ms);
    // `YYYY-MM-DD HH:MM:SSZ` -> `YYYY-MM-DDTHH:MM:SS.mmmZ`
    Some(format!("{}T{}.{:03}Z", &human[..10], &human[11..19], ms % 1000))
}

/// Unix milliseconds as a UTC date and time, `2026-12-07 06:10:00Z`.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_as_they_parse() {
        for text in ["30s", "2m", "1500ms", "1h", "0ms", "3d"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_input_named() {
        for s in ["", "MiB", "64MB", "-1", "1.5GiB", "99999999999999999999GiB"] {
            let err = parse_size(s).unwrap_err();
            assert!(err.to_string().contains(&format!("{s:?}")), "{err}");
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn unix_milliseconds_read_as_utc_dates() {
        assert_eq!(super::format_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::format_utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(super::format_utc(1_796_624_999_000), "2026-12-07 06:29:59Z");
    }
}
