//! Durations in config files are strings with a unit: "250us", "100ms", "30s", "5m",
//! "1h", "5d". A bare number is refused: a unit-less timeout is a bug waiting to happen.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit (use us, ms, s, m, h or d)"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a whole number"))?;
    let micros_per_unit: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => {
            return Err(format!(
                "duration {text:?}: unknown unit {unit:?} (use us, ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(micros_per_unit)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Prints a duration in the largest unit that represents it exactly.
pub fn format(d: Duration) -> String {
    let us = d.as_micros() as u64;
    for (unit, per) in [
        ("d", 86_400_000_000u64),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if us >= per && us % per == 0 {
            return format!("{}{unit}", us / per);
        }
    }
    format!("{us}us")
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("5d"), Ok(Duration::from_secs(5 * 86400)));
        assert!(parse("30").is_err());
        assert!(parse("s").is_err());
        assert!(parse("3x").is_err());
        assert!(parse("99999999999999999d").is_err());
    }

    #[test]
    fn format_round_trips() {
        for text in ["250us", "100ms", "30s", "5m", "1h", "5d", "90s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
