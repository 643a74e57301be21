//! Configuration: where settings come from, what they mean, and every way they can be wrong.
//!
//! Sources merge with figment: built-in defaults < an optional TOML file (`--config` or
//! `MCP_SIDECAR_CONFIG`) < environment variables `MCP_SIDECAR_*`. The merged values are read as an
//! untyped map and validated here in one pass, so a user sees *every* problem at once, each naming
//! its key (`MCP_SIDECAR_TOKEN_FILE`, or `token_file in /etc/mcp-sidecar.toml`).
//!
//! Two deliberate departures from the usual figment recipe, both to keep secrets out of messages:
//! environment values are taken as strings verbatim (figment's `Env` would turn a token `0123` into
//! the number 123), and type errors are described by the expected type only, never by echoing the
//! offending value as serde and figment messages do.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Format;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use url::Url;

use crate::secret::{Secret, SecretFile, SecretSource};

mod auth;
mod store;

pub use auth::{
    AuthConfig, ClientAuth, CommandConfig, GrantKind, OAuthConfig, SigningAlg, canonical_resource,
};
pub use store::FleetStoreConfig;

/// Prefix of every environment variable the sidecar reads.
pub const ENV_PREFIX: &str = "MCP_SIDECAR_";
/// The environment variable naming the TOML file (not itself a setting).
pub const CONFIG_ENV: &str = "MCP_SIDECAR_CONFIG";
/// Default listen address: loopback, so nothing outside the pod or host can use the credentials.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4510";
pub const DEFAULT_PATH: &str = "/mcp";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// MCP messages are JSON-RPC requests; a body beyond this is a mistake or an attack.
const MAX_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Sessions remembered at most, whatever their size.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Room for 10,000 sessions of a typical initialize (1-2 KiB with headers), and for a few of the
/// largest bodies `MAX_BODY_BYTES` lets in, not for a hundred of them.
pub const DEFAULT_MAX_SESSION_BYTES: usize = 32 * 1024 * 1024;
/// Most `MAX_SESSION_BYTES` may be: beyond it the budget no longer bounds anything sensible.
const MAX_MAX_SESSION_BYTES: usize = 1024 * 1024 * 1024;
/// An agent left overnight keeps its session; a client gone without a DELETE is forgotten.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Most client connections `MAX_CONNECTIONS` may allow: far beyond any open-files limit.
const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// Longest accepted duration: beyond a day every setting here is a mistake, and huge values would
/// overflow when added to instants.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Every key the sidecar understands, for unknown-key detection and suggestions.
const KNOWN_KEYS: &[&str] = &[
    "upstream_url",
    "allow_insecure_upstream",
    "listen",
    "path",
    "allow_remote_clients",
    "allowed_hosts",
    "client_token",
    "client_token_file",
    "auth",
    "token",
    "token_file",
    "headers",
    "headers_file",
    "ca_file",
    "connect_timeout",
    "ready_interval",
    "ready_timeout",
    "max_body_bytes",
    "max_session_bytes",
    "session_idle_timeout",
    "sse_keepalive",
    "shutdown_grace",
    "stdio_ready_timeout",
    "header_timeout",
    "client_idle_timeout",
    "max_connections",
    "read_timeout",
    "tools_allow",
    "tools_deny",
    "log",
    "log_format",
    "state_dir",
    "traces_file",
    "state_store",
    "state_store_password",
    "state_store_password_file",
    "state_key_file",
    "state_store_client_cert_file",
    "state_store_client_key_file",
    "state_store_ca_file",
    "state_lock_ttl",
    "token_command",
    "token_command_ttl",
    "token_command_timeout",
    "token_command_shell",
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_auth",
    "client_assertion_key_file",
    "client_assertion_alg",
    "client_assertion_kid",
    "client_id_metadata_url",
    "scopes",
    "audience",
    "resource",
    "issuer",
    "token_url",
    "authorization_url",
    "device_authorization_url",
    "redirect_uri",
    "refresh_token",
    "refresh_token_file",
    "subject_token_file",
    "subject_token_type",
    "refresh_skew",
    "token_timeout",
];

/// The validated configuration the rest of the program runs on.
#[derive(Debug)]
pub struct Config {
    pub upstream: UpstreamConfig,
    pub listen: SocketAddr,
    /// Path of the proxied MCP endpoint, e.g. `/mcp`.
    pub path: String,
    pub allow_remote_clients: bool,
    /// Host names (besides loopback names) that clients may use to reach the sidecar.
    pub allowed_hosts: Vec<String>,
    /// Shared secret clients must present as `Authorization: Bearer ...`, when set.
    pub client_token: Option<SecretSource>,
    pub auth: AuthConfig,
    pub ready: ReadyConfig,
    pub max_body_bytes: usize,
    /// How much of the clients' sessions is remembered to re-make them upstream.
    pub sessions: SessionLimits,
    /// Silence on an SSE stream after which a `:` comment is sent between events.
    pub sse_keepalive: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long `mcp-sidecar stdio` holds a host's `initialize` while the upstream is not ready.
    pub stdio_ready_timeout: Duration,
    /// How many client connections, at what pace: slow and idle clients must not lock others out.
    pub clients: ClientLimits,
    pub log: LogConfig,
    /// Where OAuth sources persist tokens and client registrations (`STATE_DIR`).
    pub state_dir: PathBuf,
    /// Traces: the standard `OTEL_*` variables and `TRACES_FILE`.
    pub trace: crate::trace::TraceConfig,
    /// `STATE_STORE`: a Redis shared by a fleet of sidecars, instead of `STATE_DIR`.
    pub state_store: Option<FleetStoreConfig>,
    /// Whether `STATE_DIR` was given: `stdio` outside a container picks a per-user default.
    pub state_dir_set: bool,
}

/// Default `STDIO_READY_TIMEOUT`: below Claude Code's 30 s startup timeout (`MCP_TIMEOUT`,
/// PROTOCOL.md), so the host sees the sidecar's reason rather than its own timeout.
pub const DEFAULT_STDIO_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Default `STATE_DIR`: the image declares it as a volume owned by the sidecar's user.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mcp-sidecar";

#[derive(Debug)]
pub struct UpstreamConfig {
    pub url: Url,
    /// Extra static headers (`Name: value` lines); values are secrets.
    pub headers: Option<SecretSource>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// No byte from the upstream for this long ends a proxied request (`READ_TIMEOUT`);
    /// `None`, the default: a long tool call may legitimately stay silent.
    pub read_timeout: Option<Duration>,
    /// `TOOLS_ALLOW` / `TOOLS_DENY`: which of this upstream's tools clients see and may call.
    pub tools: crate::tools::ToolPolicy,
}

impl UpstreamConfig {
    /// What [`crate::net::http_client_builder`] takes from this configuration.
    pub fn client_settings(&self) -> crate::net::ClientSettings<'_> {
        crate::net::ClientSettings {
            connect_timeout: self.connect_timeout,
            ca_file: self.ca_file.as_deref(),
        }
    }
}

/// Bounds on the sessions the sidecar remembers (see [`crate::session`]).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// At most this many sessions; the least recently used goes first.
    pub max_sessions: usize,
    /// Budget over every remembered `initialize` with its headers (`MAX_SESSION_BYTES`).
    pub max_bytes: usize,
    /// A session unused for this long is forgotten (`SESSION_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_bytes: DEFAULT_MAX_SESSION_BYTES,
            idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// How long a client may take to send a request's head (`HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many client connections at once; `None`: derived from the open-files limit.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct ReadyConfig {
    /// How often the background handshake runs while healthy.
    pub interval: Duration,
    /// How long one handshake may take before it counts as failed.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `mcp_sidecar=debug`.
    pub filter: String,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key as the user wrote it (`MCP_SIDECAR_TOKEN_FILE`, `token_file in /etc/x.toml`).
    pub key: String,
    pub message: String,
}

