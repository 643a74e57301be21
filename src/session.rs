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
//!
//! What is remembered is bounded three ways ([`SessionLimits`]): a count, a byte budget over the
//! stored initialize requests (each may be up to `MAX_BODY_BYTES`), and an idle time. Sessions
//! are kept in order of last use, so making room takes the least recently used from the front
//! of that order instead of scanning every session under the lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method};
use serde_json::Value;
use tokio::time::Instant;

pub use crate::config::SessionLimits;
use crate::mcp::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::upstream::{Upstream, UpstreamError};

/// What one remembered session costs besides the bytes counted ([`Session::cost`]): the map
/// entry, the order entry, the `Arc` and its mutex. An estimate; it keeps a flood of tiny
/// sessions inside the budget too.
const SESSION_OVERHEAD: usize = 256;

/// The sessions the sidecar can re-make, least recently used first out. A session forgotten
/// here (evicted, idle too long) is one whose client sees the upstream's 404, as without the
/// sidecar.
pub struct Sessions {
    store: Mutex<Store>,
    limits: SessionLimits,
    /// Whether an initialize too large to remember was reported: once, as a client can send
    /// any number of them.
    too_large_said: AtomicBool,
}

#[derive(Default)]
struct Store {
    map: HashMap<String, Entry>,
    /// Client session ids by the tick of their last use, oldest first: eviction and expiry take
    /// from the front, O(log n) each.
    order: BTreeMap<u64, String>,
    /// The sum of every entry's `cost`.
    bytes: usize,
    tick: u64,
}

struct Entry {
    session: Arc<Session>,
    /// Its key in `order`.
    tick: u64,
    used: Instant,
    cost: usize,
}

impl Store {
    fn touch(&mut self, client_id: &str, now: Instant) -> Option<Arc<Session>> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.map.get_mut(client_id)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        entry.used = now;
        let session = entry.session.clone();
        if let Some(id) = self.order.remove(&old) {
            self.order.insert(tick, id);
        }
        Some(session)
    }

    fn remove(&mut self, client_id: &str) -> Option<Entry> {
        let entry = self.map.remove(client_id)?;
        self.order.remove(&entry.tick);
        self.bytes -= entry.cost;
        Some(entry)
    }

    /// Forgets the least recently used session; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, id)) = self.order.pop_first() else {
            return false;
        };
        if let Some(entry) = self.map.remove(&id) {
            self.bytes -= entry.cost;
        }
        true
    }

    /// Forgets sessions unused for longer than `idle`: they are at the front of the order.
    fn expire(&mut self, now: Instant, idle: std::time::Duration) {
        while let Some((_, id)) = self.order.first_key_value() {
            let expired = self
                .map
                .get(id)
                .is_none_or(|e| now.saturating_duration_since(e.used) >= idle);
            if !expired {
                break;
            }
            self.evict_oldest();
        }
    }
}

pub struct Session {
    /// The client's `initialize` request, replayed verbatim.
    initialize: Bytes,
    /// The headers it came with (Accept, protocol version, client-specific ones).
    headers: HeaderMap,
    /// The query of the client's target (`?tenant=a`): a replay goes where the client's
    /// initialize went, or the upstream makes the session for another tenant, or none.
    query: Option<String>,
    /// The session id the upstream currently knows this client by.
    upstream_id: tokio::sync::Mutex<String>,
    /// How many times the sidecar re-made this session upstream: event ids and `Last-Event-ID`
    /// are tied to it ([`crate::stream`]).
    generation: AtomicU64,
    /// The client's resource subscriptions, replayed into a re-made session.
    pub subscriptions: crate::subscriptions::Subscriptions,
    /// The client ended it (DELETE): a GET stream still following it must not re-make it.
    ended: std::sync::atomic::AtomicBool,
}

