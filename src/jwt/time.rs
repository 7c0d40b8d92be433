//! Lifetimes as the CLI and the protocol write them: `90s`, `20m`, `1h`, `180d`.

use std::time::Duration;

/// Parses `N` followed by one unit: `s`, `m`, `h` or `d`. `N` is at least 1.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("{text:?} is not a duration: write a whole number and a unit, as 90s, 20m, 1h or 180d");
    let split = text.len().checked_sub(1).filter(|&i| text.is_char_boundary(i)).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("{text:?} is not a lifetime: it must be longer than zero")),
        // Ten years is far beyond what any JWT consumer accepts; larger values are typos.
        Some(secs) if secs <= 10 * 366 * 86400 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{text:?} is too long a lifetime: at most ten years")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("180d"), Ok(Duration::from_secs(180 * 86400)));
    }

    #[test]
    fn refuses_the_rest() {
        for text in ["", "s", "20", "-5m", "1.5h", "20 m", "0s", "5w", "99999999999999999999d", "1é"] {
            assert!(parse(text).is_err(), "accepted {text:?}");
        }
    }
}
