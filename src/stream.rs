//! A client's standalone GET stream (server-to-client notifications and requests), kept open
//! through an upstream outage and re-attached to the upstream session the sidecar re-makes.
//!
//! Without this, an upstream restart cuts the client's GET stream mid-flight; clients reconnect
//! with the `Last-Event-ID` the dead upstream session issued, which the new session does not
//! know (server-everything then attaches the stream to nothing), or they give up after a few
//! 502s. Here the sidecar does the reconnecting itself, within [`REATTACH_WITHIN`]:
//! - the client's stream stays open; it only ever receives whole events (bytes of an event the
//!   upstream had not finished when it broke off are dropped), so keepalive comments can flow
//!   between events while the upstream is away;
//! - the sidecar re-opens the upstream GET under the session's current upstream id, resuming
//!   with the upstream's own last event id while that session lives, and re-initializing it
//!   ([`crate::session`]) when the upstream forgot it;
//! - event ids of a re-made session are written to the client as `mcp-sidecar:<gen>:<id>`, and a
//!   client's `Last-Event-ID` is forwarded only to the session generation that issued it
//!   ([`upstream_last_event_id`]): never into a session the sidecar re-made.
//!
//! When a stream cannot be re-attached (the upstream stopped offering GET streams, or did not
//! come back in time), it ends, at an event boundary, and that is logged.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use crate::mcp::MCP_SESSION_ID;
use crate::session::Session;
use crate::sse::Boundary;
use crate::upstream::{BodyError, Upstream};

pub static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// How long the sidecar keeps trying to re-attach a broken GET stream before it ends it.
pub const REATTACH_WITHIN: Duration = Duration::from_secs(120);
/// Waits between attempts: from the first, doubling up to the last.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// An attachment shorter than this does not reset the wait before the next one.
const SHORT_ATTACHMENT: Duration = Duration::from_secs(5);
/// Bytes of one unfinished event held back; a longer event passes through as it comes, and a
/// break inside it then ends the stream (the client drops the unfinished event).
const MAX_PENDING: usize = 1024 * 1024;

/// What ids of a re-made session start with on the client's side.
const ID_PREFIX: &str = "mcp-sidecar:";

pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// The `Last-Event-ID` to send upstream for the client's `client_id` when the session is in
/// `generation`: ids the sidecar wrote for that generation map back to the upstream's own; a
/// bare id is the upstream's own only while the session was never re-made. Anything else
/// belongs to a dead upstream session and is not forwarded.
pub fn upstream_last_event_id(client_id: &str, generation: u64) -> Option<&str> {
    match client_id.strip_prefix(ID_PREFIX) {
        Some(rest) => {
            let (issued, id) = rest.split_once(':')?;
            (issued.parse::<u64>().ok()? == generation).then_some(id)
        }
        None => (generation == 0).then_some(client_id),
    }
}

/// Replaces the client's `Last-Event-ID` in `headers` (bound upstream) by what the session in
/// `generation` knows, or removes it.
pub fn map_last_event_id(headers: &mut HeaderMap, generation: u64) {
    let Some(value) = headers.get(&LAST_EVENT_ID) else {
        return;
    };
    let mapped = value
        .to_str()
        .ok()
        .and_then(|id| upstream_last_event_id(id, generation))
        .and_then(|id| HeaderValue::from_str(id).ok());
    match mapped {
        Some(value) => {
            headers.insert(LAST_EVENT_ID.clone(), value);
        }
        None => {
            tracing::debug!(
                "dropped a Last-Event-ID issued by an upstream session the sidecar has replaced"
            );
            headers.remove(&LAST_EVENT_ID);
        }
    }
}

/// Everything a followed GET stream needs to re-open itself upstream.
pub struct Follow {
    pub upstream: Arc<Upstream>,
    pub session: Arc<Session>,
    /// The GET's headers as sent upstream (session id and `Last-Event-ID` are set per attempt).
    pub headers: HeaderMap,
    pub query: Option<String>,
    /// The generation of the session the first upstream stream belongs to.
    pub generation: u64,
    /// Bound on one re-initialization.
    pub reinit_timeout: Duration,
}