/// Every problem found, in key order. Displayed one per line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = format!(
            "invalid configuration ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        );
        for p in &self.problems {
            out.push_str(&format!("\n  - {}: {}", p.key, p.message));
        }
        out
    }
}

/// Where configuration comes from: the process environment in production, a map in tests
/// (so tests never mutate the process environment).
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The real process environment, plus the `--config` argument if given.
    pub fn from_process(config_arg: Option<PathBuf>) -> Self {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let file = config_arg.or_else(|| env.get(CONFIG_ENV).map(PathBuf::from));
        Self { file, env }
    }
}

/// Environment variables `MCP_SIDECAR_*` as a figment provider, values kept as verbatim strings.
struct PrefixedEnv<'a>(&'a HashMap<String, String>);

const ENV_METADATA: &str = "environment variable(s)";

impl Provider for PrefixedEnv<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .0
            .iter()
            .filter(|(k, _)| k.as_str() != CONFIG_ENV)
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                Some((key.to_ascii_lowercase(), Value::from(v.clone())))
            })
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// Loads and validates the configuration.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let mut reader = Reader::new(sources);
    if reader.file_failed {
        // Without the file's settings every other check would report keys it may well hold
        // (`UPSTREAM_URL is required`): only the file's own problem is real.
        return Err(ConfigError {
            problems: reader.problems,
        });
    }
    let mut config = reader.validate();
    let traces_file = reader
        .text("traces_file")
        .map(|path| (PathBuf::from(path), reader.label("traces_file")));
    let mut trace_problems = Vec::new();
    let trace = crate::trace::TraceConfig::from_env(&sources.env, traces_file, &mut trace_problems);
    if let Some(config) = &mut config {
        config.trace = trace;
    }
    let mut problems = reader.problems;
    problems.extend(
        trace_problems
            .into_iter()
            .map(|(key, message)| Problem { key, message }),
    );
    if problems.is_empty() {
        // `validate` returns `None` only after recording a problem.
        config.ok_or_else(|| ConfigError {
            problems: vec![Problem {
                key: "configuration".into(),
                message: "incomplete".into(),
            }],
        })
    } else {
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        problems.dedup();
        Err(ConfigError { problems })
    }
}

/// Only the listen address, for `probe` and `wait`: they run beside the sidecar with its
/// configuration but must not fail on settings they do not use (a token file mounted only into
/// the sidecar's container, say).
pub fn listen_address(sources: &Sources) -> Result<SocketAddr, ConfigError> {
    let mut reader = Reader::new(sources);
    let listen = reader.listen();
    if reader.problems.is_empty() {
        listen.ok_or_else(|| ConfigError {
            problems: Vec::new(),
        })
    } else {
        Err(ConfigError {
            problems: reader.problems,
        })
    }
}

/// Only the client token, for `probe` and `wait`: with one set, `/ready` shows its detail and a
/// pending login only to clients that send it. `None` when unset or unusable (the sidecar itself
/// reports that problem).
pub fn client_token(sources: &Sources) -> Option<SecretSource> {
    let mut reader = Reader::new(sources);
    reader.secret("client_token", "client_token_file", "CLIENT_TOKEN_FILE")
}

fn read_toml(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // Parse once here to report errors by position only: toml's own messages quote the offending
    // line, which may hold a secret.
    if let Err(e) = text.parse::<toml::Table>() {
        let position = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!(" at line {line}")
            })
            .unwrap_or_default();
        let first = e.message().lines().next().unwrap_or("syntax error");
        return Err(format!(
            "{} is not valid TOML{position}: {first}",
            path.display()
        ));
    }
    Ok(text)
}

/// Walks the raw values once, converting each and collecting problems.
struct Reader {
    raw: BTreeMap<String, Value>,
    /// Kept for where each value came from (file or environment), to name keys as written.
    figment: Figment,
    file_label: Option<String>,
    /// The TOML file could not be used; its problem is the only one worth reporting.
    file_failed: bool,
    problems: Vec<Problem>,
}

/// How the user named the TOML file: `--config` on the command line or `MCP_SIDECAR_CONFIG`.
fn config_file_key(sources: &Sources) -> &'static str {
    let from_env = sources
        .env
        .get(CONFIG_ENV)
        .is_some_and(|named| sources.file.as_deref() == Some(Path::new(named)));
    if from_env { CONFIG_ENV } else { "--config" }
}

impl Reader {
    /// Merges the TOML file and the environment into one untyped map.
    fn new(sources: &Sources) -> Self {
        let mut problems = Vec::new();
        let mut figment = Figment::new();
        let mut file_label = None;
        let mut file_failed = false;
        let file_key = config_file_key(sources);
        if let Some(path) = &sources.file {
            match read_toml(path) {
                Ok(text) => {
                    figment = figment.merge(figment::providers::Toml::string(&text));
                    file_label = Some(path.display().to_string());
                }
                Err(message) => {
                    file_failed = true;
                    problems.push(Problem {
                        key: file_key.to_string(),
                        message,
                    });
                }
            }
        }
        let figment = figment.merge(PrefixedEnv(&sources.env));
        let raw: BTreeMap<String, Value> = match figment.extract() {
            Ok(map) => map,
            Err(_) => {
                // Top-level extraction into a map only fails if the file is not a table, which
                // `read_toml` already rejects; say so without echoing any value.
                file_failed = true;
                problems.push(Problem {
                    key: file_key.to_string(),
                    message: "configuration is not a table of keys".into(),
                });
                BTreeMap::new()
            }
        };
        Self {
            raw,
            figment,
            file_label,
            file_failed,
            problems,
        }
    }

