//! MCP wire constants shared by the proxy, the readiness handshake and session recovery.

use http::HeaderName;

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
