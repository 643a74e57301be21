//! The per-upstream tool policy (`TOOLS_ALLOW` / `TOOLS_DENY`): which of the upstream's tools a
//! client may see and call.
//!
//! It owns the whole policy so that both fronts get it by going through the
//! [`crate::forwarder::Forwarder`]: matching names against globs, refusing a `tools/call` of a
//! refused tool before anything is sent upstream, and filtering the tools out of a `tools/list`
//! answer, whether it comes as one JSON body or as SSE events.
//!
//! Refusing the call is what enforces the policy; filtering the list only keeps clients from
//! offering tools they cannot use. A request body is parsed only when a policy is set, and only
//! the answers to `tools/list` requests are parsed at all: every other answer stays a byte
//! stream, and an answer the filter does not change passes byte-identical. A request the policy
//! cannot read unambiguously (not JSON, a `tools/call` without a string `name`, a key written
//! twice, which JSON parsers resolve differently) is refused rather than guessed at.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::jsonrpc::{self, Code};

/// The `data.reason` of the sidecar's refusal.
pub const REASON: &str = "tool_refused";

/// Most bytes of a `tools/list` answer (or of one of its events) held to filter it. Far beyond
/// any real list; beyond it the answer is cut rather than passed unfiltered.
const MAX_HELD: usize = 16 * 1024 * 1024;

/// The longest batch the policy checks. A refused batch is answered with one error per request,
/// each some 250 bytes: a body of tiny requests would otherwise turn into 30 times its size in
/// memory and in the answer. MCP dropped batches in 2025-06-18; no client sends one this long.
const MAX_CHECKED_BATCH: usize = 1000;

/// One name or glob: `*` matches any run of characters, `?` one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Tool names are letters, digits and `_ - . / :` (MCP recommends `A-Za-z0-9_-.`; `/` and
    /// `:` appear in namespaced names).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("holds an empty pattern".into());
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_-./:*?".contains(*c)))
        {
            return Err(format!(
                "pattern {text:?} holds {bad:?}; tool names and globs are letters, digits and _ - . / : with * and ?",
                text = text.escape_debug().to_string(),
            ));
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Glob matching over characters, case-sensitive as tool names are. The classic
    /// backtrack-to-the-last-star walk: linear for patterns with one star, never exponential.
    pub fn matches(&self, name: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let name: Vec<char> = name.chars().collect();
        let (mut p, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, n));
                    p += 1;
                }
                Some(&c) if c == '?' || c == name[n] => {
                    p += 1;
                    n += 1;
                }
                _ => match star {
                    Some((sp, sn)) => {
                        p = sp + 1;
                        n = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|c| *c == '*')
    }
}

/// Splits a setting's text into patterns: separated by commas or whitespace. An empty piece
/// between commas (`a,,b`, a trailing comma) is an error, not skipped: it is a mistake.
pub fn parse_list(text: &str) -> Result<Vec<Pattern>, Vec<String>> {
    let mut patterns = Vec::new();
    let mut problems = Vec::new();
    for piece in text.split(',') {
        let piece = piece.trim();
        if piece.is_empty() {
            problems.push("holds an empty pattern (two commas, or a comma at an end)".into());
            continue;
        }
        for word in piece.split_whitespace() {
            match Pattern::parse(word) {
                Ok(pattern) => patterns.push(pattern),
                Err(message) => problems.push(message),
            }
        }
    }
    if problems.is_empty() {
        Ok(patterns)
    } else {
        Err(problems)
    }
}

/// One side of the policy, with the key as the user wrote it (for messages).
#[derive(Debug, Clone)]
pub struct PatternList {
    pub key: String,
    pub patterns: Vec<Pattern>,
}

impl PatternList {
    fn find(&self, name: &str) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.matches(name))
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.patterns.iter().map(Pattern::as_str).collect();
        names.join(",")
    }
}

#[derive(Debug)]
struct Rules {
    allow: Option<PatternList>,
    deny: Option<PatternList>,
}

