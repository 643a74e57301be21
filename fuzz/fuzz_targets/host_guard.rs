//! The Host/Origin guard (DNS-rebinding protection) on request targets and headers a client
//! controls: the request target, any number of `Host` and `Origin` values.
//!
//! Input: `TARGET \0 HOST \0 ORIGIN \0 MORE_HOSTS...` (a missing piece sends no such header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::guard::Guard;
use mcp_sidecar_fuzz::parts;

fuzz_target!(|data: &[u8]| {
    let p = parts(data, 4);
    let Ok(uri) = http::Uri::try_from(p[0]) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for (name, value) in [(http::header::HOST, p[1]), (http::header::ORIGIN, p[2])] {
        if !value.is_empty()
            && let Ok(v) = http::HeaderValue::from_bytes(value)
        {
            headers.append(name, v);
        }
    }
    for extra in p[3].split(|&b| b == 0) {
        if let Ok(v) = http::HeaderValue::from_bytes(extra) {
            headers.append(http::header::HOST, v);
        }
    }
    for guard in [
        Guard::new(Vec::new(), None),
        Guard::new(vec!["mcp-sidecar".into(), "agent.internal".into()], None),
        Guard::new(vec!["*".into()], None),
    ] {
        let _ = guard.check_host_and_origin(&uri, &headers);
        let _ = guard.check(&uri, &headers);
    }
});