/// The client's stream: `first` (the upstream's answer, when there was one), then whatever the
/// re-attached upstream streams send, as whole events only.
pub fn follow(
    first: Option<Chunks>,
    follow: Follow,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
    let state = State {
        generation: follow.generation,
        follow,
        current: first,
        framer: Framer::default(),
        last_id: None,
        attached_at: None,
        delay: Duration::ZERO,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            let Some(current) = state.current.as_mut() else {
                match state.reattach().await {
                    Ok(chunks) => {
                        state.current = Some(chunks);
                        continue;
                    }
                    Err(why) => {
                        tracing::warn!(
                            reason = why,
                            "could not re-attach a client's GET stream to the upstream; ending it at an event boundary"
                        );
                        return None;
                    }
                }
            };
            match current.next().await {
                Some(Ok(chunk)) => {
                    if let Some(out) = state.framer.push(&chunk) {
                        let out = label(out, state.generation, &mut state.last_id);
                        return Some((Ok(out), state));
                    }
                }
                Some(Err(_)) | None => {
                    state.current = None;
                    if state.framer.mid_event {
                        tracing::warn!(
                            "the upstream GET stream broke off inside an event longer than {MAX_PENDING} bytes; ending the client's stream"
                        );
                        return None;
                    }
                    state.framer.discard();
                    tracing::info!(
                        "the upstream GET stream broke off; keeping the client's open and re-attaching"
                    );
                }
            }
        }
    })
}

struct State {
    follow: Follow,
    current: Option<Chunks>,
    framer: Framer,
    /// The generation the attached upstream stream belongs to.
    generation: u64,
    /// The upstream's own id of the last event passed on from `generation`.
    last_id: Option<String>,
    /// When the current upstream stream was attached by [`State::reattach`], and the wait
    /// before the attempt that attached it.
    attached_at: Option<Instant>,
    delay: Duration,
}

impl State {
    /// Re-opens the upstream GET stream, re-initializing the session when the upstream forgot
    /// it. Bounded by [`REATTACH_WITHIN`]; `Err` says why it gave up.
    async fn reattach(&mut self) -> Result<Chunks, &'static str> {
        let deadline = Instant::now() + REATTACH_WITHIN;
        // An upstream that ends every stream right after it opened does not get a reconnect
        // loop: the wait keeps growing until an attachment lasts.
        let mut delay = match self.attached_at {
            Some(at) if at.elapsed() < SHORT_ATTACHMENT => self.delay,
            _ => Duration::ZERO,
        };
        loop {
            if self.follow.session.is_ended() {
                return Err("the client ended its session");
            }
            if Instant::now() + delay >= deadline {
                return Err("the upstream did not take the stream back in time");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).clamp(FIRST_DELAY, MAX_DELAY);
            self.delay = delay;

            let (id, generation) = self.follow.session.current().await;
            if generation != self.generation {
                self.generation = generation;
                self.last_id = None;
            }
            let mut headers = self.follow.headers.clone();
            headers.remove(&LAST_EVENT_ID);
            if let Some(last) = self
                .last_id
                .as_deref()
                .and_then(|l| HeaderValue::from_str(l).ok())
            {
                headers.insert(LAST_EVENT_ID.clone(), last);
            }
            let Ok(value) = HeaderValue::from_str(&id) else {
                return Err("the upstream session id is not a header value");
            };
            headers.insert(MCP_SESSION_ID.clone(), value);
            let send = self.follow.upstream.send(
                Method::GET,
                self.follow.query.as_deref(),
                headers,
                Bytes::new(),
            );
            let response = match tokio::time::timeout_at(deadline, send).await {
                Err(_) => return Err("the upstream did not take the stream back in time"),
                // Down, refusing or a credential being refreshed: try again.
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::secret::scrub(&e.to_string()), "re-attaching a GET stream");
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            // A coded body cannot be scrubbed (proxy.rs withholds one too).
            if response
                .headers()
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
                && !crate::secret::patterns().0.is_empty()
            {
                return Err(
                    "the upstream sent a coded (Content-Encoding) stream, which cannot be scrubbed",
                );
            }
            if status.is_success() && crate::sse::is_event_stream(response.headers()) {
                tracing::info!(
                    generation,
                    "re-attached a client's GET stream to the upstream"
                );
                self.attached_at = Some(Instant::now());
                // Scrubbed like the first stream (proxy.rs): a notification may quote a secret.
                let chunks: Chunks = Box::pin(response.bytes_stream());
                return Ok(match crate::scrubber::scrub_stream(chunks) {
                    Ok(scrubbed) => Box::pin(scrubbed),
                    Err(plain) => plain,
                });
            }
            let (forgotten, response) =
                crate::session::forgotten(response, self.follow.reinit_timeout).await;
            drop(response);
            if forgotten {
                if self.follow.session.is_ended() {
                    return Err("the client ended its session");
                }
                let reinit = self.follow.session.reinitialize(&self.follow.upstream, &id);
                match tokio::time::timeout(self.follow.reinit_timeout, reinit).await {
                    Ok(Ok(_)) => delay = Duration::ZERO,
                    Ok(Err(e)) => tracing::debug!(
                        error = %crate::secret::scrub(&e.to_string()),
                        "re-initializing the session of a GET stream failed; trying again"
                    ),
                    Err(_) => {
                        tracing::debug!("re-initializing the session of a GET stream timed out")
                    }
                }
                continue;
            }
            match status {
                StatusCode::METHOD_NOT_ALLOWED => {
                    return Err("the upstream no longer offers a GET stream (405)");
                }
                s if s.is_server_error()
                    || s == StatusCode::REQUEST_TIMEOUT
                    || s == StatusCode::CONFLICT
                    || s == StatusCode::TOO_MANY_REQUESTS
                    || s.is_success() => {}
                _ => return Err("the upstream refused to re-open the GET stream"),
            }
        }
    }
}

