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
//! requests, progress) goes to the client's GET stream when it has one open. `DELETE` ends the
//! session; a client whose session is gone gets 404 and initializes again, as the Streamable
//! HTTP transport says. When the upstream stream ends (the server restarted, a proxy cut it),
//! the requests waiting for an answer fail, and the next message opens another stream and
//! replays the client's `initialize` and `notifications/initialized` into it first: clients
//! that never re-initialize (stdio hosts behind `mcp-sidecar stdio`) go on as if nothing
//! happened, as with the forwarder's session recovery.
//!
//! Everything the upstream sends is scrubbed of known secrets before it reaches the client, and
//! answers to `tools/list` are filtered by the tool policy as on the other paths. An upstream
//! event larger than `MAX_BODY_BYTES` ends the session rather than growing memory without bound.

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
use tokio::sync::{mpsc, oneshot, watch};

use crate::forwarder::{Answer, ForwardError, Forwarded, Forwarder, Prepared, Target};
use crate::jsonrpc::Code;
use crate::mcp::MCP_SESSION_ID;

/// How long an `initialize` waits for the upstream's `endpoint` event.
const ENDPOINT_WAIT: Duration = Duration::from_secs(10);
/// An upstream that sends this much before its `endpoint` event is not the legacy transport.
const MAX_BEFORE_ENDPOINT: usize = 64 * 1024;
/// Keepalives on the GET stream of a front in this process (the stdio front), which needs none.
const IN_PROCESS_KEEPALIVE: Duration = Duration::from_secs(3600);
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
    /// The largest upstream event held (`MAX_BODY_BYTES`).
    max_event_bytes: usize,
    /// Ends the upstream streams and the clients' GET streams at shutdown.
    shutdown: watch::Receiver<bool>,
}

struct Session {
    /// The client's `initialize`, replayed when the upstream stream is opened again.
    initialize: Bytes,
    /// Whether the client sent `notifications/initialized` (replayed too).
    initialized: std::sync::atomic::AtomicBool,
    /// One re-opening at a time; the others wait for it.
    relinking: tokio::sync::Mutex<()>,
    pending: Mutex<Pending>,
    /// The client's GET stream, while one is open.
    client_stream: Mutex<Option<mpsc::Sender<String>>>,
    /// The current stream's reader, with the stream's generation.
    reader: Mutex<Option<(u64, tokio::task::AbortHandle)>>,
    last_used: Mutex<Instant>,
}

/// Requests waiting for their answer on the upstream stream, by JSON-RPC id (its JSON text),
/// and the stream they wait on.
struct Pending {
    by_id: HashMap<String, (u64, oneshot::Sender<Value>)>,
    /// Labels each entry, so a finished request removes its own entry and never a later one
    /// that reuses the id.
    next: u64,
    link: Link,
    /// Counts the upstream streams of the session; each reader carries its own.
    generation: u64,
    /// Where the current stream takes messages. It changes with `generation`, under the same
    /// lock, so a request learns both when it registers.
    post_url: url::Url,
    /// The last stream whose end was seen.
    lost: Option<u64>,
}

impl Pending {
    /// Fails every waiting request (dropping the senders does) and sets the link, unless the
    /// session has ended.
    fn fail_all(&mut self, link: Link) {
        if self.link != Link::Ended {
            self.link = link;
        }
        self.by_id.clear();
    }

