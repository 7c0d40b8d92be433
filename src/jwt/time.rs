//! JWT times: seconds since 1970, token lifetimes as the CLI, the protocol and the config write
//! them (`90s`, `20m`, `1h`, `180d`), and the rule that keeps a caller's `iat` honest.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How far ahead of the agent's clock an `iat` may be (clock skew) where lifetimes are capped.
pub const MAX_IAT_AHEAD_SECS: u64 = 60;

/// Seconds since 1970, as JWT times are written.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token's lifetime: from 1 s up to ten years, written with one unit (`20m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ttl(u64);

impl Ttl {
    /// A lifetime of `secs` seconds, if that is one (1 s to ten years).
    pub fn from_secs(secs: u64) -> Option<Ttl> {
        (1..=MAX_SECS).contains(&secs).then_some(Ttl(secs))
    }

    /// A constant lifetime; `secs` must be from 1 s to ten years (for definitions, not input).
    pub(crate) const fn of(secs: u64) -> Ttl {
        Ttl(secs)
    }

    /// The lifetime in seconds.
    pub fn secs(self) -> u64 {
        self.0
    }
}

/// Ten years is far beyond what any JWT consumer accepts; larger values are typos.
const MAX_SECS: u64 = 10 * 366 * 86400;

impl FromStr for Ttl {
    type Err = String;

    fn from_str(text: &str) -> Result<Ttl, String> {
        parse(text).map(|d| Ttl(d.as_secs()))
    }
}

impl fmt::Display for Ttl {
    /// The largest unit that writes it exactly: 1200 s is `20m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ttl, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

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
        Some(secs) if secs <= MAX_SECS => Ok(Duration::from_secs(secs)),
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
    fn ttls_print_as_they_are_written() {
        for text in ["90s", "20m", "1h", "180d", "61s", "25h"] {
            assert_eq!(text.parse::<Ttl>().unwrap().to_string(), text);
        }
        assert_eq!(Ttl::from_secs(1200).unwrap().to_string(), "20m");
        assert_eq!(serde_json::to_string(&Ttl::from_secs(3600).unwrap()).unwrap(), "\"1h\"");
        assert!(serde_json::from_str::<Ttl>("\"0s\"").is_err());
        assert_eq!(Ttl::from_secs(0), None);
    }

    #[test]
    fn refuses_the_rest() {
        for text in ["", "s", "20", "-5m", "1.5h", "20 m", "0s", "5w", "99999999999999999999d", "1é"] {
            assert!(parse(text).is_err(), "accepted {text:?}");
        }
    }
}
