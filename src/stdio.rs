//! The stdio front: an MCP server on stdin/stdout (newline-delimited JSON-RPC, the MCP stdio
//! transport) for hosts that only spawn subprocesses, forwarding every message through the same
//! [`Forwarder`] as the HTTP front.
//!
//! It owns what an HTTP client would otherwise own: the upstream session id and the negotiated
//! protocol version (the host never sees either), the GET stream opened after initialization,
//! and the map of in-flight requests that `notifications/cancelled` ends. Each client message
//! is forwarded in a task of its own, so a slow tool call does not hold up the host's other
//! calls; one writer task owns stdout, so every line written is one whole JSON-RPC message.
//!
//! stdout carries nothing else: logs go to stderr ([`crate::telemetry`]), and a closed stdout
//! (the host went away) ends the front like stdin EOF, never a panic. Every text from the
//! upstream is scrubbed of known secrets before it is written.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::failure::Reason;
use crate::forwarder::{ForwardError, Forwarded, Forwarder, Prepared, Target};
use crate::jsonrpc::Code;
use crate::mcp::MCP_SESSION_ID;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::session::Sessions;
use crate::upstream::{RefusedAnswer, Upstream, UpstreamError};

/// JSON-RPC's own codes for input the front cannot take.
const PARSE_ERROR: i32 = -32700;
const INVALID_REQUEST: i32 = -32600;

/// Lines waiting for stdout; a host that stops reading slows the upstream reads down rather
/// than growing memory.
const OUTPUT_QUEUE: usize = 256;
/// Requests of one client waiting for the upstream at once; past that a request is answered
/// with an error at once. Each holds an upstream request open, and the SSE bridge's clients are
/// remote: without a bound one of them could open any number.
const MAX_REQUESTS_IN_FLIGHT: usize = 64;
/// Every message being handled (notifications and the client's answers too); past that a
/// request is answered with an error as above and any other message is dropped, with a warning.
const MAX_TASKS: usize = 2 * MAX_REQUESTS_IN_FLIGHT;

static PROTOCOL_VERSION: header::HeaderName =
    header::HeaderName::from_static("mcp-protocol-version");

/// The `STATE_DIR` default of a stdio process a user's host spawns outside a container:
/// `$XDG_STATE_HOME/mcp-sidecar`, else `~/.local/state/mcp-sidecar` (the XDG base directory
/// spec ignores a relative `XDG_STATE_HOME`). A host kills idle stdio servers and respawns them,
/// so tokens held in memory alone would cost a login each time; `/var/lib/mcp-sidecar` (the
/// image's volume) is seldom writable by a user. `None` in a container, or without a home.
pub fn user_state_dir(env: &HashMap<String, String>, in_container: bool) -> Option<PathBuf> {
    if in_container {
        return None;
    }
    let absolute = |key: &str| {
        env.get(key)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local").join("state")))
        .map(|base| base.join("mcp-sidecar"))
}

/// Whether this process runs in a container: the files Docker and podman create, or the
/// variables Kubernetes and podman set.
pub fn in_container(env: &HashMap<String, String>) -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || env.contains_key("KUBERNETES_SERVICE_HOST")
        || env.contains_key("container")
}

/// Why the front could not start.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("{0}")]
    Setup(String),
}

/// Who started the process: a host, with stdin a pipe (the usual case), or a person in a
/// terminal, who is shown a pending login on stderr and gets the sign-in page opened in a
/// browser where one exists (`env` says where: [`crate::browser`]).
pub enum Started {
    ByHost,
    ByHand { env: HashMap<String, String> },
}

