//! The MCP handshake that proves the upstream works with the current credential.
//!
//! `/ready` must mean "a client connecting now will get tools", so the check speaks MCP through
//! the same [`Upstream`] path (token injection, refresh-and-retry) as proxied requests:
//!
//! - Modern servers (2026-07-28, stateless): `POST server/discover`.
//! - Older servers (2025-11-25 and before): `POST initialize` (reply as JSON or SSE, priming events
//!   skipped, id matched), `POST notifications/initialized` (202), `DELETE` of the session.
//! - HTTP+SSE servers (2024-11-05), tried when `initialize` gets a 4xx: `GET` for the `endpoint`
//!   event, `initialize` and `notifications/initialized` POSTed there, the reply read from the
//!   stream.
//!
//! Which one a server speaks is learnt from its answers (PROTOCOL.md, "Version detection": a 400
//! with -32022 means modern, other 4xx means legacy) and remembered, so a steady-state check costs
//! one round trip sequence, not a probe of both.

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::failure::Failure;
use crate::mcp::{
    INITIALIZED_NOTIFICATION, MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, MODERN_VERSION,
    initialize_request, request_id,
};
use crate::upstream::{Upstream, UpstreamError};

/// JSON-RPC error code of "unsupported protocol version" (2026-07-28).
const UNSUPPORTED_VERSION: i64 = -32022;
/// Replies larger than this are not a handshake answer; stop reading rather than buffer them.
const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Which handshake the upstream answered last time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Unknown,
    /// `server/discover`, no sessions.
    Stateless,
    /// `initialize` with an optional session.
    Initialize,
    /// The 2024-11-05 HTTP+SSE transport: `GET` for an `endpoint` event, POSTs there.
    SseTransport,
}

/// What a successful handshake learnt about the upstream (shown in `/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    pub protocol_version: String,
    pub server_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    pub mode: Mode,
}

/// Why the handshake failed, mapped one-to-one onto `/ready` reasons.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream answered, but not like a working MCP server.
    #[error("{0}")]
    Failed(String),
    /// A gateway in front of the server answered 502/503/504: the server itself is not reachable.
    #[error("{0}")]
    GatewayUnavailable(String),
    /// A 403 that is not about the credential, with what the upstream said (scrubbed): a policy
    /// or a guard in front of the server (another sidecar asking for its client token).
    #[error("{0}")]
    Refused(String),
}

impl HandshakeError {
    /// What this means to `/ready` and the metrics.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Upstream(e) => e.failure(),
            Self::Failed(_) => Failure::HandshakeFailed,
            Self::GatewayUnavailable(_) => Failure::GatewayUnavailable,
            Self::Refused(_) => Failure::UpstreamForbidden,
        }
    }
}

/// Runs the handshake. `mode` is what worked last time and is updated on success.
pub async fn run(upstream: &Upstream, mode: &mut Mode) -> Result<ServerInfo, HandshakeError> {
    match attempt(upstream, mode).await {
        // `/ready` says what the refusal said, as a client of the same request would hear it.
        Err(HandshakeError::Upstream(UpstreamError::Forbidden(refused))) => Err(
            HandshakeError::Refused(match crate::upstream::refused_answer(*refused).await {
                crate::upstream::RefusedAnswer::Message(message) => message,
                crate::upstream::RefusedAnswer::JsonRpc(error) => format!(
                    "the upstream refused the request (HTTP 403): {}",
                    crate::secret::excerpt(
                        error["error"]["message"].as_str().unwrap_or_default(),
                        200
                    )
                ),
            }),
        ),
        other => other,
    }
}

async fn attempt(upstream: &Upstream, mode: &mut Mode) -> Result<ServerInfo, HandshakeError> {
    let info = match *mode {
        Mode::SseTransport => match sse_transport(upstream).await? {
            Some(info) => info,
            None => after_initialize(upstream, initialize(upstream).await?, true).await?,
        },
        Mode::Initialize => after_initialize(upstream, initialize(upstream).await?, true).await?,
        Mode::Unknown | Mode::Stateless => match discover(upstream).await? {
            Some(info) => info,
            None => after_initialize(upstream, initialize(upstream).await?, false).await?,
        },
    };
    *mode = info.mode;
    Ok(info)
}

