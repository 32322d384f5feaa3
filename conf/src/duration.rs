//! Durations as operators write them: `250ms`, `5s`, `1m`, `1h`, `1.5s`.

use std::time::Duration;

/// Parses a duration string. A bare number is rejected: the unit is never guessed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration {text:?} is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `d` as an operator would write it, in the largest unit that holds it whole, minutes
/// aside as the contract writes them: `5s`, `250ms`, `60s`, `1h`; `parse_duration`
/// reads it back to the same value.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        return "0s".into();
    }
    const UNITS: [(u128, &str); 4] = [
        (3_600_000_000, "h"),
        (1_000_000, "s"),
        (1_000, "ms"),
        (1, "us"),
    ];
    let (scale, unit) = UNITS
        .iter()
        .find(|(scale, _)| us / scale * scale == us)
        .copied()
        .unwrap_or((1, "us"));
    format!("{}{unit}", us / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn formats_in_the_largest_whole_unit() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(300), "300s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_millis(3_600_001), "3600001ms"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d);
        }
    }

    #[test]
    fn rejects() {
        for bad in ["5", "s", "5x", "", "1.2.3s", "-1s", "1e99h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