/// Why a re-initialization failed. The caller branches on [`ReinitError::is_transient`]: a
/// fault that may pass is answered 502/503 (the client retries, its session intact); only a
/// session the upstream will not re-make gets the upstream's 404.
#[derive(Debug, thiserror::Error)]
pub enum ReinitError {
    /// The replay could not be delivered (upstream down, credential refused, ...).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A replayed step was answered with an HTTP error status.
    #[error("the replayed {step} was answered HTTP {status}")]
    Status {
        step: &'static str,
        status: http::StatusCode,
    },
    /// The upstream answered the replayed initialize, but not with a session to use.
    #[error("{0}")]
    Refused(String),
    #[error("the replayed initialize did not complete in time")]
    TimedOut,
    /// The retry under the re-made session was told again that the session is unknown.
    #[error("the upstream forgot the re-made session at once")]
    ForgottenAgain,
}

impl ReinitError {
    /// Whether a later attempt may succeed: the upstream is down, slow, overloaded, restarting
    /// (a 404 to an initialize, which carries no session, is a route not served yet), or lost
    /// the new session at once. A 404 for any of these would tell the client its session is
    /// gone, and Claude Code re-initializes once after a 404 and then leaves the server dead
    /// (anthropics/claude-code#94273).
    pub fn is_transient(&self) -> bool {
        match self {
            // A 403 that is not about the credential: the upstream will not make this session.
            Self::Upstream(UpstreamError::Forbidden(_)) => false,
            Self::Upstream(_) | Self::TimedOut | Self::ForgottenAgain => true,
            Self::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 404 | 408 | 425 | 429)
            }
            Self::Refused(_) => false,
        }
    }

    /// How a transient failure is answered: an undeliverable replay like any undeliverable
    /// request (unreachable, credential refused, ...), the rest as [`crate::failure::Failure::SessionReinitFailed`].
    pub fn failure(&self) -> crate::failure::Failure {
        match self {
            Self::Upstream(e) => e.failure(),
            _ => crate::failure::Failure::SessionReinitFailed,
        }
    }
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            store: Mutex::new(Store::default()),
            limits,
            too_large_said: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sessions are remembered, and the bytes they are counted as.
    pub fn usage(&self) -> (usize, usize) {
        let store = self.lock();
        (store.map.len(), store.bytes)
    }

    /// Records a session the upstream just created for a client's `initialize`, sent with
    /// `query` appended to the upstream URL.
    pub fn remember(
        &self,
        client_id: &str,
        initialize: Bytes,
        headers: &HeaderMap,
        query: Option<&str>,
    ) {
        let session = Session {
            // A copy of exactly its length: the request buffer it came in may have grown to
            // twice that, and a slice of it would keep all of it alive, uncounted.
            initialize: Bytes::copy_from_slice(&initialize),
            headers: crate::headers::replayed(headers),
            query: query.map(str::to_string),
            upstream_id: tokio::sync::Mutex::new(client_id.to_string()),
            generation: AtomicU64::new(0),
            subscriptions: Default::default(),
            ended: Default::default(),
        };
        let cost = session.cost(client_id);
        let now = Instant::now();
        let mut store = self.lock();
        store.remove(client_id);
        store.expire(now, self.limits.idle_timeout);
        if cost > self.limits.max_bytes {
            drop(store);
            if self.too_large_said.swap(true, Ordering::Relaxed) {
                tracing::debug!(bytes = cost, "an initialize too large to remember");
            } else {
                tracing::warn!(
                    bytes = cost,
                    "a client's initialize is larger than MCP_SIDECAR_MAX_SESSION_BYTES; its session is not remembered and will not survive an upstream restart (said once)"
                );
            }
            return;
        }
        while store.map.len() >= self.limits.max_sessions
            || store.bytes + cost > self.limits.max_bytes
        {
            if !store.evict_oldest() {
                break;
            }
        }
        store.tick += 1;
        let tick = store.tick;
        store.order.insert(tick, client_id.to_string());
        store.bytes += cost;
        store.map.insert(
            client_id.to_string(),
            Entry {
                session: Arc::new(session),
                tick,
                used: now,
                cost,
            },
        );
    }

    /// The session, marked as used now; `None` when unknown or idle past `SESSION_IDLE_TIMEOUT`.
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        let now = Instant::now();
        let mut store = self.lock();
        store.expire(now, self.limits.idle_timeout);
        store.touch(client_id, now)
    }

    pub fn forget(&self, client_id: &str) {
        if let Some(entry) = self.lock().remove(client_id) {
            entry.session.ended.store(true, Ordering::SeqCst);
        }
    }
}