    /// The key as the user wrote it, based on where its value came from.
    fn label(&self, key: &str) -> String {
        let from_env = self
            .figment
            .find_metadata(key)
            .is_none_or(|m| m.name == ENV_METADATA);
        match (&self.file_label, from_env) {
            (Some(file), false) => format!("{key} in {file}"),
            _ => format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()),
        }
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let key = self.label(key);
        self.problems.push(Problem {
            key,
            message: message.into(),
        });
    }

    fn string(&mut self, key: &str) -> Option<String> {
        let value = self.raw.get(key)?;
        match value {
            Value::String(_, s) => Some(s.clone()),
            Value::Num(_, n) => n.to_u128().map(|n| n.to_string()).or_else(|| {
                n.to_i128()
                    .map(|n| n.to_string())
                    .or_else(|| n.to_f64().map(|f| f.to_string()))
            }),
            Value::Bool(_, b) => Some(b.to_string()),
            other => {
                let kind = describe(other);
                self.problem(key, format!("expected a string, found {kind}"));
                None
            }
        }
    }

    /// A non-empty string, trimmed.
    fn text(&mut self, key: &str) -> Option<String> {
        let s = self.string(key)?;
        let trimmed = s.trim();
        if trimmed.is_empty() {
            self.problem(key, "is set but empty");
            None
        } else {
            Some(trimmed.to_string())
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.raw.get(key) {
            None => default,
            Some(Value::Bool(_, b)) => *b,
            Some(Value::String(_, s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" | "" => false,
                _ => {
                    self.problem(key, "expected true or false");
                    default
                }
            },
            Some(other) => {
                let kind = describe(other);
                self.problem(key, format!("expected true or false, found {kind}"));
                default
            }
        }
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        let Some(value) = self.raw.get(key) else {
            return default;
        };
        let parsed = match value {
            Value::Num(_, n) => n.to_u128().map(|s| Duration::from_secs(s as u64)),
            Value::String(_, s) => {
                let s = s.trim();
                match s.parse::<u64>() {
                    Ok(secs) => Some(Duration::from_secs(secs)),
                    Err(_) => humantime::parse_duration(s).ok(),
                }
            }
            _ => None,
        };
        match parsed {
            Some(d) if d > MAX_DURATION => {
                self.problem(key, "must be at most 24h");
                default
            }
            Some(d) if !d.is_zero() => d,
            Some(_) => {
                self.problem(key, "must be greater than zero");
                default
            }
            None => {
                self.problem(key, "expected a duration such as 10s, 500ms or 2m");
                default
            }
        }
    }

    fn positive_int(&mut self, key: &str, default: usize) -> usize {
        let Some(value) = self.raw.get(key) else {
            return default;
        };
        let parsed = match value {
            Value::Num(_, n) => n.to_u128().and_then(|n| usize::try_from(n).ok()),
            Value::String(_, s) => s.trim().parse::<usize>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if n > 0 => n,
            _ => {
                self.problem(key, "expected a whole number greater than zero");
                default
            }
        }
    }

    fn list(&mut self, key: &str) -> Vec<String> {
        match self.raw.get(key) {
            None => Vec::new(),
            Some(Value::String(_, s)) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            Some(Value::Array(_, items)) => {
                let mut out = Vec::new();
                for item in items.clone() {
                    match item {
                        Value::String(_, s) => out.push(s.trim().to_string()),
                        other => {
                            let kind = describe(&other);
                            self.problem(key, format!("expected a list of strings, found {kind}"));
                        }
                    }
                }
                out
            }
            Some(other) => {
                let kind = describe(other);
                self.problem(
                    key,
                    format!("expected a comma-separated list, found {kind}"),
                );
                Vec::new()
            }
        }
    }

    /// A secret given as `key` or `key_file`; both set is an error.
    fn secret(
        &mut self,
        key: &'static str,
        file_key: &'static str,
        env_name: &'static str,
    ) -> Option<SecretSource> {
        let inline = self.raw.contains_key(key);
        let file = self.raw.contains_key(file_key);
        match (inline, file) {
            (true, true) => {
                let other = self.label(file_key);
                self.problem(key, format!("both this and {other} are set; use one"));
                None
            }
            (true, false) => self
                .text(key)
                .map(|value| SecretSource::Inline(Secret::new(value))),
            (false, true) => {
                let path = self.text(file_key)?;
                let file = SecretFile::new(env_name, PathBuf::from(&path));
                // Fail early on a file that can never be used (a directory, unreadable, not
                // UTF-8, too large). A file that is not there yet or still empty is not a
                // mistake: mounted secrets and secret agents often write it after the container
                // starts, so the sidecar serves and reports `auth_required` until it arrives.
                if let Err(e) = file.read()
                    && !e.is_pending()
                {
                    self.problem(file_key, strip_key_prefix(&e.to_string(), env_name));
                }
                Some(SecretSource::File(file))
            }
            (false, false) => None,
        }
    }

    fn unknown_keys(&mut self) {
        let unknown: Vec<String> = self
            .raw
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            let from_env = self.label(&key).starts_with(ENV_PREFIX);
            let value = match self.raw.get(&key) {
                Some(Value::String(_, v)) => v.as_str(),
                _ => "",
            };
            if from_env && is_kubernetes_service_link(&key, value) {
                continue;
            }
            let lower = key.to_ascii_lowercase();
            if !from_env && KNOWN_KEYS.contains(&lower.as_str()) {
                self.problem(
                    &key,
                    format!(
                        "unknown key (keys in a TOML file are lower case: did you mean {lower}?)"
                    ),
                );
                continue;
            }
            let suggestion = KNOWN_KEYS
                .iter()
                .map(|known| (strsim::jaro_winkler(&lower, known), known))
                .filter(|(score, _)| *score > 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, known)| self.label_like(&key, known.to_string()));
            let message = match (suggestion, key.as_str()) {
                (Some(known), _) => format!("unknown key (did you mean {known}?)"),
                (None, "port") => {
                    let listen = self.label_like(&key, "listen".into());
                    format!("unknown key (the port is part of {listen}, e.g. 0.0.0.0:8080)")
                }
                (None, _) => "unknown key".to_string(),
            };
            self.problem(&key, message);
        }
    }

    /// Spells `known` the way `key` was spelled (env variable or TOML key).
    fn label_like(&self, key: &str, known: String) -> String {
        if self.label(key).starts_with(ENV_PREFIX) {
            // Only the name is upper-cased: `allow_remote_clients=true` becomes
            // `MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true`, the value stays as it must be written.
            match known.split_once('=') {
                Some((name, value)) => {
                    format!("{ENV_PREFIX}{}={value}", name.to_ascii_uppercase())
                }
                None => format!("{ENV_PREFIX}{}", known.to_ascii_uppercase()),
            }
        } else {
            known
        }
    }

    fn validate(&mut self) -> Option<Config> {
        self.unknown_keys();

        let allow_insecure = self.boolean("allow_insecure_upstream", false);
        let upstream_url = match self.text("upstream_url") {
            None => {
                if !self.raw.contains_key("upstream_url") {
                    self.problem(
                        "upstream_url",
                        "is required: the remote MCP endpoint, e.g. https://mcp.example.com/mcp",
                    );
                }
                None
            }
            Some(s) => self.upstream_url(&s, allow_insecure),
        };

        let listen = self.listen();

        let path = match self.text("path") {
            None => DEFAULT_PATH.to_string(),
            Some(p) => {
                let plain = p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c));
                if !p.starts_with('/') || !plain || p == "/" || p.contains("//") {
                    self.problem(
                        "path",
                        "expected an absolute path of letters, digits and - . _ ~ such as /mcp",
                    );
                } else if is_reserved_path(&p) {
                    self.problem(
                        "path",
                        "collides with an endpoint of the sidecar itself (/healthz, /ready, /status, /metrics, /.well-known)",
                    );
                }
                p
            }
        };

        let allow_remote_clients = self.boolean("allow_remote_clients", false);
        let allowed_hosts: Vec<String> = self
            .list("allowed_hosts")
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let client_token = self.secret("client_token", "client_token_file", "CLIENT_TOKEN_FILE");
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && !allow_remote_clients
            && client_token.is_none()
        {
            self.problem(
                "listen",
                format!(
                    "{addr} is reachable from other machines, and anyone who reaches it uses the sidecar's credentials; \
                     set {} or {}",
                    self.label_like("listen", "allow_remote_clients=true".into()),
                    self.label_like("listen", "client_token".into()),
                ),
            );
        }

        let auth = self.auth(upstream_url.as_ref(), listen);
        let headers = if matches!(self.raw.get("headers"), Some(Value::Dict(..))) {
            if self.raw.contains_key("headers_file") {
                let other = self.label("headers_file");
                self.problem("headers", format!("both this and {other} are set; use one"));
            }
            self.table_headers()
        } else {
            self.secret("headers", "headers_file", "HEADERS_FILE")
        };
        if let Some(source) = headers
            .as_ref()
            .filter(|_| !matches!(self.raw.get("headers"), Some(Value::Dict(..))))
        {
            let header_key = match source {
                SecretSource::Inline(_) => "headers",
                SecretSource::File(_) => "headers_file",
            };
            if let Ok(text) = source.read()
                && let Err(message) = crate::headers::parse_extra_headers(text.expose())
            {
                self.problem(header_key, message);
            }
        }

        if let (Some(AuthConfig::Bearer(_)), Some(source)) = (&auth, &headers)
            && let Ok(text) = source.read()
            && crate::headers::parse_extra_headers(text.expose())
                .is_ok_and(|hs| hs.iter().any(|(n, _)| n == http::header::AUTHORIZATION))
        {
            self.problem(
                "headers",
                "sets Authorization, which the bearer token replaces; remove one of them",
            );
        }

        let ca_file = self.text("ca_file").map(PathBuf::from);
        if let Some(path) = &ca_file
            && let Err(message) = crate::net::load_ca_file(path)
        {
            self.problem("ca_file", message);
        }

        let connect_timeout = self.duration("connect_timeout", Duration::from_secs(10));
        let ready = ReadyConfig {
            interval: self.duration("ready_interval", Duration::from_secs(30)),
            timeout: self.duration("ready_timeout", Duration::from_secs(10)),
        };
        let max_body_bytes = self.positive_int("max_body_bytes", DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes > MAX_MAX_BODY_BYTES {
            self.problem("max_body_bytes", "must be at most 67108864 (64 MiB)");
        }
        let max_session_bytes = self.positive_int("max_session_bytes", DEFAULT_MAX_SESSION_BYTES);
        if max_session_bytes > MAX_MAX_SESSION_BYTES {
            self.problem("max_session_bytes", "must be at most 1073741824 (1 GiB)");
        }
        let sessions = SessionLimits {
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_bytes: max_session_bytes.min(MAX_MAX_SESSION_BYTES),
            idle_timeout: self.duration("session_idle_timeout", DEFAULT_SESSION_IDLE_TIMEOUT),
        };
        let sse_keepalive = self.duration("sse_keepalive", Duration::from_secs(15));
        let shutdown_grace = self.duration("shutdown_grace", Duration::from_secs(10));
        let stdio_ready_timeout = self.duration("stdio_ready_timeout", DEFAULT_STDIO_READY_TIMEOUT);
        let clients = ClientLimits {
            header_timeout: self.duration("header_timeout", Duration::from_secs(10)),
            idle_timeout: self.duration("client_idle_timeout", Duration::from_secs(60)),
            max_connections: match self.raw.get("max_connections") {
                Some(Value::String(_, s)) if s.trim().eq_ignore_ascii_case("auto") => None,
                Some(_) => {
                    let n = self.positive_int("max_connections", 1);
                    if n > MAX_MAX_CONNECTIONS {
                        self.problem("max_connections", "must be at most 1000000 (or auto)");
                    }
                    Some(n.min(MAX_MAX_CONNECTIONS))
                }
                None => None,
            },
        };
        let read_timeout = match self.raw.get("read_timeout") {
            Some(Value::String(_, s))
                if s.trim().eq_ignore_ascii_case("off") || s.trim() == "0" =>
            {
                None
            }
            Some(Value::Num(_, n)) if n.to_u128() == Some(0) => None,
            Some(_) => Some(self.duration("read_timeout", Duration::from_secs(60))),
            None => None,
        };
        let tools = crate::tools::ToolPolicy::new(
            self.tool_patterns("tools_allow"),
            self.tool_patterns("tools_deny"),
        );
        let log = self.log();
        let state_dir_set = self.text("state_dir").is_some();
        let state_dir = self
            .text("state_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            self.problem("state_dir", "expected an absolute path");
        }
        let state_store = self.state_store(connect_timeout);

        Some(Config {
            upstream: UpstreamConfig {
                url: upstream_url?,
                headers,
                ca_file,
                connect_timeout,
                read_timeout,
                tools,
            },
            listen: listen?,
            path,
            allow_remote_clients,
            allowed_hosts,
            client_token,
            auth: auth?,
            ready,
            max_body_bytes,
            sessions,
            sse_keepalive,
            shutdown_grace,
            stdio_ready_timeout,
            clients,
            log,
            state_dir,
            trace: crate::trace::TraceConfig::default(),
            state_store,
            state_dir_set,
        })
    }

    fn listen(&mut self) -> Option<SocketAddr> {
        match self.text("listen") {
            None => Some(
                DEFAULT_LISTEN
                    .parse()
                    .expect("DEFAULT_LISTEN is a valid socket address"),
            ),
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => match resolve_listen(&s) {
                    Ok(addr) => Some(addr),
                    Err(message) => {
                        self.problem("listen", message);
                        None
                    }
                },
            },
        }
    }

    fn upstream_url(&mut self, s: &str, allow_insecure: bool) -> Option<Url> {
        let url = match Url::parse(s) {
            Ok(url) => url,
            Err(e) => {
                self.problem("upstream_url", format!("not a valid URL: {e}"));
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials in the URL would leak into every log line that names the upstream.
            self.problem(
                "upstream_url",
                "must not contain user:password; use TOKEN or HEADERS",
            );
            return None;
        }
        match url.scheme() {
            "https" => Some(url),
            "http" if allow_insecure || host_is_loopback(&url) => Some(url),
            "http" => {
                let hint = self.label_like("upstream_url", "allow_insecure_upstream=true".into());
                self.problem(
                    "upstream_url",
                    format!(
                        "plain http to a non-loopback host would send the token in clear text; use https or set {hint}"
                    ),
                );
                None
            }
            other => {
                self.problem(
                    "upstream_url",
                    format!("scheme {other} is not supported; use https"),
                );
                None
            }
        }
    }

    /// `TOOLS_ALLOW` / `TOOLS_DENY`: names or globs, comma- or whitespace-separated (in TOML also
    /// a list). `None` when unset; every bad pattern is a problem of its own.
    fn tool_patterns(&mut self, key: &str) -> Option<crate::tools::PatternList> {
        let mut problems = Vec::new();
        let patterns = match self.raw.get(key)? {
            Value::String(_, text) if text.trim().is_empty() => {
                problems.push("is set but empty".to_string());
                Vec::new()
            }
            Value::String(_, text) => crate::tools::parse_list(text).unwrap_or_else(|mut bad| {
                problems.append(&mut bad);
                Vec::new()
            }),
            Value::Array(_, items) => {
                let mut patterns = Vec::new();
                for item in items {
                    match item {
                        Value::String(_, text) => match crate::tools::Pattern::parse(text.trim()) {
                            Ok(pattern) => patterns.push(pattern),
                            Err(message) => problems.push(message),
                        },
                        other => problems.push(format!(
                            "expected a list of tool names or globs, found {}",
                            describe(other)
                        )),
                    }
                }
                if items.is_empty() {
                    problems.push("is set but empty".to_string());
                }
                patterns
            }
            other => {
                problems.push(format!(
                    "expected tool names or globs separated by commas or spaces, found {}",
                    describe(other)
                ));
                Vec::new()
            }
        };
        for message in problems {
            self.problem(key, message);
        }
        Some(crate::tools::PatternList {
            key: self.label(key),
            patterns,
        })
    }

    /// `[headers]` as a TOML table is accepted besides the `Name: value` text form.
    fn table_headers(&mut self) -> Option<SecretSource> {
        let Some(Value::Dict(_, dict)) = self.raw.get("headers") else {
            return None;
        };
        let mut text = String::new();
        let mut bad = Vec::new();
        for (name, value) in dict {
            match value {
                Value::String(_, v) => text.push_str(&format!("{name}: {v}\n")),
                _ => bad.push(name.clone()),
            }
        }
        for name in bad {
            self.problem(
                "headers",
                format!("value of header {name} must be a string"),
            );
        }
        if let Err(message) = crate::headers::parse_extra_headers(&text) {
            self.problem("headers", message);
        }
        Some(SecretSource::Inline(Secret::new(text)))
    }

    fn log(&mut self) -> LogConfig {
        let format = match self.text("log_format").map(|s| s.to_ascii_lowercase()) {
            None => LogFormat::Text,
            Some(s) if s == "text" => LogFormat::Text,
            Some(s) if s == "json" => LogFormat::Json,
            Some(_) => {
                self.problem("log_format", "expected text or json");
                LogFormat::Text
            }
        };
        let filter = self.text("log").unwrap_or_else(|| "info".to_string());
        if let Err(message) = check_log_filter(&filter) {
            self.problem("log", message);
        }
        LogConfig { format, filter }
    }
}