/// Notes the upstream's event ids in `last_id` and writes them in the client's form: as they
/// are for the client's own session (generation 0), prefixed with the generation after that.
fn label(events: Bytes, generation: u64, last_id: &mut Option<String>) -> Bytes {
    let mut out = BytesMut::with_capacity(events.len() + 24);
    let mut changed = false;
    for (line, end) in lines(&events) {
        if let Some(id) = id_value(line) {
            *last_id = (!id.is_empty()).then(|| String::from_utf8_lossy(id).into_owned());
            if generation > 0 && !id.is_empty() {
                out.extend_from_slice(format!("id: {ID_PREFIX}{generation}:").as_bytes());
                out.extend_from_slice(id);
                out.extend_from_slice(end);
                changed = true;
                continue;
            }
        }
        out.extend_from_slice(line);
        out.extend_from_slice(end);
    }
    if changed { out.freeze() } else { events }
}

/// The `id` field's value if `line` is an `id` line.
fn id_value(line: &[u8]) -> Option<&[u8]> {
    if line == b"id" {
        return Some(b"");
    }
    let value = line.strip_prefix(b"id:")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// The lines of `bytes` with their endings (LF, CRLF or CR; the last may have none).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
            let line = rest;
            rest = &[];
            return Some((line, &[][..]));
        };
        let end = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
            at + 2
        } else {
            at + 1
        };
        let (line, ending) = (&rest[..at], &rest[at..end]);
        rest = &rest[end..];
        Some((line, ending))
    })
}

/// Cuts an SSE byte stream at event boundaries, holding back an unfinished event.
#[derive(Default)]
struct Framer {
    pending: BytesMut,
    boundary: Boundary,
    /// The boundary state at the end of what was passed on.
    passed: Boundary,
    /// What was passed on ends inside an event (one longer than [`MAX_PENDING`]).
    mid_event: bool,
}