/// Decides what an `initialize` attempt means. `discover_next` says whether `server/discover`
/// is still worth trying (it is not when it was just tried).
async fn after_initialize(
    upstream: &Upstream,
    outcome: Legacy,
    discover_next: bool,
) -> Result<ServerInfo, HandshakeError> {
    match outcome {
        Legacy::Done(info) => Ok(info),
        Legacy::ServerIsModern if discover_next => discover(upstream).await?.ok_or_else(|| {
            HandshakeError::Failed(
                "initialize was refused as an unsupported version, and server/discover failed too"
                    .into(),
            )
        }),
        Legacy::ServerIsModern => Err(HandshakeError::Failed(
            "the server refused both server/discover and initialize as unsupported protocol versions".into(),
        )),
        // The spec's backwards-compatibility rule: a 4xx to POST initialize means "try the
        // HTTP+SSE transport".
        Legacy::NotStreamable(failure) => sse_transport(upstream)
            .await?
            .ok_or(HandshakeError::Failed(failure)),
    }
}

/// `Some(info)` when the server speaks the stateless protocol; `None` when it answered like an
/// older server (so the caller tries `initialize`).
async fn discover(upstream: &Upstream) -> Result<Option<ServerInfo>, HandshakeError> {
    let id = Value::String(request_id("discover"));
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "server/discover",
        "params": { "_meta": { "io.modelcontextprotocol/protocolVersion": MODERN_VERSION } },
    });
    let mut headers = post_headers();
    headers.insert(
        MCP_PROTOCOL_VERSION.clone(),
        HeaderValue::from_static(MODERN_VERSION),
    );
    headers.insert(
        MCP_METHOD.clone(),
        HeaderValue::from_static("server/discover"),
    );
    let response = upstream
        .send(Method::POST, None, headers, Bytes::from(body.to_string()))
        .await?;
    let status = response.status();
    check_gateway(status, "server/discover")?;
    if status.is_client_error() || status == StatusCode::METHOD_NOT_ALLOWED {
        // -32022 would mean "modern, but not this version": this sidecar knows only one modern
        // version, so that too is answered by falling back to initialize, which the server will
        // refuse again if it really is modern-only.
        return Ok(None);
    }
    if !status.is_success() {
        return Err(HandshakeError::Failed(format!(
            "server/discover answered HTTP {status}"
        )));
    }
    let reply = read_reply(response, &id, "server/discover").await?;
    if reply.get("error").is_some() {
        // Method not found and friends: an older server without server/discover.
        return Ok(None);
    }
    let result = reply.get("result").ok_or_else(|| {
        HandshakeError::Failed("server/discover reply has neither result nor error".into())
    })?;
    let (server_name, server_version) = server_info(result);
    Ok(Some(ServerInfo {
        protocol_version: result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(MODERN_VERSION)
            .to_string(),
        server_name: server_name.unwrap_or_else(|| "(unnamed)".into()),
        server_version,
        mode: Mode::Stateless,
    }))
}

enum Legacy {
    Done(ServerInfo),
    /// 400 with -32022: the server only speaks the stateless protocol.
    ServerIsModern,
    /// Another 4xx: perhaps an HTTP+SSE server. Carries the failure to report if not.
    NotStreamable(String),
}

