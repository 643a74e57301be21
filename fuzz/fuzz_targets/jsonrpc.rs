//! JSON-RPC id and method extraction from client request bodies (`jsonrpc::request_id`,
//! `request_method`, `session::is_initialize`), and the error reply built around the id: it must
//! always serialize, whatever id the client sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::jsonrpc::{self, Code};
use mcp_sidecar::session;

fuzz_target!(|data: &[u8]| {
    let id = jsonrpc::request_id(data);
    let method = jsonrpc::request_method(data);
    if session::is_initialize(data) {
        assert_eq!(method.as_deref(), Some("initialize"));
    }
    let body = jsonrpc::error_body(id, Code::Refused, "refused", "fuzz");
    let text = serde_json::to_vec(&body).expect("a serde_json::Value always serializes");
    let back: serde_json::Value = serde_json::from_slice(&text).expect("our own reply parses");
    assert_eq!(back["jsonrpc"], "2.0");
});
