//! A small MCP server that demands a bearer token: the upstream of the quick start, the compose
//! `demo` profile and the interop tests. It ships in the binary so a newcomer can see the whole
//! path work (`/ready` turning green, a tool answering) with no remote server and no IdP.
//!
//! It speaks Streamable HTTP, protocol 2025-11-25, and is deliberately realistic where the sidecar
//! must cope: 401 with `WWW-Authenticate: Bearer` without the token, sessions (404 for a session it
//! does not know), 202 for notifications, 405 for GET, and a tool whose progress streams as SSE.
//! It does not require a session (curl without `initialize` works), like stateless SDK servers.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use crate::secret::{Secret, SecretSource};

pub const PROTOCOL_VERSION: &str = crate::mcp::LEGACY_VERSION;
const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

pub struct Demo {
    token: SecretSource,
    sessions: Mutex<HashSet<String>>,
}

impl Demo {
    pub fn new(token: SecretSource) -> Arc<Self> {
        Arc::new(Self {
            token,
            sessions: Mutex::new(HashSet::new()),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router(demo: Arc<Demo>) -> Router {
    Router::new()
        .route("/mcp", any(handle))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" }))) })
        .with_state(demo)
}

/// Serves the demo on `listener` until `shutdown` resolves.
pub async fn serve(
    demo: Arc<Demo>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(demo))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A random value for tokens and session ids. Demo-grade: seeded by the OS through `RandomState`.
pub fn random_hex() -> String {
    let a = RandomState::new().hash_one(std::time::SystemTime::now());
    let b = RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}

async fn handle(
    State(demo): State<Arc<Demo>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = check_token(&demo, &headers) {
        return refusal;
    }
    let session = headers
        .get(&crate::mcp::MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &session
        && !demo.sessions().contains(id)
    {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({
                "jsonrpc": "2.0", "id": null,
                "error": { "code": -32001, "message": "session not found" }
            })),
        )
            .into_response();
    }
    match method {
        axum::http::Method::POST => {}
        axum::http::Method::DELETE => {
            return match session {
                Some(id) => {
                    demo.sessions().remove(&id);
                    StatusCode::OK.into_response()
                }
                None => (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "DELETE needs an Mcp-Session-Id" })),
                )
                    .into_response(),
            };
        }
        // This server never sends unsolicited messages, so it offers no GET stream (allowed by
        // the spec); clients must accept the 405.
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "POST, DELETE")],
            )
                .into_response();
        }
    }

    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return rpc_error(Value::Null, -32700, "parse error", StatusCode::BAD_REQUEST);
    };
    let id = message.get("id").cloned();
    let rpc_method = message.get("method").and_then(Value::as_str).unwrap_or("");
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let Some(id) = id else {
        // Notifications (and responses to requests this server never sends) are acknowledged.
        return StatusCode::ACCEPTED.into_response();
    };

    match rpc_method {
        "initialize" => {
            let requested = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(PROTOCOL_VERSION);
            let version = if SUPPORTED_VERSIONS.contains(&requested) {
                requested
            } else {
                PROTOCOL_VERSION
            };
            let session = random_hex();
            demo.sessions().insert(session.clone());
            let mut response = rpc_result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": { "tools": { "listChanged": false } },
                    "serverInfo": { "name": "mcp-sidecar-demo", "version": env!("CARGO_PKG_VERSION") },
                    "instructions": "A demo server behind mcp-sidecar. Try the echo, add and countdown tools.",
                }),
            );
            if let Ok(value) = HeaderValue::try_from(session) {
                response
                    .headers_mut()
                    .insert(crate::mcp::MCP_SESSION_ID.clone(), value);
            }
            response
        }
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, json!({ "tools": tools() })),
        "tools/call" => call_tool(id, &params, &headers),
        _ => rpc_error(
            id,
            -32601,
            &format!("method not found: {rpc_method}"),
            StatusCode::OK,
        ),
    }
}

