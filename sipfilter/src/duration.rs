//! Durations as operators type them (`30s`, `10m`, `4h`, `7d`, `2w`, `1h30m`, `300`), and
//! times as the CLI prints them.

use std::time::Duration;

/// The longest duration accepted: ten years (longer is what `--permanent` is for).
const MAX_SECS: u64 = 10 * 365 * 86_400;

/// Parses `30s`, `10m`, `4h`, `7d`, `2w`, combinations such as `1h30m`, and a bare number
/// of seconds. The error names the value (clap prints it with the flag).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = |why: &str| format!("'{s}' is not a duration ({why}); use e.g. 30s, 10m, 4h, 7d or 1h30m");
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text.starts_with('-') {
        return Err(bad("it must be positive"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut saw_unit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad(&format!("unknown unit '{c}'"))),
        };
        if digits.is_empty() {
            return Err(bad("a unit needs a number before it"));
        }
        let n: u64 = digits.parse().map_err(|_| bad("number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too long"))?;
        digits.clear();
        saw_unit = true;
    }
    if !digits.is_empty() {
        if saw_unit {
            return Err(bad("a number at the end needs a unit"));
        }
        total = digits.parse().map_err(|_| bad("number too large"))?;
    }
    if total == 0 {
        return Err(bad("it must be longer than zero"));
    }
    if total > MAX_SECS {
        return Err(bad("longer than ten years; use --permanent"));
    }
    Ok(Duration::from_secs(total))
}

/// A span of seconds the short way: `45s`, `12m`, `3h59m`, `6d23h`.
pub fn format_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// A span of nanoseconds, rounded down to the second.
pub fn format_ns(ns: u64) -> String {
    format_secs(ns / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        for (input, secs) in [
            ("30s", 30),
            ("10m", 600),
            ("4h", 14_400),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("1h30m", 5_400),
            ("1d12h", 129_600),
            ("300", 300),
            (" 5M ", 300),
        ] {
            assert_eq!(parse_duration(input), Ok(Duration::from_secs(secs)), "{input}");
        }
    }

    #[test]
    fn rejects_bad_durations_naming_them() {
        for bad in [
            "",
            "0",
            "0s",
            "5x",
            "h",
            "1h30",
            "-5m",
            "1.5h",
            "99999999999999999999s",
            "11000d",
            "4 h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_spans() {
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(45), "45s");
        assert_eq!(format_secs(600), "10m");
        assert_eq!(format_secs(605), "10m05s");
        assert_eq!(format_secs(3_600 * 3 + 59 * 60 + 10), "3h59m");
        assert_eq!(format_secs(7 * 86_400 - 1), "6d23h");
    }
}