/// Which tools pass. With both lists set a tool must match `TOOLS_ALLOW` and not match
/// `TOOLS_DENY`. The default lets every tool through and costs nothing.
#[derive(Debug, Clone, Default)]
pub struct ToolPolicy(Option<Arc<Rules>>);

/// Why a tool is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// It matches this pattern of `TOOLS_DENY` (the key as written).
    Denied {
        key: String,
        pattern: String,
    },
    /// `TOOLS_ALLOW` is set and no pattern of it matches.
    NotAllowed {
        key: String,
    },
}

impl ToolPolicy {
    pub fn new(allow: Option<PatternList>, deny: Option<PatternList>) -> Self {
        if allow.is_none() && deny.is_none() {
            return Self(None);
        }
        Self(Some(Arc::new(Rules { allow, deny })))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    pub fn verdict(&self, name: &str) -> Verdict {
        let Some(rules) = &self.0 else {
            return Verdict::Allowed;
        };
        if let Some(allow) = &rules.allow
            && allow.find(name).is_none()
        {
            return Verdict::NotAllowed {
                key: allow.key.clone(),
            };
        }
        if let Some(deny) = &rules.deny
            && let Some(pattern) = deny.find(name)
        {
            return Verdict::Denied {
                key: deny.key.clone(),
                pattern: pattern.as_str().to_string(),
            };
        }
        Verdict::Allowed
    }

    pub fn permits(&self, name: &str) -> bool {
        self.verdict(name) == Verdict::Allowed
    }

    /// For `check-config`: `(TOOLS_ALLOW, TOOLS_DENY)` values.
    pub fn summary(&self) -> (String, String) {
        let all = || "(all tools)".to_string();
        let none = || "(none)".to_string();
        match &self.0 {
            None => (all(), none()),
            Some(rules) => (
                rules
                    .allow
                    .as_ref()
                    .map(PatternList::describe)
                    .unwrap_or_else(all),
                rules
                    .deny
                    .as_ref()
                    .map(PatternList::describe)
                    .unwrap_or_else(none),
            ),
        }
    }

    /// Checks a client's POST body: a refusal to answer with instead of sending it, or the ids
    /// of the `tools/list` requests in it, whose answers are to be filtered. Without a policy
    /// nothing is parsed.
    pub fn check(&self, body: &[u8]) -> Checked {
        if !self.is_set() || body.trim_ascii().is_empty() {
            return Checked::Pass(Vec::new());
        }
        // Not an untagged enum: that would buffer the whole body, arguments included, and
        // lose the duplicate-key check.
        let parsed = if body.trim_ascii_start().starts_with(b"[") {
            serde_json::from_slice::<Vec<Message>>(body)
        } else {
            serde_json::from_slice::<Message>(body).map(|message| vec![message])
        };
        let Ok(messages) = parsed else {
            return Checked::Refused(Refusal::unreadable(body));
        };
        if messages.len() > MAX_CHECKED_BATCH {
            return Checked::Refused(Refusal::too_long(messages.len()));
        }
        let mut lists = Vec::new();
        let mut refused: Option<(String, String)> = None;
        for message in &messages {
            match message.method.as_deref() {
                Some("tools/call") => {
                    let name = message
                        .params
                        .as_ref()
                        .and_then(|p| p.name.as_ref())
                        .and_then(Value::as_str);
                    let Some(name) = name else {
                        return Checked::Refused(Refusal::unreadable(body));
                    };
                    let why = match self.verdict(name) {
                        Verdict::Allowed => continue,
                        Verdict::Denied { key, pattern } => {
                            format!("it matches {pattern:?} in {key}")
                        }
                        Verdict::NotAllowed { key } => format!("it matches nothing in {key}"),
                    };
                    refused.get_or_insert((name.to_string(), why));
                }
                Some("tools/list") => {
                    if let Some(id) = message.id.clone().filter(|id| !id.is_null()) {
                        lists.push(id);
                    }
                }
                _ => {}
            }
        }
        match refused {
            Some((tool, why)) => Checked::Refused(Refusal::new(&messages, &tool, &why)),
            None => Checked::Pass(lists),
        }
    }

    /// Filters the `tools/list` answers (to the requests `ids`) in one JSON-RPC message or
    /// batch. `None`: nothing to remove, the bytes pass as they are.
    pub fn filter_message(&self, ids: &[Value], text: &[u8]) -> Option<Vec<u8>> {
        let mut message: Value = serde_json::from_slice(text).ok()?;
        let changed = match &mut message {
            Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
                self.filter_answer(ids, item) | changed
            }),
            item => self.filter_answer(ids, item),
        };
        // Serializing a Value cannot fail: its keys are strings.
        changed.then(|| serde_json::to_vec(&message).unwrap_or_default())
    }

    /// Filters one message when it is the answer to a `tools/list` request of `ids`; whether
    /// a tool was removed.
    pub fn filter_answer(&self, ids: &[Value], message: &mut Value) -> bool {
        if message.get("method").is_some() || !message.get("id").is_some_and(|id| ids.contains(id))
        {
            return false;
        }
        let Some(Value::Array(tools)) = message.pointer_mut("/result/tools") else {
            return false;
        };
        let before = tools.len();
        // A tool without a string name cannot be checked, so it is not shown.
        tools.retain(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| self.permits(name))
        });
        tools.len() != before
    }

    /// The answer to `tools/list` requests `ids` as one JSON body, filtered once it is whole.
    pub fn filter_json<S, E>(
        &self,
        ids: Vec<Value>,
        chunks: S,
    ) -> impl Stream<Item = Result<Bytes, E>> + use<S, E>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: Send + 'static,
    {
        let policy = self.clone();
        futures_util::stream::once(async move {
            let mut chunks = chunks;
            let mut body = Vec::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                if body.len() + chunk.len() > MAX_HELD {
                    tracing::warn!(
                        limit = MAX_HELD,
                        "a tools/list answer is too large to filter by the tool policy; cut"
                    );
                    return Ok(Bytes::new());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(match policy.filter_message(&ids, &body) {
                Some(filtered) => Bytes::from(filtered),
                None => Bytes::from(body),
            })
        })
    }

    /// The answer to `tools/list` requests `ids` as SSE: events pass as they complete, those
    /// holding a list answer filtered; once every list is answered the rest passes unparsed.
    pub fn filter_events<S, E>(
        &self,
        ids: Vec<Value>,
        chunks: S,
    ) -> impl Stream<Item = Result<Bytes, E>> + use<S, E>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: Send + 'static,
    {
        let filter = EventFilter::new(self.clone(), ids);
        futures_util::stream::unfold(Some((chunks, filter)), |state| async move {
            let (mut chunks, mut filter) = state?;
            loop {
                match chunks.next().await {
                    Some(Ok(chunk)) => match filter.push(&chunk) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Some((Ok(Bytes::from(out)), Some((chunks, filter)))),
                        Err(TooLarge) => {
                            tracing::warn!(
                                limit = MAX_HELD,
                                "an event of a tools/list answer is too large to filter by the tool policy; the stream is cut"
                            );
                            return None;
                        }
                    },
                    Some(Err(e)) => return Some((Err(e), Some((chunks, filter)))),
                    None => {
                        let rest = filter.finish();
                        return (!rest.is_empty()).then(|| (Ok(Bytes::from(rest)), None));
                    }
                }
            }
        })
    }
}

