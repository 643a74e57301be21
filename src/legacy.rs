//! The legacy HTTP+SSE transport (protocol 2024-11-05), still spoken by many deployed servers.
//!
//! There, a client opens `GET` on the server's SSE URL, receives an `endpoint` event naming the URL
//! to POST its messages to (e.g. `/message?sessionId=abc`), and reads the replies as `message`
//! events on the stream. Passed through unchanged, that endpoint would send the client past the
//! sidecar (and without a token). So the sidecar rewrites it to a path of its own,
//! `{PATH}/legacy/message?sessionId=abc`, and forwards POSTs there to the upstream endpoint.
//!
//! Only endpoints the upstream actually announced, on the upstream's own origin, are forwarded,
//! and only while the stream that announced them is open: the sidecar must not become a
//! token-carrying proxy to arbitrary paths.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::sse::Boundary;
use crate::upstream::Upstream;

/// Path segment under `PATH` where rewritten endpoints live.
pub const LEGACY_SEGMENT: &str = "/legacy";

/// `data.reason` of the error a client gets for a Streamable HTTP POST to an upstream that
/// speaks only this transport.
pub const WRONG_TRANSPORT: &str = "transport_mismatch";

/// Whether `answer` is an upstream of this transport refusing a Streamable HTTP POST to its SSE
/// URL: its last handshake found the HTTP+SSE transport, and the answer is an error that is not
/// JSON-RPC (express's "Cannot POST /sse" page, a bare 405). Passed on, the client would show
/// the page, or nothing, and give up without saying why.
pub fn is_wrong_transport(
    answer: &crate::forwarder::Answer,
    readiness: &crate::readiness::Readiness,
) -> bool {
    let json = answer
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().contains("json"));
    !answer.status.is_success()
        && !json
        && !crate::sse::is_event_stream(&answer.headers)
        && readiness.speaks_sse_transport()
}

/// What a client of the HTTP front is told when it POSTs outside any session to an upstream of
/// the HTTP+SSE transport ([`crate::sse_upstream`] bridges sessions from their `initialize`).
pub const WRONG_TRANSPORT_HTTP: &str = "mcp-sidecar: the upstream speaks only the HTTP+SSE \
     transport (protocol 2024-11-05): the sidecar bridges a Streamable HTTP session to it from \
     the session's initialize, and this message belongs to none (send initialize first), or \
     connect to this same URL with the SSE transport (Claude Code: claude mcp add --transport \
     sse NAME URL; MCP Inspector: --transport sse)";

/// The same for a host of the stdio front.
pub const WRONG_TRANSPORT_STDIO: &str = "mcp-sidecar: the upstream speaks only the HTTP+SSE \
     transport (protocol 2024-11-05): the sidecar bridges a session to it from the host's \
     initialize, and this message came before it (send initialize first)";

/// A stream that sends this much before its first complete event is not a legacy stream; stop
/// looking for the endpoint event rather than buffer more.
const MAX_PENDING: usize = 64 * 1024;

/// Endpoints announced on currently open streams, by path and query (`/message?sessionId=abc`).
#[derive(Default)]
pub struct Endpoints {
    open: Mutex<HashMap<String, usize>>,
}

impl Endpoints {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_open(&self, path_and_query: &str) -> bool {
        self.lock().contains_key(path_and_query)
    }

    fn register(self: &Arc<Self>, key: String) -> Registration {
        *self.lock().entry(key.clone()).or_insert(0) += 1;
        Registration {
            endpoints: self.clone(),
            key,
        }
    }
}

