//! The daemon's diagnostic log: one line per event on stderr, which systemd, a container runtime
//! or `start`'s log file collects. Never given a PIN or key material.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Writes one log line: an RFC 3339 UTC time, the level, the message.
pub fn write(level: &str, message: std::fmt::Arguments) {
    eprintln!("{} jwt-agent {level}: {message}", rfc3339(SystemTime::now()));
}

/// Logs an event in the daemon's life.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write("info", format_args!($($arg)*)) };
}

/// Logs something that went wrong but did not stop the daemon.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write("warn", format_args!($($arg)*)) };
}

/// A warning that may come in floods (connections turned away, refused, stalled): logged at
/// most once per interval, with a count of those left out.
#[derive(Debug)]
pub struct Throttled {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// A warning logged at most once per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Throttled { interval, state: Mutex::new((None, 0)) }
    }

    /// Logs `message`, unless one was logged less than an interval ago; then it is counted, and
    /// the count goes with the next one logged.
    pub fn warn(&self, message: std::fmt::Arguments) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, left_out) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            *left_out += 1;
            return;
        }
        match *left_out {
            0 => write("warn", message),
            n => write("warn", format_args!("{message} (and {n} more like it since the last such line)")),
        }
        *last = Some(now);
        *left_out = 0;
    }

    /// Logs how many were left out since the last line, if any (at shutdown).
    pub fn flush(&self, what: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 > 0 {
            write("warn", format_args!("{} more {what} since the last such line", state.1));
            state.1 = 0;
        }
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Reads an RFC 3339 time (`2026-12-03T12:00:00Z`, fractions and `+01:00` offsets too) as Unix
/// seconds; `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let number = |part: &str| part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse::<i64>().ok())?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut ymd = date.splitn(3, '-').map(number);
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(at) => time.split_at(at),
        None => return None,
    };
    let clock = clock.split('.').next()?;
    let mut hms = clock.splitn(3, ':').map(number);
    let (h, min, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let offset = match offset {
        "Z" | "z" => 0,
        _ => {
            let (hours, minutes) = offset[1..].split_once(':')?;
            let size = number(hours)? * 3600 + number(minutes)? * 60;
            if offset.starts_with('-') { -size } else { size }
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(y, m as u32, d as u32) * 86400 + h * 3600 + min * 60 + sec - offset;
    u64::try_from(secs).ok()
}

/// A proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_what_services_send() {
        for secs in [0, 951_782_400, 1_796_032_902, 4_102_444_800] {
            let text = rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(parse_rfc3339(&text), Some(secs), "{text}");
        }
        assert_eq!(parse_rfc3339("2026-11-30T10:01:42.123Z"), Some(1_796_032_902));
        assert_eq!(parse_rfc3339("2026-11-30T11:01:42+01:00"), Some(1_796_032_902));
        assert_eq!(parse_rfc3339("2026-11-30T09:31:42-00:30"), Some(1_796_032_902));
        for bad in ["", "2026-11-30", "2026-13-01T00:00:00Z", "2026-11-30T10:01:42", "x-11-30T10:01:42Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_032_902);
        assert_eq!(rfc3339(t), "2026-11-30T10:01:42Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
