//! Scrubbing of bodies as they stream from the upstream to the client.
//!
//! A hostile or broken upstream can echo what it was sent: a debug tool that returns the request
//! headers, a gateway's echo endpoint, a tool result quoting `Authorization`. Error bodies are
//! buffered and scrubbed whole (`proxy`), but a success body is a stream (an SSE stream may
//! never end), so it is scrubbed here chunk by chunk: each chunk is searched for every form of
//! every registered secret ([`crate::secret::Patterns`]), and only a tail that could be the start
//! of a secret cut by the chunk boundary is held back until the next chunk completes or clears
//! it. An SSE event ends with a blank line, which starts no secret, so events are never delayed.
//!
//! With no secret registered (no credential, no `HEADERS`) the body is passed through untouched,
//! and a chunk that holds no secret and no such tail is passed on without a copy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use crate::secret::{Patterns, REDACTION};

/// Wraps a body stream so every registered secret is replaced by `<redacted>` before it leaves.
pub struct Scrubbed<S> {
    inner: S,
    scrubber: Scrubber,
    done: bool,
}

/// `inner` scrubbed; `Err(inner)` (pass it on as it is) when no secret is registered yet.
pub fn scrub_stream<S>(inner: S) -> Result<Scrubbed<S>, S> {
    match Scrubber::new() {
        Some(scrubber) => Ok(Scrubbed {
            inner,
            scrubber,
            done: false,
        }),
        None => Err(inner),
    }
}

/// The chunk-by-chunk state of one body: the forms to search for and what is held back.
pub struct Scrubber {
    patterns: Arc<Patterns>,
    generation: u64,
    held: BytesMut,
}

impl Scrubber {
    /// `None` when no secret is registered: there is nothing to search for.
    pub fn new() -> Option<Self> {
        let (patterns, generation) = crate::secret::patterns();
        (!patterns.is_empty()).then(|| Self {
            patterns,
            generation,
            held: BytesMut::new(),
        })
    }

    /// The rest, at the body's end: a held tail is no secret's start any more (it was never
    /// completed), but it may hold a whole shorter form, which is redacted.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.held.split().freeze();
        let found = self.patterns.matches(&rest);
        let end = rest.len();
        redact(rest, &found, end)
    }

    /// What of `chunk` (after what was held) may go to the client now; the rest is held.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let generation = crate::secret::patterns_generation();
        if generation != self.generation {
            (self.patterns, self.generation) = crate::secret::patterns();
        }
        let bytes = if self.held.is_empty() {
            chunk
        } else {
            self.held.extend_from_slice(&chunk);
            self.held.split().freeze()
        };
        let mut found = self.patterns.matches(&bytes);
        let cut = self.hold_from(&bytes, &mut found);
        self.held.extend_from_slice(&bytes[cut..]);
        redact(bytes, &found, cut)
    }

    /// Where the held tail begins; `found` keeps the matches before it. The tail that may start
    /// a form is looked for everywhere near the end, inside a match too: a shorter form found
    /// whole may be the start of a longer one (another secret, a longer encoding) that the next
    /// chunk completes, and emitting the shorter one's redaction would let the rest of the
    /// longer one out. A match the tail overlaps is held with it and found again.
    fn hold_from(&self, bytes: &[u8], found: &mut Vec<std::ops::Range<usize>>) -> usize {
        let cut = self.patterns.cut_tail(bytes, 0);
        match found.iter().position(|r| r.end > cut) {
            None => cut,
            Some(at) if found[at].start >= cut => {
                found.truncate(at);
                cut
            }
            Some(at) if bytes.len() - found[at].start <= 2 * self.patterns.longest() => {
                let start = found[at].start;
                found.truncate(at);
                start
            }
            // A run of adjacent matches too long to hold: it goes out redacted, and only what
            // follows it may be held.
            Some(_) => self
                .patterns
                .cut_tail(bytes, found.last().map_or(0, |r| r.end)),
        }
    }
}

/// `bytes[..end]` with `found` (sorted, disjoint, all before `end`) replaced by the redaction;
/// without a copy when there is nothing to replace.
/// `bytes[..end]` with each of the `found` ranges (sorted, merged) replaced by the redaction.
pub(crate) fn redact(bytes: Bytes, found: &[std::ops::Range<usize>], end: usize) -> Bytes {
    if found.is_empty() {
        return bytes.slice(..end); // no copy
    }
    let mut out = BytesMut::with_capacity(end + found.len() * REDACTION.len());
    let mut last = 0;
    for range in found {
        out.extend_from_slice(&bytes[last..range.start]);
        out.extend_from_slice(REDACTION.as_bytes());
        last = range.end;
    }
    out.extend_from_slice(&bytes[last..end]);
    out.freeze()
}

