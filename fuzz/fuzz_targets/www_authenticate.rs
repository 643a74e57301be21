//! `WWW-Authenticate` challenges from the upstream (`challenge::parse`, `from_headers`), and the
//! operator-facing explanation built from them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::challenge::{self, BearerChallenge};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(c) = challenge::parse(text)
    {
        let _ = c.is_invalid_token();
        let _ = c.explain();
    }
    // Several header values, as a server may send several challenges.
    let mut headers = http::HeaderMap::new();
    for value in data.split(|&b| b == 0) {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.append(http::header::WWW_AUTHENTICATE, v);
        }
    }
    if let Some(c) = BearerChallenge::from_headers(&headers) {
        let _ = c.explain();
    }
});