async fn initialize(upstream: &Upstream) -> Result<Legacy, HandshakeError> {
    let id = Value::String(request_id("initialize"));
    let body = initialize_request(&id);
    let response = upstream
        .send(
            Method::POST,
            None,
            post_headers(),
            Bytes::from(body.to_string()),
        )
        .await?;
    let status = response.status();
    check_gateway(status, "initialize")?;
    if !status.is_success() {
        let reply = read_reply_lenient(response).await;
        if status == StatusCode::BAD_REQUEST && error_code(&reply) == Some(UNSUPPORTED_VERSION) {
            return Ok(Legacy::ServerIsModern);
        }
        let failure = format!(
            "initialize answered HTTP {status}{}",
            error_message(&reply)
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        if status.is_client_error() {
            return Ok(Legacy::NotStreamable(failure));
        }
        return Err(HandshakeError::Failed(failure));
    }
    let session = response.headers().get(&MCP_SESSION_ID).cloned();
    let reply = read_reply(response, &id, "initialize").await?;
    let (protocol_version, server_name, server_version) = initialize_result(&reply)?;

    let mut headers = post_headers();
    if let Some(session) = &session {
        headers.insert(MCP_SESSION_ID.clone(), session.clone());
    }
    if let Ok(version) = HeaderValue::try_from(protocol_version.as_str()) {
        headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
    }
    let response = upstream
        .send(
            Method::POST,
            None,
            headers.clone(),
            Bytes::from_static(INITIALIZED_NOTIFICATION),
        )
        .await?;
    let status = response.status();
    check_gateway(status, "notifications/initialized")?;
    if !status.is_success() {
        return Err(HandshakeError::Failed(format!(
            "notifications/initialized answered HTTP {status} (expected 202)"
        )));
    }
    drop(response);

    if session.is_some() {
        headers.remove(CONTENT_TYPE);
        let response = upstream
            .send(Method::DELETE, None, headers, Bytes::new())
            .await?;
        let status = response.status();
        // 405: the server does not let clients end sessions; 404: it already forgot this one.
        // Neither says anything about whether tools work, so neither fails the check.
        if !(status.is_success()
            || status == StatusCode::METHOD_NOT_ALLOWED
            || status == StatusCode::NOT_FOUND)
        {
            tracing::warn!(%status, "upstream answered DELETE of the readiness session unexpectedly");
        }
    }
    Ok(Legacy::Done(ServerInfo {
        protocol_version,
        server_name,
        server_version,
        mode: Mode::Initialize,
    }))
}

/// Checks an `initialize` reply: protocol version, server name and version.
fn initialize_result(reply: &Value) -> Result<(String, String, Option<String>), HandshakeError> {
    if let Some(message) = error_message(&Some(reply.clone())) {
        return Err(HandshakeError::Failed(format!(
            "initialize returned an error: {message}"
        )));
    }
    let result = reply
        .get("result")
        .ok_or_else(|| HandshakeError::Failed("initialize reply has no result".into()))?;
    let protocol_version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| HandshakeError::Failed("initialize result has no protocolVersion".into()))?
        .to_string();
    let (server_name, server_version) = server_info(result);
    let server_name = server_name
        .ok_or_else(|| HandshakeError::Failed("initialize result has no serverInfo.name".into()))?;
    Ok((protocol_version, server_name, server_version))
}

/// The 2024-11-05 HTTP+SSE handshake. `Ok(None)` when the upstream offers no SSE stream on GET,
/// i.e. it does not speak this transport either.
async fn sse_transport(upstream: &Upstream) -> Result<Option<ServerInfo>, HandshakeError> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let response = upstream
        .send(Method::GET, None, headers, Bytes::new())
        .await?;
    check_gateway(response.status(), "GET (HTTP+SSE transport)")?;
    if !response.status().is_success() || !crate::sse::is_event_stream(response.headers()) {
        return Ok(None);
    }
    let mut events = Events::new(response);
    let endpoint = loop {
        match events.next("GET (HTTP+SSE transport)").await? {
            Some(event) if event.event.as_deref() == Some("endpoint") => break event.data,
            Some(_) => continue,
            None => {
                return Err(HandshakeError::Failed(
                    "the SSE stream ended before its endpoint event".into(),
                ));
            }
        }
    };
    let endpoint = upstream.same_origin(endpoint.trim()).ok_or_else(|| {
        HandshakeError::Failed("the endpoint event names a URL on another origin".into())
    })?;

    let id = Value::String(request_id("initialize"));
    let body = initialize_request(&id);
    let response = upstream
        .send_to(
            Method::POST,
            endpoint.clone(),
            post_headers(),
            Bytes::from(body.to_string()),
        )
        .await?;
    check_gateway(response.status(), "initialize (HTTP+SSE transport)")?;
    if !response.status().is_success() {
        return Err(HandshakeError::Failed(format!(
            "initialize to the announced endpoint answered HTTP {}",
            response.status()
        )));
    }
    drop(response);
    let reply = loop {
        match events.next("initialize (HTTP+SSE transport)").await? {
            Some(event) => {
                if let Ok(message) = serde_json::from_str::<Value>(&event.data)
                    && message.get("id") == Some(&id)
                {
                    break message;
                }
            }
            None => {
                return Err(HandshakeError::Failed(
                    "the SSE stream ended before the initialize reply".into(),
                ));
            }
        }
    };
    let (protocol_version, server_name, server_version) = initialize_result(&reply)?;
    let response = upstream
        .send_to(
            Method::POST,
            endpoint,
            post_headers(),
            Bytes::from_static(INITIALIZED_NOTIFICATION),
        )
        .await?;
    if !response.status().is_success() {
        return Err(HandshakeError::Failed(format!(
            "notifications/initialized answered HTTP {}",
            response.status()
        )));
    }
    // Dropping `events` closes the stream, which ends the session on the server.
    Ok(Some(ServerInfo {
        protocol_version,
        server_name,
        server_version,
        mode: Mode::SseTransport,
    }))
}

