//! Keeps a client's MCP session alive when the upstream forgets it.
//!
//! Claude Code never re-initializes after a session 404 (PROTOCOL.md lists seven issues), so an
//! upstream restart or session expiry would break the agent for the rest of its run. The sidecar
//! remembers each client's `initialize` request and the session id the upstream gave it. When the
//! upstream answers 404 to a request that carries that session, the sidecar replays the
//! `initialize` (and `notifications/initialized`) itself, maps the client's session id to the new
//! upstream one, and retries the request. The client keeps using its original id throughout.
//!
//! Re-initialization is single-flight per session: concurrent 404s for one session cause one
//! replay, the other requests retry with its result.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method};
use serde_json::Value;

use crate::mcp::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::upstream::{Upstream, UpstreamError};

/// How many sessions are remembered; beyond this the least recently created is forgotten (its
/// client then sees the upstream's 404, as without the sidecar).
const MAX_SESSIONS: usize = 10_000;

pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    created: AtomicU64,
}

pub struct Session {
    /// The client's `initialize` request, replayed verbatim.
    initialize: Bytes,
    /// The headers it came with (Accept, protocol version, client-specific ones).
    headers: HeaderMap,
    /// The session id the upstream currently knows this client by.
    upstream_id: tokio::sync::Mutex<String>,
    order: u64,
}

/// Why a re-initialization failed; the client then gets the upstream's original 404.
#[derive(Debug, thiserror::Error)]
pub enum ReinitError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Refused(String),
    #[error("the replayed initialize did not complete in time")]
    TimedOut,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            created: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a session the upstream just created for a client's `initialize`.
    pub fn remember(&self, client_id: &str, initialize: Bytes, headers: &HeaderMap) {
        let replay_headers = crate::headers::replayed(headers);
        let session = Arc::new(Session {
            initialize,
            headers: replay_headers,
            upstream_id: tokio::sync::Mutex::new(client_id.to_string()),
            order: self.created.fetch_add(1, Ordering::Relaxed),
        });
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.order)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(client_id.to_string(), session);
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.lock().get(client_id).cloned()
    }

    pub fn forget(&self, client_id: &str) {
        self.lock().remove(client_id);
    }
}

impl Session {
    /// The id to send upstream in place of the client's.
    pub async fn upstream_id(&self) -> String {
        self.upstream_id.lock().await.clone()
    }

    /// The upstream answered 404 to a request sent with `stale`: obtain a new upstream session,
    /// unless a concurrent request already did, and return the id to retry with.
    pub async fn reinitialize(
        &self,
        upstream: &Upstream,
        stale: &str,
    ) -> Result<String, ReinitError> {
        let mut current = self.upstream_id.lock().await;
        if *current != stale {
            return Ok(current.clone());
        }
        let mut headers = crate::headers::replay_request(&self.headers);
        let response = upstream
            .send(Method::POST, None, headers.clone(), self.initialize.clone())
            .await?;
        if !response.status().is_success() {
            return Err(ReinitError::Refused(format!(
                "the replayed initialize was answered HTTP {}",
                response.status()
            )));
        }
        let new_id = response
            .headers()
            .get(&MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                ReinitError::Refused("the replayed initialize created no session".into())
            })?;
        let id = serde_json::from_slice::<Value>(&self.initialize)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or(Value::Null);
        let reply = crate::handshake::read_reply(response, &id, "replayed initialize")
            .await
            .map_err(|e| ReinitError::Refused(e.to_string()))?;
        let version = reply
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ReinitError::Refused("the replayed initialize returned no protocolVersion".into())
            })?;

        let new_value = HeaderValue::try_from(new_id.as_str())
            .map_err(|_| ReinitError::Refused("the new session id is not a header value".into()))?;
        headers.insert(MCP_SESSION_ID.clone(), new_value);
        if let Ok(v) = HeaderValue::try_from(version) {
            headers.insert(MCP_PROTOCOL_VERSION.clone(), v);
        }
        let response = upstream
            .send(
                Method::POST,
                None,
                headers,
                Bytes::from_static(crate::mcp::INITIALIZED_NOTIFICATION),
            )
            .await?;
        if !response.status().is_success() {
            return Err(ReinitError::Refused(format!(
                "notifications/initialized after the replay was answered HTTP {}",
                response.status()
            )));
        }
        tracing::info!("upstream forgot a client's session; re-initialized it transparently");
        *current = new_id.clone();
        Ok(new_id)
    }
}

/// How much of a 400 body is read to tell "unknown session" from other bad requests.
const PEEK_LIMIT: usize = 64 * 1024;

/// Whether the upstream's answer to a request carrying a session it issued means "I no longer
/// know this session". The spec says 404; servers built from the TypeScript SDK's examples answer
/// 400 "Bad Request: No valid session ID provided" instead, so a 400 whose body talks about the
/// session counts too. Reading that body means handing back a rebuilt response.
pub async fn forgotten(
    response: reqwest::Response,
    within: std::time::Duration,
) -> (bool, reqwest::Response) {
    match response.status() {
        http::StatusCode::NOT_FOUND => (true, response),
        http::StatusCode::BAD_REQUEST => {
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            let mut stream = response.bytes_stream();
            let mut head = Vec::new();
            let mut broken = None;
            let mut complete = false;
            // A body that stalls is not the short error this looks for; stop waiting for it.
            let deadline = tokio::time::Instant::now() + within;
            while head.len() <= PEEK_LIMIT {
                let next =
                    tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut stream));
                let Ok(next) = next.await else {
                    break;
                };
                match next {
                    Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        broken = Some(e);
                        break;
                    }
                    None => {
                        complete = true;
                        break;
                    }
                }
            }
            let about_session = complete && says_session_unknown(&head);
            // Give the caller the same response back: the bytes read, then whatever is left.
            let rest: std::pin::Pin<
                Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>,
            > = match broken {
                Some(e) => Box::pin(futures_util::stream::iter([Err(e)])),
                None if complete => Box::pin(futures_util::stream::empty()),
                None => Box::pin(stream),
            };
            let body = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok(Bytes::from(head))]),
                rest,
            );
            let mut rebuilt = http::Response::new(reqwest::Body::wrap_stream(body));
            *rebuilt.status_mut() = status;
            *rebuilt.version_mut() = version;
            *rebuilt.headers_mut() = headers;
            (about_session, reqwest::Response::from(rebuilt))
        }
        _ => (false, response),
    }
}

/// What servers say when they do not know a session, besides 404. Kept narrow: a 400 about
/// anything else (a tool's own "session" of some kind) must not replace the upstream session.
fn says_session_unknown(body: &[u8]) -> bool {
    const PHRASES: &[&str] = &[
        "no valid session",
        "session not found",
        "unknown session",
        "invalid session",
        "session does not exist",
        "session expired",
        "session has expired",
    ];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    PHRASES.iter().any(|p| text.contains(p))
}

/// Whether a request body is an `initialize` request (checked cheaply before parsing).
pub fn is_initialize(body: &[u8]) -> bool {
    if !body.windows(10).any(|w| w == b"initialize") {
        return false;
    }
    crate::jsonrpc::request_method(body).as_deref() == Some("initialize")
}
