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

/// RFC 3339 UTC with milliseconds, from milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let ms_of_day = ms % 86_400_000;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
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
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
