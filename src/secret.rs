//! Secret values and where they come from.
//!
//! Every credential the sidecar holds (bearer tokens, client tokens, static header values) lives in a
//! [`Secret`], whose `Debug`, `Display`-free API and `Serialize` only ever print `<redacted>`: the type
//! system, not reviewer vigilance, keeps secrets out of logs, errors, `check-config` and `/status`.
//!
//! Text the sidecar did not write (an upstream's or identity provider's error) cannot be typed, so
//! this module also owns the scrub registry: every secret value, in every form in which the sidecar
//! sends it or a server re-encodes it, is replaced by `<redacted>` in such text by [`scrub`].
//!
//! A secret configured as `X_FILE` is a [`SecretFile`]: the path is kept and the file is re-read when it
//! changes (Kubernetes rotates mounted secrets by swapping a symlink), so rotation needs no restart.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::{Serialize, Serializer};

const REDACTED: &str = "<redacted>";

/// Every secret value this process holds, so that text the sidecar did not write (an upstream's
/// `error_description`, a JSON-RPC error message) can be scrubbed before it reaches a log line,
/// `/ready` or a client: servers do echo the key they were given ("invalid key sk-..."), and an
/// identity provider's error page may echo the whole request, so each value is remembered in every
/// form the sidecar sends it or a server re-encodes it (see [`forms`]).
///
/// Values registered while the configuration loads are pinned for the life of the process; values
/// that arrive later (rotated token files, reloaded header files) go into a bounded ring, newest
/// kept, so rotation cannot grow memory without bound. Values made for one request (a signed
/// client assertion) have a small ring of their own, so that a retry loop cannot push the current
/// tokens out of the larger one.
struct Registry {
    pinned: Vec<String>,
    rotating: VecDeque<String>,
    ephemeral: VecDeque<String>,
    sealed: bool,
    /// Every form of every value above, longest first, without duplicates: what [`scrub`]
    /// replaces. Rebuilt on registration (rare) so that scrubbing (error paths) only reads.
    patterns: Vec<String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pinned: Vec::new(),
    rotating: VecDeque::new(),
    ephemeral: VecDeque::new(),
    sealed: false,
    patterns: Vec::new(),
});
const ROTATING_SIZE: usize = 256;
/// How many of the newest rotating values streamed bodies are searched for: a few rotations'
/// worth (each brings an access and a refresh token).
const STREAM_ROTATING: usize = 16;
const EPHEMERAL_SIZE: usize = 16;
/// Shorter values would scrub ordinary words out of messages; they are not credentials anyway.
const MIN_SCRUBBED_LEN: usize = 4;

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    fn knows(&self, value: &str) -> bool {
        self.pinned
            .iter()
            .chain(self.rotating.iter())
            .chain(self.ephemeral.iter())
            .any(|k| k == value)
    }

    /// The forms streamed bodies are searched for. Each is searched once per chunk, so the set
    /// stays small however long the process has rotated tokens: what the upstream can echo is
    /// what it was sent, and an access token rotated out long ago has expired. Values made for
    /// one token request (assertions) never go to the upstream.
    fn streamed_forms(&self) -> Vec<String> {
        let mut streamed: Vec<String> = self
            .pinned
            .iter()
            .chain(self.rotating.iter().rev().take(STREAM_ROTATING))
            .flat_map(|value| forms(value))
            .filter(|form| form.len() >= MIN_SCRUBBED_LEN)
            .collect();
        streamed.sort_unstable();
        streamed.dedup();
        streamed
    }

    fn rebuild(&mut self) {
        let patterns = self.message_forms();
        let snapshot = Arc::new(Patterns::new(&self.streamed_forms()));
        *SNAPSHOT.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
        GENERATION.fetch_add(1, Ordering::Release);
        self.patterns = patterns;
    }

    /// Every form of every value remembered, longest first: what messages are scrubbed of.
    fn message_forms(&self) -> Vec<String> {
        let mut patterns: Vec<String> = self
            .pinned
            .iter()
            .chain(self.rotating.iter())
            .chain(self.ephemeral.iter())
            .flat_map(|value| forms(value))
            .filter(|form| form.len() >= MIN_SCRUBBED_LEN)
            .collect();
        patterns.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        patterns
    }
}

/// The registry's forms, prepared for searching bodies as they stream ([`crate::scrubber`]):
/// read without the registry's lock, replaced whole when a secret is registered.
pub struct Patterns {
    finders: Vec<memchr::memmem::Finder<'static>>,
    /// Bytes some form starts with: only where one of these sits near a chunk's end can a secret
    /// be cut in two by the chunk boundary.
    starts: [bool; 256],
    longest: usize,
}

/// Bodies are data, not messages: a short value (a `HEADERS` tenant name) would blank out
/// ordinary words of tool results, and no credential is this short.
const MIN_STREAM_SCRUBBED_LEN: usize = 8;