/// Runs the front on `input`/`output` until `input` ends, `output` is closed or `shutdown`
/// resolves; then ends the upstream session (`DELETE`) within `config.shutdown_grace`.
pub async fn run<R, W>(
    config: Config,
    input: R,
    output: W,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: Started,
) -> Result<(), StdioError>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Secrets loaded with the configuration stay known for scrubbing as long as the process runs.
    crate::secret::seal();
    // Held to the end, as `serve` holds it in `App`: the login side of the manager.
    let mut config = config;
    let settings = config
        .take_single_upstream("mcp-sidecar stdio")
        .map_err(StdioError::Setup)?;
    let (upstream, built) = Upstream::start(
        &settings.name,
        settings.auth,
        &settings.upstream,
        &settings.state_dir,
        config.state_store.as_ref(),
    )
    .map_err(StdioError::Setup)?;
    let readiness = Readiness::new(settings.ready);
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let checker = {
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(
            readiness
                .clone()
                .run_checker(upstream.clone(), metrics, async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                }),
        )
    };
    let input: Box<dyn AsyncBufRead + Unpin + Send> = match started {
        Started::ByHost => Box::new(input),
        Started::ByHand { env } => {
            use crate::terminal_login::{Browser, paste_back, show_device_codes, split_pasted};
            let browser = Browser {
                in_container: in_container(&env),
                env,
            };
            tokio::spawn(show_device_codes(readiness.clone(), browser.clone()));
            match built.manager.clone().zip(built.authorization.clone()) {
                // Stdin carries the pasted redirect too.
                Some((manager, grant)) => {
                    let (pasted_tx, pasted_rx) = mpsc::channel(4);
                    let (messages, pump_input) = tokio::io::duplex(64 * 1024);
                    tokio::spawn(split_pasted(input, messages, pasted_tx));
                    tokio::spawn(paste_back(
                        readiness.clone(),
                        manager,
                        grant,
                        browser,
                        pasted_rx,
                    ));
                    Box::new(tokio::io::BufReader::new(pump_input))
                }
                None => Box::new(input),
            }
        }
    };
    tracing::info!(
        upstream = %crate::net::display_url(upstream.url()),
        state_dir = %settings.state_dir.display(),
        auth = upstream.tokens().status().source,
        version = env!("CARGO_PKG_VERSION"),
        "mcp-sidecar stdio front started"
    );

    let (lines, queue) = mpsc::channel::<String>(OUTPUT_QUEUE);
    let (closed_tx, closed_rx) = watch::channel(false);
    let writer = tokio::spawn(write_lines(output, queue, closed_tx));
    let forwarder = Arc::new(Forwarder::new(
        upstream.clone(),
        Sessions::new(config.sessions),
        readiness.clone(),
        settings.ready.timeout,
    ));
    let settings = Pump {
        forwarder,
        sse_sessions: crate::sse_upstream::Sessions::new(
            config.sessions,
            config.max_body_bytes,
            stop_rx.clone(),
        ),
        readiness,
        ready_timeout: config.stdio_ready_timeout,
        max_message_bytes: config.max_body_bytes,
        shutdown_grace: config.shutdown_grace,
        input: "stdin",
        output: "stdout",
        wrong_transport: crate::legacy::WRONG_TRANSPORT_STDIO,
    };
    pump(settings, input, lines, closed_rx, shutdown).await;
    let _ = stop_tx.send(true);
    // The writer ends once every sender is gone: the pump's and its tasks'.
    let _ = tokio::time::timeout(config.shutdown_grace / 4, writer).await;
    let _ = checker.await;
    Ok(())
}

/// What [`pump`] forwards with, and how it names its two ends in logs.
pub struct Pump {
    pub forwarder: Arc<Forwarder>,
    /// Sessions bridged to an upstream that speaks only HTTP+SSE.
    pub sse_sessions: Arc<crate::sse_upstream::Sessions>,
    pub readiness: Arc<Readiness>,
    /// How long `initialize` waits for the readiness handshake (`STDIO_READY_TIMEOUT`).
    pub ready_timeout: Duration,
    pub max_message_bytes: usize,
    pub shutdown_grace: Duration,
    pub input: &'static str,
    pub output: &'static str,
    /// What a client is told when the upstream turns out to speak the HTTP+SSE transport.
    pub wrong_transport: &'static str,
}

