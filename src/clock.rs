//! Time as the service stores it (epoch milliseconds, UTC) and shows it (RFC 3339).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The last instant RFC 3339 can write (four-digit years): 9999-12-31T23:59:59.999Z.
const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

/// `2026-11-24T09:45:14.123+00:00`: the offset is written out rather than `Z` because
/// Python before 3.11 (`datetime.fromisoformat`, the seed's clients) cannot read `Z`. Times
/// outside 1970..=9999 are clamped: humantime's formatter fails (and `to_string` would panic)
/// from year 10000, which any file's mtime can reach.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, LAST_RFC3339_MS) as u64);
    let mut s = humantime::format_rfc3339_millis(t).to_string();
    if s.ends_with('Z') {
        s.pop();
        s.push_str("+00:00");
    }
    s
}

const DAY_MS: i64 = 86_400_000;

/// The UTC day and month `now` (epoch ms) is in, as `[start, end)` pairs (what budgets count).
pub fn utc_periods(now: i64) -> ((i64, i64), (i64, i64)) {
    let day_start = now - now.rem_euclid(DAY_MS);
    let date = time::OffsetDateTime::from_unix_timestamp(day_start / 1000).map(|t| t.date()).unwrap_or(time::Date::MIN);
    let first = |year: i32, month: time::Month| {
        time::Date::from_calendar_date(year, month, 1)
            .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
            .unwrap_or(day_start)
    };
    let month_start = first(date.year(), date.month());
    let next_year = if date.month() == time::Month::December { date.year() + 1 } else { date.year() };
    let month_end = first(next_year, date.month().next());
    ((day_start, day_start + DAY_MS), (month_start, month_end))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(super::rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123+00:00");
    }

    #[test]
    fn far_future_and_past_are_clamped_not_a_panic() {
        assert_eq!(super::rfc3339(300_000_000_000_000), "9999-12-31T23:59:59.999+00:00");
        assert_eq!(super::rfc3339(i64::MAX), "9999-12-31T23:59:59.999+00:00");
        assert_eq!(super::rfc3339(-5), "1970-01-01T00:00:00.000+00:00");
    }
}
