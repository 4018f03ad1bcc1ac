//! A campaign's decisions: which contact to call next, and whether it may be called now (its
//! local calling window, DST-correct by the IANA time-zone database, and its daily cap).
//!
//! Pure: time comes in as `now_ms`; the zone rules are data compiled into the binary.

use crate::model::{Campaign, CampaignStatus, ContactStatus};

/// What to do with the next contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Call contact `index`; `day` is its local day (`yyyymmdd`) for the daily cap.
    Call { index: u32, day: u32 },
    /// Skip it: outside its calling window, or called enough today.
    Skip { index: u32, status: ContactStatus },
    /// Nothing to do now (not running, at its concurrency, or no contact left pending).
    Wait,
}

/// The local minute of the day and the local day (`yyyymmdd`) at `now_ms` in `timezone`
/// (`None`: UTC). `None` if the zone is unknown.
pub fn local_time(now_ms: u64, timezone: Option<&str>) -> Option<(u16, u32)> {
    let zone = match timezone {
        Some(name) => jiff::tz::TimeZone::get(name).ok()?,
        None => jiff::tz::TimeZone::UTC,
    };
    let instant = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
    let local = instant.to_zoned(zone);
    let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).ok()?;
    let day = u32::try_from(i32::from(local.year()) * 10_000 + i32::from(local.month()) * 100 + i32::from(local.day())).ok()?;
    Some((minute, day))
}

pub fn known_timezone(name: &str) -> bool {
    jiff::tz::TimeZone::get(name).is_ok()
}

/// `[start, end)`; a window whose end is before its start runs past midnight.
pub fn in_window(start_minute: u16, end_minute: u16, minute: u16) -> bool {
    if start_minute <= end_minute { (start_minute..end_minute).contains(&minute) } else { minute >= start_minute || minute < end_minute }
}

/// Contacts with a call in progress (admitted, dialling or dialled).
pub fn in_flight(campaign: &Campaign) -> u32 {
    campaign.contacts.iter().filter(|c| matches!(c.status, ContactStatus::Calling | ContactStatus::Dialled)).count() as u32
}

/// The campaign's next step at `now_ms`. `calls_today(phone, day)` says how often the tenant
/// called that lead on that (local) day.
pub fn next(campaign: &Campaign, now_ms: u64, calls_today: impl Fn(&str, u32) -> u32) -> Next {
    if campaign.status != CampaignStatus::Running || in_flight(campaign) >= campaign.record.concurrency {
        return Next::Wait;
    }
    let Some(index) = campaign.contacts.iter().position(|c| c.status == ContactStatus::Pending) else {
        return Next::Wait;
    };
    let contact = &campaign.record.contacts[index];
    let index = index as u32;
    let Some((minute, day)) = local_time(now_ms, contact.timezone.as_deref()) else {
        return Next::Skip { index, status: ContactStatus::SkippedOutsideWindow };
    };
    if !in_window(campaign.record.window_start_minute, campaign.record.window_end_minute, minute) {
        return Next::Skip { index, status: ContactStatus::SkippedOutsideWindow };
    }
    if calls_today(&contact.phone, day) >= campaign.record.max_calls_per_lead_per_day {
        return Next::Skip { index, status: ContactStatus::SkippedDailyCap };
    }
    Next::Call { index, day }
}

/// Whether the line's queue still holds the campaign: open (draft, running, paused), or
/// cancelled with calls still in progress (their ends settle their contacts).
pub fn held_by_line(campaign: &Campaign) -> bool {
    campaign.status.is_open() || in_flight(campaign) > 0
}

/// Every contact has reached a final status.
pub fn finished(campaign: &Campaign) -> bool {
    campaign.contacts.iter().all(|c| c.status.is_final())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_follows_daylight_saving() {
        // 2026-03-08 is the US spring-forward day: 14:30 UTC is 09:30 EST before, 10:30 EDT after.
        let before = 1_772_893_800_000; // 2026-03-07T14:30:00Z
        let after = 1_773_066_600_000; // 2026-03-09T14:30:00Z
        assert_eq!(local_time(before, Some("America/New_York")), Some((9 * 60 + 30, 20260307)));
        assert_eq!(local_time(after, Some("America/New_York")), Some((10 * 60 + 30, 20260309)));
        assert_eq!(local_time(before, None), Some((14 * 60 + 30, 20260307)));
        assert_eq!(local_time(before, Some("Asia/Kolkata")), Some((20 * 60, 20260307)));
        assert_eq!(local_time(before, Some("Mars/Olympus")), None);
    }

    #[test]
    fn windows_may_run_past_midnight() {
        assert!(in_window(9 * 60, 21 * 60, 9 * 60));
        assert!(!in_window(9 * 60, 21 * 60, 21 * 60));
        assert!(in_window(22 * 60, 6 * 60, 23 * 60));
        assert!(in_window(22 * 60, 6 * 60, 60));
        assert!(!in_window(22 * 60, 6 * 60, 12 * 60));
    }
}