/// The message pump of a front that holds the upstream session on its client's behalf: each
/// line of `input` is one client message; every message for the client is sent to `out` as one
/// line. Runs until `input` ends, `closed` turns true (nobody reads `out` any more) or
/// `shutdown` resolves; then gives calls in flight half the grace and ends the upstream session
/// (`DELETE`) within the other half. The stdio front runs it on stdin/stdout, the SSE bridge
/// ([`crate::bridge`]) on one legacy client's POSTs and event stream.
pub async fn pump<R>(
    settings: Pump,
    input: R,
    out: mpsc::Sender<String>,
    mut closed_rx: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    R: AsyncBufRead + Unpin + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let front = Arc::new(Front {
        forwarder: settings.forwarder,
        sse_sessions: settings.sse_sessions,
        readiness: settings.readiness,
        ready_timeout: settings.ready_timeout,
        max_message_bytes: settings.max_message_bytes,
        input: settings.input,
        wrong_transport: settings.wrong_transport,
        session: Mutex::new(None),
        protocol: Mutex::new(None),
        out,
        stream_opened: Mutex::new(false),
        stop: stop_rx,
        initializing: watch::channel(false).0,
    });

    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut input = input;
    let mut line = Vec::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // Cancel-safe: bytes read before another branch won stay in `line`.
            read = input.read_until(b'\n', &mut line) => match read {
                Ok(0) => {
                    tracing::info!(input = settings.input, "the client's input ended; ending the upstream session");
                    break;
                }
                Ok(_) => {
                    let cancelled = front.clone().accept(&line, &mut tasks, &mut in_flight, &mut names);
                    line.clear();
                    if let Some(cancelled) = cancelled
                        && let Some(handle) = in_flight.remove(&cancelled)
                    {
                        tracing::debug!(request = %cancelled, "cancelled by the client; dropping the upstream request");
                        handle.abort();
                    }
                }
                Err(e) => {
                    tracing::warn!(input = settings.input, error = %e, "cannot read the client's input; stopping");
                    break;
                }
            },
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(key) = names.remove(&id)
                    && in_flight.get(&key).is_some_and(|h| h.id() == id)
                {
                    in_flight.remove(&key);
                }
            }
            _ = closed_rx.wait_for(|closed| *closed) => {
                tracing::info!(output = settings.output, "the client's output closed; stopping");
                break;
            }
            () = &mut shutdown => break,
        }
    }

    // Calls already made get half the grace to finish (a host that closes stdin right after
    // its last request still wants the answer); the DELETE gets the rest.
    let grace = settings.shutdown_grace;
    let drained = tokio::time::timeout(grace / 2, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "requests still open after the grace period; dropped them"
        );
    }
    tasks.abort_all();
    // Ends the GET stream's relay.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(grace / 2, front.end_session())
        .await
        .is_err()
    {
        tracing::warn!("the upstream did not answer the session's DELETE in time");
    }
}

/// Writes each queued line to `output`, flushed, until the queue ends or `output` fails; a
/// failed write (the host closed our stdout) is reported on `closed`.
async fn write_lines<W: AsyncWrite + Unpin>(
    mut output: W,
    mut queue: mpsc::Receiver<String>,
    closed: watch::Sender<bool>,
) {
    while let Some(mut line) = queue.recv().await {
        line.push('\n');
        let written = async {
            output.write_all(line.as_bytes()).await?;
            output.flush().await
        };
        if let Err(e) = written.await {
            tracing::debug!(error = %e, "cannot write to stdout");
            let _ = closed.send(true);
            return;
        }
    }
}