    fn new(post_url: url::Url) -> Self {
        Self {
            by_id: HashMap::new(),
            next: 0,
            link: Link::Up,
            generation: 0,
            post_url,
            lost: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// The upstream stream ended (the server restarted, a proxy cut it): the next message
    /// opens another and replays the client's `initialize` first.
    Down,
    /// The session has ended: nothing will answer, so nothing more may wait.
    Ended,
}

/// A registered request: its key, its label, where its answer arrives.
type Waiting = (String, u64, oneshot::Receiver<Value>);

/// A message's requests registered on one upstream stream: the message goes to that stream's
/// endpoint, never to a later one's. (A stream that ended failed the requests waiting on it; a
/// message posted into the next stream would run there with nobody waiting for its answer.)
struct Registered {
    waiting: Vec<Waiting>,
    generation: u64,
    post_url: url::Url,
}

/// Why a request cannot wait for its answer.
enum NotWaiting {
    Ended,
    Down,
    /// A request of this id is already waiting: its answer could not be told apart.
    Duplicate(Value),
}

impl Session {
    /// A session made by the client's `initialize`, its first stream taking messages at
    /// `post_url`.
    fn new(initialize: Bytes, post_url: url::Url) -> Self {
        Self {
            initialize,
            initialized: std::sync::atomic::AtomicBool::new(false),
            relinking: tokio::sync::Mutex::new(()),
            pending: Mutex::new(Pending::new(post_url)),
            client_stream: Mutex::new(None),
            reader: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Registers the requests `ids` as waiting on the current stream; all or none.
    fn expect(&self, ids: &[Value]) -> Result<Registered, NotWaiting> {
        self.expect_on(ids, Link::Up)
    }

    /// Registers requests while the link is `link`: a replay waits while it is still down,
    /// before the client's messages may go.
    fn expect_on(&self, ids: &[Value], link: Link) -> Result<Registered, NotWaiting> {
        let mut pending = lock(&self.pending);
        match pending.link {
            now if now == link => {}
            Link::Ended => return Err(NotWaiting::Ended),
            _ => return Err(NotWaiting::Down),
        }
        let keys: Vec<String> = ids.iter().map(Value::to_string).collect();
        for (i, key) in keys.iter().enumerate() {
            if pending.by_id.contains_key(key) || keys[..i].contains(key) {
                return Err(NotWaiting::Duplicate(ids[i].clone()));
            }
        }
        let mut waiting = Vec::with_capacity(keys.len());
        for key in keys {
            let (tx, rx) = oneshot::channel();
            let label = pending.next;
            pending.next += 1;
            pending.by_id.insert(key.clone(), (label, tx));
            waiting.push((key, label, rx));
        }
        Ok(Registered {
            waiting,
            generation: pending.generation,
            post_url: pending.post_url.clone(),
        })
    }

    /// A new upstream stream, taking messages at `post_url`: its generation.
    fn next_stream(&self, post_url: url::Url) -> u64 {
        let mut pending = lock(&self.pending);
        pending.generation += 1;
        pending.post_url = post_url;
        pending.generation
    }

    /// Whether the stream of `generation` is still the one messages go to.
    fn is_current(&self, generation: u64) -> bool {
        let pending = lock(&self.pending);
        pending.generation == generation && pending.link == Link::Up
    }

    /// Hands an answer to the request waiting for it; gives it back when none is.
    fn answer(&self, message: Value) -> Result<(), Value> {
        let Some(id) = message.get("id") else {
            return Err(message);
        };
        let waiting = lock(&self.pending).by_id.remove(&id.to_string());
        match waiting {
            Some((_, tx)) => {
                let _ = tx.send(message);
                Ok(())
            }
            None => Err(message),
        }
    }

    /// Fails every waiting request and lets no more wait.
    fn close(&self) {
        self.fail_waiting(Link::Ended);
        lock(&self.client_stream).take();
    }

    /// The upstream stream ended: the requests waiting get no answer; the client keeps its
    /// session and its GET stream.
    fn lost_link(&self, generation: u64) {
        let mut pending = lock(&self.pending);
        pending.lost = Some(generation);
        // An older stream's end says nothing about the current one.
        if generation == pending.generation {
            pending.fail_all(Link::Down);
        }
    }

    /// Stops the reader of the stream of `generation` and lets the next message open another;
    /// nothing when a later stream has replaced it (another message has re-opened it already).
    fn drop_link(&self, generation: u64) {
        {
            let mut pending = lock(&self.pending);
            if pending.generation != generation {
                return;
            }
            pending.fail_all(Link::Down);
        }
        // A relink may have replaced the reader since: only this stream's own is stopped.
        let mut reader = lock(&self.reader);
        if reader.as_ref().is_some_and(|(own, _)| *own == generation)
            && let Some((_, reader)) = reader.take()
        {
            reader.abort();
        }
    }

    fn fail_waiting(&self, link: Link) {
        lock(&self.pending).fail_all(link);
    }

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
        if let Some((_, reader)) = lock(&self.reader).take() {
            reader.abort();
        }
        self.close();
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
    pub fn new(
        limits: crate::config::SessionLimits,
        max_event_bytes: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            limits,
            max_event_bytes,
            shutdown,
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

    /// [`Forwarder::forward`] for a front that holds the session on its client's behalf (the
    /// stdio front): the bridge's answer as an upstream one; what it does not take goes to the
    /// forwarder.
    pub async fn forward(
        self: &Arc<Self>,
        forwarder: &Forwarder,
        request: &Prepared,
    ) -> Result<Forwarded, ForwardError> {
        match self.handle(forwarder, request, IN_PROCESS_KEEPALIVE).await {
            Handled::No => forwarder.forward(request).await,
            Handled::Yes(response) => Ok(Forwarded::Answer(answer_of(response))),
            Handled::Failed(e) => Err(e),
        }
    }

    async fn initialize(self: &Arc<Self>, forwarder: &Forwarder, request: &Prepared) -> Handled {
        let (post_url, chunks, parser, after) = match open_stream(forwarder).await {
            Ok(opened) => opened,
            Err(Opening::Failed(message)) => {
                return Handled::Yes(upstream_failed(request.rpc_id(), &message));
            }
            Err(Opening::Forward(e)) => return Handled::Failed(e),
        };
        self.make_room();
        let id = crate::token::endpoint::random_token();
        let session = Arc::new(Session::new(request.body.clone(), post_url.clone()));
        lock(&self.open).insert(id.clone(), session.clone());
        let _ = self.spawn_reader(&id, &session, post_url, chunks, parser, after);
        tracing::info!(
            open = lock(&self.open).len(),
            "a Streamable HTTP client's session bridged to the upstream's HTTP+SSE transport"
        );
        // Until the client has its id, the session is ended however this ends (the client
        // gone mid-way included).
        let mut unclaimed = Unclaimed {
            sessions: self,
            id: Some(&id),
        };
        match self.send(forwarder, request, &id, &session).await {
            Handled::Yes(mut response) => {
                if response.status().is_success()
                    && let Ok(value) = HeaderValue::from_str(&id)
                {
                    response.headers_mut().insert(MCP_SESSION_ID.clone(), value);
                    unclaimed.id = None;
                }
                Handled::Yes(response)
            }
            other => other,
        }
    }

    fn spawn_reader(
        self: &Arc<Self>,
        id: &str,
        session: &Arc<Session>,
        post_url: url::Url,
        chunks: crate::upstream::Body,
        parser: crate::sse::Parser,
        after: Vec<crate::sse::Event>,
    ) -> u64 {
        let generation = session.next_stream(post_url);
        let reader = tokio::spawn(read_upstream(
            self.clone(),
            (id.to_string(), generation),
            session.clone(),
            chunks,
            parser,
            after,
        ));
        if let Some((_, replaced)) =
            lock(&session.reader).replace((generation, reader.abort_handle()))
        {
            replaced.abort();
        }
        generation
    }

    /// Opens another upstream stream for a session whose stream ended, and replays the
    /// client's `initialize` (under an id of the sidecar's own, its answer not passed on) and
    /// `notifications/initialized` into it, so the client's next message finds a session as
    /// if nothing happened. Concurrent messages wait for one re-opening.
    async fn relink(
        self: &Arc<Self>,
        forwarder: &Forwarder,
        id: &str,
        session: &Arc<Session>,
        request: &Prepared,
    ) -> Result<(), Handled> {
        let _one = session.relinking.lock().await;
        if lock(&session.pending).link != Link::Down {
            return Ok(());
        }
        let failed = |message: &str| Handled::Yes(upstream_failed(request.rpc_id(), message));
        let (post_url, chunks, parser, after) = match open_stream(forwarder).await {
            Ok(opened) => opened,
            Err(Opening::Failed(message)) => return Err(failed(&message)),
            Err(Opening::Forward(e)) => return Err(Handled::Failed(e)),
        };
        let generation = self.spawn_reader(id, session, post_url.clone(), chunks, parser, after);
        // However the replay ends short of success (an error, or this request cancelled), the
        // new stream is not left open: the next message opens another.
        let mut unlinked = Unlinked(Some((session, generation)));
        let replayed = self
            .replay(forwarder, session, &post_url, generation, request)
            .await;
        if replayed.is_ok() {
            unlinked.0 = None;
        }
        replayed
    }

    /// Replays the client's `initialize` and `notifications/initialized` into the stream of
    /// `generation`, then lets the client's messages go.
    async fn replay(
        &self,
        forwarder: &Forwarder,
        session: &Arc<Session>,
        post_url: &url::Url,
        generation: u64,
        request: &Prepared,
    ) -> Result<(), Handled> {
        let failed = |message: &str| Handled::Yes(upstream_failed(request.rpc_id(), message));
        let posted = |why: Posted| match why {
            Posted::Refused(message) => failed(&message),
            Posted::Failed(e) => Handled::Failed(e),
        };

        let replay_id = Value::String(format!(
            "mcp-sidecar-reinitialize-{}",
            crate::token::endpoint::random_token()
        ));
        let mut initialize: Value = serde_json::from_slice(&session.initialize)
            .map_err(|_| failed("the session's initialize cannot be replayed"))?;
        initialize["id"] = replay_id.clone();
        let mut waiting = match session.expect_on(std::slice::from_ref(&replay_id), Link::Down) {
            Ok(registered) => registered.waiting,
            Err(NotWaiting::Ended) => return Err(Handled::Yes(session_gone(request.rpc_id()))),
            Err(_) => return Err(failed("the session's initialize cannot be replayed")),
        };
        let _forget = Forget::new(session, &waiting);
        post_message(forwarder, post_url, initialize.to_string().into())
            .await
            .map_err(posted)?;
        let answer = match waiting.pop() {
            Some((_, _, answer)) => tokio::time::timeout(ENDPOINT_WAIT, answer).await,
            None => return Err(failed("the replayed initialize could not wait")),
        };
        match answer {
            Ok(Ok(answer)) if answer.get("result").is_some() => {}
            Ok(Ok(_)) => return Err(failed("the upstream refused the replayed initialize")),
            _ => {
                return Err(failed(
                    "the upstream did not answer the replayed initialize",
                ));
            }
        }
        if session
            .initialized
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let initialized =
                serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            post_message(forwarder, post_url, initialized.to_string().into())
                .await
                .map_err(posted)?;
        }
        {
            let mut pending = lock(&session.pending);
            match pending.link {
                Link::Ended => return Err(Handled::Yes(session_gone(request.rpc_id()))),
                _ if pending.lost == Some(generation) => {
                    return Err(failed("the upstream's new SSE stream ended at once"));
                }
                _ => pending.link = Link::Up,
            }
        }
        crate::trace::note(crate::trace::Note::SessionReinitialized);
        tracing::info!(
            "the upstream's SSE stream of a bridged session had ended; opened another and replayed the client's initialize"
        );
        Ok(())
    }

    async fn in_session(
        self: &Arc<Self>,
        forwarder: &Forwarder,
        request: &Prepared,
        id: &str,
        session: Arc<Session>,
        keepalive: Duration,
    ) -> Handled {
        session.touch();
        match request.method {
            Method::POST => self.send(forwarder, request, id, &session).await,
            Method::GET => Handled::Yes(client_stream(&session, keepalive, self.shutdown.clone())),
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

    /// POSTs one message, or a batch, to the session's endpoint; its requests wait for their
    /// answers on the upstream stream, which are the reply (an array for a batch).
    async fn send(
        self: &Arc<Self>,
        forwarder: &Forwarder,
        request: &Prepared,
        id: &str,
        session: &Arc<Session>,
    ) -> Handled {
        let Ok(message) = serde_json::from_slice::<Value>(&request.body) else {
            return Handled::Yes(error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                Code::Refused,
                "mcp-sidecar: the body is not a JSON-RPC message (JSON)",
                "parse_error",
            ));
        };
        let messages = match &message {
            Value::Array(items) => items.as_slice(),
            one => std::slice::from_ref(one),
        };
        let ids_of = |wanted: fn(&str) -> bool| -> Vec<Value> {
            messages
                .iter()
                .filter(|m| m.get("method").and_then(Value::as_str).is_some_and(wanted))
                .filter_map(|m| m.get("id").filter(|id| !id.is_null()).cloned())
                .collect()
        };
        let requests = ids_of(|_| true);
        let lists = ids_of(|method| method == "tools/list");
        let mut relinked = false;
        let Registered {
            waiting,
            generation,
            post_url,
        } = loop {
            match session.expect(&requests) {
                Ok(registered) => break registered,
                Err(NotWaiting::Down) if !relinked => {
                    relinked = true;
                    if let Err(handled) = self.relink(forwarder, id, session, request).await {
                        return handled;
                    }
                }
                Err(NotWaiting::Ended | NotWaiting::Down) => {
                    return Handled::Yes(session_gone(request.rpc_id()));
                }
                Err(NotWaiting::Duplicate(duplicate)) => {
                    return Handled::Yes(error(
                        StatusCode::BAD_REQUEST,
                        duplicate,
                        Code::Refused,
                        "mcp-sidecar: a request with this id is already waiting for its answer in this session; ids of requests in flight must differ",
                        "duplicate_request_id",
                    ));
                }
            }
        };
        if messages
            .iter()
            .any(|m| m.get("method").and_then(Value::as_str) == Some("notifications/initialized"))
        {
            session
                .initialized
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // However this ends (the client gone too), the entries go.
        let _forget = Forget::new(session, &waiting);
        if !session.is_current(generation) {
            // Its stream ended since it registered, which failed its requests: posted now, it
            // would run (in the stream another message re-opened) with nobody waiting.
            return Handled::Yes(upstream_failed(
                request.rpc_id(),
                "the upstream's SSE stream ended before the message was sent, so it did not run; send it again",
            ));
        }
        match forwarder
            .forward(&message_post(post_url, request.body.clone()))
            .await
        {
            Ok(Forwarded::Answer(answer)) if answer.status.is_success() => {}
            Ok(Forwarded::Answer(answer)) if answer.status == StatusCode::NOT_FOUND => {
                // A proxy in between may keep the old stream looking open: it is dropped, and
                // the next message opens another and replays the client's initialize.
                tracing::info!(
                    "the upstream no longer knows a bridged session's message endpoint (404); the next message opens another stream"
                );
                session.drop_link(generation);
                return Handled::Yes(upstream_failed(
                    request.rpc_id(),
                    "the upstream no longer knew this session (HTTP 404 from its message endpoint), so the message did not run; send it again",
                ));
            }
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
        if waiting.is_empty() {
            return Handled::Yes(StatusCode::ACCEPTED.into_response());
        }
        let tools = forwarder.upstream().tools();
        let mut answers = Vec::with_capacity(waiting.len());
        for (_, _, answer) in waiting {
            let Ok(mut answer) = answer.await else {
                return Handled::Yes(upstream_failed(
                    request.rpc_id(),
                    "the upstream's SSE stream closed before it answered",
                ));
            };
            if tools.is_set() {
                tools.filter_answer(&lists, &mut answer);
            }
            answers.push(answer);
        }
        let reply = match (message.is_array(), answers.pop()) {
            (false, Some(answer)) => answer,
            (_, last) => {
                answers.extend(last);
                Value::Array(answers)
            }
        };
        Handled::Yes(axum::Json(reply).into_response())
    }
}

/// Why an upstream stream could not be opened.
enum Opening {
    /// What the client is told (502).
    Failed(String),
    Forward(ForwardError),
}

type Opened = (
    url::Url,
    crate::upstream::Body,
    crate::sse::Parser,
    Vec<crate::sse::Event>,
);

/// Opens the upstream's event stream with the credential and reads it up to its `endpoint`
/// event (only an endpoint on the upstream's own origin is used): where to POST, the stream
/// and what it sent after that event.
async fn open_stream(forwarder: &Forwarder) -> Result<Opened, Opening> {
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
            return Err(Opening::Failed(format!(
                "the upstream's SSE stream did not open (HTTP {})",
                answer.status.as_u16()
            )));
        }
        Ok(Forwarded::Away(_) | Forwarded::Refused(_)) => {
            return Err(Opening::Failed(
                "the upstream's SSE stream is not available".into(),
            ));
        }
        Err(e) => return Err(Opening::Forward(e)),
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
        tracing::warn!("the upstream's SSE stream announced no message endpoint on its own origin");
        return Err(Opening::Failed(
            "the upstream's SSE stream announced no message endpoint on its own origin".into(),
        ));
    };
    Ok((post_url, chunks, parser, after))
}

/// A POST of one message (or batch) to a session's message endpoint.
fn message_post(post_url: url::Url, body: Bytes) -> Prepared {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Prepared::new(Method::POST, Target::Legacy(post_url), &headers, body)
}

/// Why a message of the sidecar's own was not taken.
enum Posted {
    Refused(String),
    Failed(ForwardError),
}

/// POSTs a message of the sidecar's own (a replay) to the session's endpoint.
async fn post_message(
    forwarder: &Forwarder,
    post_url: &url::Url,
    body: Bytes,
) -> Result<(), Posted> {
    match forwarder
        .forward(&message_post(post_url.clone(), body))
        .await
    {
        Ok(Forwarded::Answer(answer)) if answer.status.is_success() => Ok(()),
        Ok(Forwarded::Answer(answer)) => Err(Posted::Refused(format!(
            "the upstream refused the replayed message (HTTP {})",
            answer.status.as_u16()
        ))),
        Ok(_) => Err(Posted::Refused(
            "the upstream did not take the replayed message".into(),
        )),
        Err(e) => Err(Posted::Failed(e)),
    }
}

/// Removes a request's waiting entries when its POST ends, answered or not; only its own
/// (another request may reuse an id once this one was answered).
struct Forget<'a> {
    session: &'a Session,
    entries: Vec<(String, u64)>,
}

impl<'a> Forget<'a> {
    fn new(session: &'a Session, waiting: &[Waiting]) -> Self {
        Self {
            session,
            entries: waiting
                .iter()
                .map(|(key, label, _)| (key.clone(), *label))
                .collect(),
        }
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.session.pending);
        for (key, label) in &self.entries {
            if pending.by_id.get(key).is_some_and(|(own, _)| own == label) {
                pending.by_id.remove(key);
            }
        }
    }
}

/// Stops the reader of a re-opened stream (of its generation) whose replay did not succeed.
struct Unlinked<'a>(Option<(&'a Session, u64)>);

impl Drop for Unlinked<'_> {
    fn drop(&mut self) {
        if let Some((session, generation)) = self.0 {
            session.drop_link(generation);
        }
    }
}

