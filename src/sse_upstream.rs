//! Streamable HTTP clients in front of an upstream that speaks only the HTTP+SSE transport
//! (protocol 2024-11-05): Claude Code with `--transport http`, the SDKs' Streamable HTTP
//! clients, against a server that serves `GET /sse` and a message endpoint.
//!
//! The sidecar plays the legacy client for each of them. A client's `initialize` (a POST without
//! `Mcp-Session-Id`) opens the upstream's event stream with the credential, reads its `endpoint`
//! event (only an endpoint on the upstream's own origin is used, as in [`crate::legacy`]), and
//! becomes a session with an id of the sidecar's own, which the client gets as its
//! `Mcp-Session-Id`. Every message of that session is POSTed to the announced endpoint; the
//! answer to a request arrives on the upstream stream, matched by its JSON-RPC id, and is the
//! POST's JSON reply. What the upstream sends on its own (notifications, server-to-client
//! requests, progress) goes to the client's GET stream when it has one open. `DELETE`, or the
//! upstream stream ending, ends the session; a client whose session is gone gets 404 and
//! initializes again, as the Streamable HTTP transport says.
//!
//! Everything the upstream sends is scrubbed of known secrets before it reaches the client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::forwarder::{ForwardError, Forwarded, Forwarder, Prepared, Target};
use crate::jsonrpc::Code;
use crate::mcp::MCP_SESSION_ID;

/// How long an `initialize` waits for the upstream's `endpoint` event.
const ENDPOINT_WAIT: Duration = Duration::from_secs(10);
/// An upstream that sends this much before its `endpoint` event is not the legacy transport.
const MAX_BEFORE_ENDPOINT: usize = 64 * 1024;
/// Messages waiting for the client's GET stream; past that they are dropped (and logged), as a
/// server's would be with no stream open.
const STREAM_QUEUE: usize = 256;

/// What the caller does with a request.
pub enum Handled {
    /// Not a message of this bridge: the caller forwards it as before (a legacy client's own
    /// GET, a POST that is neither `initialize` nor of a bridged session).
    No,
    Yes(Response),
    /// The upstream could not be reached or refused: the caller answers it as for any request.
    Failed(ForwardError),
}

/// The bridged sessions of one upstream, by the id the client holds. Clients often go away
/// without a `DELETE` (a host kills the agent), and each session holds an upstream stream open,
/// so the limits of remembered sessions apply ([`crate::config::SessionLimits`]: their count and
/// `SESSION_IDLE_TIMEOUT`):
/// each new one first ends those idle past the timeout (no message and no GET stream open),
/// then the least recently used past the count.
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
    limits: crate::config::SessionLimits,
}

struct Session {
    post_url: url::Url,
    /// Requests waiting for their answer on the upstream stream, by JSON-RPC id.
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// The client's GET stream, while one is open.
    client_stream: Mutex<Option<mpsc::Sender<String>>>,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
    last_used: Mutex<Instant>,
}

impl Session {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// When it was last used; now while the client's GET stream is open.
    fn used_at(&self) -> Instant {
        let streaming = lock(&self.client_stream)
            .as_ref()
            .is_some_and(|stream| !stream.is_closed());
        if streaming {
            Instant::now()
        } else {
            *lock(&self.last_used)
        }
    }

    fn end(&self) {
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
        // Dropping the senders fails every waiting request.
        lock(&self.pending).clear();
        lock(&self.client_stream).take();
    }

    fn to_client(&self, message: &Value) {
        let Some(stream) = lock(&self.client_stream).clone() else {
            tracing::debug!("the upstream sent a message with no client stream open; dropped");
            return;
        };
        if stream.try_send(message.to_string()).is_err() {
            tracing::warn!("the client's stream is not being read; dropped a message for it");
        }
    }
}

