//! The legacy HTTP+SSE front (protocol 2024-11-05) in front of a Streamable HTTP upstream, for
//! clients that speak only that transport: MCP Inspector's `--transport sse`, Claude Code's
//! `--transport sse`, the SDKs' SSE clients.
//!
//! Such a client opens `GET PATH/sse`; the first event of the stream, `endpoint`, names where it
//! POSTs its messages (`PATH/sse/message?sessionId=ID`), and every message for it arrives as a
//! `message` event on that stream. Between the two runs the stdio front's message pump
//! ([`crate::stdio::pump`]), one per open stream: it holds the upstream session on the client's
//! behalf, forwards each POSTed message through the upstream's [`crate::forwarder::Forwarder`]
//! (credential, tool policy, session recovery), relays JSON and SSE replies and the upstream's
//! GET stream, scrubbed, and ends the upstream session (`DELETE`) when the client's stream
//! closes. The id is 256 random bits and is known only while its stream is open, so a message
//! can reach only a stream that is open, and only a client that was told its id.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::{mpsc, watch};

use crate::stdio::Pump;

/// Under an upstream's `PATH`: the legacy client's event stream.
pub const SSE_SEGMENT: &str = "/sse";
/// Under an upstream's `PATH`: where a legacy client POSTs its messages.
pub const MESSAGE_SEGMENT: &str = "/sse/message";

/// Client messages waiting for the pump: a client that posts faster than the upstream answers
/// waits in its POST rather than growing memory.
const INPUT_BUFFER: usize = 256 * 1024;
/// Messages waiting for the client's stream.
const OUTPUT_QUEUE: usize = 256;

/// The open streams of one upstream, by id.
#[derive(Default)]
pub struct Bridges {
    open: Mutex<HashMap<String, Arc<tokio::sync::Mutex<DuplexStream>>>>,
}

/// Why a POSTed message was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No open stream has this id (never opened, or closed since).
    Unknown,
    /// The body is not one JSON value.
    NotJson,
}

impl Bridges {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens one stream: starts its pump and returns the event stream for the client, its first
    /// event the `endpoint` (`message_path?sessionId=ID`). The pump ends, and with it the
    /// upstream session, when the returned stream is dropped (the client went away), and the
    /// stream ends when the pump does (`shutdown`).
    pub fn open(
        self: &Arc<Self>,
        message_path: &str,
        settings: Pump,
        shutdown: watch::Receiver<bool>,
        keepalive: Duration,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let id = crate::token::endpoint::random_token();
        let (input, pump_input) = tokio::io::duplex(INPUT_BUFFER);
        lock(&self.open).insert(id.clone(), Arc::new(tokio::sync::Mutex::new(input)));
        let (out, queue) = mpsc::channel::<String>(OUTPUT_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let mut shutdown = shutdown;
        tokio::spawn(crate::stdio::pump(
            settings,
            BufReader::new(pump_input),
            out,
            closed_rx,
            async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            },
        ));
        tracing::info!(
            open = self.len(),
            "a legacy SSE client opened a stream; bridged to the upstream"
        );
        let endpoint = Bytes::from(format!(
            "event: endpoint\ndata: {message_path}?sessionId={id}\n\n"
        ));
        let open = Open {
            id,
            bridges: self.clone(),
            closed: closed_tx,
        };
        futures_util::stream::unfold(
            (Some(endpoint), queue, open),
            move |(first, mut queue, open)| async move {
                if let Some(first) = first {
                    return Some((Ok(first), (None, queue, open)));
                }
                let frame = match tokio::time::timeout(keepalive, queue.recv()).await {
                    // Compact JSON from the pump: one line, so one `data:` field.
                    Ok(Some(line)) => Bytes::from(format!("event: message\ndata: {line}\n\n")),
                    // The pump ended (shutdown, or its upstream session could not go on).
                    Ok(None) => return None,
                    Err(_) => Bytes::from_static(b":\n\n"),
                };
                Some((Ok(frame), (None, queue, open)))
            },
        )
    }

    /// Hands a client's POSTed message to the pump of stream `id`. JSON allows line breaks only
    /// between tokens (inside strings they are escaped), so they are turned into spaces: the
    /// pump reads one message per line.
    pub async fn deliver(&self, id: &str, body: &[u8]) -> Result<(), Refused> {
        if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
            return Err(Refused::NotJson);
        }
        let input = lock(&self.open).get(id).cloned().ok_or(Refused::Unknown)?;
        let mut line: Vec<u8> = body
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
            .collect();
        line.push(b'\n');
        let mut input = input.lock().await;
        // Fails only once the pump stopped reading (it is ending): the stream is as good as closed.
        input.write_all(&line).await.map_err(|_| Refused::Unknown)
    }
}

/// Held by the client's event stream: dropping it (the client went away) forgets the id and
/// tells the pump, which ends the upstream session.
struct Open {
    id: String,
    bridges: Arc<Bridges>,
    closed: watch::Sender<bool>,
}

impl Drop for Open {
    fn drop(&mut self) {
        lock(&self.bridges.open).remove(&self.id);
        let _ = self.closed.send(true);
        tracing::info!(
            open = self.bridges.len(),
            "a legacy SSE client's stream closed; ending its upstream session"
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map is still a consistent map: every critical section is one insert or remove.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
