//! The JSON-RPC error replies the sidecar itself produces.
//!
//! When the sidecar cannot deliver a request it answers with a JSON-RPC error that carries the
//! request's id, so an MCP client can match it to the call and show the cause, instead of an HTTP
//! error it might misread (a 401 makes Claude Code start its own OAuth; see PROTOCOL.md).

use serde_json::{Value, json};

/// Error codes in the implementation-defined server range (-32000 to -32099).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The upstream could not be reached.
    UpstreamUnreachable = -32001,
    /// The upstream refused the sidecar's credential, also after a fresh one.
    UpstreamAuthRejected = -32002,
    /// The sidecar has no credential to send (token missing, login pending).
    AuthRequired = -32003,
    /// The request was refused by the sidecar itself (Host, Origin, client token, size).
    Refused = -32004,
    /// The upstream answered, but not like a working MCP endpoint (a redirect the sidecar does
    /// not follow): `/ready` says `handshake_failed`.
    UpstreamFailed = -32005,
    /// The upstream refused the request (403 without a Bearer challenge) with a body that was
    /// not a JSON-RPC error; its text is in the message.
    UpstreamForbidden = -32006,
}

/// The `id` of a JSON-RPC request body, or `null` when the body has none (notifications,
/// batches, GET and DELETE).
pub fn request_id(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    // Parsed as a whole value: a derived struct would also accept a JSON array (a batch) and
    // take its first element as the id. Only called on error paths, so the cost is irrelevant.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => map.remove("id").unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The `method` of a JSON-RPC request body, for debug logs.
pub fn request_method(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => match map.remove("method") {
            Some(Value::String(method)) => Some(method),
            _ => None,
        },
        _ => None,
    }
}

/// A complete JSON-RPC error response body.
pub fn error_body(id: Value, code: Code, message: &str, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": code as i32,
            "message": message,
            "data": { "source": "mcp-sidecar", "reason": reason },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_ids_of_every_shape() {
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":7,"method":"x"}"#),
            json!(7)
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":"a-1","method":"x"}"#),
            json!("a-1")
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#),
            Value::Null
        );
        assert_eq!(request_id(br#"[{"id":1}]"#), Value::Null);
        assert_eq!(request_id(b"not json"), Value::Null);
        assert_eq!(request_id(b""), Value::Null);
    }

    #[test]
    fn error_body_shape() {
        let body = error_body(
            json!(3),
            Code::UpstreamUnreachable,
            "upstream unreachable",
            "upstream_unreachable",
        );
        assert_eq!(body["id"], 3);
        assert_eq!(body["error"]["code"], -32001);
        assert_eq!(body["error"]["data"]["reason"], "upstream_unreachable");
    }
}