/// What every message's task shares.
struct Front {
    forwarder: Arc<Forwarder>,
    sse_sessions: Arc<crate::sse_upstream::Sessions>,
    readiness: Arc<Readiness>,
    ready_timeout: Duration,
    max_message_bytes: usize,
    /// What the client's input is called in its parse errors ("stdin").
    input: &'static str,
    wrong_transport: &'static str,
    /// The upstream session, as the forwarder knows it (it maps it to the current upstream id).
    session: Mutex<Option<String>>,
    /// The protocol version the upstream chose in its `initialize` result.
    protocol: Mutex<Option<String>>,
    out: mpsc::Sender<String>,
    stream_opened: Mutex<bool>,
    stop: watch::Receiver<bool>,
    /// True while a `notifications/initialized` is on its way upstream. The host sends it and
    /// its next requests back to back; each runs in a task of its own, so without this a
    /// `tools/list` could reach the upstream first, and a server that finishes setting up the
    /// session on `initialized` (server-everything adds its roots tools then) answers it from a
    /// half-made session.
    initializing: watch::Sender<bool>,
}

/// Ends the [`Front::initializing`] wait however the notification's task ends (aborted too).
struct Initialized<'a>(&'a watch::Sender<bool>);

impl Drop for Initialized<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// A client message, classified.
enum Kind {
    /// Has a method and an id: the host waits for an answer.
    Request {
        id: Value,
        method: String,
    },
    Notification {
        method: String,
    },
    /// An answer to a server-to-client request, or a batch: forwarded as it is.
    Other,
}

fn classify(message: &Value) -> Kind {
    let method = message.get("method").and_then(Value::as_str);
    match (method, message.get("id")) {
        (Some(method), Some(id)) if !id.is_null() => Kind::Request {
            id: id.clone(),
            method: method.to_string(),
        },
        (Some(method), _) => Kind::Notification {
            method: method.to_string(),
        },
        _ => Kind::Other,
    }
}

/// The key of a request id in the in-flight map: ids are numbers or strings, compared as JSON.
fn id_key(id: &Value) -> String {
    id.to_string()
}

impl Front {
    /// Takes one line from stdin: answers what the front answers itself (invalid JSON, an
    /// oversized message) and starts a task for everything else. Returns the key of the request
    /// a `notifications/cancelled` names, for the caller to end.
    fn accept(
        self: Arc<Self>,
        line: &[u8],
        tasks: &mut JoinSet<()>,
        in_flight: &mut HashMap<String, tokio::task::AbortHandle>,
        names: &mut HashMap<tokio::task::Id, String>,
    ) -> Option<String> {
        let text = line.trim_ascii();
        if text.is_empty() {
            return None;
        }
        if text.len() > self.max_message_bytes {
            self.emit_error(
                Value::Null,
                INVALID_REQUEST,
                &format!(
                    "mcp-sidecar: the message is larger than MAX_BODY_BYTES ({} bytes)",
                    self.max_message_bytes
                ),
                "too_large",
                None,
            );
            return None;
        }
        let message: Value = match serde_json::from_slice(text) {
            Ok(message) => message,
            Err(e) => {
                self.emit_error(
                    Value::Null,
                    PARSE_ERROR,
                    &format!("mcp-sidecar: {} line is not JSON ({e})", self.input),
                    "parse_error",
                    None,
                );
                return None;
            }
        };
        let body = Bytes::copy_from_slice(text);
        let kind = classify(&message);
        let cancelled = match &kind {
            Kind::Notification { method } if method == "notifications/cancelled" => message
                .pointer("/params/requestId")
                .filter(|id| !id.is_null())
                .map(id_key),
            _ => None,
        };
        let key = match &kind {
            Kind::Request { id, .. } => Some(id_key(id)),
            _ => None,
        };
        if let Kind::Request { id, .. } = &kind
            && in_flight.len() >= MAX_REQUESTS_IN_FLIGHT
        {
            tracing::warn!(
                limit = MAX_REQUESTS_IN_FLIGHT,
                "the client has too many requests in flight; answered one with an error"
            );
            self.emit_error(
                id.clone(),
                Code::Refused as i32,
                &format!(
                    "mcp-sidecar: {MAX_REQUESTS_IN_FLIGHT} requests of this client are already waiting for the upstream; this one was not sent (send it again once one is answered)"
                ),
                "too_many_requests",
                None,
            );
            return None;
        }
        if tasks.len() >= MAX_TASKS {
            if let Kind::Request { id, .. } = &kind {
                self.emit_error(
                    id.clone(),
                    Code::Refused as i32,
                    &format!(
                        "mcp-sidecar: {MAX_TASKS} messages of this client are already being handled; this request was not sent (send it again once one is answered)"
                    ),
                    "too_many_requests",
                    None,
                );
            }
            tracing::warn!(
                limit = MAX_TASKS,
                "the client sends messages faster than the upstream takes them; refused or dropped one"
            );
            return cancelled;
        }
        // Set before the next line is read, so every message after it waits for it.
        let initialized =
            matches!(&kind, Kind::Notification { method } if method == "notifications/initialized");
        if initialized {
            self.initializing.send_replace(true);
        }
        let handle = tasks.spawn(self.handle(kind, body, initialized));
        if let Some(key) = key {
            names.insert(handle.id(), key.clone());
            in_flight.insert(key, handle);
        }
        cancelled
    }

