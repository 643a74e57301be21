//! An incremental Server-Sent Events parser (WHATWG HTML, "event stream interpretation").
//!
//! The proxy passes SSE bytes through untouched; this parser is for the places where the sidecar
//! itself must understand a stream: the readiness handshake reads an `initialize` reply that may
//! arrive as SSE, after priming events that carry only an id.

/// Whether a message's `Content-Type` is `text/event-stream` (media types are case-insensitive).
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..17)
                .is_some_and(|media| media.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// One dispatched event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// Feeds on arbitrary chunks; yields complete events. Lines may end in CRLF, LF or CR, and a
/// chunk boundary may fall anywhere, including between CR and LF.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes held for the event being read: what a reader bounds a stream's events by.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                b => self.line.push(b),
            }
        }
        events
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line[0] == b':' {
            return; // comment, used as keepalive
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "retry" => self.retry = value.parse().ok(),
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<Event>) {
        let event = Event {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
            id: self.id.take(),
            retry: self.retry.take(),
        };
        let had_data = std::mem::replace(&mut self.has_data, false);
        // Events with only an id or retry (MCP priming events) still matter to a reader that
        // tracks Last-Event-ID, so they are yielded; readers skip empty data themselves.
        if had_data || event.id.is_some() || event.retry.is_some() || event.event.is_some() {
            events.push(event);
        }
    }
}

/// Tracks whether a byte stream is between events, where a `:` comment line can be inserted
/// without changing what the client parses (used for keepalives). Comment lines themselves are
/// neutral: after one, the stream is exactly as between events as before it.
#[derive(Debug, Clone, Copy)]
pub struct Boundary {
    at_boundary: bool,
    line_empty: bool,
    line_is_comment: bool,
    before_line: bool,
    after_cr: bool,
}

impl Default for Boundary {
    fn default() -> Self {
        // The start of a stream is a boundary.
        Self {
            at_boundary: true,
            line_empty: true,
            line_is_comment: false,
            before_line: true,
            after_cr: false,
        }
    }
}

impl Boundary {
    pub fn observe(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue; // the LF of a CRLF already counted at the CR
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    // An empty line ends an event; a field line leaves the event pending; a
                    // comment line changes nothing.
                    self.at_boundary = if self.line_empty {
                        true
                    } else if self.line_is_comment {
                        self.before_line
                    } else {
                        false
                    };
                    self.line_empty = true;
                    self.line_is_comment = false;
                    self.after_cr = byte == b'\r';
                }
                _ => {
                    if self.line_empty {
                        self.before_line = self.at_boundary;
                        self.line_is_comment = byte == b':';
                    }
                    self.line_empty = false;
                    self.at_boundary = false;
                }
            }
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.at_boundary
    }

    /// Whether a line can be inserted now: between events, and not between the CR and LF of a
    /// line ending split across chunks (the LF would then follow the insertion as a blank line).
    pub fn can_insert(&self) -> bool {
        self.at_boundary && !self.after_cr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_message_after_priming_event() {
        let mut p = Parser::new();
        let events =
            p.push(b"id: 0\nretry: 1000\ndata:\n\nevent: message\nid: 1\ndata: {\"a\":1}\n\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "");
        assert_eq!(events[0].retry, Some(1000));
        assert_eq!(events[1].event.as_deref(), Some("message"));
        assert_eq!(events[1].data, "{\"a\":1}");
        assert_eq!(events[1].id.as_deref(), Some("1"));
    }

    #[test]
    fn handles_every_split_point_and_line_ending() {
        let input = b": keepalive\r\ndata: one\r\ndata: two\r\n\r\ndata:three\r\rdata: four\n\n";
        for split in 0..input.len() {
            let mut p = Parser::new();
            let mut events = p.push(&input[..split]);
            events.extend(p.push(&input[split..]));
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, ["one\ntwo", "three", "four"], "split at {split}");
        }
    }

    #[test]
    fn boundary_only_after_a_blank_line() {
        let mut b = Boundary::default();
        assert!(b.at_boundary());
        b.observe(b"event: message\ndata: {}");
        assert!(!b.at_boundary());
        b.observe(b"\n");
        assert!(!b.at_boundary(), "a field line ended, the event has not");
        b.observe(b"\n");
        assert!(b.at_boundary());
        b.observe(b"data: x\r\n");
        assert!(!b.at_boundary());
        b.observe(b"\r");
        assert!(b.at_boundary());
        assert!(!b.can_insert(), "an LF may still complete this CR");
        b.observe(b"\n"); // the LF of that CRLF, in the next chunk
        assert!(b.at_boundary());
        assert!(b.can_insert());
        b.observe(b": keepalive\n");
        assert!(
            b.at_boundary(),
            "a comment between events keeps the boundary"
        );
        b.observe(b"data: y\n: note\n");
        assert!(
            !b.at_boundary(),
            "a comment inside an event does not end it"
        );
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let mut p = Parser::new();
        assert!(p.push(b"data: partial\n").is_empty());
        assert_eq!(p.push(b"\n")[0].data, "partial");
    }
}