impl<S, E> Stream for Scrubbed<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.scrubber.push(chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // What is held is a secret's possible start: an end mid-way drops it.
                    this.scrubber.held.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.scrubber.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const CANARY: &str = "scrubber-canary+/=&0123456789abcdefghijklmnopqrstuvwxyz";

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    fn run(chunks: &[&[u8]]) -> (Vec<Bytes>, Vec<u8>) {
        let items: Vec<Result<Bytes, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = match scrub_stream(futures_util::stream::iter(items)) {
            Ok(s) => s,
            Err(_) => panic!("a secret is registered, so the body is scrubbed"),
        };
        let out: Vec<Bytes> = block_on(stream.map(|r| r.expect("infallible")).collect::<Vec<_>>());
        let joined = out.iter().flat_map(|b| b.iter().copied()).collect();
        (out, joined)
    }

    #[test]
    fn a_secret_cut_at_every_position_is_redacted_and_the_rest_kept() {
        crate::secret::register(CANARY);
        let body = format!("{{\"echo\":\"Bearer {CANARY}\",\"n\":1}}\n\n");
        for cut in 0..=body.len() {
            let (a, b) = body.as_bytes().split_at(cut);
            let (_, joined) = run(&[a, b]);
            let text = String::from_utf8(joined).unwrap();
            assert_eq!(
                text, "{\"echo\":\"Bearer <redacted>\",\"n\":1}\n\n",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_encoded_form_is_redacted_across_one_byte_chunks() {
        crate::secret::register(CANARY);
        let url = url::form_urlencoded::byte_serialize(CANARY.as_bytes()).collect::<String>();
        let body = format!("a {url} b {} c", serde_json::to_string(CANARY).unwrap());
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
        let (_, joined) = run(&chunks);
        let text = String::from_utf8(joined).unwrap();
        assert!(!text.contains(CANARY) && !text.contains(&url), "{text}");
        assert!(!text.contains(&CANARY[..CANARY.len() - 1]), "{text}");
        assert_eq!(text, "a <redacted> b \"<redacted>\" c");
    }

    /// A tool that echoes its request base64-encoded (a debug echo, a JWT-like envelope): the
    /// secret's characters are cut whatever its offset in the encoded bytes and wherever the
    /// chunks break.
    #[test]
    fn a_secret_inside_base64_is_redacted_across_chunks() {
        use base64::Engine;
        crate::secret::register(CANARY);
        for prefix in ["", "a", "ab"] {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{prefix}Authorization: Bearer {CANARY}\r\n"));
            let body = format!("{{\"echo\":\"{encoded}\"}}");
            for size in [1, 7, 64] {
                let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
                let (_, joined) = run(&chunks);
                let text = String::from_utf8(joined).unwrap();
                assert!(text.contains("<redacted>"), "{prefix:?}, {size}: {text}");
                assert!(
                    text.len() < body.len() - CANARY.len(),
                    "{prefix:?}, {size}: {text}"
                );
            }
        }
    }

    /// The C# MCP SDK writes JSON with `System.Text.Json`'s default encoder, which escapes `+`
    /// (and `&`) as `\u002B`: a base64 token quoted in a tool result comes back that way.
    #[test]
    fn a_token_escaped_by_the_dotnet_json_encoder_is_redacted() {
        crate::secret::register(CANARY);
        let dotnet = CANARY.replace('&', "\\u0026").replace('+', "\\u002B");
        let body = format!("{{\"echo\":\"Bearer {dotnet}\"}}");
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(3).collect();
        let (_, joined) = run(&chunks);
        assert_eq!(joined, b"{\"echo\":\"Bearer <redacted>\"}");
    }

    #[test]
    fn events_without_secrets_pass_at_once_and_without_a_copy() {
        crate::secret::register(CANARY);
        let event = Bytes::from_static(b"event: message\ndata: {\"ok\":true}\n\n");
        let items: Vec<Result<Bytes, std::convert::Infallible>> = vec![Ok(event.clone())];
        let Ok(mut stream) = scrub_stream(futures_util::stream::iter(items)) else {
            panic!("a secret is registered");
        };
        let first = block_on(stream.next())
            .expect("one chunk")
            .expect("infallible");
        assert_eq!(first, event);
        assert_eq!(first.as_ptr(), event.as_ptr(), "passed on without a copy");
    }

    #[test]
    fn values_too_short_to_be_credentials_are_left_in_bodies() {
        crate::secret::register(CANARY);
        crate::secret::register("qzx7v");
        let (_, joined) = run(&[b"tenant qzx7v ok"]);
        assert_eq!(joined, b"tenant qzx7v ok");
        assert_eq!(crate::secret::scrub("tenant qzx7v"), "tenant <redacted>");
    }

    /// A secret that starts with another (two `HEADERS` values, a token and a longer one): the
    /// shorter is whole in the first chunk, the longer is completed by the next one. The rest of
    /// the longer one must not follow the shorter one's redaction.
    #[test]
    fn a_longer_secret_starting_with_a_shorter_one_is_redacted_whole_at_every_cut() {
        crate::secret::register(CANARY);
        let short = "overlap-key-0123456789";
        let long = "overlap-key-0123456789-and-the-rest-of-it";
        crate::secret::register(short);
        crate::secret::register(long);
        let body = format!("x {long} y {short} z");
        for first in 0..=body.len() {
            for second in first..=body.len() {
                let bytes = body.as_bytes();
                let (_, joined) = run(&[&bytes[..first], &bytes[first..second], &bytes[second..]]);
                let text = String::from_utf8(joined).unwrap();
                assert_eq!(
                    text, "x <redacted> y <redacted> z",
                    "cut at {first}, {second}"
                );
            }
        }
        // At the body's end, a held whole form is redacted too.
        let (_, joined) = run(&[format!("x {short}").as_bytes(), b"-and"]);
        assert_eq!(joined, b"x <redacted>-and");
    }

    #[test]
    fn a_tail_that_only_looks_like_a_secret_start_is_released_at_the_end() {
        crate::secret::register(CANARY);
        let (out, joined) = run(&[b"x scrubber-can", b"dy"]);
        assert_eq!(joined, b"x scrubber-candy");
        assert_eq!(&out[0][..], b"x ", "the possible start was held back");
        let (_, joined) = run(&[b"ends with scrubber-ca"]);
        assert_eq!(joined, b"ends with scrubber-ca");
    }
}
