//! Durations and signals as the command line writes them and the logs show
//! them. A leaf module: the parser, the readiness modes and the supervisor
//! all use it, and it uses none of them.

use std::time::Duration;

use nix::libc;
use nix::sys::signal::Signal;

/// A signal number. Not nix's `Signal`: that has no real-time signals,
/// which graceexec forwards.
pub type SigNo = i32;

/// Longer than anyone waits for a server, short enough that a deadline
/// computed from it can never overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `500ms`, `30s`, `2m`... at most 365 days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(format!("'{s}' is too long; at most 365 days")),
        Err(e) => Err(format!("'{s}': {e}; write e.g. 500ms, 30s or 2m")),
    }
}

pub fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// The real-time signals as this libc numbers them (glibc keeps the first
/// two for itself, so SIGRTMIN is 34, not 32).
pub fn rt_range() -> std::ops::RangeInclusive<SigNo> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

/// `SIGTERM`, `SIGRTMIN+3`, or the number for anything else.
pub fn signal_name(n: SigNo) -> String {
    if let Ok(s) = Signal::try_from(n) {
        return s.as_str().to_string();
    }
    let rt = rt_range();
    if rt.contains(&n) {
        return match n - rt.start() {
            0 => "SIGRTMIN".into(),
            k => format!("SIGRTMIN+{k}"),
        };
    }
    n.to_string()
}

/// TERM, SIGTERM, 15, RTMIN+2. KILL and STOP cannot be caught, so they
/// cannot ask a server to drain.
pub fn parse_signal(s: &str) -> Result<SigNo, String> {
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = rt_range();
    let parsed = if let Ok(n) = name.parse::<i32>() {
        (Signal::try_from(n).is_ok() || rt.contains(&n)).then_some(n)
    } else if let Some(rest) = name.strip_prefix("RTMIN") {
        let k = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('+').and_then(|k| k.parse().ok())
        };
        k.map(|k: i32| rt.start() + k).filter(|n| rt.contains(n))
    } else {
        format!("SIG{name}").parse::<Signal>().ok().map(|s| s as i32)
    };
    match parsed {
        Some(n) if n == libc::SIGKILL || n == libc::SIGSTOP => {
            Err(format!("{s} cannot be caught, so it cannot ask for a drain"))
        }
        Some(n) => Ok(n),
        None => Err(format!("'{s}' is not a signal name or number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_number_and_real_time() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(libc::SIGINT));
        assert_eq!(parse_signal("3"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("RTMIN+2"), Ok(libc::SIGRTMIN() + 2));
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert_eq!(signal_name(libc::SIGRTMIN()), "SIGRTMIN");
        assert_eq!(signal_name(libc::SIGHUP), "SIGHUP");
        for bad in ["KILL", "9", "STOP", "NOPE", "0", "99", "RTMIN+99", "RTMIN-1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("9999y").unwrap_err().contains("365 days"));
    }
}
