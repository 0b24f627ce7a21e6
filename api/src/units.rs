//! The duration and size syntax of pie's flags (`--push-interval 30s`, `--size 50M`), shared by
//! the agent and the controller so both sides accept the same values. Errors are one line for clap.

use std::time::Duration;

/// Parses a positive duration: a number with `ms`, `s`, `m` or `h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 1s, 2m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?} has an unknown unit; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Accepts an fio size: a positive number with an optional K, M, G or T suffix (optionally
/// followed by `i`, `B` or `iB`), and returns it unchanged for fio.
pub fn parse_size(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a size like 50M or 1G");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err("must be greater than zero".into());
    }
    let mut rest = suffix.chars();
    match rest.next() {
        None => return Ok(s.to_owned()),
        Some(c) if "kKmMgGtT".contains(c) => {}
        Some(_) => return Err(bad()),
    }
    match rest.as_str() {
        "" | "i" | "B" | "b" | "iB" | "ib" => Ok(s.to_owned()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "0s", "s", "1.5s", "-1s", "1d", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        for good in ["50M", "1G", "4096", "100Mi", "2KiB", "1gb"] {
            assert_eq!(parse_size(good).as_deref(), Ok(good));
        }
        for bad in ["", "0", "0M", "M", "50X", "50MM", "-1M", "1.5G", "50M "] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