fn check_token(demo: &Demo, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::guard::bearer_credential);
    let expected: Option<Secret> = demo.token.read().ok();
    let ok = matches!((presented, &expected), (Some(p), Some(e)) if e.matches(p.as_bytes()));
    if ok {
        return None;
    }
    let challenge = if presented.is_some() {
        r#"Bearer realm="mcp-sidecar-demo", error="invalid_token", error_description="the bearer token is not valid""#
    } else {
        r#"Bearer realm="mcp-sidecar-demo""#
    };
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            Json(json!({ "error": "invalid_token" })),
        )
            .into_response(),
    )
}

fn tools() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns the text it is given.",
            "inputSchema": {
                "type": "object",
                "properties": { "text": { "type": "string" } },
                "required": ["text"]
            }
        },
        {
            "name": "add",
            "description": "Adds two numbers.",
            "inputSchema": {
                "type": "object",
                "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
                "required": ["a", "b"]
            }
        },
        {
            "name": "countdown",
            "description": "Counts down, sending a progress notification per step (streams as SSE when a progressToken is given).",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "steps": { "type": "integer", "minimum": 1, "maximum": 100 },
                    "interval_ms": { "type": "integer", "minimum": 0, "maximum": 10000 }
                }
            }
        }
    ])
}

fn call_tool(id: Value, params: &Value, headers: &HeaderMap) -> Response {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    match name {
        "echo" => match args.get("text").and_then(Value::as_str) {
            Some(text) => rpc_result(id, text_content(text)),
            None => rpc_error(
                id,
                -32602,
                "echo needs a string argument 'text'",
                StatusCode::OK,
            ),
        },
        "add" => match (
            args.get("a").and_then(Value::as_f64),
            args.get("b").and_then(Value::as_f64),
        ) {
            (Some(a), Some(b)) => rpc_result(id, text_content(&format!("{}", a + b))),
            _ => rpc_error(id, -32602, "add needs numbers 'a' and 'b'", StatusCode::OK),
        },
        "countdown" => {
            let steps = args
                .get("steps")
                .and_then(Value::as_u64)
                .unwrap_or(3)
                .clamp(1, 100);
            let interval = Duration::from_millis(
                args.get("interval_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(200)
                    .min(10_000),
            );
            let progress_token = params
                .get("_meta")
                .and_then(|m| m.get("progressToken"))
                .cloned();
            let accepts_sse = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/event-stream"));
            match progress_token {
                Some(token) if accepts_sse => countdown_stream(id, token, steps, interval),
                _ => countdown_json(id, steps, interval),
            }
        }
        _ => rpc_error(id, -32602, &format!("unknown tool: {name}"), StatusCode::OK),
    }
}

fn countdown_stream(id: Value, token: Value, steps: u64, interval: Duration) -> Response {
    let stream = futures_util::stream::unfold(0u64, move |step| {
        let id = id.clone();
        let token = token.clone();
        async move {
            if step > steps {
                return None;
            }
            let message = if step < steps {
                tokio::time::sleep(interval).await;
                json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {
                        "progressToken": token,
                        "progress": step + 1,
                        "total": steps,
                        "message": format!("{} left", steps - step - 1),
                    }
                })
            } else {
                json!({ "jsonrpc": "2.0", "id": id, "result": text_content("liftoff") })
            };
            let event = format!("event: message\nid: {step}\ndata: {message}\n\n");
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(event)),
                step + 1,
            ))
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Without a progress token there is nothing to stream: wait, then answer as JSON.
fn countdown_json(id: Value, steps: u64, interval: Duration) -> Response {
    let body = futures_util::stream::once(async move {
        tokio::time::sleep(interval * steps as u32).await;
        let reply = json!({ "jsonrpc": "2.0", "id": id, "result": text_content("liftoff") });
        Ok::<_, std::convert::Infallible>(Bytes::from(reply.to_string()))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

fn text_content(text: &str) -> Value {
    json!({ "content": [ { "type": "text", "text": text } ], "isError": false })
}

fn rpc_result(id: Value, result: Value) -> Response {
    Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

fn rpc_error(id: Value, code: i64, message: &str, status: StatusCode) -> Response {
    (
        status,
        Json(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// Where the demo upstream listens when started by `mcp-sidecar demo`.
pub const DEFAULT_DEMO_LISTEN: &str = "127.0.0.1:4520";

/// Parses a listen address for the demo's flags.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not IP:PORT, e.g. 127.0.0.1:4520"))
}
