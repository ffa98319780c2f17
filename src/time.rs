//! Wall-clock helpers: Unix time and RFC 5322 dates, without a calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian.
/// Howard Hinnant's civil_from_days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 5322 date-time in UTC: "Fri, 04 Dec 2026 16:46:05 +0000".
pub fn rfc5322(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A duration as seconds with three decimals ("0.012"), in integer arithmetic: the
/// delivery log prints one per recipient, and float formatting costs more than the rest
/// of the line.
pub struct Millis3(pub std::time::Duration);

impl std::fmt::Display for Millis3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millis = (self.0.as_micros() + 500) / 1000;
        write!(f, "{}.{:03}", millis / 1000, millis % 1000)
    }
}

thread_local! {
    /// The last second formatted on this thread: every message received within a second
    /// carries the same date.
    static LAST_DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Appends the RFC 5322 date of `unix_secs`, formatted once per second per thread.
pub fn push_rfc5322(out: &mut Vec<u8>, unix_secs: u64) {
    LAST_DATE.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != unix_secs {
            *last = (unix_secs, rfc5322(unix_secs));
        }
        out.extend_from_slice(last.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn cached_dates_follow_the_second() {
        let mut out = Vec::new();
        for secs in [0, 0, 1_796_402_765, 1_796_402_765, 1_796_402_766, 0] {
            out.clear();
            super::push_rfc5322(&mut out, secs);
            assert_eq!(out, super::rfc5322(secs).as_bytes());
        }
    }

    #[test]
    fn seconds_with_three_decimals() {
        use std::time::Duration;
        for (d, text) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_micros(12_499), "0.012"),
            (Duration::from_micros(12_500), "0.013"),
            (Duration::from_millis(61_005), "61.005"),
            (Duration::from_micros(999_999), "1.000"),
        ] {
            assert_eq!(super::Millis3(d).to_string(), text);
            assert_eq!(format!("{:.3}", d.as_secs_f64()), text);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(super::rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            super::rfc5322(1_796_402_765),
            "Fri, 04 Dec 2026 16:46:05 +0000"
        );
        assert_eq!(
            super::rfc5322(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }
}