impl Patterns {
    fn new(forms: &[String]) -> Self {
        let forms: Vec<&String> = forms
            .iter()
            .filter(|f| f.len() >= MIN_STREAM_SCRUBBED_LEN)
            .collect();
        let mut starts = [false; 256];
        for form in &forms {
            if let Some(&first) = form.as_bytes().first() {
                starts[usize::from(first)] = true;
            }
        }
        Self {
            finders: forms
                .iter()
                .map(|f| memchr::memmem::Finder::new(f.as_bytes()).into_owned())
                .collect(),
            starts,
            longest: forms.iter().map(|f| f.len()).max().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// The length of the longest form.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The byte ranges of `bytes` where a form occurs, sorted, overlapping ones merged.
    pub fn matches(&self, bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for finder in &self.finders {
            let len = finder.needle().len();
            ranges.extend(finder.find_iter(bytes).map(|at| at..at + len));
        }
        if ranges.len() > 1 {
            ranges.sort_unstable_by_key(|r| r.start);
            let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranges.len());
            for range in ranges {
                match merged.last_mut() {
                    Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                    _ => merged.push(range),
                }
            }
            ranges = merged;
        }
        ranges
    }

    /// Where, at or after `from`, the longest tail of `bytes` begins that is the start of a form
    /// (it may be completed by the next chunk); `bytes.len()` when there is none.
    pub fn cut_tail(&self, bytes: &[u8], from: usize) -> usize {
        let from = from.max(bytes.len().saturating_sub(self.longest.saturating_sub(1)));
        (from..bytes.len())
            .find(|&at| {
                self.starts[usize::from(bytes[at])]
                    && self.finders.iter().any(|f| {
                        f.needle().len() > bytes.len() - at && f.needle().starts_with(&bytes[at..])
                    })
            })
            .unwrap_or(bytes.len())
    }
}

static SNAPSHOT: std::sync::LazyLock<RwLock<Arc<Patterns>>> =
    std::sync::LazyLock::new(|| RwLock::new(Arc::new(Patterns::new(&[]))));
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current forms, and their generation (it changes whenever a secret is registered, so a
/// long stream can tell cheaply that it should take the new ones).
pub fn patterns() -> (Arc<Patterns>, u64) {
    let generation = GENERATION.load(Ordering::Acquire);
    let snapshot = SNAPSHOT.read().unwrap_or_else(|p| p.into_inner()).clone();
    (snapshot, generation)
}

pub fn patterns_generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The text that replaces a secret.
pub const REDACTION: &str = REDACTED;

/// Remembers `value` for [`scrub`]. Called for every [`Secret`], every `HEADERS` value, and every
/// credential the sidecar derives from one before sending it (a `Basic` credential).
pub fn register(value: &str) {
    if value.len() < MIN_SCRUBBED_LEN {
        return;
    }
    let mut registry = registry();
    if registry.knows(value) {
        return;
    }
    if registry.sealed {
        registry.rotating.push_back(value.to_string());
        if registry.rotating.len() > ROTATING_SIZE {
            registry.rotating.pop_front();
        }
    } else {
        registry.pinned.push(value.to_string());
    }
    registry.rebuild();
}

/// Remembers a value made for one request (a signed `private_key_jwt` assertion) for [`scrub`],
/// in a small ring of its own: it dies with the request's answer, which is what may echo it.
pub fn register_ephemeral(value: &str) {
    if value.len() < MIN_SCRUBBED_LEN {
        return;
    }
    let mut registry = registry();
    if registry.knows(value) {
        return;
    }
    registry.ephemeral.push_back(value.to_string());
    if registry.ephemeral.len() > EPHEMERAL_SIZE {
        registry.ephemeral.pop_front();
    }
    registry.rebuild();
}

/// Ends the configuration phase: secrets registered from now on may rotate out of the registry.
pub fn seal() {
    registry().sealed = true;
}

/// `text` with every known secret, in every known form, replaced by `<redacted>`. Longest first,
/// so a secret that contains another is replaced whole.
///
/// Not on the per-request path: callers are error paths and readiness changes. Its cost is one
/// substring search per distinct form (a handful per secret, most collapse into the raw value).
pub fn scrub(text: &str) -> String {
    let registry = registry();
    let mut out = text.to_string();
    for pattern in &registry.patterns {
        if out.contains(pattern.as_str()) {
            out = out.replace(pattern.as_str(), REDACTED);
        }
    }
    out
}

/// [`scrub`] for a body that may not be UTF-8: the forms are ASCII or UTF-8 text, so they are
/// found byte by byte all the same.
pub fn scrub_bytes(bytes: &[u8]) -> Vec<u8> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return scrub(text).into_bytes();
    }
    let registry = registry();
    let mut out = bytes.to_vec();
    for pattern in &registry.patterns {
        // memmem, not a scan of every window: a hostile upstream's error body may be 256 KiB,
        // and this runs once per known form.
        let finder = memchr::memmem::Finder::new(pattern.as_bytes());
        if finder.find(&out).is_none() {
            continue;
        }
        let mut scrubbed = Vec::with_capacity(out.len());
        let mut last = 0;
        for at in finder.find_iter(&out) {
            if at < last {
                continue;
            }
            scrubbed.extend_from_slice(&out[last..at]);
            scrubbed.extend_from_slice(REDACTED.as_bytes());
            last = at + pattern.len();
        }
        scrubbed.extend_from_slice(&out[last..]);
        out = scrubbed;
    }
    out
}