/// What the policy reads of a client message; the rest (a tool's arguments) is skipped
/// without being kept. A field written twice fails to parse, so it is refused instead of read one way
/// here and another upstream.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Params>,
}

/// `name` as any value: only a `tools/call` needs it to be a string, and another method's
/// `params.name` must not make its message unreadable.
#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    name: Option<Value>,
}

/// What [`ToolPolicy::check`] decided.
#[derive(Debug)]
pub enum Checked {
    /// Send it; filter the answers to these `tools/list` ids (empty: nothing to filter).
    Pass(Vec<Value>),
    Refused(Refusal),
}

/// The sidecar's own answer to a message the policy refuses; nothing of it went upstream.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// A JSON-RPC error for the request's id, or an array of them for a batch.
    pub body: Value,
    /// Whether any request in it has an id: without one there is nobody to answer in JSON-RPC
    /// terms (the HTTP front answers 400 then, as for other refusals of a notification).
    pub has_id: bool,
    /// For the log line: the refused tool, or why the message could not be checked.
    pub what: String,
}

impl Refusal {
    fn new(messages: &[Message], tool: &str, why: &str) -> Self {
        let message = format!(
            "mcp-sidecar: the tool policy refuses the tool {tool:?} ({why}); nothing was sent upstream"
        );
        let mut errors: Vec<Value> = messages
            .iter()
            .filter_map(|m| m.id.clone().filter(|id| !id.is_null()))
            .map(|id| jsonrpc::error_body(id, Code::Refused, &message, REASON))
            .collect();
        let has_id = !errors.is_empty();
        let body = if errors.is_empty() {
            jsonrpc::error_body(Value::Null, Code::Refused, &message, REASON)
        } else if messages.len() == 1 {
            errors.remove(0)
        } else {
            // A batch: one error per request in it, since none of it was sent.
            Value::Array(errors)
        };
        Self {
            body,
            has_id,
            what: format!("tool {tool:?}: {why}"),
        }
    }