/// Keeps an endpoint open while the stream that announced it lives.
struct Registration {
    endpoints: Arc<Endpoints>,
    key: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.endpoints.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Where the first field line of a raw event starts, after blank lines and comments.
fn first_field(event: &[u8]) -> usize {
    let mut i = 0;
    while i < event.len() {
        match event[i] {
            b'\r' | b'\n' => i += 1,
            b':' => {
                while i < event.len() && event[i] != b'\r' && event[i] != b'\n' {
                    i += 1;
                }
            }
            _ => return i,
        }
    }
    i
}

/// The key under which an upstream URL's endpoint is registered.
pub fn key(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

struct Rewriter<S> {
    chunks: std::pin::Pin<Box<S>>,
    upstream: Arc<Upstream>,
    endpoints: Arc<Endpoints>,
    prefix: String,
    pending: Vec<u8>,
    scanned: usize,
    boundary: Boundary,
    event_start: usize,
    /// After the endpoint event (or giving up), bytes pass straight through.
    done: bool,
    registration: Option<Registration>,
}

/// Passes a GET stream through, rewriting its `endpoint` event. The transport sends that event
/// first, so bytes are held per event (a client cannot use half an event anyway) only until the
/// first event with data; from then on chunks pass as they come. A Streamable HTTP GET stream,
/// whose first data event is a message, is thus untouched after it.
pub fn rewrite_endpoint<S, E>(
    chunks: S,
    upstream: Arc<Upstream>,
    endpoints: Arc<Endpoints>,
    prefix: String,
) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let state = Rewriter {
        chunks: Box::pin(chunks),
        upstream,
        endpoints,
        prefix,
        pending: Vec::new(),
        scanned: 0,
        boundary: Boundary::default(),
        event_start: 0,
        done: false,
        registration: None,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return state.chunks.next().await.map(|item| (item, state));
            }
            match state.chunks.next().await {
                Some(Ok(chunk)) => {
                    state.pending.extend_from_slice(&chunk);
                    let out = state.take_complete_events();
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), state));
                    }
                }
                Some(Err(e)) => return Some((Err(e), state)),
                None => {
                    state.done = true;
                    if state.pending.is_empty() {
                        return None;
                    }
                    let rest = std::mem::take(&mut state.pending);
                    return Some((Ok(Bytes::from(rest)), state));
                }
            }
        }
    })
}

impl<S> Rewriter<S> {
    /// Returns the bytes of every complete event in `pending`, the endpoint event rewritten.
    fn take_complete_events(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.scanned < self.pending.len() {
            let byte = self.pending[self.scanned];
            self.scanned += 1;
            let was = self.boundary.at_boundary();
            self.boundary.observe(&[byte]);
            if !was && self.boundary.at_boundary() {
                let event = self.pending[self.event_start..self.scanned].to_vec();
                match self.rewrite(&event) {
                    Some(rewritten) => {
                        out.extend_from_slice(&rewritten);
                        self.done = true;
                    }
                    None => out.extend_from_slice(&event),
                }
                self.event_start = self.scanned;
                if self.done {
                    break;
                }
            }
        }
        // Everything before event_start has been emitted.
        self.pending.drain(..self.event_start);
        self.scanned -= self.event_start;
        self.event_start = 0;
        // Done (rewritten, not the legacy transport, or an endpoint on another origin) or no
        // event in sight: pass everything on as is.
        if self.done || self.pending.len() > MAX_PENDING {
            out.append(&mut self.pending);
            self.scanned = 0;
            self.event_start = 0;
            self.done = true;
        }
        out
    }

