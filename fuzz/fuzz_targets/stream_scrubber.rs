//! The streamed-body scrubber (`scrubber::Scrubber`): however a hostile upstream cuts its
//! answer into chunks, no chunk boundary lets a secret (in any form the sidecar knows) through,
//! and a body without one comes out byte for byte as it went in.
//!
//! Input: the body, where each 0xFF byte stands for the secret, each 0xFE byte for its
//! form-urlencoded form, each 0xFC byte for its base64 text, and each 0xFD byte marks a chunk
//! boundary.
#![no_main]

use std::sync::Once;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::scrubber::Scrubber;
use mcp_sidecar::secret::scrub_bytes;

const SECRET: &str = "fuzz-canary+/=&-0123456789-abcdefghij";
const FORM: &str = "fuzz-canary%2B%2F%3D%26-0123456789-abcdefghij";
/// `SECRET` in base64: none of its characters is where the raw secret's are.
const BASE64: &str = "ZnV6ei1jYW5hcnkrLz0mLTAxMjM0NTY3ODktYWJjZGVmZ2hpag==";

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
            0xFC => BASE64.as_bytes(),
            0xFD => {
                chunks.push(Vec::new());
                continue;
            }
            _ => std::slice::from_ref(&byte),
        };
        planted |= matches!(byte, 0xFC | 0xFE | 0xFF);
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
    // The first 49 characters carry the secret's bits alone; the 50th mixes in what follows.
    assert!(find(&out, &BASE64.as_bytes()[..49]).is_none(), "the base64 secret got through");
    // The whole-text scrubber is the reference: nothing it would still redact is left in what
    // the stream let out, whatever the cuts.
    assert_eq!(scrub_bytes(&out), out, "a form of the secret got through");
    // Not every form starts with the secret's first bytes (base64 text shares none of them),
    // so "holds no secret" is what the reference finds, not a prefix search.
    if !planted && scrub_bytes(&body) == body {
        assert_eq!(out, body, "a body without a secret changed");
    }
});

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