/// Ends a session made by an `initialize` whose client never got its id.
struct Unclaimed<'a> {
    sessions: &'a Sessions,
    id: Option<&'a str>,
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id
            && let Some(session) = self.sessions.remove(id)
        {
            session.end();
        }
    }
}

/// Reads the upstream's event stream for one session until it ends, breaks off, sends an
/// event over `MAX_BODY_BYTES` or the sidecar shuts down: answers go to the POSTs waiting for
/// them, everything else to the client's GET stream.
async fn read_upstream<S, E>(
    sessions: Arc<Sessions>,
    (id, generation): (String, u64),
    session: Arc<Session>,
    mut chunks: S,
    mut parser: crate::sse::Parser,
    already: Vec<crate::sse::Event>,
) where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let max = sessions.max_event_bytes;
    let too_large = std::sync::atomic::AtomicBool::new(false);
    let deliver = |event: crate::sse::Event| {
        if event.event.as_deref().is_some_and(|kind| kind != "message") {
            return;
        }
        if event.data.len() > max {
            too_large.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let Ok(mut message) = serde_json::from_str::<Value>(&event.data) else {
            tracing::warn!("the upstream sent an event that is not JSON; dropped");
            return;
        };
        crate::secret::scrub_json(&mut message);
        let answer =
            message.get("method").is_none() && message.get("id").is_some_and(|id| !id.is_null());
        if !answer {
            session.to_client(&message);
        } else if session.answer(message).is_err() {
            // Streamable HTTP puts answers on the POST that asked, never on the GET stream.
            tracing::debug!("the upstream answered a request nobody waits for any more; dropped");
        }
    };
    for event in already {
        deliver(event);
    }
    let mut shutdown = sessions.shutdown.clone();
    // Whether the session can go on with another stream.
    let recoverable = loop {
        let chunk = tokio::select! {
            chunk = chunks.next() => chunk,
            _ = shutdown.wait_for(|stop| *stop) => break false,
        };
        match chunk {
            Some(Ok(chunk)) => {
                for event in parser.push(&chunk) {
                    deliver(event);
                }
                if parser.buffered() > max || too_large.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        limit = max,
                        "the upstream's SSE stream sent an event larger than MAX_BODY_BYTES; ended the bridged session"
                    );
                    break false;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %crate::secret::scrub(&e.to_string()), "the upstream's SSE stream of a bridged session broke off; the next message opens another");
                break true;
            }
            None => {
                tracing::info!(
                    "the upstream's SSE stream of a bridged session ended; the next message opens another"
                );
                break true;
            }
        }
    };
    // Not `end`: that would abort this very task before it returns.
    if recoverable {
        session.lost_link(generation);
    } else {
        sessions.remove(&id);
        session.close();
    }
}