impl Framer {
    /// Takes a chunk; returns what can be passed on (whole events and comment lines).
    fn push(&mut self, chunk: &[u8]) -> Option<Bytes> {
        let mut cut = None;
        for (at, byte) in chunk.iter().enumerate() {
            self.boundary.observe(std::slice::from_ref(byte));
            if self.boundary.at_boundary() {
                cut = Some((at + 1, self.boundary));
            }
        }
        let held = self.pending.len();
        self.pending.extend_from_slice(chunk);
        if let Some((cut, state)) = cut {
            self.passed = state;
            self.mid_event = false;
            return Some(self.pending.split_to(held + cut).freeze());
        }
        if self.pending.len() > MAX_PENDING {
            self.passed = self.boundary;
            self.mid_event = true;
            return Some(self.pending.split().freeze());
        }
        None
    }

    /// Forgets an unfinished event (its upstream stream broke off).
    fn discard(&mut self) {
        self.pending.clear();
        self.boundary = self.passed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_goes_only_to_the_generation_that_issued_it() {
        assert_eq!(upstream_last_event_id("e-7", 0), Some("e-7"));
        assert_eq!(upstream_last_event_id("e-7", 1), None);
        assert_eq!(upstream_last_event_id("mcp-sidecar:1:s_5", 1), Some("s_5"));
        assert_eq!(upstream_last_event_id("mcp-sidecar:1:a:b", 1), Some("a:b"));
        assert_eq!(upstream_last_event_id("mcp-sidecar:1:s_5", 2), None);
        assert_eq!(upstream_last_event_id("mcp-sidecar:x:s_5", 1), None);
    }

    #[test]
    fn framer_passes_whole_events_and_holds_back_the_rest() {
        let mut f = Framer::default();
        assert_eq!(
            f.push(b"id: 1\ndata: a\n\nid: 2\nda").as_deref(),
            Some(&b"id: 1\ndata: a\n\n"[..])
        );
        assert_eq!(f.push(b"ta: b\n").as_deref(), None);
        assert_eq!(
            f.push(b"\n: c\n").as_deref(),
            Some(&b"id: 2\ndata: b\n\n: c\n"[..])
        );
        assert_eq!(f.push(b"data: cut").as_deref(), None);
        f.discard();
        assert!(
            f.boundary.at_boundary(),
            "back to the state after the last whole event"
        );
        assert_eq!(
            f.push(b"data: new\r\n\r\n").as_deref(),
            Some(&b"data: new\r\n\r\n"[..])
        );
    }

    #[test]
    fn framer_passes_an_oversized_event_through() {
        let mut f = Framer::default();
        let big = vec![b'x'; MAX_PENDING];
        assert!(f.push(b"data: ").is_none());
        assert!(f.push(&big).is_some());
        assert!(f.mid_event);
        assert_eq!(f.push(b"\n\n").as_deref(), Some(&b"\n\n"[..]));
        assert!(!f.mid_event);
    }

    #[test]
    fn ids_of_a_remade_session_are_labelled_and_remembered_raw() {
        let mut last = None;
        let events = Bytes::from_static(b"id: 7\ndata: a\n\nid:8\r\ndata: b\r\n\r\n");
        assert_eq!(label(events.clone(), 0, &mut last), events);
        assert_eq!(last.as_deref(), Some("8"));
        let out = label(events, 3, &mut last);
        assert_eq!(
            &out[..],
            b"id: mcp-sidecar:3:7\ndata: a\n\nid: mcp-sidecar:3:8\r\ndata: b\r\n\r\n"
        );
        assert_eq!(last.as_deref(), Some("8"));
        assert_eq!(upstream_last_event_id("mcp-sidecar:3:8", 3), Some("8"));
        label(Bytes::from_static(b"id\ndata: c\n\n"), 3, &mut last);
        assert_eq!(last, None, "an empty id resets it, as in the client");
    }

    #[test]
    fn lines_keep_their_endings() {
        let got: Vec<_> = lines(b"a\nb\r\nc\rd").collect();
        assert_eq!(
            got,
            [
                (&b"a"[..], &b"\n"[..]),
                (b"b", b"\r\n"),
                (b"c", b"\r"),
                (b"d", b"")
            ]
        );
    }
}
