//! Wall-clock formatting for JSON endpoints and logs: RFC 3339 in UTC, second precision.

use std::time::SystemTime;

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}