    fn unreadable(body: &[u8]) -> Self {
        let message = "mcp-sidecar: the tool policy cannot read this message (not JSON-RPC, a tools/call without a string name, or a key written twice); nothing was sent upstream";
        let id = jsonrpc::request_id(body);
        Self {
            has_id: !id.is_null(),
            body: jsonrpc::error_body(id, Code::Refused, message, REASON),
            what: "a message the tool policy cannot read".into(),
        }
    }

    /// One error for a whole batch longer than [`MAX_CHECKED_BATCH`], not one per request.
    fn too_long(len: usize) -> Self {
        let message = format!(
            "mcp-sidecar: the tool policy checks batches of at most {MAX_CHECKED_BATCH} messages, this one has {len}; nothing was sent upstream"
        );
        Self {
            has_id: false,
            body: jsonrpc::error_body(Value::Null, Code::Refused, &message, REASON),
            what: format!("a batch of {len} messages"),
        }
    }
}

/// An SSE event that outgrew [`MAX_HELD`].
#[derive(Debug)]
pub struct TooLarge;

/// Splits an SSE byte stream into events (lines end in CRLF, LF or CR, a chunk boundary falls
/// anywhere) and rewrites only the data of events that answer a pending `tools/list`.
#[derive(Debug)]
pub struct EventFilter {
    policy: ToolPolicy,
    /// The `tools/list` ids not answered yet; once empty, bytes pass unparsed.
    pending: Vec<Value>,
    /// The raw bytes of the event being read, terminators included.
    event: Vec<u8>,
    /// Where each of its complete lines starts.
    lines: Vec<usize>,
    line_start: usize,
    after_cr: bool,
}

impl EventFilter {
    pub fn new(policy: ToolPolicy, ids: Vec<Value>) -> Self {
        Self {
            policy,
            pending: ids,
            event: Vec::new(),
            lines: Vec::new(),
            line_start: 0,
            after_cr: false,
        }
    }