    async fn handle(self: Arc<Self>, kind: Kind, body: Bytes, initialized: bool) {
        let _initialized = if initialized {
            Some(Initialized(&self.initializing))
        } else {
            let mut sent = self.initializing.subscribe();
            // Err: the sender is the front's own, alive as long as this task's `self`.
            let _ = sent.wait_for(|pending| !*pending).await;
            None
        };
        if let Kind::Request { id, method } = &kind
            && method == "initialize"
            && let Err(report) = self.wait_ready().await
        {
            let reason = report.reason;
            let mut detail = crate::secret::scrub(&report.detail);
            let mut login = report.login;
            let how = match &login {
                Some(device) if device.user_code.is_some() => format!(
                    "; to log in, open {} and enter the code {}",
                    device
                        .verification_uri_complete
                        .as_deref()
                        .unwrap_or(&device.verification_uri),
                    device.user_code.as_deref().unwrap_or_default()
                ),
                // An authorization code comes back to the sidecar's login page, which nothing
                // serves in this process.
                Some(page) => {
                    detail = detail.replace(&page.describe(), "a person has to log in");
                    login = None;
                    "; to log in, run mcp-sidecar stdio (or mcp-sidecar login) with this configuration in a terminal: it shows the authorization URL and reads the redirected URL pasted back".to_string()
                }
                None => String::new(),
            };
            let message = format!(
                "mcp-sidecar: the upstream is not ready ({}): {detail}{how}",
                reason.as_str(),
            );
            let data = json!({
                "source": "mcp-sidecar",
                "reason": reason.as_str(),
                "detail": detail,
                "login": login,
            });
            self.write(json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": { "code": reason_code(reason) as i32, "message": message, "data": data },
            }))
            .await;
            return;
        }
        let request = self.prepare(Method::POST, body);
        match self.forward(&request).await {
            Ok(Forwarded::Answer(answer)) => {
                let status = answer.status;
                let event_stream = crate::sse::is_event_stream(&answer.headers);
                if let Kind::Request { method, .. } = &kind
                    && method == "initialize"
                    && status.is_success()
                    && let Some(id) = answer
                        .headers
                        .get(&MCP_SESSION_ID)
                        .and_then(|v| v.to_str().ok())
                {
                    *lock(&self.session) = Some(id.to_string());
                }
                let initialize =
                    matches!(&kind, Kind::Request { method, .. } if method == "initialize");
                if let Kind::Request { id, .. } = &kind
                    && crate::legacy::is_wrong_transport(&answer, &self.readiness)
                {
                    self.emit_error(
                        id.clone(),
                        Code::UpstreamFailed as i32,
                        self.wrong_transport,
                        crate::legacy::WRONG_TRANSPORT,
                        None,
                    );
                    return;
                }
                if event_stream && status.is_success() {
                    self.relay_events(answer.body, initialize).await;
                } else {
                    self.relay_json(&kind, status, answer.body, initialize)
                        .await;
                }
                if let Kind::Notification { method } = &kind
                    && method == "notifications/initialized"
                    && status.is_success()
                {
                    self.clone().open_stream();
                }
            }
            // A POST is never held for an absent upstream; only GET streams are.
            Ok(Forwarded::Away(_)) => {}
            // A notification has nobody to answer (the forwarder logged it).
            Ok(Forwarded::Refused(refusal)) => {
                if refusal.has_id {
                    self.write(refusal.body).await;
                }
            }
            Err(ForwardError::Upstream(UpstreamError::Forbidden(refused))) => {
                self.refused(&kind, *refused).await;
            }
            Err(error) => self.failed(&kind, &error),
        }
    }

    /// A request the upstream refused with a 403 that is not about the credential: the host
    /// gets the upstream's answer as the HTTP front gives it ([`crate::upstream::refused_answer`]),
    /// under the request's id (the host matches answers by id, and the upstream's may lack it).
    async fn refused(&self, kind: &Kind, refused: crate::upstream::Response) {
        let failure = crate::failure::Failure::UpstreamForbidden;
        let upstream_status = refused.status().as_u16();
        let Kind::Request { id, method } = kind else {
            tracing::warn!(
                reason = failure.reason(),
                upstream_status,
                "the upstream refused a notification or response"
            );
            return;
        };
        tracing::warn!(
            rpc = %method,
            reason = failure.reason(),
            upstream_status,
            "the upstream refused a request (no Bearer challenge: not about the credential); passing its answer on"
        );
        match crate::upstream::refused_answer(refused).await {
            RefusedAnswer::JsonRpc(mut message) => {
                message["id"] = id.clone();
                self.write(message).await;
            }
            RefusedAnswer::Message(message) => self.emit_error(
                id.clone(),
                failure.code() as i32,
                &format!("mcp-sidecar: {message}"),
                failure.reason(),
                None,
            ),
        }
    }

    /// Waits, at most `STDIO_READY_TIMEOUT`, for the readiness handshake to pass.
    async fn wait_ready(&self) -> Result<(), crate::readiness::Report> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut changes = self.readiness.subscribe();
        loop {
            let report = self.readiness.report();
            if report.ready {
                return Ok(());
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Err(report) },
                () = tokio::time::sleep_until(deadline) => {
                    let report = self.readiness.report();
                    return if report.ready { Ok(()) } else { Err(report) };
                }
            }
        }
    }

    /// Through the bridge to an upstream that speaks only HTTP+SSE ([`crate::sse_upstream`]),
    /// else straight through the forwarder.
    async fn forward(&self, request: &Prepared) -> Result<Forwarded, ForwardError> {
        if self.readiness.speaks_sse_transport() {
            return self.sse_sessions.forward(&self.forwarder, request).await;
        }
        self.forwarder.forward(request).await
    }

    fn prepare(&self, method: Method, body: Bytes) -> Prepared {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(if method == Method::GET {
                "text/event-stream"
            } else {
                "application/json, text/event-stream"
            }),
        );
        if method == Method::POST {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(id) = lock(&self.session).as_deref()
            && let Ok(value) = HeaderValue::try_from(id)
        {
            headers.insert(MCP_SESSION_ID.clone(), value);
        }
        if let Some(version) = lock(&self.protocol).as_deref()
            && let Ok(value) = HeaderValue::try_from(version)
        {
            headers.insert(PROTOCOL_VERSION.clone(), value);
        }
        Prepared::new(method, Target::Endpoint { query: None }, &headers, body)
    }

    /// Writes each event of an SSE answer as it arrives: progress, server-to-client requests,
    /// the final response.
    async fn relay_events<S, E>(&self, chunks: S, initialize: bool)
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let mut chunks = chunks;
        let mut parser = crate::sse::Parser::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::warn!(error = %crate::secret::scrub(&e.to_string()), "the upstream's event stream broke off");
                    return;
                }
            };
            for event in parser.push(&chunk) {
                if event.data.trim().is_empty() {
                    // Priming events carry only an id.
                    continue;
                }
                self.relay_text(event.data.as_bytes(), initialize).await;
            }
        }
    }

    /// Writes a JSON answer as one line; a non-JSON error answer to a request becomes a
    /// JSON-RPC error with the request's id.
    async fn relay_json<S, E>(&self, kind: &Kind, status: StatusCode, chunks: S, initialize: bool)
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let mut chunks = chunks;
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(e) => {
                    tracing::warn!(error = %crate::secret::scrub(&e.to_string()), "the upstream's answer broke off");
                    break;
                }
            }
        }
        let body = crate::secret::scrub_bytes(&body);
        if body.trim_ascii().is_empty() {
            if !status.is_success()
                && let Kind::Request { id, .. } = kind
            {
                self.emit_error(
                    id.clone(),
                    Code::UpstreamFailed as i32,
                    &format!("mcp-sidecar: the upstream answered HTTP {status} with no body"),
                    "handshake_failed",
                    None,
                );
            }
            return;
        }
        if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object() || v.is_array()) {
            self.relay_text(&body, initialize).await;
            return;
        }
        let text = String::from_utf8_lossy(&body);
        match kind {
            Kind::Request { id, .. } => self.emit_error(
                id.clone(),
                Code::UpstreamFailed as i32,
                &format!(
                    "mcp-sidecar: the upstream answered HTTP {status}, not JSON-RPC: {}",
                    crate::secret::excerpt(&text, 200)
                ),
                "handshake_failed",
                None,
            ),
            _ => tracing::warn!(
                %status,
                body = %crate::secret::excerpt(&text, 200),
                "the upstream answered a notification with something other than JSON-RPC"
            ),
        }
    }

    /// Writes one upstream message as one line, its strings scrubbed once decoded (JSON may
    /// escape any character of a secret). An `initialize` result also sets the protocol version
    /// later requests carry.
    async fn relay_text(&self, text: &[u8], initialize: bool) {
        let mut message: Value = match serde_json::from_slice(text) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "the upstream sent an event that is not JSON; dropped");
                return;
            }
        };
        crate::secret::scrub_json(&mut message);
        if initialize
            && let Some(version) = message
                .pointer("/result/protocolVersion")
                .and_then(Value::as_str)
        {
            *lock(&self.protocol) = Some(version.to_string());
        }
        self.write(message).await;
    }

    /// The answer to a message that could not be delivered: a JSON-RPC error for a request, a
    /// log line for anything else.
    fn failed(&self, kind: &Kind, error: &ForwardError) {
        let failure = error.failure();
        let cause = crate::secret::scrub(&error.to_string());
        match kind {
            Kind::Request { id, method } => {
                tracing::warn!(rpc = %method, reason = failure.reason(), error = %cause, "could not forward a request");
                self.emit_error(
                    id.clone(),
                    failure.code() as i32,
                    &format!("mcp-sidecar: {cause}"),
                    failure.reason(),
                    None,
                );
            }
            _ => {
                tracing::warn!(reason = failure.reason(), error = %cause, "could not forward a message");
            }
        }
    }

    /// Opens the upstream's GET stream once per session and writes its messages (notifications,
    /// server-to-client requests) as they arrive; it is re-attached through an upstream outage
    /// ([`crate::stream::follow`]).
    fn open_stream(self: Arc<Self>) {
        {
            let mut opened = lock(&self.stream_opened);
            if *opened {
                return;
            }
            *opened = true;
        }
        tokio::spawn(async move {
            let mut stop = self.stop.clone();
            let request = self.prepare(Method::GET, Bytes::new());
            let stream = async {
                match self.forward(&request).await {
                    Ok(Forwarded::Answer(answer))
                        if answer.status.is_success()
                            && crate::sse::is_event_stream(&answer.headers) =>
                    {
                        match answer.follow {
                            Some(follow) => {
                                let stream =
                                    crate::stream::follow(Some(Box::pin(answer.body)), follow);
                                self.relay_events(Box::pin(stream), false).await;
                            }
                            None => self.relay_events(answer.body, false).await,
                        }
                        tracing::info!("the upstream's GET stream ended");
                    }
                    Ok(Forwarded::Answer(answer)) => tracing::debug!(
                        status = answer.status.as_u16(),
                        "the upstream offers no GET stream"
                    ),
                    Ok(Forwarded::Away(follow)) => {
                        let stream = crate::stream::follow(None, follow);
                        self.relay_events(Box::pin(stream), false).await;
                    }
                    // The tool policy reads POSTs only.
                    Ok(Forwarded::Refused(_)) => {}
                    Err(e) => tracing::warn!(
                        error = %crate::secret::scrub(&e.to_string()),
                        "cannot open the upstream's GET stream"
                    ),
                }
            };
            tokio::select! {
                () = stream => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
    }

    /// Ends the upstream session, if there is one.
    async fn end_session(&self) {
        if lock(&self.session).is_none() {
            return;
        }
        let request = self.prepare(Method::DELETE, Bytes::new());
        match self.forward(&request).await {
            Ok(Forwarded::Answer(answer)) => {
                tracing::info!(
                    status = answer.status.as_u16(),
                    "ended the upstream session"
                )
            }
            // The tool policy reads POSTs only.
            Ok(Forwarded::Away(_) | Forwarded::Refused(_)) => {}
            Err(e) => tracing::warn!(
                error = %crate::secret::scrub(&e.to_string()),
                "cannot end the upstream session"
            ),
        }
    }

    fn emit_error(&self, id: Value, code: i32, message: &str, reason: &str, data: Option<Value>) {
        let data = data.unwrap_or_else(|| json!({ "source": "mcp-sidecar", "reason": reason }));
        let line = json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": code, "message": message, "data": data },
        });
        // Called from the reading loop too, which must not wait on a full queue: a host that
        // stops reading loses the front's own error lines first.
        if self.out.try_send(line.to_string()).is_err() {
            tracing::warn!("stdout is not being read; dropped an error reply");
        }
    }

    async fn write(&self, message: Value) {
        // Fails only once the writer stopped (stdout closed), which ends the front anyway.
        let _ = self.out.send(message.to_string()).await;
    }
}

