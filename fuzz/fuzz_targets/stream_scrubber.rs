//! The streamed-body scrubber (`scrubber::Scrubber`): however a hostile upstream cuts its
//! answer into chunks, no chunk boundary lets a secret (in any form the sidecar knows) through,
//! and a body without one comes out byte for byte as it went in.
//!
//! Input: the body, where each 0xFF byte stands for the secret and each 0xFE byte for its
//! form-urlencoded form, and each 0xFD byte marks a chunk boundary.
#![no_main]

use std::sync::Once;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::scrubber::Scrubber;

const SECRET: &str = "fuzz-canary+/=&-0123456789-abcdefghij";
const FORM: &str = "fuzz-canary%2B%2F%3D%26-0123456789-abcdefghij";

fuzz_target!(|data: &[u8]| {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| mcp_sidecar::secret::register(SECRET));
    let mut body = Vec::new();
    let mut chunks = vec![Vec::new()];
    let mut planted = false;
    for &byte in data {
        let piece: &[u8] = match byte {
            0xFF => SECRET.as_bytes(),
            0xFE => FORM.as_bytes(),
            0xFD => {
                chunks.push(Vec::new());
                continue;
            }
            _ => std::slice::from_ref(&byte),
        };
        planted |= byte >= 0xFE;
        body.extend_from_slice(piece);
        chunks.last_mut().expect("one chunk at least").extend_from_slice(piece);
    }
    // Boundaries inside secrets too: one in the second half of each chunk's first SECRET.
    let mut cut_chunks: Vec<Vec<u8>> = Vec::new();
    for chunk in chunks {
        if let Some(at) = find(&chunk, SECRET.as_bytes()) {
            let mid = at + SECRET.len() / 2 + chunk.len() % 7;
            let mid = mid.min(chunk.len());
            cut_chunks.push(chunk[..mid].to_vec());
            cut_chunks.push(chunk[mid..].to_vec());
        } else {
            cut_chunks.push(chunk);
        }
    }
    let mut scrubber = Scrubber::new().expect("a secret is registered");
    let mut out = Vec::new();
    for chunk in cut_chunks {
        out.extend_from_slice(&scrubber.push(Bytes::from(chunk)));
    }
    out.extend_from_slice(&scrubber.finish());
    assert!(find(&out, SECRET.as_bytes()).is_none(), "the secret got through");
    assert!(find(&out, FORM.as_bytes()).is_none(), "the encoded secret got through");
    // Every form begins with these bytes (the secret starts with characters no encoding
    // changes): a body without them holds no secret and must not change.
    if !planted && find(&body, b"fuzz-canary").is_none() {
        assert_eq!(out, body, "a body without a secret changed");
    }
});

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