impl Session {
    /// The bytes this session is counted as against `MAX_SESSION_BYTES`.
    fn cost(&self, client_id: &str) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        // The id is stored twice: the map key and the order entry (and once more as the
        // upstream id).
        SESSION_OVERHEAD
            + self.initialize.len()
            + headers
            + self.query.as_ref().map_or(0, String::len)
            + 3 * client_id.len()
    }

    /// The query the client's initialize carried: what every request the sidecar sends on this
    /// session's behalf appends to the upstream URL.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The id to send upstream in place of the client's.
    pub async fn upstream_id(&self) -> String {
        self.upstream_id.lock().await.clone()
    }

    /// The upstream id and the generation it belongs to, read together (a re-initialization
    /// changes both under the same lock).
    pub async fn current(&self) -> (String, u64) {
        let id = self.upstream_id.lock().await;
        (id.clone(), self.generation.load(Ordering::SeqCst))
    }

    /// Whether the client ended this session (DELETE).
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// How many times the sidecar re-made this session upstream (0: the client's own).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
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
            .send(
                Method::POST,
                self.query.as_deref(),
                headers.clone(),
                self.initialize.clone(),
            )
            .await?;
        if !response.status().is_success() {
            return Err(ReinitError::Status {
                step: "initialize",
                status: response.status(),
            });
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
            .map_err(|e| match e {
                // The reply broke off: the upstream went away mid-answer.
                crate::handshake::HandshakeError::Upstream(e) => ReinitError::Upstream(e),
                e => ReinitError::Refused(e.to_string()),
            })?;
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
                self.query.as_deref(),
                headers.clone(),
                Bytes::from_static(crate::mcp::INITIALIZED_NOTIFICATION),
            )
            .await?;
        if !response.status().is_success() {
            return Err(ReinitError::Status {
                step: "notifications/initialized",
                status: response.status(),
            });
        }
        tracing::info!("upstream forgot a client's session; re-initialized it transparently");
        self.subscriptions
            .replay(upstream, self.query.as_deref(), &headers)
            .await;
        // Before the id changes: a reader that sees the new generation also sees the new id.
        self.generation.fetch_add(1, Ordering::SeqCst);
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
    response: crate::upstream::Response,
    within: std::time::Duration,
) -> (bool, crate::upstream::Response) {
    match response.status() {
        http::StatusCode::NOT_FOUND => (true, response),
        http::StatusCode::BAD_REQUEST => {
            let (parts, mut stream) = response.into_parts();
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
            let rest: crate::upstream::Chunks = match broken {
                Some(e) => Box::pin(futures_util::stream::iter([Err(e)])),
                None if complete => Box::pin(futures_util::stream::empty()),
                None => Box::pin(stream),
            };
            let body = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok(Bytes::from(head))]),
                rest,
            );
            let rebuilt = crate::upstream::Body::from_stream(body);
            (
                about_session,
                crate::upstream::Response::from_parts(parts, rebuilt),
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max_sessions: usize, max_bytes: usize, idle: Duration) -> SessionLimits {
        SessionLimits {
            max_sessions,
            max_bytes,
            idle_timeout: idle,
        }
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "accept",
            "application/json, text/event-stream".parse().unwrap(),
        );
        h.insert("mcp-session-id", "dropped".parse().unwrap());
        h
    }

    fn body(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    #[tokio::test]
    async fn a_hundred_large_initializes_stay_under_the_byte_budget() {
        let defaults = SessionLimits::default();
        let sessions = Sessions::new(defaults);
        for i in 0..100 {
            sessions.remember(&format!("s{i}"), body(4_000_000), &headers(), None);
            let (_, bytes) = sessions.usage();
            assert!(bytes <= defaults.max_bytes, "{bytes} after {i}");
        }
        let (count, bytes) = sessions.usage();
        assert_eq!(count, 8, "32 MiB holds eight 4 MB sessions ({bytes} bytes)");
        assert!(sessions.get("s99").is_some(), "the newest is kept");
        assert!(sessions.get("s0").is_none(), "the oldest made room");
    }

    #[tokio::test]
    async fn the_stored_initialize_holds_only_its_own_bytes() {
        // A request buffer grown past its content: the session must not pin the rest.
        let mut buffer = bytes::BytesMut::with_capacity(1 << 20);
        buffer.extend_from_slice(b"{\"method\":\"initialize\"}");
        let sessions = Sessions::new(SessionLimits::default());
        let frozen = buffer.freeze();
        let pinned = frozen.as_ptr();
        sessions.remember("s", frozen, &headers(), None);
        let session = sessions.get("s").unwrap();
        assert_eq!(session.initialize.len(), 23);
        assert_ne!(
            session.initialize.as_ptr(),
            pinned,
            "a copy, not a view of the 1 MiB buffer"
        );
        assert!(!session.headers.contains_key(&MCP_SESSION_ID));
    }

    #[tokio::test]
    async fn the_least_recently_used_goes_first() {
        // Room for two sessions of this size.
        let sessions = Sessions::new(limits(100, 2 * 1_500, Duration::from_secs(3600)));
        sessions.remember("a", body(1_000), &headers(), None);
        sessions.remember("b", body(1_000), &headers(), None);
        assert!(sessions.get("a").is_some(), "a is used, b is not");
        sessions.remember("c", body(1_000), &headers(), None);
        assert!(sessions.get("b").is_none());
        assert!(sessions.get("a").is_some());
        assert!(sessions.get("c").is_some());
        assert_eq!(sessions.usage().0, 2);
    }

    #[tokio::test]
    async fn the_count_is_capped_too() {
        let sessions = Sessions::new(limits(3, usize::MAX, Duration::from_secs(3600)));
        for id in ["a", "b", "c", "d"] {
            sessions.remember(id, body(10), &headers(), None);
        }
        assert_eq!(sessions.usage().0, 3);
        assert!(sessions.get("a").is_none());
        assert!(sessions.get("d").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_idle_past_the_timeout_are_forgotten() {
        let idle = Duration::from_secs(600);
        let sessions = Sessions::new(limits(100, usize::MAX, idle));
        sessions.remember("busy", body(10), &headers(), None);
        sessions.remember("idle", body(10), &headers(), None);
        tokio::time::advance(idle / 2).await;
        assert!(sessions.get("busy").is_some());
        tokio::time::advance(idle / 2).await;
        assert!(
            sessions.get("idle").is_none(),
            "unused for the whole timeout"
        );
        assert!(sessions.get("busy").is_some(), "used half a timeout ago");
        assert_eq!(sessions.usage().0, 1, "the idle one's bytes are released");
    }

    #[tokio::test]
    async fn remembering_again_and_forgetting_keep_the_count_of_bytes_exact() {
        let sessions = Sessions::new(limits(100, usize::MAX, Duration::from_secs(3600)));
        sessions.remember("a", body(1_000), &headers(), Some("tenant=a"));
        let (_, once) = sessions.usage();
        sessions.remember("a", body(1_000), &headers(), Some("tenant=a"));
        assert_eq!(sessions.usage(), (1, once));
        assert_eq!(sessions.get("a").unwrap().query(), Some("tenant=a"));
        sessions.forget("a");
        assert_eq!(sessions.usage(), (0, 0));
    }

    #[tokio::test]
    async fn a_session_larger_than_the_budget_is_not_remembered_and_evicts_nothing() {
        let sessions = Sessions::new(limits(100, 10_000, Duration::from_secs(3600)));
        sessions.remember("small", body(100), &headers(), None);
        sessions.remember("huge", body(20_000), &headers(), None);
        assert!(sessions.get("huge").is_none());
        assert!(sessions.get("small").is_some());
    }
}