/// The client's GET stream of a bridged session (replacing one it opened before); it ends at
/// shutdown, between two events.
fn client_stream(
    session: &Session,
    keepalive: Duration,
    shutdown: watch::Receiver<bool>,
) -> Response {
    let (tx, rx) = mpsc::channel::<String>(STREAM_QUEUE);
    *lock(&session.client_stream) = Some(tx);
    let events =
        futures_util::stream::unfold((rx, shutdown), move |(mut rx, mut shutdown)| async move {
            let frame = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return None,
                next = tokio::time::timeout(keepalive, rx.recv()) => match next {
                    Ok(Some(line)) => Bytes::from(format!("event: message\ndata: {line}\n\n")),
                    Ok(None) => return None,
                    Err(_) => Bytes::from_static(b":\n\n"),
                },
            };
            Some((Ok::<_, Infallible>(frame), (rx, shutdown)))
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

/// A reply of the bridge as the forwarder hands over an upstream's. Its bodies are made here
/// (JSON, or the GET stream's channel) and cannot fail.
fn answer_of(response: Response) -> Answer {
    let (parts, body) = response.into_parts();
    let chunks = body
        .into_data_stream()
        .filter_map(|chunk| std::future::ready(chunk.ok()))
        .map(Ok);
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: crate::upstream::Body::from_stream(chunks),
        follow: None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A request registered just before its stream ended, posted after another message had
    /// re-opened the stream: it must not run in the new stream (where nobody waits for its
    /// answer and its client is told 502), and the old endpoint's 404 must not drop the new link.
    #[test]
    fn a_message_goes_to_the_stream_it_registered_on_never_to_a_later_one() {
        let old = url::Url::parse("http://upstream.test/messages?session=old").unwrap();
        let new = url::Url::parse("http://upstream.test/messages?session=new").unwrap();
        let session = Session::new(Bytes::new(), old.clone());
        let first = session.next_stream(old.clone());

        let Ok(mut registered) = session.expect(&[Value::from(1)]) else {
            panic!("the link is up: the request registers");
        };
        assert_eq!((registered.generation, &registered.post_url), (first, &old));

        // The stream ends; another message opens the next one and replays the initialize.
        session.lost_link(first);
        let (_, _, mut answer) = registered.waiting.pop().expect("one request registered");
        assert!(
            answer.try_recv().is_err(),
            "the lost stream failed the request"
        );
        let second = session.next_stream(new.clone());
        lock(&session.pending).link = Link::Up;

        assert!(!session.is_current(registered.generation));
        assert_eq!(
            registered.post_url, old,
            "the message keeps its own stream's endpoint"
        );
        session.drop_link(registered.generation);
        assert!(
            session.is_current(second),
            "the old endpoint's 404 leaves the new link up"
        );

        let Ok(later) = session.expect(&[Value::from(2)]) else {
            panic!("the new link is up");
        };
        assert_eq!((later.generation, later.post_url), (second, new));
    }
}