/// Variables Kubernetes injects for every Service in the namespace ("service links"): a Service
/// named `mcp-sidecar` yields `MCP_SIDECAR_SERVICE_HOST=10.0.0.7`, `MCP_SIDECAR_PORT=tcp://...`,
/// `MCP_SIDECAR_PORT_4510_TCP_ADDR=10.0.0.7` and so on. They are not settings and must not stop
/// start-up; both the name and the value's shape must match, so `MCP_SIDECAR_PORT=8080` (a user's
/// guess) is still reported.
fn is_kubernetes_service_link(key: &str, value: &str) -> bool {
    let is_ip = value.parse::<IpAddr>().is_ok();
    let is_port = !value.is_empty() && value.chars().all(|c| c.is_ascii_digit());
    let is_url = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|scheme| value.starts_with(scheme));
    let is_proto = matches!(value, "TCP" | "UDP" | "SCTP" | "tcp" | "udp" | "sctp");
    if key.ends_with("service_host") {
        return is_ip;
    }
    if key.contains("service_port") {
        return is_port;
    }
    let tokens: Vec<&str> = key.split('_').collect();
    // ..._port_<number>_<protocol>[_proto|_port|_addr]
    let numbered = tokens.windows(3).enumerate().find_map(|(i, w)| {
        let matches = w[0] == "port"
            && !w[1].is_empty()
            && w[1].chars().all(|c| c.is_ascii_digit())
            && matches!(w[2], "tcp" | "udp" | "sctp");
        matches.then(|| tokens.get(i + 3).copied())
    });
    match numbered {
        Some(None) => is_url,
        Some(Some("proto")) => is_proto,
        Some(Some("port")) => is_port,
        Some(Some("addr")) => is_ip,
        Some(Some(_)) => false,
        // ..._port=tcp://...
        None => tokens.last() == Some(&"port") && is_url,
    }
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
const LOG_EXPECTED: &str = "expected a level (error, warn, info, debug, trace, off) or a filter like info,mcp_sidecar=debug";