    /// The rewritten bytes if `event` is an `endpoint` event on the upstream's origin.
    fn rewrite(&mut self, event: &[u8]) -> Option<Vec<u8>> {
        let mut parser = crate::sse::Parser::new();
        // `event` ends with its blank line, so the parser dispatches it.
        let parsed = parser.push(event).into_iter().next()?;
        if parsed.event.as_deref() != Some("endpoint") {
            if !parsed.data.is_empty() {
                // A message came first: not the legacy transport; stop looking.
                self.done = true;
            }
            return None;
        }
        let reference = parsed.data.trim();
        let Some(url) = self.upstream.same_origin(reference) else {
            tracing::warn!(
                "the upstream announced a message endpoint on another origin; it is passed on unchanged and the client will bypass the sidecar"
            );
            // Stop looking: this stream will not get a usable endpoint.
            self.done = true;
            return None;
        };
        let key = key(&url);
        let rewritten = format!("{}{}{key}", self.prefix, LEGACY_SEGMENT);
        self.registration = Some(self.endpoints.register(key));
        // Blank lines and comments before the first field (an LF left over from a CRLF, a
        // keepalive) are not part of the event: pass them on as they are.
        let mut out = String::from_utf8_lossy(&event[..first_field(event)]).into_owned();
        out.push_str("event: endpoint\n");
        if let Some(id) = parsed.id {
            out.push_str(&format!("id: {id}\n"));
        }
        out.push_str(&format!("data: {rewritten}\n\n"));
        // The URL was parsed and printed anew after the body scrubber saw the event: the parser
        // drops tabs and line breaks, so a token split over two `data:` lines comes out whole.
        Some(crate::secret::scrub(&out).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstream() -> Arc<Upstream> {
        let config = crate::config::UpstreamConfig {
            url: url::Url::parse("https://mcp.example.com/sse").unwrap(),
            headers: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: None,
            tools: Default::default(),
        };
        Arc::new(Upstream::new(&config, Arc::new(crate::token::NoAuth)).unwrap())
    }

    async fn run(input: &[u8], split: usize, endpoints: &Arc<Endpoints>) -> String {
        let chunks: Vec<Result<Bytes, ()>> = vec![
            Ok(Bytes::copy_from_slice(&input[..split])),
            Ok(Bytes::copy_from_slice(&input[split..])),
        ];
        let out: Vec<Result<Bytes, ()>> = rewrite_endpoint(
            futures_util::stream::iter(chunks),
            upstream(),
            endpoints.clone(),
            "/mcp".into(),
        )
        .collect()
        .await;
        out.into_iter()
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn rewrites_the_endpoint_event_at_every_split_point() {
        let input = b": hello\r\n\r\nevent: endpoint\r\ndata: /messages?sessionId=42\r\n\r\nevent: message\r\ndata: {\"a\":1}\r\n\r\ndata: partial";
        // Only the endpoint event changes (its line ends become LF). The LF of its final CRLF
        // follows it as an empty line, which dispatches nothing.
        let expected = ": hello\r\n\r\nevent: endpoint\ndata: /mcp/legacy/messages?sessionId=42\n\n\nevent: message\r\ndata: {\"a\":1}\r\n\r\ndata: partial";
        for split in 0..input.len() {
            let endpoints = Endpoints::new();
            let out = run(input, split, &endpoints).await;
            assert_eq!(out, expected, "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_stream_whose_first_message_is_not_an_endpoint_passes_untouched() {
        let input = b"id: 0\ndata:\n\nevent: message\ndata: {}\n\nevent: endpoint\ndata: /late\n\n";
        for split in 0..input.len() {
            let endpoints = Endpoints::new();
            let out = run(input, split, &endpoints).await;
            assert_eq!(out.as_bytes(), input, "split at {split}");
            assert!(!endpoints.is_open("/late"));
        }
    }

    #[tokio::test]
    async fn other_origins_are_not_rewritten_and_nothing_is_lost() {
        let input = b"event: endpoint\ndata: https://elsewhere.example/messages\n\ndata: after";
        for split in 0..input.len() {
            let endpoints = Endpoints::new();
            let out = run(input, split, &endpoints).await;
            assert_eq!(out.as_bytes(), input, "split at {split}");
            assert!(!endpoints.is_open("/messages"));
        }
    }

    /// The endpoint URL is parsed (WHATWG: tabs and line breaks are removed) and printed anew,
    /// after the body scrubber saw the event: a token split over two `data:` lines, which no
    /// scrubber finds, comes out whole unless the rewritten event is scrubbed too.
    #[tokio::test]
    async fn a_token_the_url_parser_joins_is_scrubbed_from_the_rewritten_endpoint() {
        let secret = "legacy-canary-0123456789abcdefghij";
        crate::secret::register(secret);
        let input = format!(
            "event: endpoint\ndata: /messages?k={}\ndata: {}\n\n",
            &secret[..16],
            &secret[16..]
        );
        for split in 0..input.len() {
            let endpoints = Endpoints::new();
            let out = run(input.as_bytes(), split, &endpoints).await;
            assert!(!out.contains(secret), "split at {split}: {out}");
            assert!(
                out.contains("data: /mcp/legacy/messages?k=<redacted>\n\n"),
                "{out}"
            );
        }
    }

    #[tokio::test]
    async fn endpoint_is_open_while_the_stream_lives() {
        let endpoints = Endpoints::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, ()>>();
        let stream = rewrite_endpoint(
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            ),
            upstream(),
            endpoints.clone(),
            "/mcp".into(),
        );
        let mut stream = Box::pin(stream);
        tx.send(Ok(Bytes::from_static(
            b"event: endpoint\ndata: /messages?s=1\n\n",
        )))
        .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, "event: endpoint\ndata: /mcp/legacy/messages?s=1\n\n");
        assert!(endpoints.is_open("/messages?s=1"));
        drop(stream);
        assert!(!endpoints.is_open("/messages?s=1"));
    }

    #[test]
    fn no_upstream_name_can_shadow_the_legacy_routes() {
        assert!(
            crate::config::RESERVED_UPSTREAM_NAMES
                .iter()
                .any(|name| LEGACY_SEGMENT == format!("/{name}"))
        );
    }
}