    /// Takes the next chunk, returns the bytes that can go out now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TooLarge> {
        let mut out = Vec::new();
        for (at, &byte) in chunk.iter().enumerate() {
            if self.pending.is_empty() && self.event.is_empty() {
                // Every list is answered, between events: the rest is a plain byte stream.
                out.extend_from_slice(&chunk[at..]);
                return Ok(out);
            }
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                // The LF of a CRLF whose CR already ended the line.
                if self.event.is_empty() {
                    out.push(byte);
                } else {
                    self.event.push(byte);
                    self.line_start = self.event.len();
                }
                continue;
            }
            self.event.push(byte);
            if self.event.len() > MAX_HELD {
                return Err(TooLarge);
            }
            if byte != b'\n' && byte != b'\r' {
                continue;
            }
            self.after_cr = byte == b'\r';
            let line = &self.event[self.line_start..self.event.len() - 1];
            if line.is_empty() {
                self.dispatch(&mut out);
            } else if line[0] == b':' && self.lines.is_empty() {
                // A comment between events (a keepalive) passes at once.
                out.append(&mut self.event);
                self.line_start = 0;
            } else {
                self.lines.push(self.line_start);
                self.line_start = self.event.len();
            }
        }
        Ok(out)
    }

    /// The stream ended: an event left incomplete passes as it came when completing it would
    /// leave it unchanged (clients drop it anyway), and is withheld when it would be filtered,
    /// for clients that read it all the same.
    pub fn finish(&mut self) -> Vec<u8> {
        let event = std::mem::take(&mut self.event);
        self.lines.clear();
        self.line_start = 0;
        if event.is_empty() || self.pending.is_empty() {
            return event;
        }
        let mut completed = event.clone();
        completed.extend_from_slice(b"\n\n");
        let parsed = crate::sse::Parser::new().push(&completed);
        let filtered = parsed
            .first()
            .and_then(|e| self.policy.filter_message(&self.pending, e.data.as_bytes()));
        if filtered.is_some() {
            tracing::warn!(
                "the upstream ended a tools/list answer mid-event; the incomplete event was withheld"
            );
            return Vec::new();
        }
        event
    }

    /// The event is complete (its blank line read): out as it came, or with its data filtered.
    fn dispatch(&mut self, out: &mut Vec<u8>) {
        let event = std::mem::take(&mut self.event);
        let lines = std::mem::take(&mut self.lines);
        self.line_start = 0;
        let parsed = crate::sse::Parser::new().push(&event);
        let Some(data) = parsed.first().map(|e| e.data.as_bytes()) else {
            out.extend_from_slice(&event);
            return;
        };
        let answered = self.answered(data);
        let filtered = self.policy.filter_message(&self.pending, data);
        self.pending.retain(|id| !answered.contains(id));
        let Some(filtered) = filtered else {
            out.extend_from_slice(&event);
            return;
        };
        // The event's other lines (id, event, retry, comments) stay as they were; its data
        // lines become one.
        let mut wrote_data = false;
        // The last byte is the blank line that ended the event (a CR alone: the LF of a CRLF
        // passes by itself).
        let blank = event.len() - 1;
        let ends = lines.iter().skip(1).copied().chain([blank]);
        for (start, end) in lines.iter().copied().zip(ends) {
            let line = &event[start..end];
            let is_data = line.starts_with(b"data")
                && matches!(line.get(4), None | Some(b':' | b'\n' | b'\r'));
            if !is_data {
                out.extend_from_slice(line);
            } else if !std::mem::replace(&mut wrote_data, true) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&filtered);
                out.push(b'\n');
            }
        }
        out.extend_from_slice(&event[blank..]);
    }

    /// The pending ids that `data` answers (a response, or a batch of them).
    fn answered(&self, data: &[u8]) -> Vec<Value> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        /// A request from the server may carry the same id (its ids are its own): only a
        /// message without a method answers.
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            id: Option<Value>,
            #[serde(default)]
            method: Option<IgnoredAny>,
        }
        let replies = if data.trim_ascii_start().starts_with(b"[") {
            serde_json::from_slice::<Vec<Reply>>(data)
        } else {
            serde_json::from_slice::<Reply>(data).map(|reply| vec![reply])
        };
        let Ok(replies) = replies else {
            return Vec::new();
        };
        replies
            .into_iter()
            .filter(|r| r.method.is_none())
            .filter_map(|r| r.id)
            .filter(|id| self.pending.contains(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(key: &str, text: &str) -> Option<PatternList> {
        Some(PatternList {
            key: key.into(),
            patterns: parse_list(text).unwrap(),
        })
    }

    fn policy(allow: Option<&str>, deny: Option<&str>) -> ToolPolicy {
        ToolPolicy::new(
            allow.and_then(|a| list("MCP_SIDECAR_TOOLS_ALLOW", a)),
            deny.and_then(|d| list("MCP_SIDECAR_TOOLS_DENY", d)),
        )
    }

    fn matches(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(name)
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(matches("echo", "echo"));
        assert!(!matches("echo", "echo2"));
        assert!(!matches("echo", "Echo"));
        assert!(matches("read_*", "read_file"));
        assert!(matches("read_*", "read_"));
        assert!(!matches("read_*", "xread_file"));
        assert!(matches("*_prod", "deploy_prod"));
        assert!(!matches("*_prod", "deploy_prod2"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("*", "anything/at:all"));
        assert!(matches("*", ""));
        assert!(matches("te?t", "test"));
        assert!(!matches("te?t", "tet"));
        assert!(matches("admin/*", "admin/reset"));
        // Backtracking over many stars stays fast (the walk never recurses).
        let name = "a".repeat(10_000);
        assert!(!matches("*a*a*a*a*a*a*a*b", &name));
    }

    #[test]
    fn lists_split_on_commas_and_spaces_and_refuse_mistakes() {
        let names = |text| {
            parse_list(text)
                .unwrap()
                .into_iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("a, b  c,d"), ["a", "b", "c", "d"]);
        assert_eq!(names(" read_*\n\twrite_* "), ["read_*", "write_*"]);
        assert!(parse_list("a,,b").is_err());
        assert!(parse_list("a,").is_err());
        assert!(parse_list(",").is_err());
        let problems = parse_list("ok, b@d, ümlaut").unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("'@'"), "{problems:?}");
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn allow_and_deny_together_mean_allowed_and_not_denied() {
        let p = policy(Some("read_*, echo"), Some("read_secret*"));
        assert_eq!(p.verdict("echo"), Verdict::Allowed);
        assert_eq!(p.verdict("read_file"), Verdict::Allowed);
        assert_eq!(
            p.verdict("read_secrets"),
            Verdict::Denied {
                key: "MCP_SIDECAR_TOOLS_DENY".into(),
                pattern: "read_secret*".into()
            }
        );
        assert_eq!(
            p.verdict("delete_repo"),
            Verdict::NotAllowed {
                key: "MCP_SIDECAR_TOOLS_ALLOW".into()
            }
        );
        assert!(policy(None, Some("x")).permits("y"));
        assert!(!ToolPolicy::default().is_set());
        assert!(ToolPolicy::default().permits("anything"));
        assert_eq!(
            p.summary(),
            ("read_*,echo".to_string(), "read_secret*".to_string())
        );
    }

    #[test]
    fn a_refused_call_is_answered_for_its_id_naming_the_key() {
        let p = policy(None, Some("delete_*"));
        let body = br#"{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"name":"delete_repo","arguments":{"x":[1,2,{"y":null}]}}}"#;
        let Checked::Refused(refusal) = p.check(body) else {
            panic!("delete_repo passed");
        };
        assert!(refusal.has_id);
        assert_eq!(refusal.body["id"], "c-1");
        assert_eq!(refusal.body["error"]["code"], Code::Refused as i32);
        assert_eq!(refusal.body["error"]["data"]["reason"], REASON);
        let message = refusal.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("delete_repo"), "{message}");
        assert!(
            message.contains("\"delete_*\" in MCP_SIDECAR_TOOLS_DENY"),
            "{message}"
        );

        let allowed = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}"#;
        assert!(matches!(p.check(allowed), Checked::Pass(ids) if ids.is_empty()));
    }

    #[test]
    fn what_the_policy_cannot_read_is_refused_not_guessed() {
        let p = policy(Some("echo"), None);
        // JSON escapes spell the same method; a parser sees through them.
        let escaped =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"\u0064elete"}}"#;
        assert!(matches!(p.check(escaped), Checked::Refused(_)));
        // Read as "echo" here, as "delete" by a last-key-wins parser upstream.
        let twice = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete"}}"#;
        let Checked::Refused(refusal) = p.check(twice) else {
            panic!("a duplicate name passed");
        };
        assert_eq!(refusal.body["id"], 1);
        let no_name = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#;
        assert!(matches!(p.check(no_name), Checked::Refused(_)));
        assert!(matches!(p.check(b"not json"), Checked::Refused(_)));
        // Without a policy nothing is read at all.
        assert!(matches!(
            ToolPolicy::default().check(b"not json"),
            Checked::Pass(_)
        ));
        // Other methods pass; tools/list ids are collected.
        let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"x":1}}"#;
        assert!(matches!(p.check(init), Checked::Pass(ids) if ids.is_empty()));
        let other = br#"{"jsonrpc":"2.0","id":0,"method":"x/y","params":{"name":{"a":1}}}"#;
        assert!(matches!(p.check(other), Checked::Pass(_)));
        let number = br#"{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":7}}"#;
        assert!(matches!(p.check(number), Checked::Refused(_)));
        let list = br#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;
        assert!(matches!(p.check(list), Checked::Pass(ids) if ids == [json!(5)]));
    }

    #[test]
    fn a_batch_with_a_refused_call_is_refused_whole() {
        let p = policy(None, Some("delete_repo"));
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repo"}},{"jsonrpc":"2.0","method":"notifications/x"}]"#;
        let Checked::Refused(refusal) = p.check(batch) else {
            panic!("the batch passed");
        };
        let ids: Vec<&Value> = refusal
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["id"])
            .collect();
        assert_eq!(ids, [&json!(1), &json!(2)]);
        let fine = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}]"#;
        assert!(matches!(p.check(fine), Checked::Pass(ids) if ids == [json!(1)]));
        // A call without an id still would run upstream.
        let note = br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_repo"}}"#;
        let Checked::Refused(refusal) = p.check(note) else {
            panic!("a notification call passed");
        };
        assert!(!refusal.has_id);
    }

    #[test]
    fn a_batch_too_long_to_check_is_refused_with_one_error() {
        let p = policy(None, Some("delete_repo"));
        let batch = |n: usize| {
            let mut body = String::from("[");
            for id in 0..n {
                body.push_str(&format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}},"#
                ));
            }
            body.push_str(r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"delete_repo"}}]"#);
            body
        };
        // At the limit: one error per request, as for any refused batch.
        let Checked::Refused(refusal) = p.check(batch(MAX_CHECKED_BATCH - 1).as_bytes()) else {
            panic!("the batch passed");
        };
        assert_eq!(
            refusal.body.as_array().map(Vec::len),
            Some(MAX_CHECKED_BATCH)
        );
        // Past it: one error for all, whatever the batch's length.
        let Checked::Refused(refusal) = p.check(batch(MAX_CHECKED_BATCH).as_bytes()) else {
            panic!("the batch passed");
        };
        assert!(
            refusal.body.is_object() && !refusal.has_id,
            "{}",
            refusal.body
        );
        let text = refusal.body.to_string();
        assert!(
            text.contains("at most 1000 messages") && text.len() < 400,
            "{text}"
        );
        // Allowed calls alone are refused too: the policy did not read them all.
        let long = batch(MAX_CHECKED_BATCH).replace("delete_repo", "echo");
        assert!(matches!(p.check(long.as_bytes()), Checked::Refused(_)));
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"echo"},{"name":"delete_repo"},{"title":"no name"}],"nextCursor":"c2"}}"#;

    #[test]
    fn a_list_answer_loses_refused_tools_and_keeps_its_cursor() {
        let p = policy(None, Some("delete_*"));
        let out = p.filter_message(&[json!(3)], LIST.as_bytes()).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));
        assert_eq!(out["result"]["nextCursor"], "c2");
        // Another id, or a server request reusing the id: untouched.
        assert!(p.filter_message(&[json!(4)], LIST.as_bytes()).is_none());
        let request =
            r#"{"jsonrpc":"2.0","id":3,"method":"x","result":{"tools":[{"name":"delete_repo"}]}}"#;
        assert!(p.filter_message(&[json!(3)], request.as_bytes()).is_none());
        let clean = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"echo"}]}}"#;
        assert!(p.filter_message(&[json!(3)], clean.as_bytes()).is_none());
        let batch = format!("[{LIST}]");
        let out = p.filter_message(&[json!(3)], batch.as_bytes()).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("delete_repo"));
    }

    /// Feeds `input` split at every position (and byte by byte), expecting the same output.
    fn filtered(p: &ToolPolicy, ids: &[Value], input: &str) -> String {
        let mut whole = EventFilter::new(p.clone(), ids.to_vec());
        let mut expected = whole.push(input.as_bytes()).unwrap();
        expected.extend(whole.finish());
        for at in 0..=input.len() {
            let mut split = EventFilter::new(p.clone(), ids.to_vec());
            let mut out = split.push(&input.as_bytes()[..at]).unwrap();
            out.extend(split.push(&input.as_bytes()[at..]).unwrap());
            out.extend(split.finish());
            assert_eq!(out, expected, "split at {at}");
        }
        let mut bytewise = EventFilter::new(p.clone(), ids.to_vec());
        let mut out = Vec::new();
        for byte in input.as_bytes() {
            out.extend(bytewise.push(&[*byte]).unwrap());
        }
        out.extend(bytewise.finish());
        assert_eq!(out, expected, "byte by byte");
        String::from_utf8(expected).unwrap()
    }

    #[test]
    fn events_are_filtered_and_everything_else_passes_as_it_came() {
        let p = policy(None, Some("delete_*"));
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        let input = format!(
            ": hi\r\n\r\nevent: message\nid: 1\ndata: {progress}\n\nid: 2\r\nevent: message\r\ndata: {LIST}\r\n\r\nid: 3\ndata: {LIST}\n\n"
        );
        let out = filtered(&p, &[json!(3)], &input);
        let expected_list =
            String::from_utf8(p.filter_message(&[json!(3)], LIST.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            format!(
                ": hi\r\n\r\nevent: message\nid: 1\ndata: {progress}\n\nid: 2\r\nevent: message\r\ndata: {expected_list}\n\r\nid: 3\ndata: {LIST}\n\n"
            ),
            "the list answer is rewritten in place; after it, bytes pass unparsed"
        );
        // Multi-line data is one JSON text; CR alone ends lines too.
        let split = LIST.replacen(",", ",\rdata: ", 1);
        let input = format!("data: {split}\r\r");
        let out = filtered(&p, &[json!(3)], &input);
        assert_eq!(out, format!("data: {expected_list}\n\r"));
    }

    #[test]
    fn an_incomplete_last_event_passes_only_when_it_holds_nothing_to_filter() {
        let p = policy(None, Some("delete_*"));
        let progress = r#"data: {"jsonrpc":"2.0","method":"notifications/progress"}"#;
        assert_eq!(filtered(&p, &[json!(3)], progress), progress);
        let cut = format!("id: 1\ndata: {LIST}\n");
        assert_eq!(filtered(&p, &[json!(3)], &cut), "");
    }

    #[test]
    fn events_without_a_refused_tool_pass_byte_identical() {
        let p = policy(None, Some("nothing_here"));
        let clean = LIST.replace(r#",{"title":"no name"}"#, "");
        let input = format!(": keepalive\nevent: message\r\nid: 9\r\ndata: {clean}\r\n\r\n");
        assert_eq!(filtered(&p, &[json!(3)], &input), input);
    }
}