/// Checks a `LOG` filter beyond what tracing checks: tracing reads a bare word that is not a level
/// (`inof`) as a target name enabled at every level, which leaves every line of this program
/// off. A bare word must therefore be a level; a target is written `TARGET=LEVEL`.
fn check_log_filter(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (level, bare) = match directive.rsplit_once('=') {
            Some((_, level)) => (level.trim(), false),
            // `target[{field}]` forms are left to tracing's own parser.
            None if directive.contains('[') => continue,
            None => (directive, true),
        };
        if level
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok()
        {
            continue;
        }
        let lower = level.to_ascii_lowercase();
        let hint = LOG_LEVELS
            .iter()
            .map(|known| (strsim::damerau_levenshtein(&lower, known), known))
            .filter(|(distance, _)| *distance <= 2)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, known)| format!(" (did you mean {known}?)"))
            .unwrap_or_default();
        let also = if bare {
            "; to set one target's level write TARGET=LEVEL, e.g. mcp_sidecar=debug"
        } else {
            ""
        };
        return Err(format!("{level:?} is not a log level{hint}{also}"));
    }
    if filter
        .parse::<tracing_subscriber::filter::Targets>()
        .is_err()
    {
        return Err(LOG_EXPECTED.into());
    }
    Ok(())
}

/// `HOST:PORT` with a host name: loopback names bind 127.0.0.1 without asking DNS (`localhost`
/// may resolve to `::1` first, and binding only that would turn away IPv4 clients); other names
/// bind the first address they resolve to, which the loopback rule then judges.
fn resolve_listen(s: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str =
        "expected HOST:PORT, e.g. 127.0.0.1:4510, localhost:4510 or 0.0.0.0:4510";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(EXPECTED.into());
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(EXPECTED.into());
    };
    let valid_name = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_name {
        return Err(EXPECTED.into());
    }
    if is_loopback_name(host) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    use std::net::ToSocketAddrs;
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "a list",
    }
}

/// Secret errors already start with their key; the problem list names the key separately.
fn strip_key_prefix(message: &str, key: &str) -> String {
    message
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(message)
        .to_string()
}

fn is_reserved_path(path: &str) -> bool {
    ["/healthz", "/ready", "/status", "/metrics", "/.well-known"]
        .iter()
        .any(|reserved| path == *reserved || path.starts_with(&format!("{reserved}/")))
}