impl Sessions {
    pub fn new(limits: crate::config::SessionLimits) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            limits,
        })
    }

    /// Ends the sessions idle past the timeout, then the least recently used ones until a new
    /// one fits.
    fn make_room(&self) {
        let mut open = lock(&self.open);
        let now = Instant::now();
        let mut ended: Vec<Arc<Session>> = Vec::new();
        open.retain(|_, session| {
            let idle = now.duration_since(session.used_at()) >= self.limits.idle_timeout;
            if idle {
                ended.push(session.clone());
            }
            !idle
        });
        while open.len() >= self.limits.max_sessions.max(1) {
            let Some(oldest) = open
                .iter()
                .min_by_key(|(_, session)| session.used_at())
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            ended.extend(open.remove(&oldest));
        }
        drop(open);
        if !ended.is_empty() {
            tracing::info!(
                ended = ended.len(),
                "ended bridged sessions idle past SESSION_IDLE_TIMEOUT or over MAX_SESSIONS"
            );
        }
        for session in ended {
            session.end();
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.open).get(id).cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.open).remove(id)
    }

    /// Takes `request` when it belongs to this bridge; the upstream speaks HTTP+SSE.
    pub async fn handle(
        self: &Arc<Self>,
        forwarder: &Forwarder,
        request: &Prepared,
        keepalive: Duration,
    ) -> Handled {
        match (&request.method, request.client_session.as_deref()) {
            (&Method::POST, None) if request.rpc_method().as_deref() == Some("initialize") => {
                self.initialize(forwarder, request).await
            }
            (_, Some(id)) => match self.get(id) {
                Some(session) => {
                    self.in_session(forwarder, request, id, session, keepalive)
                        .await
                }
                // Not one of ours: a session id the upstream never saw either.
                None => Handled::Yes(session_gone(request.rpc_id())),
            },
            _ => Handled::No,
        }
    }

    async fn initialize(self: &Arc<Self>, forwarder: &Forwarder, request: &Prepared) -> Handled {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let open = Prepared::new(
            Method::GET,
            Target::Endpoint { query: None },
            &headers,
            Bytes::new(),
        );
        let answer = match forwarder.forward(&open).await {
            Ok(Forwarded::Answer(answer))
                if answer.status.is_success() && crate::sse::is_event_stream(&answer.headers) =>
            {
                answer
            }
            Ok(Forwarded::Answer(answer)) => {
                return Handled::Yes(upstream_failed(
                    request.rpc_id(),
                    &format!(
                        "the upstream's SSE stream did not open (HTTP {})",
                        answer.status.as_u16()
                    ),
                ));
            }
            Ok(Forwarded::Away(_) | Forwarded::Refused(_)) => {
                return Handled::Yes(upstream_failed(
                    request.rpc_id(),
                    "the upstream's SSE stream is not available",
                ));
            }
            Err(e) => return Handled::Failed(e),
        };
        let mut chunks = answer.body;
        let mut parser = crate::sse::Parser::new();
        let mut read = 0usize;
        let mut after = Vec::new();
        let endpoint = tokio::time::timeout(ENDPOINT_WAIT, async {
            while let Some(Ok(chunk)) = chunks.next().await {
                read += chunk.len();
                let mut events = parser.push(&chunk).into_iter();
                for event in events.by_ref() {
                    if event.event.as_deref() == Some("endpoint") {
                        after.extend(events);
                        return Some(event.data);
                    }
                }
                if read > MAX_BEFORE_ENDPOINT {
                    break;
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(post_url) = endpoint
            .as_deref()
            .and_then(|reference| forwarder.upstream().same_origin(reference.trim()))
        else {
            tracing::warn!(
                "the upstream's SSE stream announced no message endpoint on its own origin"
            );
            return Handled::Yes(upstream_failed(
                request.rpc_id(),
                "the upstream's SSE stream announced no message endpoint on its own origin",
            ));
        };

        self.make_room();
        let id = crate::token::endpoint::random_token();
        let session = Arc::new(Session {
            post_url,
            pending: Mutex::new(HashMap::new()),
            client_stream: Mutex::new(None),
            reader: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        });
        lock(&self.open).insert(id.clone(), session.clone());
        let reader = tokio::spawn(read_upstream(
            self.clone(),
            id.clone(),
            session.clone(),
            chunks,
            parser,
            after,
        ));
        *lock(&session.reader) = Some(reader.abort_handle());
        tracing::info!(
            open = lock(&self.open).len(),
            "a Streamable HTTP client's session bridged to the upstream's HTTP+SSE transport"
        );
        match self.send(forwarder, request, &session).await {
            Handled::Yes(mut response) => {
                if response.status().is_success()
                    && let Ok(value) = HeaderValue::from_str(&id)
                {
                    response.headers_mut().insert(MCP_SESSION_ID.clone(), value);
                } else if let Some(session) = self.remove(&id) {
                    session.end();
                }
                Handled::Yes(response)
            }
            other => {
                if let Some(session) = self.remove(&id) {
                    session.end();
                }
                other
            }
        }
    }

    async fn in_session(
        &self,
        forwarder: &Forwarder,
        request: &Prepared,
        id: &str,
        session: Arc<Session>,
        keepalive: Duration,
    ) -> Handled {
        session.touch();
        match request.method {
            Method::POST => self.send(forwarder, request, &session).await,
            Method::GET => Handled::Yes(client_stream(&session, keepalive)),
            Method::DELETE => {
                if let Some(session) = self.remove(id) {
                    session.end();
                }
                tracing::info!("a bridged session ended by its client; closed its upstream stream");
                Handled::Yes(StatusCode::NO_CONTENT.into_response())
            }
            _ => Handled::No,
        }
    }

    /// POSTs one message to the session's endpoint; a request waits for its answer.
    async fn send(&self, forwarder: &Forwarder, request: &Prepared, session: &Session) -> Handled {
        let message: Value = match serde_json::from_slice(&request.body) {
            Ok(message) => message,
            Err(_) => {
                return Handled::Yes(error(
                    StatusCode::BAD_REQUEST,
                    Value::Null,
                    Code::Refused,
                    "mcp-sidecar: the body is not a JSON-RPC message (JSON)",
                    "parse_error",
                ));
            }
        };
        let waiting = match (message.get("method"), message.get("id")) {
            (Some(_), Some(id)) if !id.is_null() => {
                let (tx, rx) = oneshot::channel();
                lock(&session.pending).insert(id.to_string(), tx);
                Some((id.to_string(), rx))
            }
            _ => None,
        };
        // However this ends (the client gone too), the entry goes.
        let _forget = waiting.as_ref().map(|(key, _)| Forget {
            session,
            key: key.clone(),
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let post = Prepared::new(
            Method::POST,
            Target::Legacy(session.post_url.clone()),
            &headers,
            request.body.clone(),
        );
        match forwarder.forward(&post).await {
            Ok(Forwarded::Answer(answer)) if answer.status.is_success() => {}
            Ok(Forwarded::Answer(answer)) => {
                return Handled::Yes(upstream_failed(
                    request.rpc_id(),
                    &format!(
                        "the upstream refused the message (HTTP {})",
                        answer.status.as_u16()
                    ),
                ));
            }
            Ok(Forwarded::Refused(refusal)) => {
                let status = if refusal.has_id {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                };
                return Handled::Yes((status, axum::Json(refusal.body)).into_response());
            }
            Ok(Forwarded::Away(_)) => {
                return Handled::Yes(upstream_failed(
                    request.rpc_id(),
                    "the upstream is not available",
                ));
            }
            Err(e) => return Handled::Failed(e),
        }
        let Some((_, answer)) = waiting else {
            return Handled::Yes(StatusCode::ACCEPTED.into_response());
        };
        match answer.await {
            Ok(answer) => Handled::Yes(axum::Json(answer).into_response()),
            Err(_) => Handled::Yes(upstream_failed(
                request.rpc_id(),
                "the upstream's SSE stream closed before it answered",
            )),
        }
    }
}

/// Removes a request's waiting entry when its POST ends, answered or not.
struct Forget<'a> {
    session: &'a Session,
    key: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.session.pending).remove(&self.key);
    }
}

/// Reads the upstream's event stream for one session until it ends: answers go to the POSTs
/// waiting for them, everything else to the client's GET stream.
async fn read_upstream<S, E>(
    sessions: Arc<Sessions>,
    id: String,
    session: Arc<Session>,
    mut chunks: S,
    mut parser: crate::sse::Parser,
    already: Vec<crate::sse::Event>,
) where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let deliver = |event: crate::sse::Event| {
        if event.event.as_deref().is_some_and(|kind| kind != "message") {
            return;
        }
        let Ok(mut message) = serde_json::from_str::<Value>(&event.data) else {
            tracing::warn!("the upstream sent an event that is not JSON; dropped");
            return;
        };
        crate::secret::scrub_json(&mut message);
        let answer =
            message.get("method").is_none() && message.get("id").is_some_and(|id| !id.is_null());
        if answer
            && let Some(id) = message.get("id")
            && let Some(waiting) = lock(&session.pending).remove(&id.to_string())
        {
            let _ = waiting.send(message);
            return;
        }
        session.to_client(&message);
    };
    for event in already {
        deliver(event);
    }
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => {
                for event in parser.push(&chunk) {
                    deliver(event);
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::secret::scrub(&e.to_string()), "the upstream's SSE stream broke off");
                break;
            }
        }
    }
    tracing::info!(
        "the upstream's SSE stream of a bridged session ended; the client will initialize again"
    );
    if let Some(session) = sessions.remove(&id) {
        // Not `end`: that would abort this very task before it returns.
        lock(&session.pending).clear();
        lock(&session.client_stream).take();
    }
}

