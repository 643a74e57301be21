//! A mock MCP upstream that can fail on command.
//!
//! It runs on its own thread and runtime so that `stop()` really closes every socket (tasks of a
//! shared runtime would keep pooled connections alive), which is what "the upstream went down"
//! looks like to the sidecar.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// How the mock answers the readiness handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 2025-11-25 style: initialize with a session, JSON replies; 400 to server/discover.
    Legacy,
    /// Like Legacy, but the initialize reply is SSE after a priming event and a notification.
    LegacySse,
    /// 2026-07-28 style: server/discover works; initialize gets 400 with -32022.
    Modern,
    /// initialize answers 200 with an HTML page.
    Garbage,
    /// 2024-11-05 HTTP+SSE: GET opens a stream whose `endpoint` event names `/messages`; POST to
    /// the SSE URL is 405; replies arrive on the stream.
    SseTransport,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub query: Option<String>,
    /// When the request arrived.
    pub at: std::time::SystemTime,
}

impl Recorded {
    pub fn authorization(&self) -> Option<&str> {
        self.headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
    }

    pub fn rpc_method(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("method")?
            .as_str()
            .map(str::to_string)
    }
}

static NEXT_SESSION: AtomicUsize = AtomicUsize::new(1);

pub struct MockState {
    /// The bearer token the mock accepts.
    pub token: Mutex<String>,
    /// Answer 401 to this many requests regardless of the token.
    pub reject_next: AtomicUsize,
    pub mode: Mutex<Mode>,
    pub requests: Mutex<Vec<Recorded>>,
    sessions: Mutex<HashSet<String>>,
    /// Released by the test between the two events of the `gated` tool.
    pub gate: Notify,
    /// Set when the sidecar dropped the `hang` tool's stream (the client went away).
    pub hang_dropped: AtomicBool,
    pub hang_dropped_notify: Notify,
    /// Answer unknown sessions like the TypeScript SDK's examples (400) instead of 404.
    pub sdk_style_unknown_session: AtomicBool,
    /// Quote the presented token in 401 error descriptions, as careless servers do.
    pub echo_token: AtomicBool,
    /// Open HTTP+SSE transport streams by session id.
    sse_streams: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<String>>>,
    /// When set, 401s carry `resource_metadata` and the mock serves RFC 9728 metadata naming
    /// this authorization server.
    pub authorization_server: Mutex<Option<String>>,
    /// A scope the token must name (the mock IdP writes granted scopes into its tokens); a
    /// token without it gets 403 `insufficient_scope`.
    pub required_scope: Mutex<Option<String>>,
    /// The `resource` the protected-resource metadata names instead of this server's URL.
    pub prm_resource: Mutex<Option<String>>,
    /// Tokens accepted besides `token` (earlier tokens that have not expired, as real servers
    /// accept them).
    pub also_accepted: Mutex<HashSet<String>>,
    /// `x-force-401` values already answered with a 401: each value forces exactly one refresh.
    forced: Mutex<HashSet<String>>,
    /// Serve GET streams (server-to-client messages) to sessions instead of answering 405.
    pub get_streams: AtomicBool,
    /// Raw bytes for every open GET stream ([`MockState::push`]).
    pushed: tokio::sync::broadcast::Sender<Bytes>,
    /// GET streams claim `Content-Encoding: gzip`.
    pub coded_get_streams: AtomicBool,
    /// When set, every request of the test's client (not the readiness handshake) is refused
    /// with this 403, as a server denying a tool or applying a policy does.
    pub forbid: Mutex<Option<Forbid>>,
    /// Refuse the readiness handshake's requests too.
    pub forbid_everyone: AtomicBool,
    /// Answer `notifications/initialized` this long after it arrives, as a server that sets up
    /// the session on it does.
    pub initialized_delay: Mutex<Option<std::time::Duration>>,
    /// Answer `tools/list` as SSE (a progress notification, then the list) instead of JSON.
    pub tools_list_sse: AtomicBool,
    /// HTTP+SSE mode: answer the message endpoint 404, as a server that forgot the session.
    pub legacy_forget: AtomicBool,
    /// HTTP+SSE mode: leave every `initialize` unanswered.
    pub legacy_silent_initialize: AtomicBool,
}

/// A 403 the mock answers: an optional `WWW-Authenticate`, a content type and a body.
#[derive(Debug, Clone)]
pub struct Forbid {
    pub challenge: Option<String>,
    pub content_type: &'static str,
    pub body: String,
}

