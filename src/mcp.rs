//! MCP wire constants shared by the proxy, the readiness handshake and session recovery.

use http::HeaderName;
use serde_json::{Value, json};

pub static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub static MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");

/// The notification a client sends after `initialize` succeeded.
pub const INITIALIZED_NOTIFICATION: &[u8] =
    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The stateless protocol, probed with `server/discover`.
pub const MODERN_VERSION: &str = "2026-07-28";
/// The newest protocol with `initialize` and sessions.
pub const LEGACY_VERSION: &str = "2025-11-25";

/// An `initialize` body, for probes that only want the server's reaction to an unauthenticated
/// request (authorization discovery).
pub fn initialize_body() -> String {
    initialize_request(&Value::String(request_id("initialize"))).to_string()
}

pub fn initialize_request(id: &Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "mcp-sidecar-readiness", "version": env!("CARGO_PKG_VERSION") },
        },
    })
}

/// A request id no client uses, so a reply can be matched to the sidecar's own request.
pub fn request_id(method: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "mcp-sidecar-{method}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
