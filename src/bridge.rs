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
        // Waiting for its turn, a message may be given up (its POST cancelled) with nothing
        // written. Once it is being written it is finished in a task of its own, even if its POST
        // is cancelled: half a line would run into the next message and spoil both.
        let mut input = input.lock_owned().await;
        let write = tokio::spawn(async move { input.write_all(&line).await });
        // Fails only once the pump stopped reading (it is ending): the stream is as good as closed.
        match write.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Refused::Unknown),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A POST given up while its message is half written (the pump reading slowly) must not
    /// leave half a line in the pump's input: the next message would be read as its tail.
    #[tokio::test]
    async fn a_message_whose_post_is_cancelled_mid_write_still_arrives_whole() {
        let bridges = Bridges::new();
        let (input, pump_side) = tokio::io::duplex(1024);
        lock(&bridges.open).insert("id".into(), Arc::new(tokio::sync::Mutex::new(input)));
        let big = serde_json::json!({
            "jsonrpc": "2.0", "method": "notifications/message", "params": {"pad": "a".repeat(64 * 1024)}
        })
        .to_string();
        let small = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

        // Nobody reads yet: the write stalls once the pipe's 1 KiB is full, and its POST is
        // cancelled by the timeout.
        let posted = tokio::time::timeout(
            Duration::from_millis(50),
            bridges.deliver("id", big.as_bytes()),
        )
        .await;
        assert!(
            posted.is_err(),
            "the write cannot finish while nobody reads"
        );

        let next = {
            let bridges = bridges.clone();
            tokio::spawn(async move { bridges.deliver("id", small.as_bytes()).await })
        };
        let mut lines = BufReader::new(pump_side).lines();
        let mut line = async || {
            tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("a line within 10 s")
                .unwrap()
                .expect("a line before the end")
        };
        let first = line().await;
        let second = line().await;
        assert_eq!(
            first.len(),
            big.len(),
            "the first line is the whole cancelled message"
        );
        assert_eq!(first, big);
        assert_eq!(second, small);
        assert_eq!(next.await.unwrap(), Ok(()));
    }
}
