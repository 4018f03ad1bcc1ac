//! Field rules shared by the handlers. Each returns a 422 problem naming the field.

use super::problem::Problem;

/// E.164: a `+`, a non-zero digit, at most 15 digits in all.
pub fn e164(field: &str, value: &str) -> Result<(), Problem> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let valid = (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    if valid { Ok(()) } else { Err(Problem::invalid(field, "must be an E.164 number such as +14155550123")) }
}

/// Ids chosen by the platform: 1–64 of `A-Z a-z 0-9 _ - .`, starting with a letter or digit.
pub fn id(field: &str, value: &str) -> Result<(), Problem> {
    let valid = (1..=64).contains(&value.len())
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Problem::invalid(field, "must be 1-64 characters of A-Z, a-z, 0-9, '_', '-' or '.', starting with a letter or digit"))
    }
}

/// Free text with a length bound and no control characters.
pub fn text(field: &str, value: &str, chars_max: usize) -> Result<(), Problem> {
    if value.is_empty() || value.chars().count() > chars_max || value.chars().any(char::is_control) {
        return Err(Problem::invalid(field, format!("must be 1-{chars_max} characters without control characters")));
    }
    Ok(())
}

/// An integer within bounds.
pub fn range<T: PartialOrd + std::fmt::Display + Copy>(field: &str, value: T, low: T, high: T) -> Result<(), Problem> {
    if value < low || value > high {
        return Err(Problem::invalid(field, format!("must be between {low} and {high}, got {value}")));
    }
    Ok(())
}

/// Names in config-like namespaces (flags, add-on types, pools, classes): 1–64 of `a-z 0-9 _`.
pub fn slug(field: &str, value: &str) -> Result<(), Problem> {
    let valid = (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid { Ok(()) } else { Err(Problem::invalid(field, "must be 1-64 characters of a-z, 0-9 and '_'")) }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp (`2026-12-01T00:00:00Z`, fractional seconds and offsets
/// allowed) to milliseconds since the epoch. Before 1970 is refused.
pub fn parse_rfc3339(field: &str, value: &str) -> Result<u64, Problem> {
    let bad = || Problem::invalid(field, "must be an RFC 3339 timestamp such as 2026-12-01T00:00:00Z");
    let b = value.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, Problem> {
        let text = value.get(range).ok_or_else(bad)?;
        if !text.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        text.parse().map_err(|_| bad())
    };
    let (year, month, day, hour, minute, second) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    let mut rest = &value[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && rest.as_bytes()[3] == b':' => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let (h, m) = (num(value.len() - 5..value.len() - 3)?, num(value.len() - 2..value.len())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            sign * (h * 60 + m)
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    let ms = u64::try_from(seconds * 1000 + millis).map_err(|_| Problem::invalid(field, "must not be before 1970"))?;
    // Shown back as RFC 3339 UTC, which has four-digit years: 9999-12-31T23:59:59-01:00 is not.
    if ms > RFC3339_MS_MAX {
        return Err(Problem::invalid(field, "must be before the year 10000 in UTC"));
    }
    Ok(ms)
}

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can show in UTC.
const RFC3339_MS_MAX: u64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds, from milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    Rfc3339(ms).to_string()
}

/// An instant shown as RFC 3339 UTC with milliseconds (`2026-11-18T11:06:40.123Z`), written
/// straight into the response: a call's view has two or three of them on every admission and
/// end, and formatting each into its own `String` was 2 % of the server's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl Rfc3339 {
    /// Year, month, day, hour, minute, second and millisecond.
    fn civil(self) -> [u64; 7] {
        let (year, month, day) = switchboard_actors::model::civil_date(self.0);
        let ms_of_day = self.0 % 86_400_000;
        let time = [ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000];
        [year as u64, u64::from(month), u64::from(day), time[0], time[1], time[2], time[3]]
    }

    /// The 24 bytes, for four-digit years (every instant the API parses or stamps).
    pub fn bytes(self) -> Option<[u8; 24]> {
        let [year, month, day, h, m, s, milli] = self.civil();
        if year > 9_999 {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00.000Z";
        for (at, width, mut value) in [(0, 4, year), (5, 2, month), (8, 2, day), (11, 2, h), (14, 2, m), (17, 2, s), (20, 3, milli)] {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(out)
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [year, month, day, h, m, s, milli] = self.civil();
        write!(f, "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.bytes() {
            Some(bytes) => serializer.serialize_str(std::str::from_utf8(&bytes).map_err(serde::ser::Error::custom)?),
            None => serializer.collect_str(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_accepts_real_numbers_only() {
        assert!(e164("f", "+14155550123").is_ok());
        assert!(e164("f", "+919876543210").is_ok());
        for bad in ["14155550123", "+0123", "+1", "+1234567890123456", "+1 415", ""] {
            assert!(e164("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_parses_what_it_formats_and_offsets() {
        for ms in [0, 951_782_400_000, 1_795_000_000_123] {
            assert_eq!(parse_rfc3339("f", &rfc3339(ms)).unwrap(), ms);
        }
        assert_eq!(parse_rfc3339("f", "2026-11-18T12:06:40.5+01:00").unwrap(), 1_795_000_000_500);
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-11-18 11:06:40Z",
            "2026-11-18T11:06:40",
            "1969-12-31T23:59:59Z",
            "2026-13-01T00:00:00Z",
            "2026-12-01T00:00:00+-1:00",
            "2026-12-01T00:00:00-0+:00",
            "9999-12-31T23:59:59-00:01",
        ] {
            assert!(parse_rfc3339("f", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rfc3339("f", "9999-12-31T23:59:59.999Z").unwrap(), RFC3339_MS_MAX);
        assert_eq!(rfc3339(RFC3339_MS_MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    /// The bytes written into a response are the formatted string, on every kind of day.
    #[test]
    fn rfc3339_serialises_as_it_formats() {
        for ms in [0, 951_782_400_000, 1_795_000_000_123, 253_402_300_799_999, 253_402_300_800_000, 4_102_444_800_001] {
            assert_eq!(serde_json::to_value(Rfc3339(ms)).unwrap(), serde_json::Value::String(rfc3339(ms)), "{ms}");
        }
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }
}