impl MockState {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests sent by the test's client (which marks them with `x-test`), as opposed to the
    /// sidecar's own readiness handshakes.
    pub fn client_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.headers.contains_key("x-test"))
            .collect()
    }

    fn record(&self, method: &Method, uri: &axum::http::Uri, headers: &HeaderMap, body: &Bytes) {
        self.requests.lock().unwrap().push(Recorded {
            method: method.clone(),
            headers: headers.clone(),
            body: body.clone(),
            query: uri.query().map(str::to_string),
            at: std::time::SystemTime::now(),
        });
    }

    /// The 401 for a request without the accepted token (quoting it back when `echo_token`).
    fn refuse_token(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = format!("Bearer {}", self.token.lock().unwrap());
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if presented == Some(expected.as_str()) {
            return None;
        }
        if let Some(token) = presented.and_then(|p| p.strip_prefix("Bearer "))
            && self.also_accepted.lock().unwrap().contains(token)
        {
            return None;
        }
        if self.echo_token.load(Ordering::SeqCst) {
            let description = format!(
                r#"Bearer error="invalid_token", error_description="the key {} is not valid""#,
                presented.unwrap_or("").trim_start_matches("Bearer ")
            );
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, description)],
                    "unauthorized",
                )
                    .into_response(),
            );
        }
        Some(unauthorized())
    }

    /// Forgets every session, as a restarted server would.
    pub fn forget_sessions(&self) {
        self.sessions.lock().unwrap().clear();
    }

    /// Writes `raw` (any bytes, whole events or not) into every open GET stream.
    pub fn push(&self, raw: &str) {
        let _ = self.pushed.send(Bytes::from(raw.to_string()));
    }

    /// How many GET streams are open.
    pub fn open_get_streams(&self) -> usize {
        self.pushed.receiver_count()
    }

    pub fn set_token(&self, token: &str) {
        *self.token.lock().unwrap() = token.to_string();
    }
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockUpstream {
    pub fn start(token: &str, mode: Mode) -> Self {
        Self::start_on(0, token, mode)
    }

    /// Starts on a given port (0 for any), for tests where the upstream comes up late.
    pub fn start_on(port: u16, token: &str, mode: Mode) -> Self {
        Self::start_with(port, token, mode, false, false)
    }

    /// A Legacy-mode upstream that serves GET streams from its first request on (`port` 0 for
    /// any; the port of a stopped one to bring it back).
    pub fn start_streaming_on(port: u16, token: &str) -> Self {
        Self::start_with(port, token, Mode::Legacy, true, false)
    }

    /// Like [`MockUpstream::start_streaming_on`], with GET streams sent `Content-Encoding: gzip`
    /// (an upstream that ignores the sidecar's `Accept-Encoding: identity`).
    pub fn start_coded_streaming_on(port: u16, token: &str) -> Self {
        Self::start_with(port, token, Mode::Legacy, true, true)
    }

    fn start_with(port: u16, token: &str, mode: Mode, get_streams: bool, coded: bool) -> Self {
        let state = Arc::new(MockState {
            token: Mutex::new(token.to_string()),
            reject_next: AtomicUsize::new(0),
            mode: Mutex::new(mode),
            requests: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashSet::new()),
            gate: Notify::new(),
            hang_dropped: AtomicBool::new(false),
            hang_dropped_notify: Notify::new(),
            sse_streams: Mutex::new(HashMap::new()),
            sdk_style_unknown_session: AtomicBool::new(false),
            echo_token: AtomicBool::new(false),
            authorization_server: Mutex::new(None),
            required_scope: Mutex::new(None),
            prm_resource: Mutex::new(None),
            forced: Mutex::new(HashSet::new()),
            also_accepted: Mutex::new(HashSet::new()),
            get_streams: AtomicBool::new(get_streams),
            pushed: tokio::sync::broadcast::channel(64).0,
            coded_get_streams: AtomicBool::new(coded),
            forbid: Mutex::new(None),
            forbid_everyone: AtomicBool::new(false),
            initialized_delay: Mutex::new(None),
            tools_list_sse: AtomicBool::new(false),
            legacy_forget: AtomicBool::new(false),
            legacy_silent_initialize: AtomicBool::new(false),
        });
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind mock upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new()
                    .route("/mcp", any(handle))
                    .route("/messages", any(legacy_message))
                    .route(
                        "/.well-known/oauth-protected-resource/mcp",
                        any(protected_resource_metadata),
                    )
                    // A trailing-slash style redirect on the same origin, and a move elsewhere.
                    .route(
                        "/old",
                        any(|| async {
                            (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/mcp")])
                        }),
                    )
                    .route(
                        "/moved",
                        any(|| async {
                            (
                                StatusCode::MOVED_PERMANENTLY,
                                [(
                                    header::LOCATION,
                                    "https://new.example.com/mcp?key=canary-location",
                                )],
                            )
                        }),
                    )
                    .with_state(app_state);
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here cancels every connection task and closes its socket.
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Stops the server and closes every connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(
    State(state): State<Arc<MockState>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record(&method, &uri, &headers, &body);
    if state
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return unauthorized();
    }
    if let Some(force) = headers.get("x-force-401").and_then(|v| v.to_str().ok())
        && state.forced.lock().unwrap().insert(force.to_string())
    {
        return unauthorized();
    }
    if let Some(refusal) = state.refuse_token(&headers) {
        if state.authorization_server.lock().unwrap().is_some() {
            let metadata = format!(
                r#"Bearer resource_metadata="http://{}/.well-known/oauth-protected-resource/mcp", scope="mcp:tools""#,
                headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("127.0.0.1")
            );
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, metadata)],
                "unauthorized",
            )
                .into_response();
        }
        return refusal;
    }
    if let Some(scope) = state.required_scope.lock().unwrap().clone() {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !token.split(['-', '+']).any(|part| part == scope) {
            return (
                StatusCode::FORBIDDEN,
                [(
                    header::WWW_AUTHENTICATE,
                    format!(r#"Bearer error="insufficient_scope", scope="{scope}""#),
                )],
                "insufficient scope",
            )
                .into_response();
        }
    }
    if (headers.contains_key("x-test") || state.forbid_everyone.load(Ordering::SeqCst))
        && let Some(forbid) = state.forbid.lock().unwrap().clone()
    {
        let mut response = (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, forbid.content_type)],
            forbid.body,
        )
            .into_response();
        if let Some(challenge) = forbid.challenge.and_then(|c| c.parse().ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        return response;
    }
    let session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
    if let Some(session) = session
        && !state.sessions.lock().unwrap().contains(session)
    {
        if state.sdk_style_unknown_session.load(Ordering::SeqCst) {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null})),
            )
                .into_response();
        }
        return (StatusCode::NOT_FOUND, "session not found").into_response();
    }
    // Like server-everything, name the session on every response that belongs to one.
    if let Some(session) = session.map(str::to_string) {
        let mut response = Box::pin(respond(state.clone(), method, headers.clone(), body)).await;
        if let Ok(value) = session.parse() {
            response.headers_mut().insert("mcp-session-id", value);
        }
        return response;
    }
    respond(state, method, headers, body).await
}