/// Every string in `value` (object keys too) with every known secret scrubbed: for a JSON
/// message relayed from outside, whose strings may hold a secret in a form only decoding shows.
pub fn scrub_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => *text = scrub(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub_json),
        serde_json::Value::Object(members) => {
            let taken = std::mem::take(members);
            for (key, mut member) in taken {
                scrub_json(&mut member);
                members.insert(scrub(&key), member);
            }
        }
        _ => {}
    }
}

/// At most `limit` bytes of `text`, cut at a character boundary, with an ellipsis when cut.
/// Callers scrub first: a secret cut in half would no longer be recognized.
pub fn excerpt(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The ways `value` travels or comes back: raw (headers, JSON bodies), form-urlencoded as the
/// token requests send it (`+` or `%20` for spaces, upper- or lower-case hex), percent-encoded
/// as a URI component (how a server may re-encode a request it echoes), JSON string-escaped
/// (plain, with `\/`, Go's `\u0026` style, ASCII-only), HTML-escaped (an echoing error page), and
/// inside base64 text ([`base64_forms`]).
fn forms(value: &str) -> Vec<String> {
    let form = url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    let form_spaces = form.replace('+', "%20");
    let component = percent_encode(value, |b| {
        b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
    });
    let unreserved = percent_encode(value, |b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
    let json = json_escape(value);
    let mut out = vec![
        value.to_string(),
        lower_hex(&form),
        lower_hex(&form_spaces),
        lower_hex(&component),
        lower_hex(&unreserved),
        form,
        form_spaces,
        component,
        unreserved,
        json.replace('/', "\\/"),
        json.replace('&', "\\u0026")
            .replace('<', "\\u003c")
            .replace('>', "\\u003e"),
        ascii_json(&json),
        dotnet_json(value),
        json,
    ];
    let html = value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    out.push(html.replace('\'', "&#x27;"));
    out.push(html.replace('\'', "&#39;"));
    out.extend(base64_forms(value));
    out
}

/// Values shorter than this get no base64 forms: their cores would be a few characters that
/// ordinary base64 data (an image, a hash) contains by chance.
const MIN_BASE64_LEN: usize = 8;

/// How `value` reads inside base64 text: an upstream that echoes a request base64-encoded, a
/// JWT or data URL that embeds it, a Basic credential built around it. Where the value starts
/// relative to the encoder's 3-byte groups changes every character, so there are three forms per
/// alphabet (standard and URL-safe); each keeps only the characters that depend on the value
/// alone, so it matches whatever bytes surround the value.
fn base64_forms(value: &str) -> Vec<String> {
    use base64::Engine;
    let bytes = value.as_bytes();
    if bytes.len() < MIN_BASE64_LEN {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(6);
    for offset in 0..3usize {
        let mut framed = vec![0u8; offset];
        framed.extend_from_slice(bytes);
        // Two more bytes so the encoding runs past the value's last whole character.
        framed.extend_from_slice(&[0, 0]);
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&framed);
        // Character i holds bits [6i, 6i + 6); the value holds bits [8 offset, 8 (offset + len)).
        let first = (8 * offset).div_ceil(6);
        let end = 8 * (offset + bytes.len()) / 6;
        let Some(core) = encoded.get(first..end) else {
            continue;
        };
        out.push(core.replace('+', "-").replace('/', "_"));
        out.push(core.to_string());
    }
    out
}

/// Percent-encodes every byte `keep` refuses, with upper-case hex (RFC 3986 2.1 prefers it).
fn percent_encode(value: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The same percent-encoding with lower-case hex digits, which some servers write.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if c == '%' {
            hex_left = 2;
            out.push(c);
        } else if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON string literal of `value`, without its quotes.
fn json_escape(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// `json` with every non-ASCII character as `\uXXXX` (UTF-16), as Python's `json.dumps` writes.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The JSON string literal of `value` (without quotes) as .NET's `System.Text.Json` writes it by
/// default (`JavaScriptEncoder.Default`, what the C# MCP SDK uses): HTML-sensitive characters
/// (`" & ' + < >` and the backtick) and every non-ASCII character as `\uXXXX` in upper-case hex,
/// so a base64 token's `+` comes back as `\u002B`.
fn dotnet_json(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for c in value.chars() {
        match c {
            '"' | '&' | '\'' | '+' | '<' | '>' | '`' => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() => {
                let escaped = serde_json::Value::String(c.to_string()).to_string();
                out.push_str(&escaped[1..escaped.len() - 1]);
            }
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out
}

/// A string that must never be printed.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Self(SecretString::from(value))
    }

    /// The plain value, for the one place that needs it (building a request header).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Compares in constant time, so a client probing `CLIENT_TOKEN` learns nothing from timing.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().as_bytes().ct_eq(candidate).into()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose().as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Why a secret could not be read. Names the configuration key and the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: cannot read {path}: {source}")]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not there yet: in Kubernetes and with secret agents the file often arrives after start.
    #[error("{key}: {path} does not exist (yet)")]
    Missing { key: &'static str, path: PathBuf },
    #[error("{key}: {path} is empty")]
    Empty { key: &'static str, path: PathBuf },
    #[error("{key}: {path} is not valid UTF-8")]
    NotUtf8 { key: &'static str, path: PathBuf },
    #[error("{key}: {path} is a {kind}, not a file")]
    NotAFile {
        key: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{key}: {path} is larger than {limit} bytes; a secret file holds one value")]
    TooLarge {
        key: &'static str,
        path: PathBuf,
        limit: u64,
    },
}

impl SecretError {
    /// A file that is not there yet or still empty: something outside the sidecar (a mounted
    /// secret, vault-agent, `cmd > file`) has yet to write it. Not a configuration mistake; the
    /// sidecar serves and reports `auth_required` until it arrives.
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::Empty { .. })
    }
}

/// The largest secret file read. A token, a key or a header list is a few KiB at most; a bigger
/// file is a mistake (a log file named by accident), and must never become a request header.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// How long the last good value stands in while a file is rewritten in place. `cmd > file`
/// truncates first and writes after; readers in between see an empty or partial file, although
/// the previous value is still valid. Two seconds covers a slow command many times over (the
/// window is usually microseconds), while a file that really was emptied is reported soon after.
pub const REWRITE_GRACE: Duration = Duration::from_secs(2);

/// A file modified this recently and shorter than the last good value is taken to be mid-write.
/// A partial file cannot be told from a shorter token by its content; its age can: a writer
/// finishes within microseconds (more on a loaded machine), so a short file this young is most
/// likely still being written. A genuinely shorter token is used once it is older than this, or
/// at once when the upstream has rejected the previous one ([`SecretFile::reread`]).
const PARTIAL_WINDOW: Duration = Duration::from_millis(500);

/// What identifies one version of a file: a symlink swap changes the inode, an in-place write the
/// length or modification time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    /// Modified within `window` of now (a clock that went backwards counts as recent).
    fn is_younger_than(&self, window: Duration) -> bool {
        self.modified
            .is_some_and(|m| m.elapsed().map_or(true, |age| age < window))
    }
}

#[derive(Debug, Default)]
struct Cache {
    /// The value of the file version `FileStamp`, served while the file is unchanged.
    current: Option<(FileStamp, Secret)>,
    /// The last value read whole, which stands in during a rewrite.
    last_good: Option<Secret>,
    /// When the file was last seen empty or partial with a length not seen before, and that
    /// length; `None` while the file is whole. A writer that makes progress (or starts again)
    /// is bridged; one that stops mid-write for the grace is reported.
    rewriting_since: Option<(Instant, usize)>,
}

/// A secret kept in a file and re-read whenever the file changes.
///
/// Reads are synchronous on purpose: a `stat` of a local file costs about a microsecond, far less
/// than handing the call to a blocking thread pool, and this sits on the per-request path.
#[derive(Debug)]
pub struct SecretFile {
    key: &'static str,
    path: PathBuf,
    grace: Duration,
    cache: Mutex<Cache>,
}

impl SecretFile {
    pub fn new(key: &'static str, path: impl Into<PathBuf>) -> Self {
        Self {
            key,
            path: path.into(),
            grace: REWRITE_GRACE,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The same file with another [`REWRITE_GRACE`] (zero: report an empty file at once).
    pub fn with_rewrite_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The current content: from the cache while the file is unchanged, read anew otherwise.
    /// A missing file is an error every time, never served from the cache; an empty or partial
    /// one is bridged with the last good value for [`REWRITE_GRACE`], then reported.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let meta = self.metadata()?;
        let stamp = FileStamp::of(&meta);
        {
            let cache = self.lock();
            if let Some((cached, secret)) = cache.current.as_ref()
                && *cached == stamp
            {
                return Ok(secret.clone());
            }
        }
        self.load(stamp, true)
    }

    /// Reads the file regardless of the cache (used after the upstream rejected the cached value).
    /// Nothing is bridged: the last good value is the one just rejected, so an empty file is
    /// reported and a short one taken as it is.
    pub fn reread(&self) -> Result<Secret, SecretError> {
        let meta = self.metadata()?;
        self.load(FileStamp::of(&meta), false)
    }

    fn metadata(&self) -> Result<std::fs::Metadata, SecretError> {
        let meta = std::fs::metadata(&self.path).map_err(|source| self.unreadable(source))?;
        self.regular(&meta)?;
        if meta.len() > MAX_SECRET_FILE_BYTES {
            return Err(self.too_large());
        }
        Ok(meta)
    }

    /// Only regular files are secrets: opening a FIFO blocks until a writer comes (holding the
    /// thread that reads it), and a device may never end.
    fn regular(&self, meta: &std::fs::Metadata) -> Result<(), SecretError> {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        let kind = if kind.is_file() {
            return Ok(());
        } else if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else {
            "device"
        };
        Err(self.forget(SecretError::NotAFile {
            key: self.key,
            path: self.path.clone(),
            kind,
        }))
    }

    fn load(&self, stamp: FileStamp, bridge: bool) -> Result<Secret, SecretError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = Vec::new();
        // Non-blocking, and checked again on the open descriptor: the path may have been
        // replaced by a FIFO since the `stat`.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .map_err(|source| self.unreadable(source))?;
        self.regular(&file.metadata().map_err(|source| self.unreadable(source))?)?;
        // Bounded even if the file grew after the `stat`.
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| self.unreadable(source))?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(self.too_large());
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            self.forget(SecretError::NotUtf8 {
                key: self.key,
                path: self.path.clone(),
            })
        })?;
        // Files written by `echo` or editors end with a newline that is not part of the secret.
        let trimmed = text.trim();
        let mut cache = self.lock();
        let partial = cache.last_good.as_ref().is_some_and(|good| {
            trimmed.len() < good.expose().len() && stamp.is_younger_than(PARTIAL_WINDOW)
        });
        if trimmed.is_empty() || partial {
            let since = match cache.rewriting_since {
                Some((since, len)) if len == trimmed.len() => since,
                _ => {
                    let now = Instant::now();
                    cache.rewriting_since = Some((now, trimmed.len()));
                    now
                }
            };
            if let Some(good) = cache.last_good.as_ref()
                && bridge
                && since.elapsed() < self.grace
            {
                // Not cached under this stamp: the next read looks at the file again.
                return Ok(good.clone());
            }
            if trimmed.is_empty() {
                cache.current = None;
                return Err(SecretError::Empty {
                    key: self.key,
                    path: self.path.clone(),
                });
            }
        }
        let secret = Secret::new(trimmed);
        cache.current = Some((stamp, secret.clone()));
        cache.last_good = Some(secret.clone());
        cache.rewriting_since = None;
        Ok(secret)
    }

    fn too_large(&self) -> SecretError {
        self.forget(SecretError::TooLarge {
            key: self.key,
            path: self.path.clone(),
            limit: MAX_SECRET_FILE_BYTES,
        })
    }

    fn unreadable(&self, source: std::io::Error) -> SecretError {
        if source.kind() == std::io::ErrorKind::NotFound {
            return self.forget(SecretError::Missing {
                key: self.key,
                path: self.path.clone(),
            });
        }
        self.forget(SecretError::Unreadable {
            key: self.key,
            path: self.path.clone(),
            source,
        })
    }

    /// A file that is gone or unusable is reported every time: nothing of it is kept, not even
    /// the value that would bridge a rewrite (a deleted token file means "stop").
    fn forget(&self, error: SecretError) -> SecretError {
        *self.lock() = Cache::default();
        error
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A poisoned lock only means another thread panicked mid-update; the cache is a hint and
        // is still safe to use or overwrite.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for SecretFile {
    /// The same file, with a cache of its own (filled on first read).
    fn clone(&self) -> Self {
        Self::new(self.key, self.path.clone()).with_rewrite_grace(self.grace)
    }
}

/// A secret given inline (`X`) or as a file (`X_FILE`).
#[derive(Debug, Clone)]
pub enum SecretSource {
    Inline(Secret),
    File(SecretFile),
}

impl SecretSource {
    pub fn read(&self) -> Result<Secret, SecretError> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File(file) => file.read(),
        }
    }

    pub fn reread(&self) -> Result<Secret, SecretError> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File(file) => file.reread(),
        }
    }

    /// How `check-config` and `/status` describe it: never the value, the path is fine.
    pub fn describe(&self) -> String {
        match self {
            Self::Inline(_) => REDACTED.to_string(),
            Self::File(file) => format!("file {}", file.path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_redact() {
        let secret = Secret::new("canary-7f3a");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");
        assert_eq!(
            format!("{:?}", SecretSource::Inline(secret)),
            "Inline(<redacted>)"
        );
    }

    #[test]
    fn scrub_bytes_finds_secrets_in_a_body_that_is_not_utf8() {
        let secret = format!("bytes-canary-{}", "x+y/z=w&v".repeat(25));
        register(&secret);
        let mut body = b"\xff\xfe key ".to_vec();
        body.extend_from_slice(secret.as_bytes());
        body.extend_from_slice(b" and ");
        body.extend_from_slice(
            url::form_urlencoded::byte_serialize(secret.as_bytes())
                .collect::<String>()
                .as_bytes(),
        );
        let scrubbed = scrub_bytes(&body);
        assert_eq!(scrubbed, b"\xff\xfe key <redacted> and <redacted>".to_vec());
    }

    #[test]
    fn scrub_removes_every_known_secret() {
        let _token = Secret::new("sk-canary-echo-4242");
        register("header-canary-77");
        let echoed = "invalid key sk-canary-echo-4242 (with header-canary-77)";
        assert_eq!(scrub(echoed), "invalid key <redacted> (with <redacted>)");
        register("canary-long-secret-99");
        register("long-secret");
        assert_eq!(
            scrub("x canary-long-secret-99 y"),
            "x <redacted> y",
            "longest first"
        );
        assert_eq!(scrub("nothing secret here"), "nothing secret here");
    }

    /// A canary as the issue describes them: `+ / = &`, a space, a quote, non-ASCII, and longer
    /// than any cut (200 characters).
    fn canary(tag: &str) -> String {
        format!("{tag}+/=&x \"<é>'{}", "Zq9+/=&w".repeat(30))
    }

    /// `text` holds no run of 8 characters of `form`'s start: what a cut would leave behind.
    fn assert_no_prefix(text: &str, form: &str, what: &str) {
        let prefix: String = form.chars().take(8).collect();
        assert!(
            !text.contains(&prefix),
            "{what} prefix {prefix:?} in {text:?}"
        );
    }

    #[test]
    fn scrub_removes_every_encoding_the_sidecar_sends() {
        let secret = canary("enc1");
        register(&secret);
        let form = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>();
        assert!(
            form.contains("%2B%2F%3D%26") && form.contains('+'),
            "{form}"
        );
        let json = serde_json::to_string(&secret).unwrap();
        let json = &json[1..json.len() - 1];
        let encoded = [
            ("raw", secret.clone()),
            ("form", form.clone()),
            ("form, %20 spaces", form.replace('+', "%20")),
            ("form, lower-case hex", lower_hex(&form)),
            (
                "form, %20, lower-case",
                lower_hex(&form.replace('+', "%20")),
            ),
            ("json", json.to_string()),
            ("json, escaped slash", json.replace('/', "\\/")),
            (
                "json, Go style",
                json.replace('&', "\\u0026")
                    .replace('<', "\\u003c")
                    .replace('>', "\\u003e"),
            ),
            ("json, ASCII only", json.replace('é', "\\u00e9")),
            (
                "json, .NET default encoder",
                secret
                    .replace('&', "\\u0026")
                    .replace('+', "\\u002B")
                    .replace('"', "\\u0022")
                    .replace('<', "\\u003C")
                    .replace('>', "\\u003E")
                    .replace('\'', "\\u0027")
                    .replace('é', "\\u00E9"),
            ),
            (
                "html",
                secret
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;")
                    .replace('\'', "&#39;"),
            ),
        ];
        for (what, form) in encoded {
            let text = format!("error: invalid_client, you sent client_secret={form}&grant_type=x");
            let scrubbed = scrub(&text);
            assert_eq!(
                scrubbed, "error: invalid_client, you sent client_secret=<redacted>&grant_type=x",
                "{what}"
            );
            assert_no_prefix(&scrubbed, &form, what);
        }
    }

    #[test]
    fn excerpt_cuts_at_a_character_boundary() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("abcdef", 3), "abc...");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(excerpt("aé", 2), "a...");
    }

    #[test]
    fn scrub_removes_a_secret_inside_base64_text_at_every_offset() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        let secret = canary("b64a");
        register(&secret);
        for prefix in ["", "a", "ab", "abc", "Authorization: Bearer "] {
            let echoed = format!("{prefix}{secret}\r\nHost: upstream\r\n");
            for (alphabet, engine) in [
                ("standard", &STANDARD),
                ("url-safe", &URL_SAFE),
                ("url-safe, no padding", &URL_SAFE_NO_PAD),
            ] {
                let encoded = engine.encode(&echoed);
                let text = format!("{{\"echo\":\"{encoded}\"}}");
                // Only the characters that hold bits of the secret alone are cut: the
                // secret's bytes span bits [8 p, 8 (p + n)) of the encoded input.
                let first = (8 * prefix.len()).div_ceil(6);
                let end = 8 * (prefix.len() + secret.len()) / 6;
                let expected = format!(
                    "{{\"echo\":\"{}{REDACTED}{}\"}}",
                    &encoded[..first],
                    &encoded[end..]
                );
                assert_eq!(scrub(&text), expected, "{alphabet}, prefix {prefix:?}");
            }
        }
    }

    #[test]
    fn a_short_value_gets_no_base64_forms() {
        assert!(base64_forms("qzx7v1").is_empty());
        assert_eq!(base64_forms("qzx7v1ab").len(), 6);
    }

    #[test]
    fn scrub_removes_a_registered_basic_credential_and_assertion() {
        use base64::Engine;
        let secret = canary("enc2");
        register(&secret);
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode("client-a"),
            encode(&secret)
        ));
        register(&basic);
        let text = format!("Authorization: Basic {basic} was refused");
        assert_eq!(scrub(&text), "Authorization: Basic <redacted> was refused");
        let assertion = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJhIn0.c2lnbmF0dXJlLWVuYzI";
        register_ephemeral(assertion);
        assert_eq!(
            scrub(&format!("client_assertion={assertion}&x")),
            "client_assertion=<redacted>&x"
        );
        // Only a bounded number of one-request values is kept; the newest always are.
        for n in 0..EPHEMERAL_SIZE * 2 {
            register_ephemeral(&format!("assertion-enc2-{n:04}"));
        }
        let last = format!("assertion-enc2-{:04}", EPHEMERAL_SIZE * 2 - 1);
        assert_eq!(scrub(&last), "<redacted>");
        assert_eq!(registry().ephemeral.len(), EPHEMERAL_SIZE);
    }

    #[test]
    fn file_is_reread_when_it_changes_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let file = SecretFile::new("TOKEN_FILE", &path);
        assert_eq!(file.read().unwrap().expose(), "first");
        std::fs::write(&path, "second-longer\n").unwrap();
        assert_eq!(file.read().unwrap().expose(), "second-longer");
    }

    #[test]
    fn symlink_swap_is_seen() {
        // Kubernetes updates a mounted secret by pointing `..data` at a new directory.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "alpha").unwrap();
        std::fs::write(dir.path().join("b"), "bravo").unwrap();
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(dir.path().join("a"), &link).unwrap();
        let file = SecretFile::new("TOKEN_FILE", &link);
        assert_eq!(file.read().unwrap().expose(), "alpha");
        let tmp = dir.path().join("token.tmp");
        std::os::unix::fs::symlink(dir.path().join("b"), &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_eq!(file.read().unwrap().expose(), "bravo");
    }

    #[test]
    fn empty_or_missing_file_is_an_error_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "value").unwrap();
        let file = SecretFile::new("TOKEN_FILE", &path).with_rewrite_grace(Duration::ZERO);
        assert!(file.read().is_ok());
        std::fs::write(&path, "  \n").unwrap();
        let err = file.read().unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");
        assert!(err.is_pending());
        assert!(err.to_string().starts_with("TOKEN_FILE: "));
        std::fs::remove_file(&path).unwrap();
        let err = file.read().unwrap_err();
        assert!(matches!(err, SecretError::Missing { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("TOKEN_FILE: {} does not exist (yet)", path.display())
        );
        assert!(err.is_pending());
    }

    #[test]
    fn a_writer_that_keeps_rewriting_is_bridged_past_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let canary = format!("canary+/=&{}", "y".repeat(200));
        std::fs::write(&path, format!("{canary}\n")).unwrap();
        let grace = Duration::from_millis(100);
        let file = SecretFile::new("TOKEN_FILE", &path).with_rewrite_grace(grace);
        assert_eq!(file.read().unwrap().expose(), canary);
        // `cmd > token` in a loop on a loaded machine: the file is almost never seen whole,
        // but every look finds the write moved on. No single write outlasts the grace.
        let started = Instant::now();
        let mut step = 0;
        while started.elapsed() < grace * 3 {
            step += 1;
            std::fs::write(&path, &canary[..step % 150]).unwrap();
            assert_eq!(file.read().unwrap().expose(), canary, "step {step}");
            std::thread::sleep(grace / 5);
        }
        // A writer that stops mid-write is still reported once the grace is over.
        std::fs::write(&path, "").unwrap();
        assert_eq!(file.read().unwrap().expose(), canary);
        let stuck = Instant::now();
        while stuck.elapsed() <= grace {
            std::thread::sleep(grace / 5);
        }
        assert!(matches!(
            file.read().unwrap_err(),
            SecretError::Empty { .. }
        ));
    }

    #[test]
    fn a_rewrite_in_place_is_bridged_with_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let canary = format!("canary+/=&{}", "x".repeat(200));
        std::fs::write(&path, format!("{canary}\n")).unwrap();
        let file =
            SecretFile::new("TOKEN_FILE", &path).with_rewrite_grace(Duration::from_secs(3600));
        assert_eq!(file.read().unwrap().expose(), canary);
        // `cmd > token`: truncated first ...
        std::fs::write(&path, "").unwrap();
        assert_eq!(file.read().unwrap().expose(), canary, "empty mid-rewrite");
        // ... then written, maybe in pieces: a fresh file shorter than the last value.
        std::fs::write(&path, &canary[..50]).unwrap();
        assert_eq!(file.read().unwrap().expose(), canary, "partial mid-rewrite");
        std::fs::write(&path, "the-new-and-longer-token+/=&".repeat(10)).unwrap();
        assert_eq!(
            file.read().unwrap().expose(),
            "the-new-and-longer-token+/=&".repeat(10)
        );
        // A deleted file is not a rewrite: reported at once, nothing bridged afterwards.
        std::fs::remove_file(&path).unwrap();
        assert!(file.read().is_err());
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            file.read().unwrap_err(),
            SecretError::Empty { .. }
        ));
    }

    #[test]
    fn after_a_rejection_nothing_is_bridged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "a-long-first-token").unwrap();
        let file =
            SecretFile::new("TOKEN_FILE", &path).with_rewrite_grace(Duration::from_secs(3600));
        assert!(file.read().is_ok());
        std::fs::write(&path, "short").unwrap();
        assert_eq!(file.reread().unwrap().expose(), "short");
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            file.reread().unwrap_err(),
            SecretError::Empty { .. }
        ));
    }

    #[test]
    fn a_shorter_token_is_accepted_once_the_write_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "a-long-first-token").unwrap();
        let file =
            SecretFile::new("TOKEN_FILE", &path).with_rewrite_grace(Duration::from_secs(3600));
        assert_eq!(file.read().unwrap().expose(), "a-long-first-token");
        std::fs::write(&path, "short").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(file.read().unwrap().expose(), "short");
    }

    #[test]
    fn a_file_that_is_empty_too_long_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "value").unwrap();
        let file = SecretFile::new("TOKEN_FILE", &path).with_rewrite_grace(Duration::ZERO);
        assert!(file.read().is_ok());
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            file.read().unwrap_err(),
            SecretError::Empty { .. }
        ));
    }

    /// A process that has rotated tokens for weeks searches bodies for the newest few, not
    /// for all 256 it remembers (each form costs one search per chunk).
    #[test]
    fn streamed_bodies_are_searched_for_the_newest_rotated_values_only() {
        let mut registry = Registry {
            pinned: vec!["pinned-client-secret-value".into()],
            rotating: VecDeque::new(),
            ephemeral: VecDeque::from(vec!["an-assertion-for-the-idp-only".to_string()]),
            sealed: true,
            patterns: Vec::new(),
        };
        for n in 0..ROTATING_SIZE {
            registry.rotating.push_back(format!("rotated-token-{n:04}"));
        }
        let forms = registry.streamed_forms();
        let newest = format!("rotated-token-{:04}", ROTATING_SIZE - 1);
        assert!(forms.contains(&newest));
        assert!(forms.contains(&"pinned-client-secret-value".to_string()));
        assert!(!forms.contains(&"rotated-token-0000".to_string()));
        assert!(!forms.iter().any(|f| f.contains("assertion")));
        let searched: Vec<&String> = registry
            .pinned
            .iter()
            .chain(registry.rotating.iter().rev().take(STREAM_ROTATING))
            .collect();
        let allowed: std::collections::BTreeSet<String> = searched
            .iter()
            .flat_map(|value| super::forms(value))
            .collect();
        assert!(forms.iter().all(|f| allowed.contains(f)), "{forms:?}");
        let raw = forms
            .iter()
            .filter(|f| f.starts_with("rotated-token-"))
            .count();
        assert_eq!(raw, STREAM_ROTATING, "{forms:?}");
        // Messages are still scrubbed of every value remembered.
        assert!(
            registry
                .message_forms()
                .contains(&"rotated-token-0000".to_string())
        );
    }

    #[test]
    fn huge_files_and_directories_are_refused_naming_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "a".repeat(MAX_SECRET_FILE_BYTES as usize + 1)).unwrap();
        let err = SecretFile::new("TOKEN_FILE", &path).read().unwrap_err();
        assert!(matches!(err, SecretError::TooLarge { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "TOKEN_FILE: {} is larger than 65536 bytes",
                path.display()
            )),
            "{err}"
        );
        assert!(!err.is_pending());
        std::fs::write(&path, "a".repeat(MAX_SECRET_FILE_BYTES as usize)).unwrap();
        assert!(SecretFile::new("TOKEN_FILE", &path).read().is_ok());
        let err = SecretFile::new("TOKEN_FILE", dir.path())
            .read()
            .unwrap_err();
        assert!(matches!(err, SecretError::NotAFile { .. }), "{err}");
        assert!(!err.is_pending());
    }

    /// A FIFO (or a device) at a secret's path would block `open` until a writer comes, holding
    /// a runtime thread, or stream without end: only regular files are read.
    #[test]
    fn a_fifo_is_refused_at_once_never_opened_for_a_blocking_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo (coreutils)");
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(SecretFile::new("TOKEN_FILE", &path).read().map(|_| ()));
        });
        let err = wait
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO returned (it must not block)")
            .unwrap_err();
        assert!(matches!(err, SecretError::NotAFile { .. }), "{err}");
        assert!(err.to_string().contains("is a FIFO, not a file"), "{err}");
        assert!(!err.is_pending());
    }

    #[test]
    fn error_messages_never_contain_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, [0xff, 0xfe, b'c', b'a', b'n']).unwrap();
        let err = SecretFile::new("TOKEN_FILE", &path).read().unwrap_err();
        assert!(!err.to_string().contains("can"));
    }
}