/// Reads SSE events with data from a response, up to [`MAX_REPLY_BYTES`].
struct Events {
    stream: crate::upstream::Body,
    parser: crate::sse::Parser,
    queue: std::collections::VecDeque<crate::sse::Event>,
    total: usize,
}

impl Events {
    fn new(response: crate::upstream::Response) -> Self {
        Self {
            stream: response.bytes_stream(),
            parser: crate::sse::Parser::new(),
            queue: Default::default(),
            total: 0,
        }
    }

    /// The next event that carries data (priming events are skipped), or `None` at the end.
    async fn next(&mut self, step: &str) -> Result<Option<crate::sse::Event>, HandshakeError> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                if event.data.is_empty() {
                    continue;
                }
                return Ok(Some(event));
            }
            if self.total > MAX_REPLY_BYTES {
                return Ok(None);
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => {
                    self.total += chunk.len();
                    self.queue.extend(self.parser.push(&chunk));
                }
                Some(Err(e)) => {
                    return Err(HandshakeError::Upstream(UpstreamError::Unreachable(
                        format!("{step} reply stream broke: {e}"),
                    )));
                }
                None => return Ok(None),
            }
        }
    }
}

fn post_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers
}

fn check_gateway(status: StatusCode, step: &str) -> Result<(), HandshakeError> {
    if matches!(status.as_u16(), 502..=504) {
        return Err(HandshakeError::GatewayUnavailable(format!(
            "{step} answered HTTP {status}"
        )));
    }
    Ok(())
}

fn server_info(result: &Value) -> (Option<String>, Option<String>) {
    let info = result.get("serverInfo");
    let field = |name| {
        info.and_then(|i| i.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (field("name"), field("version"))
}

fn error_code(reply: &Option<Value>) -> Option<i64> {
    reply.as_ref()?.get("error")?.get("code")?.as_i64()
}

fn error_message(reply: &Option<Value>) -> Option<String> {
    let error = reply.as_ref()?.get("error")?;
    let code = error.get("code").and_then(Value::as_i64);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)");
    Some(match code {
        Some(code) => format!("{message} ({code})"),
        None => message.to_string(),
    })
}

/// Reads a successful reply: a JSON body, or an SSE stream in which the event answering `id`
/// arrives after any number of priming events, notifications and server requests.
pub(crate) async fn read_reply(
    response: crate::upstream::Response,
    id: &Value,
    step: &str,
) -> Result<Value, HandshakeError> {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if crate::sse::is_event_stream(response.headers()) {
        let mut events = Events::new(response);
        while let Some(event) = events.next(step).await? {
            if let Ok(message) = serde_json::from_str::<Value>(&event.data)
                && message.get("id") == Some(id)
            {
                return Ok(message);
            }
        }
        return Err(HandshakeError::Failed(format!(
            "{step} reply stream ended without an answer to the request"
        )));
    }
    if !content_type.starts_with("application/json") {
        let shown = if content_type.is_empty() {
            "no content type".to_string()
        } else {
            content_type
        };
        return Err(HandshakeError::Failed(format!(
            "{step} reply is {shown}, expected application/json or text/event-stream"
        )));
    }
    let body = read_limited(response).await.map_err(|e| {
        HandshakeError::Upstream(UpstreamError::Unreachable(format!(
            "{step} reply broke off: {e}"
        )))
    })?;
    let message: Value = serde_json::from_slice(&body)
        .map_err(|e| HandshakeError::Failed(format!("{step} reply is not valid JSON ({e})")))?;
    if !message.is_object() || message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(HandshakeError::Failed(format!(
            "{step} reply is not a JSON-RPC 2.0 message"
        )));
    }
    Ok(message)
}

/// Reads an error reply for its JSON-RPC error, if it has one; never fails.
async fn read_reply_lenient(response: crate::upstream::Response) -> Option<Value> {
    let body = read_limited(response).await.ok()?;
    serde_json::from_slice(&body).ok()
}

async fn read_limited(response: crate::upstream::Response) -> Result<Vec<u8>, String> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        body.extend_from_slice(&chunk);
        if body.len() > MAX_REPLY_BYTES {
            return Err(format!("reply larger than {MAX_REPLY_BYTES} bytes"));
        }
    }
    Ok(body)
}