async fn respond(
    state: Arc<MockState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = *state.mode.lock().unwrap();
    if mode == Mode::SseTransport {
        return match method {
            Method::GET => legacy_stream(&state),
            _ => (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]).into_response(),
        };
    }
    match method {
        Method::GET if state.get_streams.load(Ordering::SeqCst) => {
            return get_stream(&state, &headers);
        }
        Method::GET => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "POST, DELETE")],
            )
                .into_response();
        }
        Method::DELETE => {
            if let Some(s) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
                state.sessions.lock().unwrap().remove(s);
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        _ => {}
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad json").into_response(),
    };
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    match message.get("method").and_then(Value::as_str).unwrap_or("") {
        "server/discover" => match mode {
            Mode::Modern => json_reply(json!({
                "jsonrpc": "2.0", "id": id,
                "result": { "supportedVersions": ["2026-07-28"], "serverInfo": { "name": "mock-modern", "version": "9.9" }, "capabilities": {} }
            })),
            _ => (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: No valid session ID provided"}})),
            )
                .into_response(),
        },
        "initialize" => match mode {
            Mode::Modern => (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2026-07-28"]}}})),
            )
                .into_response(),
            Mode::Garbage => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Welcome to nginx!</body></html>",
            )
                .into_response(),
            Mode::SseTransport => unreachable!("HTTP+SSE mode answers before this match"),
            Mode::Legacy | Mode::LegacySse => {
                // Unique across mocks too: a restarted mock must not hand out the dead one's ids.
                let session = format!("session-{}", NEXT_SESSION.fetch_add(1, Ordering::SeqCst));
                // Some servers name the session on every response; this one does on initialize.
                state.sessions.lock().unwrap().insert(session.clone());
                let result = json!({
                    "jsonrpc": "2.0", "id": id,
                    "result": { "protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": { "name": "mock-legacy", "version": "1.0" } }
                });
                let mut response = if mode == Mode::LegacySse {
                    let events = format!(
                        "id: 0\nretry: 500\ndata:\n\nevent: message\ndata: {}\n\nevent: message\nid: 1\ndata: {}\n\n",
                        json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}}),
                        result
                    );
                    (StatusCode::OK, [(header::CONTENT_TYPE, "text/event-stream")], events).into_response()
                } else {
                    json_reply(result)
                };
                response
                    .headers_mut()
                    .insert("mcp-session-id", session.parse().unwrap());
                response
            }
        },
        "notifications/initialized" => {
            let delay = *state.initialized_delay.lock().unwrap();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            StatusCode::ACCEPTED.into_response()
        }
        "tools/call" => {
            let name = message["params"]["name"].as_str().unwrap_or("");
            match name {
                "echo" => json_reply(json!({
                    "jsonrpc": "2.0", "id": id,
                    "result": { "content": [{ "type": "text", "text": message["params"]["arguments"]["text"] }] }
                })),
                "gated" => gated(state.clone(), id),
                "hang" => hang(state.clone()),
                // Accepts the call and never answers, not even a status line.
                "silent" => std::future::pending::<Response>().await,
                "ticking" => ticking(id),
                "bad_request" => (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"invalid arguments"}})),
                )
                    .into_response(),
                _ => json_reply(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"unknown tool"}})),
            }
        }
        "tools/list" => tools_list(&state, id, &message),
        _ => json_reply(json!({"jsonrpc":"2.0","id":id,"result":{}})),
    }
}