fn host_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => is_loopback_name(d),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Names that always resolve to this machine.
pub fn is_loopback_name(host: &str) -> bool {
    // Compared in place, not lower-cased into a new string: the guard calls this per request.
    const SUFFIX: &[u8] = b".localhost";
    let host = host.trim_end_matches('.');
    let bytes = host.as_bytes();
    host.eq_ignore_ascii_case("localhost")
        || (bytes.len() >= SUFFIX.len()
            && bytes[bytes.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// Secret files that are not there yet (or still empty), each as its error message: not a
    /// configuration error, but worth saying at start (`check-config`, `serve`).
    pub fn pending_files(&self) -> Vec<String> {
        let mut sources: Vec<&SecretSource> = Vec::new();
        sources.extend(&self.client_token);
        sources.extend(&self.upstream.headers);
        match &self.auth {
            AuthConfig::Bearer(token) => sources.push(token),
            AuthConfig::OAuth(oauth) => {
                sources.extend(&oauth.client_secret);
                sources.extend(&oauth.refresh_token);
            }
            AuthConfig::Command(_) | AuthConfig::None => {}
        }
        sources
            .into_iter()
            .filter_map(|source| match source {
                SecretSource::File(file) => file.read().err().filter(|e| e.is_pending()),
                SecretSource::Inline(_) => None,
            })
            .map(|e| e.to_string())
            .collect()
    }

    /// The resolved settings for `check-config`: every key, secrets redacted, files by path.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let secret = |s: &Option<SecretSource>| {
            s.as_ref()
                .map(SecretSource::describe)
                .unwrap_or_else(|| "(not set)".into())
        };
        let mut rows = vec![
            ("UPSTREAM_URL", crate::net::display_url(&self.upstream.url)),
            ("LISTEN", self.listen.to_string()),
            ("PATH", self.path.clone()),
            (
                "ALLOW_REMOTE_CLIENTS",
                self.allow_remote_clients.to_string(),
            ),
            (
                "ALLOWED_HOSTS",
                if self.allowed_hosts.is_empty() {
                    "(loopback names only)".into()
                } else {
                    format!("{} and loopback names", self.allowed_hosts.join(","))
                },
            ),
            ("CLIENT_TOKEN", secret(&self.client_token)),
            ("AUTH", self.auth.name().into()),
        ];
        match &self.auth {
            AuthConfig::Bearer(token) => rows.push(("TOKEN", token.describe())),
            AuthConfig::Command(command) => rows.extend(command.summary()),
            AuthConfig::OAuth(oauth) => rows.extend(oauth.summary()),
            AuthConfig::None => {}
        }
        rows.extend([
            ("HEADERS", self.header_summary()),
            (
                "CA_FILE",
                self.upstream
                    .ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(built-in roots only)".into()),
            ),
            (
                "CONNECT_TIMEOUT",
                humantime::format_duration(self.upstream.connect_timeout).to_string(),
            ),
            (
                "READY_INTERVAL",
                humantime::format_duration(self.ready.interval).to_string(),
            ),
            (
                "READY_TIMEOUT",
                humantime::format_duration(self.ready.timeout).to_string(),
            ),
            ("MAX_BODY_BYTES", self.max_body_bytes.to_string()),
            ("MAX_SESSION_BYTES", self.sessions.max_bytes.to_string()),
            (
                "SESSION_IDLE_TIMEOUT",
                humantime::format_duration(self.sessions.idle_timeout).to_string(),
            ),
            (
                "SSE_KEEPALIVE",
                humantime::format_duration(self.sse_keepalive).to_string(),
            ),
            (
                "SHUTDOWN_GRACE",
                humantime::format_duration(self.shutdown_grace).to_string(),
            ),
            (
                "STDIO_READY_TIMEOUT",
                humantime::format_duration(self.stdio_ready_timeout).to_string(),
            ),
            (
                "HEADER_TIMEOUT",
                humantime::format_duration(self.clients.header_timeout).to_string(),
            ),
            (
                "CLIENT_IDLE_TIMEOUT",
                humantime::format_duration(self.clients.idle_timeout).to_string(),
            ),
            (
                "MAX_CONNECTIONS",
                self.clients
                    .max_connections
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "auto (from the open-files limit)".into()),
            ),
            (
                "READ_TIMEOUT",
                self.upstream
                    .read_timeout
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_else(|| "off".into()),
            ),
            ("TOOLS_ALLOW", self.upstream.tools.summary().0),
            ("TOOLS_DENY", self.upstream.tools.summary().1),
            ("STATE_DIR", self.state_dir.display().to_string()),
            (
                "STATE_STORE",
                self.state_store
                    .as_ref()
                    .map(|s| s.display_url())
                    .unwrap_or_else(|| "(STATE_DIR)".into()),
            ),
            ("LOG", self.log.filter.clone()),
            (
                "LOG_FORMAT",
                match self.log.format {
                    LogFormat::Text => "text".into(),
                    LogFormat::Json => "json".into(),
                },
            ),
        ]);
        if let Some(store) = &self.state_store {
            rows.extend(store.summary());
        }
        rows
    }

    fn header_summary(&self) -> String {
        match &self.upstream.headers {
            None => "(none)".into(),
            Some(SecretSource::File(f)) => format!("file {}", f.path().display()),
            Some(source @ SecretSource::Inline(_)) => source
                .read()
                .ok()
                .and_then(|s| crate::headers::parse_extra_headers(s.expose()).ok())
                .map(|hs| {
                    hs.iter()
                        .map(|(n, _)| format!("{n}: <redacted>"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::auth::{ClientAuth, GrantKind};

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_string()))
                .collect(),
        }
    }

    fn problems(sources: &Sources) -> Vec<Problem> {
        load(sources)
            .expect_err("configuration should be invalid")
            .problems
    }

    #[test]
    fn tool_policy_keys_parse_and_every_bad_pattern_is_reported() {
        let config = load(&env(&[("UPSTREAM_URL", "https://x.example/mcp")])).unwrap();
        assert!(!config.upstream.tools.is_set());
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("TOOLS_ALLOW", "read_*, echo"),
            ("TOOLS_DENY", "read_secret?"),
        ]))
        .unwrap();
        let tools = &config.upstream.tools;
        assert!(tools.permits("read_file") && tools.permits("echo"));
        assert!(!tools.permits("read_secrets") && !tools.permits("write"));

        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("TOOLS_ALLOW", " "),
            ("TOOLS_DENY", "ok,b@d,,x y!"),
        ]));
        let found: Vec<(&str, &str)> = found
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[0], ("MCP_SIDECAR_TOOLS_ALLOW", "is set but empty"));
        assert!(
            found[1..]
                .iter()
                .all(|(key, _)| *key == "MCP_SIDECAR_TOOLS_DENY")
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sidecar.toml");
        std::fs::write(
            &file,
            "upstream_url = \"https://x.example/mcp\"\ntools_deny = [\"delete_*\", \"admin/*\"]\n",
        )
        .unwrap();
        let config = load(&Sources {
            file: Some(file),
            env: HashMap::new(),
        })
        .unwrap();
        assert!(!config.upstream.tools.permits("admin/reset"));
        assert!(config.upstream.tools.permits("echo"));
    }

    #[test]
    fn session_limits_parse_and_errors_name_the_key() {
        let config = load(&env(&[("UPSTREAM_URL", "https://x.example/mcp")])).unwrap();
        assert_eq!(config.sessions.max_bytes, 32 * 1024 * 1024);
        assert_eq!(config.sessions.idle_timeout, Duration::from_secs(24 * 3600));
        assert_eq!(config.sessions.max_sessions, 10_000);
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("MAX_SESSION_BYTES", "1048576"),
            ("SESSION_IDLE_TIMEOUT", "2h"),
        ]))
        .unwrap();
        assert_eq!(config.sessions.max_bytes, 1024 * 1024);
        assert_eq!(config.sessions.idle_timeout, Duration::from_secs(7200));
        for (bytes, idle) in [("0", "0"), ("lots", "soon"), ("2147483648", "48h")] {
            let found = problems(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("MAX_SESSION_BYTES", bytes),
                ("SESSION_IDLE_TIMEOUT", idle),
            ]));
            let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "MCP_SIDECAR_MAX_SESSION_BYTES",
                    "MCP_SIDECAR_SESSION_IDLE_TIMEOUT"
                ],
                "{bytes} {idle}: {found:?}"
            );
        }
    }

    #[test]
    fn client_limits_and_read_timeout_parse() {
        let config = load(&env(&[("UPSTREAM_URL", "https://x.example/mcp")])).unwrap();
        assert_eq!(config.clients.header_timeout, Duration::from_secs(10));
        assert_eq!(config.clients.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.clients.max_connections, None);
        assert_eq!(config.upstream.read_timeout, None);
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("HEADER_TIMEOUT", "500ms"),
            ("CLIENT_IDLE_TIMEOUT", "2m"),
            ("MAX_CONNECTIONS", "300"),
            ("READ_TIMEOUT", "45s"),
        ]))
        .unwrap();
        assert_eq!(config.clients.header_timeout, Duration::from_millis(500));
        assert_eq!(config.clients.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.clients.max_connections, Some(300));
        assert_eq!(config.upstream.read_timeout, Some(Duration::from_secs(45)));
        for off in ["off", "OFF", "0"] {
            let config = load(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("READ_TIMEOUT", off),
                ("MAX_CONNECTIONS", "auto"),
            ]))
            .unwrap();
            assert_eq!(config.upstream.read_timeout, None, "{off}");
        }
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("MAX_CONNECTIONS", "99999999999"),
            ("HEADER_TIMEOUT", "0"),
            ("READ_TIMEOUT", "soon"),
        ]));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "MCP_SIDECAR_HEADER_TIMEOUT",
                "MCP_SIDECAR_MAX_CONNECTIONS",
                "MCP_SIDECAR_READ_TIMEOUT"
            ],
            "{found:?}"
        );
    }

    #[test]
    fn minimal_config_has_sensible_defaults() {
        let config = load(&env(&[("UPSTREAM_URL", "https://mcp.example.com/mcp")])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:4510");
        assert_eq!(config.path, "/mcp");
        assert!(matches!(config.auth, AuthConfig::None));
        assert_eq!(config.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.ready.interval, Duration::from_secs(30));
    }

    #[test]
    fn token_is_kept_verbatim() {
        // figment's Env provider would parse this as the number 123.
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://mcp.example.com/mcp"),
            ("TOKEN", "0123"),
        ]))
        .unwrap();
        let AuthConfig::Bearer(SecretSource::Inline(token)) = &config.auth else {
            panic!("bearer auth inferred from TOKEN")
        };
        assert_eq!(token.expose(), "0123");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let found = problems(&env(&[
            ("UPSTREAM_URL", "http://mcp.example.com/mcp"),
            ("LISTEN", "0.0.0.0:4510"),
            ("TOKEN_FILE", dir.path().to_str().unwrap()),
            ("READY_INTERVAL", "often"),
            ("UPSTREM_URL", "typo"),
        ]));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "MCP_SIDECAR_LISTEN",
                "MCP_SIDECAR_READY_INTERVAL",
                "MCP_SIDECAR_TOKEN_FILE",
                "MCP_SIDECAR_UPSTREAM_URL",
                "MCP_SIDECAR_UPSTREM_URL",
            ]
        );
        assert!(
            found[4]
                .message
                .contains("did you mean MCP_SIDECAR_UPSTREAM_URL")
        );
        assert!(
            found[2].message.contains("is a directory"),
            "{}",
            found[2].message
        );
    }

    #[test]
    fn a_token_file_not_there_yet_is_not_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing");
        for path in [&empty, &missing] {
            let config = load(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("TOKEN_FILE", path.to_str().unwrap()),
            ]))
            .expect("the file may arrive after start");
            assert!(matches!(
                config.auth,
                AuthConfig::Bearer(SecretSource::File(_))
            ));
            let pending = config.pending_files();
            assert_eq!(pending.len(), 1, "{pending:?}");
            assert!(pending[0].starts_with("TOKEN_FILE: "), "{pending:?}");
        }
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; 200 * 1024]).unwrap();
        for (value, expected) in [
            ("", "is set but empty"),
            (dir.path().to_str().unwrap(), "is a directory"),
            (huge.to_str().unwrap(), "is larger than 65536 bytes"),
        ] {
            let found = problems(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("TOKEN_FILE", value),
            ]));
            assert_eq!(found[0].key, "MCP_SIDECAR_TOKEN_FILE", "{found:?}");
            assert!(found[0].message.contains(expected), "{found:?}");
        }
    }

    #[test]
    fn kubernetes_service_links_are_ignored_but_lookalikes_are_not() {
        load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("SERVICE_HOST", "10.0.0.7"),
            ("SERVICE_PORT", "4510"),
            ("SERVICE_PORT_HTTP", "4510"),
            ("PORT", "tcp://10.0.0.7:4510"),
            ("PORT_4510_TCP", "tcp://10.0.0.7:4510"),
            ("PORT_4510_TCP_ADDR", "10.0.0.7"),
            ("PORT_4510_TCP_PORT", "4510"),
            ("PORT_4510_TCP_PROTO", "tcp"),
            ("DEMO_SERVICE_HOST", "10.0.0.8"),
            ("DEMO_PORT", "tcp://10.0.0.8:4520"),
        ]))
        .expect("service links do not stop start-up");
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("PORT", "8080"),
            ("BEARER_TOKEN", "x"),
        ]));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].message.contains("MCP_SIDECAR_LISTEN"), "{found:?}");
    }

    #[test]
    fn paths_and_durations_that_would_panic_are_refused() {
        for path in ["/:mcp", "/{x}", "/a*", "/a//b"] {
            let found = problems(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("PATH", path),
            ]));
            assert_eq!(found[0].key, "MCP_SIDECAR_PATH", "{path}");
        }
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("READY_INTERVAL", "18446744073709551615"),
        ]));
        assert!(found[0].message.contains("at most 24h"), "{found:?}");
    }

    #[test]
    fn authorization_in_headers_conflicts_with_a_bearer_token() {
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("TOKEN", "t"),
            ("HEADERS", "Authorization: Basic abc"),
        ]));
        assert_eq!(found[0].key, "MCP_SIDECAR_HEADERS");
        assert!(
            load(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("HEADERS", "Authorization: Basic abc"),
            ]))
            .is_ok(),
            "with AUTH=none a static Authorization is the user's choice"
        );
    }

    #[test]
    fn missing_upstream_is_required() {
        let found = problems(&env(&[]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "MCP_SIDECAR_UPSTREAM_URL");
        assert!(found[0].message.starts_with("is required"));
    }

    #[test]
    fn inline_and_file_together_is_an_error() {
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("TOKEN", "a"),
            ("TOKEN_FILE", "/run/secrets/token"),
        ]));
        assert!(
            found
                .iter()
                .any(|p| p.key == "MCP_SIDECAR_TOKEN"
                    && p.message.contains("MCP_SIDECAR_TOKEN_FILE")),
            "{found:?}"
        );
    }

    #[test]
    fn secrets_never_appear_in_problems() {
        let canary = "canary-secret-91b2";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!("upstream_url = \"https://x.example/mcp\"\ntoken = [\"{canary}\"]\nauth = \"{canary}\"\nheaders = \"X-Key {canary}\"\n"),
        )
        .unwrap();
        let sources = Sources {
            file: Some(file.clone()),
            env: HashMap::new(),
        };
        let err = load(&sources).unwrap_err().to_string();
        assert!(!err.contains(canary), "{err}");
        assert!(
            err.contains(&format!("token in {}", file.display())),
            "{err}"
        );

        std::fs::write(&file, format!("token = \"{canary}\nbroken")).unwrap();
        let err = load(&sources).unwrap_err().to_string();
        assert!(!err.contains(canary), "{err}");
        assert!(err.contains("not valid TOML at line 1"), "{err}");
    }

    #[test]
    fn non_loopback_listen_needs_an_explicit_choice() {
        let base = [
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("LISTEN", "0.0.0.0:4510"),
        ];
        let err = load(&env(&base)).unwrap_err().to_string();
        // The value is spelled as it must be written.
        assert!(
            err.contains("MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true or MCP_SIDECAR_CLIENT_TOKEN"),
            "{err}"
        );
        let mut allowed = base.to_vec();
        allowed.push(("ALLOW_REMOTE_CLIENTS", "true"));
        assert!(load(&env(&allowed)).is_ok());
        let mut with_token = base.to_vec();
        with_token.push(("CLIENT_TOKEN", "shared"));
        assert!(load(&env(&with_token)).is_ok());
    }

    #[test]
    fn plain_http_only_to_loopback_or_when_allowed() {
        assert!(load(&env(&[("UPSTREAM_URL", "http://127.0.0.1:9/mcp")])).is_ok());
        assert!(load(&env(&[("UPSTREAM_URL", "http://localhost:9/mcp")])).is_ok());
        assert!(load(&env(&[("UPSTREAM_URL", "http://mcp.internal/mcp")])).is_err());
        assert!(
            load(&env(&[
                ("UPSTREAM_URL", "http://mcp.internal/mcp"),
                ("ALLOW_INSECURE_UPSTREAM", "true")
            ]))
            .is_ok()
        );
    }

    #[test]
    fn toml_file_and_env_merge_with_env_winning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "upstream_url = \"https://file.example/mcp\"\npath = \"/x\"\n[headers]\nX-Api-Key = \"k\"\n",
        )
        .unwrap();
        let mut sources = env(&[("UPSTREAM_URL", "https://env.example/mcp")]);
        sources.file = Some(file);
        let config = load(&sources).unwrap();
        assert_eq!(config.upstream.url.as_str(), "https://env.example/mcp");
        assert_eq!(config.path, "/x");
        assert_eq!(
            config
                .summary()
                .iter()
                .find(|r| r.0 == "HEADERS")
                .unwrap()
                .1,
            "x-api-key: <redacted>"
        );
    }

    #[test]
    fn auth_value_and_inference() {
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("AUTH", "bearer"),
        ]));
        assert!(found[0].message.contains("neither TOKEN nor TOKEN_FILE"));
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("AUTH", "magic"),
        ]));
        assert!(found[0].message.contains("supported: none, bearer"));
    }

    #[test]
    fn oauth_modes_are_inferred_and_ambiguity_is_an_error() {
        let base = [("UPSTREAM_URL", "https://mcp.example.com/mcp")];
        let load_with = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            load(&env(&pairs))
        };
        let config = load_with(&[
            ("CLIENT_ID", "c"),
            ("CLIENT_SECRET", "canary-s"),
            ("TOKEN_URL", "https://idp.example/token"),
        ])
        .expect("client credentials inferred");
        let AuthConfig::OAuth(oauth) = &config.auth else {
            panic!("expected OAuth");
        };
        assert_eq!(oauth.grant, GrantKind::ClientCredentials);
        assert_eq!(oauth.client_auth, ClientAuth::ClientSecretBasic);
        // RFC 8707: the upstream URL is the resource unless turned off.
        assert_eq!(
            oauth.resource.as_deref(),
            Some("https://mcp.example.com/mcp")
        );
        assert_eq!(
            oauth.redirect_uri.as_str(),
            "http://localhost:4510/oauth/callback"
        );

        let config = load_with(&[("TOKEN_COMMAND", "gcloud auth print-access-token")])
            .expect("command inferred");
        let AuthConfig::Command(command) = &config.auth else {
            panic!("expected command");
        };
        assert_eq!(command.argv, ["gcloud", "auth", "print-access-token"]);

        let err = load_with(&[("TOKEN", "canary-t"), ("TOKEN_COMMAND", "x")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("fit several modes (bearer, command)"),
            "{err}"
        );
        let err = load_with(&[("CLIENT_ID", "c")]).unwrap_err();
        assert!(err.to_string().contains("AUTH is not set"), "{err}");
    }

    #[test]
    fn oauth_keys_are_checked_against_the_chosen_mode() {
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://mcp.example.com/mcp"),
            ("AUTH", "client_credentials"),
            ("CLIENT_SECRET", "canary-secret-77"),
            ("CLIENT_AUTH", "private_key_jwt"),
            ("SUBJECT_TOKEN_FILE", "/nonexistent"),
            ("TOKEN_URL", "http://idp.example/token"),
            ("RESOURCE", "not a uri#frag"),
            ("REFRESH_SKEW", "2h"),
        ]));
        let text = format!("{found:?}");
        for expected in [
            "MCP_SIDECAR_CLIENT_ID",
            "private_key_jwt needs MCP_SIDECAR_CLIENT_ASSERTION_KEY_FILE",
            "MCP_SIDECAR_SUBJECT_TOKEN_FILE\", message: \"is not used with MCP_SIDECAR_AUTH=client_credentials",
            "MCP_SIDECAR_TOKEN_URL\", message: \"plain http",
            "MCP_SIDECAR_RESOURCE",
            "MCP_SIDECAR_REFRESH_SKEW",
        ] {
            assert!(text.contains(expected), "missing {expected}: {text}");
        }
        assert!(!text.contains("canary-secret-77"), "{text}");
        assert_eq!(
            text.matches("\"MCP_SIDECAR_CLIENT_ID\"").count(),
            1,
            "{text}"
        );
        assert!(!text.contains("cannot read /nonexistent"), "{text}");

        let config = load(&env(&[
            ("UPSTREAM_URL", "https://mcp.example.com/mcp"),
            ("AUTH", "device_code"),
            ("CLIENT_ID", "c"),
            ("RESOURCE", "off"),
        ]))
        .expect("device code needs only a client id");
        let AuthConfig::OAuth(oauth) = &config.auth else {
            panic!("expected OAuth");
        };
        assert!(oauth.resource.is_none());
        let summary = format!("{:?}", config.summary());
        assert!(summary.contains("(discovered)"), "{summary}");
    }

    #[test]
    fn upper_case_toml_key_gets_the_lower_case_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "UPSTREAM_URL = \"https://x.example/mcp\"\nupstream_url = \"https://x.example/mcp\"\nReady_Intervl = \"1s\"\n",
        )
        .unwrap();
        let found = problems(&Sources {
            file: Some(file.clone()),
            env: HashMap::new(),
        });
        let text = format!("{found:?}");
        assert!(
            text.contains("keys in a TOML file are lower case: did you mean upstream_url?"),
            "{text}"
        );
        assert!(text.contains("did you mean ready_interval?"), "{text}");
    }

    #[test]
    fn a_broken_config_file_is_the_only_problem_and_is_labelled_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "upstream_url = \"https://x.example/mcp\nlisten = 3").unwrap();
        let from_arg = problems(&Sources {
            file: Some(file.clone()),
            env: HashMap::new(),
        });
        assert_eq!(from_arg.len(), 1, "{from_arg:?}");
        assert_eq!(from_arg[0].key, "--config");
        assert!(
            from_arg[0].message.contains("is not valid TOML at line 1"),
            "{from_arg:?}"
        );
        let from_env = problems(&Sources {
            file: Some(file.clone()),
            env: HashMap::from([(CONFIG_ENV.to_string(), file.display().to_string())]),
        });
        assert_eq!(from_env.len(), 1, "{from_env:?}");
        assert_eq!(from_env[0].key, CONFIG_ENV);
        let missing = problems(&Sources {
            file: Some(dir.path().join("absent.toml")),
            env: HashMap::new(),
        });
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].message.starts_with("cannot read "),
            "{missing:?}"
        );
    }

    #[test]
    fn listen_accepts_host_names() {
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("LISTEN", "localhost:4511"),
        ]))
        .expect("localhost is a loopback name");
        assert_eq!(config.listen.to_string(), "127.0.0.1:4511");
        for bad in ["localhost", "localhost:port", ":4510", "a b:4510"] {
            let found = problems(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("LISTEN", bad),
            ]));
            assert_eq!(found[0].key, "MCP_SIDECAR_LISTEN", "{bad}");
            assert!(found[0].message.contains("HOST:PORT"), "{bad}: {found:?}");
        }
        assert_eq!(
            resolve_listen("app.localhost:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
    }

    #[test]
    fn log_filter_typos_are_refused_with_a_suggestion() {
        for good in [
            "info",
            "DEBUG",
            "warn,mcp_sidecar=trace",
            "mcp_sidecar::proxy=debug",
            "off",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("LOG", "inof"),
        ]));
        assert_eq!(found[0].key, "MCP_SIDECAR_LOG");
        assert!(
            found[0]
                .message
                .contains("\"inof\" is not a log level (did you mean info?)"),
            "{found:?}"
        );
        let message = check_log_filter("info,mcp_sidecar=debgu").unwrap_err();
        assert!(message.contains("did you mean debug?"), "{message}");
        assert!(!message.contains("TARGET=LEVEL"), "{message}");
        let message = check_log_filter("verbose").unwrap_err();
        assert!(message.contains("TARGET=LEVEL"), "{message}");
        assert!(!message.contains("did you mean"), "{message}");
    }

    #[test]
    fn reserved_paths_are_refused() {
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("PATH", "/ready"),
        ]));
        assert_eq!(found[0].key, "MCP_SIDECAR_PATH");
    }
}