/// The client's GET stream of a bridged session (replacing one it opened before).
fn client_stream(session: &Session, keepalive: Duration) -> Response {
    let (tx, rx) = mpsc::channel::<String>(STREAM_QUEUE);
    *lock(&session.client_stream) = Some(tx);
    let events = futures_util::stream::unfold(rx, move |mut rx| async move {
        let frame = match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(line)) => Bytes::from(format!("event: message\ndata: {line}\n\n")),
            Ok(None) => return None,
            Err(_) => Bytes::from_static(b":\n\n"),
        };
        Some((Ok::<_, Infallible>(frame), rx))
    });
    let mut response = Response::new(Body::from_stream(events));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn session_gone(id: Value) -> Response {
    error(
        StatusCode::NOT_FOUND,
        id,
        Code::Refused,
        "mcp-sidecar: this session has ended (the upstream's SSE stream closed, or it was never made): initialize again",
        "session_not_found",
    )
}

fn upstream_failed(id: Value, message: &str) -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        id,
        Code::UpstreamFailed,
        &format!("mcp-sidecar: {}", crate::secret::scrub(message)),
        "upstream_failed",
    )
}

fn error(status: StatusCode, id: Value, code: Code, message: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(crate::jsonrpc::error_body(id, code, message, reason)),
    )
        .into_response()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map is still a consistent map: every critical section is one insert or remove.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