/// The tools the mock lists, in two pages (`nextCursor` "page-2").
pub const TOOL_PAGES: [&[&str]; 2] = [
    &["echo", "read_file", "delete_repo", "admin/reset"],
    &["read_dir", "deploy_prod", "gated"],
];

/// `tools/list`: each page as JSON, or as SSE after a progress notification when
/// `tools_list_sse` is set. Its bytes are fixed, so a test can compare what passed whole.
fn tools_list(state: &MockState, id: Value, message: &Value) -> Response {
    let second = message.pointer("/params/cursor").and_then(Value::as_str) == Some("page-2");
    let names = TOOL_PAGES[usize::from(second)];
    let tools: Vec<Value> = names
        .iter()
        .map(|name| json!({"name": name, "description": format!("the {name} tool"), "inputSchema": {"type": "object"}}))
        .collect();
    let mut result = json!({"tools": tools});
    if !second {
        result["nextCursor"] = json!("page-2");
    }
    let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
    if state.tools_list_sse.load(Ordering::SeqCst) {
        let events = format!(
            ": warming up\n\nevent: message\nid: 7\ndata: {}\n\nevent: message\r\nid: 8\r\ndata: {}\r\n\r\n",
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}),
            reply
        );
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream")],
            events,
        )
            .into_response();
    }
    json_reply(reply)
}

async fn protected_resource_metadata(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
) -> Response {
    let Some(server) = state.authorization_server.lock().unwrap().clone() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let resource = state
        .prm_resource
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("http://{host}/mcp"));
    json_reply(json!({
        "resource": resource,
        "authorization_servers": [server],
        "scopes_supported": ["mcp:tools"],
    }))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Bearer error="invalid_token", error_description="token expired""#,
        )],
        "unauthorized",
    )
        .into_response()
}

fn json_reply(value: Value) -> Response {
    axum::Json(value).into_response()
}

fn sse(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

/// Sends one event, waits for the test to open the gate, then sends the result.
fn gated(state: Arc<MockState>, id: Value) -> Response {
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let state = state.clone();
        let id = id.clone();
        async move {
            let event = match step {
                0 => "event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n".to_string(),
                1 => {
                    state.gate.notified().await;
                    format!("event: message\nid: 2\ndata: {}\n\n", json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}}))
                }
                _ => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(event)),
                step + 1,
            ))
        }
    });
    sse(Body::from_stream(stream))
}

struct DropFlag(Arc<MockState>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.hang_dropped.store(true, Ordering::SeqCst);
        self.0.hang_dropped_notify.notify_waiters();
    }
}

/// Sends one event and then nothing, forever; records when the stream is dropped.
fn hang(state: Arc<MockState>) -> Response {
    let flag = DropFlag(state);
    let stream = futures_util::stream::unfold((0u8, flag), |(step, flag)| async move {
        if step == 0 {
            let event = Bytes::from_static(b"event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n");
            Some((Ok::<_, std::convert::Infallible>(event), (1, flag)))
        } else {
            std::future::pending::<()>().await;
            None
        }
    });
    sse(Body::from_stream(stream))
}

