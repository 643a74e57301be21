//! Replies of a token endpoint (and of any OAuth endpoint read with `endpoint::read_reply`): the
//! status, media type and body an authorization server sends, then `parse_token` on a JSON
//! success and `jwt_expiry` on the access token. An IdP is outside input like any other.
//!
//! Input: `STATUS(2 bytes) CONTENT_TYPE \0 BODY`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::token::endpoint::{self, Reply};
use mcp_sidecar_fuzz::{parts, runtime};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = 100 + u16::from_be_bytes([data[0], data[1]]) % 500;
    let p = parts(&data[2..], 2);
    let mut builder = http::Response::builder().status(status);
    if !p[0].is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, p[0]);
    }
    let Ok(response) = builder.body(reqwest::Body::from(p[1].to_vec())) else {
        return;
    };
    let response = reqwest::Response::from(response);
    let reply = runtime().block_on(endpoint::read_reply(response, "token endpoint"));
    match reply {
        Ok(Reply::Json(object)) => {
            if let Ok(issued) = endpoint::parse_token(&object, std::time::SystemTime::now()) {
                let _ = endpoint::jwt_expiry(issued.access_token.expose());
            }
        }
        Ok(Reply::Error(e)) => {
            let _ = e.is_fatal();
            let _ = e.classify("token endpoint").to_string();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(text) = std::str::from_utf8(p[1]) {
        let _ = endpoint::jwt_expiry(text);
    }
});
