//! Wall-clock formatting for JSON endpoints and logs: RFC 3339 in UTC, second precision.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Times outside 1970..=9999 (from a server's or a file's nonsense) are clamped: humantime
/// panics on them, and a status page must not.
pub fn rfc3339(t: SystemTime) -> String {
    const MAX: Duration = Duration::from_secs(253_402_300_799);
    let clamped = match t.duration_since(UNIX_EPOCH) {
        Err(_) => UNIX_EPOCH,
        Ok(d) if d > MAX => UNIX_EPOCH + MAX,
        Ok(_) => t,
    };
    humantime::format_rfc3339_seconds(clamped).to_string()
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_times_do_not_panic() {
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59Z"
        );
    }
}