/// The JSON-RPC code for a readiness reason, as the HTTP front words the same failures.
fn reason_code(reason: Reason) -> Code {
    match reason {
        Reason::AuthRequired => Code::AuthRequired,
        Reason::UpstreamUnreachable | Reason::Starting => Code::UpstreamUnreachable,
        Reason::UpstreamAuthRejected => Code::UpstreamAuthRejected,
        Reason::HandshakeFailed | Reason::Ready => Code::UpstreamFailed,
    }
}

/// The lock, also when a task panicked holding it: the values are plain ids, never half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_user_state_dir_follows_xdg_then_home_and_not_in_a_container() {
        let both = env(&[("XDG_STATE_HOME", "/x/state"), ("HOME", "/home/u")]);
        assert_eq!(
            user_state_dir(&both, false),
            Some(PathBuf::from("/x/state/mcp-sidecar"))
        );
        assert_eq!(user_state_dir(&both, true), None);
        let relative = env(&[("XDG_STATE_HOME", "state"), ("HOME", "/home/u")]);
        assert_eq!(
            user_state_dir(&relative, false),
            Some(PathBuf::from("/home/u/.local/state/mcp-sidecar"))
        );
        assert_eq!(user_state_dir(&env(&[]), false), None);
    }

    #[test]
    fn ids_of_the_same_value_are_one_key() {
        assert_eq!(id_key(&json!(5)), id_key(&json!(5)));
        assert_ne!(id_key(&json!(5)), id_key(&json!("5")));
    }
}