/// Fifteen `:` comment lines 100 ms apart, then the result: an upstream that keeps a slow call
/// alive with comments only.
fn ticking(id: Value) -> Response {
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let id = id.clone();
        async move {
            let chunk = match step {
                0..15 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    ": tick\n\n".to_string()
                }
                15 => format!(
                    "event: message\ndata: {}\n\n",
                    json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}})
                ),
                _ => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                step + 1,
            ))
        }
    });
    sse(Body::from_stream(stream))
}

/// A session's GET stream: a priming event whose id names the session, then whatever the test
/// pushes.
fn get_stream(state: &Arc<MockState>, headers: &HeaderMap) -> Response {
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let rx = state.pushed.subscribe();
    let first = format!("id: {session}-0\ndata:\n\n");
    let pushed = futures_util::stream::unfold(rx, |mut rx| async move {
        let raw = rx.recv().await.ok()?;
        Some((raw, rx))
    });
    let stream = futures_util::stream::once(async move { Bytes::from(first) })
        .chain(pushed)
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = sse(Body::from_stream(stream));
    if state.coded_get_streams.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
    }
    response
}

impl MockState {
    /// HTTP+SSE mode: how many streams a client still holds open.
    pub fn open_legacy_streams(&self) -> usize {
        self.sse_streams
            .lock()
            .unwrap()
            .values()
            .filter(|tx| !tx.is_closed())
            .count()
    }
}

/// GET on the SSE URL of an HTTP+SSE server: announce the message endpoint, then relay replies.
fn legacy_stream(state: &Arc<MockState>) -> Response {
    let session = format!("sse-{}", state.requests.lock().unwrap().len());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    state
        .sse_streams
        .lock()
        .unwrap()
        .insert(session.clone(), tx);
    let first = format!("event: endpoint\ndata: /messages?sessionId={session}\n\n");
    let replies = futures_util::stream::unfold(rx, |mut rx| async move {
        let message = rx.recv().await?;
        Some((format!("event: message\ndata: {message}\n\n"), rx))
    });
    let stream = futures_util::stream::once(async move { first })
        .chain(replies)
        .map(|s| Ok::<_, std::convert::Infallible>(Bytes::from(s)));
    sse(Body::from_stream(stream))
}

/// POST to an HTTP+SSE server's message endpoint: 202 here, the reply on the stream.
async fn legacy_message(
    State(state): State<Arc<MockState>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record(&method, &uri, &headers, &body);
    if let Some(refusal) = state.refuse_token(&headers) {
        return refusal;
    }
    let session = uri
        .query()
        .and_then(|q| q.strip_prefix("sessionId="))
        .unwrap_or("")
        .to_string();
    let Some(tx) = state.sse_streams.lock().unwrap().get(&session).cloned() else {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    };
    if state.legacy_forget.load(Ordering::SeqCst) {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    }
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // A batch is answered one message at a time, each on the stream.
    let messages = match message {
        Value::Array(items) => items,
        one => vec![one],
    };
    for message in messages {
        let Some(id) = message.get("id").cloned() else {
            continue;
        };
        let result = match message["method"].as_str() {
            // Never answered: a client that gives up waiting.
            Some("initialize")
                if message["params"]["clientInfo"]["name"] == "silent"
                    || state.legacy_silent_initialize.load(Ordering::SeqCst) =>
            {
                continue;
            }
            Some("initialize") => {
                json!({"protocolVersion": "2024-11-05", "capabilities": {}, "serverInfo": {"name": "mock-sse-transport", "version": "0.1"}})
            }
            Some("tools/list") => {
                json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}, {"name": "delete_all", "inputSchema": {"type": "object"}}]})
            }
            // Answered once the test opens the gate.
            Some("tools/call") if message["params"]["name"] == "gated" => {
                let state = state.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    state.gate.notified().await;
                    let _ = tx.send(
                        json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}).to_string(),
                    );
                });
                continue;
            }
            // The server "restarts": this session's stream ends, unanswered.
            Some("tools/call") if message["params"]["name"] == "end_stream" => {
                state.sse_streams.lock().unwrap().remove(&session);
                continue;
            }
            // An answer of `bytes` bytes of text.
            Some("tools/call") if message["params"]["name"] == "flood" => {
                let bytes = message["params"]["arguments"]["bytes"]
                    .as_u64()
                    .unwrap_or(0);
                json!({"content": [{"type": "text", "text": "x".repeat(bytes as usize)}]})
            }
            Some("tools/call") => {
                json!({"content": [{"type": "text", "text": message["params"]["arguments"]["text"]}]})
            }
            _ => json!({}),
        };
        let _ = tx.send(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string());
    }
    StatusCode::ACCEPTED.into_response()
}
