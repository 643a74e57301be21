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

/// Keys of the whole sidecar alone: at the top level only, never in an `[upstreams.NAME]` block.
const GLOBAL_KEYS: &[&str] = &[
    "listen",
    "path",
    "allow_remote_clients",
    "allowed_hosts",
    "client_token",
    "client_token_file",
    "max_body_bytes",
    "max_session_bytes",
    "session_idle_timeout",
    "sse_keepalive",
    "shutdown_grace",
    "stdio_ready_timeout",
    "header_timeout",
    "client_idle_timeout",
    "max_connections",
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
];

/// Keys about one upstream alone: at the top level in the single-upstream form, inside
/// `[upstreams.NAME]` otherwise (never both).
const UPSTREAM_KEYS: &[&str] = &[
    "upstream_url",
    "allow_insecure_upstream",
    "auth",
    "token",
    "token_file",
    "headers",
    "headers_file",
    "ca_file",
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
    "tools_allow",
    "tools_deny",
];

/// Keys whose top-level value is every upstream's default, which a block may override.
const INHERITED_KEYS: &[&str] = &[
    "connect_timeout",
    "read_timeout",
    "ready_interval",
    "ready_timeout",
];

/// Keys only an `[upstreams.NAME]` block has.
const BLOCK_ONLY_KEYS: &[&str] = &["required"];

/// Every key the top level understands (the global ones, and the single-upstream form's).
fn top_level_keys() -> impl Iterator<Item = &'static str> {
    GLOBAL_KEYS
        .iter()
        .chain(UPSTREAM_KEYS)
        .chain(INHERITED_KEYS)
        .copied()
}

fn is_top_level_key(key: &str) -> bool {
    top_level_keys().any(|k| k == key)
}

/// The TOML table (`[upstreams.NAME]`) and the environment prefix (`UPSTREAMS__NAME__KEY`) of
/// the named form.
const UPSTREAMS_KEY: &str = "upstreams";
const UPSTREAMS_ENV: &str = "upstreams__";

/// Upstream names are path segments and label values: lower case, URL-safe, at most 63.
pub fn is_valid_upstream_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

const NAME_RULE: &str =
    "upstream names are 1 to 63 lower-case letters, digits and -, starting with a letter or digit";

/// `PATH/legacy/...` is where `default` serves the legacy transport's message endpoints
/// (`crate::legacy::LEGACY_SEGMENT`) and `PATH/sse` its bridged SSE clients
/// (`crate::bridge::SSE_SEGMENT`; the tests of both modules check they agree): no upstream may
/// be there.
pub const RESERVED_UPSTREAM_NAMES: &[&str] = &["legacy", "sse"];

/// A name usable for an upstream, or why not.
fn check_upstream_name(name: &str) -> Result<(), String> {
    if !is_valid_upstream_name(name) {
        return Err(NAME_RULE.into());
    }
    if RESERVED_UPSTREAM_NAMES.contains(&name) {
        return Err(format!(
            "{name} is reserved (PATH/{name} serves the legacy HTTP+SSE transport)"
        ));
    }
    Ok(())
}

/// An upstream's own state directory: `STATE_DIR` itself for `default` (the layout volumes made
/// before named upstreams have), `STATE_DIR/upstreams/NAME` for the others.
fn upstream_state_dir(state_dir: &Path, name: &str) -> PathBuf {
    if name == DEFAULT_UPSTREAM {
        state_dir.to_path_buf()
    } else {
        state_dir.join(UPSTREAMS_KEY).join(name)
    }
}

/// How a name is spelled inside an environment variable: upper case, `-` as `_` (shells cannot
/// export a name holding `-`). Names never hold `_`, so the spelling reads back unambiguously.
fn env_spelling(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The validated configuration the rest of the program runs on.
#[derive(Debug)]
pub struct Config {
    /// Every upstream, in name order: the single-upstream form gives one named `default`.
    pub upstreams: Vec<UpstreamSettings>,
    pub listen: SocketAddr,
    /// Path of the proxied MCP endpoint, e.g. `/mcp`.
    pub path: String,
    pub allow_remote_clients: bool,
    /// Host names (besides loopback names) that clients may use to reach the sidecar.
    pub allowed_hosts: Vec<String>,
    /// Shared secret clients must present as `Authorization: Bearer ...`, when set.
    pub client_token: Option<SecretSource>,
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

/// The name of the upstream the single-upstream form configures, served at `PATH`.
pub const DEFAULT_UPSTREAM: &str = "default";

/// One upstream and everything that is about it alone: its credential, its readiness, where it
/// is served and where its state lives. Nothing here is shared with another upstream, which is
/// what keeps one upstream's token out of another's requests.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// `default` for the single-upstream form, else the `NAME` of `[upstreams.NAME]`.
    pub name: String,
    /// Where clients reach it: `PATH` for `default`, `PATH/NAME` for the others.
    pub path: String,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub ready: ReadyConfig,
    /// Whether `/ready` waits for it (`REQUIRED`, default true; only in `[upstreams.NAME]`).
    pub required: bool,
    /// Its own state directory: `STATE_DIR` itself for `default` (the layout existing volumes
    /// have), `STATE_DIR/upstreams/NAME` for the others, so two never share a token file or lock.
    pub state_dir: PathBuf,
}

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

    /// The sources of `mcp-sidecar stdio --connect URL`: the running sidecar at `url` is this
    /// process's upstream and holds the real credential, so no upstream of this process's own
    /// may be configured (it would be ignored: refused instead, naming each key). What the pipe
    /// sends the sidecar is the sidecar's `CLIENT_TOKEN` (or `_FILE`), when set, as its bearer
    /// token. Plain HTTP to a host other than loopback needs `ALLOW_INSECURE_UPSTREAM=true`, as
    /// for any upstream (a compose service name on the pod's own network, say), the one upstream
    /// key taken here. The global keys (`LOG`, timeouts, `STDIO_READY_TIMEOUT`) apply as always.
    /// The URL is never printed whole: it could hold a password.
    pub fn for_connect(&mut self, url: &str) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        // Keys match whatever the case after the prefix, as the loader matches them.
        let key_of = |name: &str| name.strip_prefix(ENV_PREFIX).map(str::to_ascii_lowercase);
        let insecure_ok = self.env.iter().any(|(k, v)| {
            key_of(k).as_deref() == Some("allow_insecure_upstream")
                && matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "true" | "1" | "yes" | "on"
                )
        });
        match Url::parse(url) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => problems.push(
                "--connect: the URL holds credentials; set MCP_SIDECAR_CLIENT_TOKEN_FILE instead"
                    .into(),
            ),
            Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() => {
                problems.push(format!(
                    "--connect: a {}: URL; it takes an http:// or https:// URL",
                    u.scheme()
                ));
            }
            Ok(u) if u.scheme() == "http" && !host_is_loopback(&u) && !insecure_ok => {
                problems.push(format!(
                    "--connect: plain http to {} would send the client token in clear text; use https, or set MCP_SIDECAR_ALLOW_INSECURE_UPSTREAM=true for a host on a network of your own",
                    u.host_str().unwrap_or_default()
                ));
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("--connect: not a URL ({e})")),
        }
        if let Some(file) = &self.file {
            problems.push(format!(
                "--connect reads no configuration file ({}, from --config or {CONFIG_ENV}): the running sidecar holds the upstream's configuration; give this process its LOG and timeouts in the environment",
                file.display()
            ));
        }
        let mut own: Vec<&String> = self
            .env
            .keys()
            .filter(|k| {
                key_of(k).is_some_and(|key| {
                    key != "allow_insecure_upstream"
                        && (UPSTREAM_KEYS.contains(&key.as_str()) || key.starts_with(UPSTREAMS_ENV))
                })
            })
            .collect();
        own.sort();
        for key in own {
            problems.push(format!(
                "{key}: with --connect the running sidecar holds the upstream's settings; this process has none of its own"
            ));
        }
        let client_token: Vec<String> = self
            .env
            .keys()
            .filter(|k| {
                key_of(k).is_some_and(|key| key == "client_token" || key == "client_token_file")
            })
            .cloned()
            .collect();
        if client_token.len() > 1 {
            problems.push(format!(
                "{}: set one of them, not both",
                client_token.join(" and ")
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let var = |key: &str| format!("{ENV_PREFIX}{key}");
        let presented = client_token.first().and_then(|name| {
            let value = self.env.remove(name)?;
            Some((key_of(name) == Some("client_token_file".into()), value))
        });
        self.env.insert(var("UPSTREAM_URL"), url.to_string());
        match presented {
            Some((true, file)) => {
                self.env.insert(var("AUTH"), "bearer".into());
                self.env.insert(var("TOKEN_FILE"), file);
            }
            Some((false, token)) => {
                self.env.insert(var("AUTH"), "bearer".into());
                self.env.insert(var("TOKEN"), token);
            }
            None => {
                self.env.insert(var("AUTH"), "none".into());
            }
        }
        Ok(())
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
    /// Set while reading one `[upstreams.NAME]` block: `raw` then holds that block's keys.
    scope: Option<Scope>,
}

/// One `[upstreams.NAME]` block being read, and where each of its keys came from, so that every
/// problem names the key as the user wrote it (`upstreams.github.auth in FILE` or
/// `MCP_SIDECAR_UPSTREAMS__GITHUB__AUTH`).
struct Scope {
    name: String,
    env_keys: std::collections::BTreeSet<String>,
    /// The block has a table in the TOML file: a key it lacks is named the file's way.
    in_file: bool,
}

/// Every upstream's default for the keys a block may override.
struct Inherited {
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    ready: ReadyConfig,
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
            scope: None,
        }
    }

    /// The key as the user wrote it, based on where its value came from.
    fn label(&self, key: &str) -> String {
        if let Some(scope) = &self.scope {
            // A key missing from a block that has a table in the file is named the file's way.
            let from_env = scope.env_keys.contains(key) || !scope.in_file;
            return match (&self.file_label, from_env) {
                (Some(file), false) => format!("{UPSTREAMS_KEY}.{}.{key} in {file}", scope.name),
                _ => format!(
                    "{ENV_PREFIX}UPSTREAMS__{}__{}",
                    env_spelling(&scope.name),
                    key.to_ascii_uppercase()
                ),
            };
        }
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
        let env_name = self.scoped_env_name(env_name);
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

    /// The name a secret file's errors give at run time: `TOKEN_FILE`, or
    /// `UPSTREAMS__GITHUB__TOKEN_FILE` inside a block.
    fn scoped_env_name(&self, env_name: &'static str) -> &'static str {
        match &self.scope {
            None => env_name,
            // Leaked once per secret key of each block when the configuration is loaded (a
            // handful of short strings per process): `SecretFile` keys are `&'static str`.
            Some(scope) => Box::leak(
                format!("UPSTREAMS__{}__{env_name}", env_spelling(&scope.name)).into_boxed_str(),
            ),
        }
    }

    fn unknown_keys(&mut self) {
        let scoped = self.scope.is_some();
        let known = |k: &str| {
            if scoped {
                UPSTREAM_KEYS.contains(&k)
                    || INHERITED_KEYS.contains(&k)
                    || BLOCK_ONLY_KEYS.contains(&k)
            } else {
                is_top_level_key(k) || k == UPSTREAMS_KEY || k.starts_with(UPSTREAMS_ENV)
            }
        };
        let unknown: Vec<String> = self.raw.keys().filter(|k| !known(k)).cloned().collect();
        for key in unknown {
            if scoped && GLOBAL_KEYS.contains(&key.as_str()) {
                let global = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
                self.problem(
                    &key,
                    format!("is a setting of the whole sidecar, not of one upstream; set it once outside the upstream blocks ({key} or {global})"),
                );
                continue;
            }
            if !scoped && BLOCK_ONLY_KEYS.contains(&key.as_str()) {
                self.problem(
                    &key,
                    "is a setting of a named upstream; it belongs in an [upstreams.NAME] block (MCP_SIDECAR_UPSTREAMS__NAME__...)",
                );
                continue;
            }
            let from_env = self.label(&key).starts_with(ENV_PREFIX);
            let value = match self.raw.get(&key) {
                Some(Value::String(_, v)) => v.as_str(),
                _ => "",
            };
            if from_env && is_kubernetes_service_link(&key, value) {
                continue;
            }
            let lower = key.to_ascii_lowercase();
            if !from_env && known(&lower) {
                self.problem(
                    &key,
                    format!(
                        "unknown key (keys in a TOML file are lower case: did you mean {lower}?)"
                    ),
                );
                continue;
            }
            let suggestion = top_level_keys()
                .chain(BLOCK_ONLY_KEYS.iter().copied())
                .filter(|candidate| known(candidate))
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
        if let Some(scope) = &self.scope {
            let (name, value) = match known.split_once('=') {
                Some((name, value)) => (name, format!("={value}")),
                None => (known.as_str(), String::new()),
            };
            return if self.label(key).starts_with(ENV_PREFIX) {
                format!(
                    "{ENV_PREFIX}UPSTREAMS__{}__{}{value}",
                    env_spelling(&scope.name),
                    name.to_ascii_uppercase()
                )
            } else {
                format!("{UPSTREAMS_KEY}.{}.{name}{value}", scope.name)
            };
        }
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
                        format!(
                            "collides with an endpoint of the sidecar itself ({})",
                            RESERVED_PATHS.join(", ")
                        ),
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

        let inherited = Inherited {
            connect_timeout: self.duration("connect_timeout", Duration::from_secs(10)),
            read_timeout: self.read_timeout(None),
            ready: ReadyConfig {
                interval: self.duration("ready_interval", Duration::from_secs(30)),
                timeout: self.duration("ready_timeout", Duration::from_secs(10)),
            },
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
        let log = self.log();
        let state_dir_set = self.text("state_dir").is_some();
        let state_dir = self
            .text("state_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            self.problem("state_dir", "expected an absolute path");
        }
        let state_store = self.state_store(inherited.connect_timeout);

        let blocks = self.upstream_blocks();
        let upstreams: Vec<Option<UpstreamSettings>> = if blocks.is_empty() {
            vec![self.upstream_settings(&path, listen, &state_dir, &inherited)]
        } else {
            self.mixed_forms(&blocks);
            blocks
                .into_iter()
                .map(|(scope, raw)| {
                    let mut block = Reader {
                        raw,
                        figment: self.figment.clone(),
                        file_label: self.file_label.clone(),
                        file_failed: false,
                        problems: Vec::new(),
                        scope: Some(scope),
                    };
                    block.unknown_keys();
                    let settings = block.upstream_settings(&path, listen, &state_dir, &inherited);
                    self.problems.append(&mut block.problems);
                    settings
                })
                .collect()
        };

        Some(Config {
            upstreams: upstreams.into_iter().collect::<Option<Vec<_>>>()?,
            listen: listen?,
            path,
            allow_remote_clients,
            allowed_hosts,
            client_token,
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

    /// `READ_TIMEOUT`: `off` (or 0) for none, else a duration.
    fn read_timeout(&mut self, default: Option<Duration>) -> Option<Duration> {
        match self.raw.get("read_timeout") {
            Some(Value::String(_, s))
                if s.trim().eq_ignore_ascii_case("off") || s.trim() == "0" =>
            {
                None
            }
            Some(Value::Num(_, n)) if n.to_u128() == Some(0) => None,
            Some(_) => Some(self.duration("read_timeout", Duration::from_secs(60))),
            None => default,
        }
    }

    /// The `[upstreams.NAME]` blocks of the TOML file and the `UPSTREAMS__NAME__KEY` variables,
    /// merged per name (the environment wins, as everywhere), in name order. Bad names and
    /// malformed variables are reported here and left out.
    fn upstream_blocks(&mut self) -> Vec<(Scope, BTreeMap<String, Value>)> {
        let mut blocks: BTreeMap<String, (Scope, BTreeMap<String, Value>)> = BTreeMap::new();
        let new_scope = |name: &str, in_file: bool| Scope {
            name: name.to_string(),
            env_keys: Default::default(),
            in_file,
        };
        let file = self.file_label.clone().unwrap_or_default();
        match self.raw.get(UPSTREAMS_KEY).cloned() {
            None => {}
            Some(Value::Dict(_, tables)) if !self.label(UPSTREAMS_KEY).starts_with(ENV_PREFIX) => {
                for (name, table) in tables {
                    let key = format!("{UPSTREAMS_KEY}.{name} in {file}");
                    if let Err(message) = check_upstream_name(&name) {
                        self.problems.push(Problem { key, message });
                        continue;
                    }
                    match table {
                        Value::Dict(_, keys) => {
                            let entry = blocks
                                .entry(name.clone())
                                .or_insert_with(|| (new_scope(&name, true), BTreeMap::new()));
                            entry.1.extend(keys);
                        }
                        other => self.problems.push(Problem {
                            key,
                            message: format!(
                                "expected a table of this upstream's settings ([{UPSTREAMS_KEY}.{name}]), found {}",
                                describe(&other)
                            ),
                        }),
                    }
                }
            }
            Some(_) => self.problem(
                UPSTREAMS_KEY,
                "expected [upstreams.NAME] tables in the TOML file, or variables MCP_SIDECAR_UPSTREAMS__NAME__KEY",
            ),
        }
        let env_keys: Vec<String> = self
            .raw
            .keys()
            .filter(|k| k.starts_with(UPSTREAMS_ENV))
            .cloned()
            .collect();
        for env_key in env_keys {
            let written = format!("{ENV_PREFIX}{}", env_key.to_ascii_uppercase());
            let mut parts = env_key[UPSTREAMS_ENV.len()..].splitn(2, "__");
            let (Some(spelled), Some(key)) = (parts.next(), parts.next()) else {
                self.problems.push(Problem {
                    key: written,
                    message: "expected MCP_SIDECAR_UPSTREAMS__NAME__KEY, e.g. MCP_SIDECAR_UPSTREAMS__GITHUB__UPSTREAM_URL".into(),
                });
                continue;
            };
            let name = spelled.replace('_', "-");
            let checked = if key.is_empty() {
                Err("expected MCP_SIDECAR_UPSTREAMS__NAME__KEY, e.g. MCP_SIDECAR_UPSTREAMS__GITHUB__UPSTREAM_URL".to_string())
            } else {
                check_upstream_name(&name).map_err(|m| format!("{m} (in a variable, write - as _)"))
            };
            if let Err(message) = checked {
                self.problems.push(Problem {
                    key: written,
                    message,
                });
                continue;
            }
            let Some(value) = self.raw.get(&env_key).cloned() else {
                continue;
            };
            let entry = blocks
                .entry(name.clone())
                .or_insert_with(|| (new_scope(&name, false), BTreeMap::new()));
            entry.0.env_keys.insert(key.to_string());
            entry.1.insert(key.to_string(), value);
        }
        blocks.into_values().collect()
    }

    /// With named blocks, a top-level key about one upstream has no upstream to belong to.
    fn mixed_forms(&mut self, blocks: &[(Scope, BTreeMap<String, Value>)]) {
        let names: Vec<&str> = blocks
            .iter()
            .map(|(scope, _)| scope.name.as_str())
            .collect();
        let misplaced: Vec<String> = self
            .raw
            .keys()
            .filter(|k| UPSTREAM_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in misplaced {
            let message = format!(
                "is a setting of one upstream, but upstreams are configured as named blocks ({}); \
                 move it into one (upstreams.NAME.{key} or MCP_SIDECAR_UPSTREAMS__NAME__{})",
                names.join(", "),
                key.to_ascii_uppercase()
            );
            self.problem(&key, message);
        }
    }

    /// Everything about one upstream: the top-level keys in the single-upstream form, one
    /// block's keys when `self` reads a block.
    fn upstream_settings(
        &mut self,
        path: &str,
        listen: Option<SocketAddr>,
        state_dir: &Path,
        inherited: &Inherited,
    ) -> Option<UpstreamSettings> {
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

        // The top level was read already: only a block overrides these.
        let (connect_timeout, read_timeout, ready) = if self.scope.is_some() {
            (
                self.duration("connect_timeout", inherited.connect_timeout),
                self.read_timeout(inherited.read_timeout),
                ReadyConfig {
                    interval: self.duration("ready_interval", inherited.ready.interval),
                    timeout: self.duration("ready_timeout", inherited.ready.timeout),
                },
            )
        } else {
            (
                inherited.connect_timeout,
                inherited.read_timeout,
                inherited.ready,
            )
        };
        let required = self.boolean("required", true);
        let name = self
            .scope
            .as_ref()
            .map_or(DEFAULT_UPSTREAM, |scope| scope.name.as_str())
            .to_string();
        let path = if name == DEFAULT_UPSTREAM {
            path.to_string()
        } else {
            format!("{path}/{name}")
        };
        let state_dir = upstream_state_dir(state_dir, &name);
        let tools = crate::tools::ToolPolicy::new(
            self.tool_patterns("tools_allow"),
            self.tool_patterns("tools_deny"),
        );

        Some(UpstreamSettings {
            name,
            path,
            upstream: UpstreamConfig {
                url: upstream_url?,
                headers,
                ca_file,
                connect_timeout,
                read_timeout,
                tools,
            },
            auth: auth?,
            ready,
            required,
            state_dir,
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

/// The sidecar's own routes. A `PATH` under one of them would share a route with it, and one
/// of the two would answer the other's requests.
const RESERVED_PATHS: &[&str] = &[
    "/healthz",
    "/ready",
    "/status",
    "/metrics",
    "/upstreams",
    "/oauth",
    "/.well-known",
];

fn is_reserved_path(path: &str) -> bool {
    RESERVED_PATHS
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
        for upstream in &self.upstreams {
            sources.extend(&upstream.upstream.headers);
            match &upstream.auth {
                AuthConfig::Bearer(token) => sources.push(token),
                AuthConfig::OAuth(oauth) => {
                    sources.extend(&oauth.client_secret);
                    sources.extend(&oauth.refresh_token);
                }
                AuthConfig::Command(_) | AuthConfig::None => {}
            }
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

    /// Takes the one upstream for the commands that serve exactly one (`stdio`, `login`): with
    /// several, the message says so and names them.
    pub fn take_single_upstream(&mut self, command: &str) -> Result<UpstreamSettings, String> {
        if self.upstreams.len() == 1 {
            return Ok(self.upstreams.remove(0));
        }
        Err(format!(
            "{command} works with one upstream, and this configuration has {} ({}); choose one with --upstream NAME",
            self.upstreams.len(),
            self.upstream_names()
        ))
    }

    /// Keeps only the upstream called `name` (`--upstream NAME` of the commands that serve one).
    /// Its state directory stays where `serve` keeps it, so both share its tokens.
    pub fn keep_upstream(&mut self, command: &str, name: &str) -> Result<(), String> {
        let Some(at) = self.upstreams.iter().position(|u| u.name == name) else {
            return Err(format!(
                "{command} --upstream {name:?}: this configuration has no upstream of that name (it has {})",
                self.upstream_names()
            ));
        };
        let kept = self.upstreams.swap_remove(at);
        self.upstreams = vec![kept];
        Ok(())
    }

    fn upstream_names(&self) -> String {
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        names.join(", ")
    }

    /// Moves `STATE_DIR` (and with it each upstream's own directory under it).
    pub fn relocate_state_dir(&mut self, dir: PathBuf) {
        for upstream in &mut self.upstreams {
            upstream.state_dir = upstream_state_dir(&dir, &upstream.name);
        }
        self.state_dir = dir;
    }

    /// Whether this is the single-upstream form (one upstream, named `default`).
    pub fn is_single(&self) -> bool {
        matches!(self.upstreams.as_slice(), [only] if only.name == DEFAULT_UPSTREAM)
    }

    /// The resolved settings for `check-config`: every key, secrets redacted, files by path. In
    /// the single-upstream form its upstream's rows come first, as they always have; with named
    /// upstreams each has a section of its own ([`UpstreamSettings::summary`]).
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let secret = |s: &Option<SecretSource>| {
            s.as_ref()
                .map(SecretSource::describe)
                .unwrap_or_else(|| "(not set)".into())
        };
        let mut rows = Vec::new();
        if self.is_single() {
            rows.extend(self.upstreams[0].summary());
        }
        rows.extend([
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
}

impl UpstreamSettings {
    /// This upstream's resolved settings for `check-config`, secrets redacted.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let mut rows = vec![
            ("UPSTREAM_URL", crate::net::display_url(&self.upstream.url)),
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
            ("CONNECT_TIMEOUT", duration(self.upstream.connect_timeout)),
            (
                "READ_TIMEOUT",
                self.upstream
                    .read_timeout
                    .map(duration)
                    .unwrap_or_else(|| "off".into()),
            ),
            ("READY_INTERVAL", duration(self.ready.interval)),
            ("READY_TIMEOUT", duration(self.ready.timeout)),
            ("TOOLS_ALLOW", self.upstream.tools.summary().0),
            ("TOOLS_DENY", self.upstream.tools.summary().1),
        ]);
        if self.name != DEFAULT_UPSTREAM {
            rows.extend([
                ("PATH", self.path.clone()),
                ("REQUIRED", self.required.to_string()),
                ("STATE_DIR", self.state_dir.display().to_string()),
            ]);
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
    fn a_path_under_an_endpoint_of_the_sidecar_is_refused() {
        // Each of these used to start with routes of the sidecar's own shadowing the MCP
        // endpoint (`PATH=/upstreams`: a client's GET stream got the upstream list).
        for path in ["/upstreams", "/oauth", "/oauth/mcp", "/ready", "/healthz/x"] {
            let found = problems(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("PATH", path),
            ]));
            assert_eq!(found.len(), 1, "{path}: {found:?}");
            assert_eq!(found[0].key, "MCP_SIDECAR_PATH");
            assert!(found[0].message.contains("/upstreams"), "{found:?}");
        }
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("PATH", "/oauthish"),
        ]))
        .unwrap();
        assert_eq!(config.upstreams[0].path, "/oauthish");
    }

    #[test]
    fn tool_policy_keys_parse_and_every_bad_pattern_is_reported() {
        let config = load(&env(&[("UPSTREAM_URL", "https://x.example/mcp")])).unwrap();
        assert!(!config.upstreams[0].upstream.tools.is_set());
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("TOOLS_ALLOW", "read_*, echo"),
            ("TOOLS_DENY", "read_secret?"),
        ]))
        .unwrap();
        let tools = &config.upstreams[0].upstream.tools;
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
        assert!(!config.upstreams[0].upstream.tools.permits("admin/reset"));
        assert!(config.upstreams[0].upstream.tools.permits("echo"));

        // Each upstream has its own policy, and its problems name the key as written in its block.
        let config = load(&env(&[
            ("UPSTREAMS__GH__UPSTREAM_URL", "https://gh.example/mcp"),
            ("UPSTREAMS__GH__TOOLS_DENY", "delete_*"),
            ("UPSTREAMS__DOCS__UPSTREAM_URL", "https://docs.example/mcp"),
        ]))
        .unwrap();
        let policy = |name: &str| {
            let settings = config.upstreams.iter().find(|u| u.name == name).unwrap();
            settings.upstream.tools.permits("delete_repo")
        };
        assert!(!policy("gh") && policy("docs"));
        let found = problems(&env(&[
            ("UPSTREAMS__GH__UPSTREAM_URL", "https://gh.example/mcp"),
            ("UPSTREAMS__GH__TOOLS_DENY", "b@d"),
        ]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "MCP_SIDECAR_UPSTREAMS__GH__TOOLS_DENY");
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
        assert_eq!(config.upstreams[0].upstream.read_timeout, None);
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
        assert_eq!(
            config.upstreams[0].upstream.read_timeout,
            Some(Duration::from_secs(45))
        );
        for off in ["off", "OFF", "0"] {
            let config = load(&env(&[
                ("UPSTREAM_URL", "https://x.example/mcp"),
                ("READ_TIMEOUT", off),
                ("MAX_CONNECTIONS", "auto"),
            ]))
            .unwrap();
            assert_eq!(config.upstreams[0].upstream.read_timeout, None, "{off}");
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
        assert!(matches!(config.upstreams[0].auth, AuthConfig::None));
        assert_eq!(config.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.upstreams[0].ready.interval, Duration::from_secs(30));
    }

    #[test]
    fn token_is_kept_verbatim() {
        // figment's Env provider would parse this as the number 123.
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://mcp.example.com/mcp"),
            ("TOKEN", "0123"),
        ]))
        .unwrap();
        let AuthConfig::Bearer(SecretSource::Inline(token)) = &config.upstreams[0].auth else {
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
                config.upstreams[0].auth,
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
        assert_eq!(
            config.upstreams[0].upstream.url.as_str(),
            "https://env.example/mcp"
        );
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
        let AuthConfig::OAuth(oauth) = &config.upstreams[0].auth else {
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
        let AuthConfig::Command(command) = &config.upstreams[0].auth else {
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
        let AuthConfig::OAuth(oauth) = &config.upstreams[0].auth else {
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
    fn upstream_names_of_the_legacy_sse_routes_are_refused() {
        for name in ["LEGACY", "SSE"] {
            let url_key = format!("UPSTREAMS__{name}__UPSTREAM_URL");
            let found = problems(&env(&[(url_key.as_str(), "https://x.example/mcp")]));
            assert!(
                found.iter().any(|p| p.message.contains("is reserved")),
                "{name}: {found:?}"
            );
        }
    }

    #[test]
    fn reserved_paths_are_refused() {
        let found = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("PATH", "/ready"),
        ]));
        assert_eq!(found[0].key, "MCP_SIDECAR_PATH");
    }

    /// A canary with the characters that break naive quoting and cutting, longer than any cut.
    const CANARY_A: &str = "canary-A+/=&-0123456789abcdefghijklmnopqrstuvwxyz-0123456789";
    const CANARY_B: &str = "canary-B+/=&-zyxwvutsrqponmlkjihgfedcba-9876543210";

    fn toml_sources(text: &str, pairs: &[(&str, &str)]) -> (tempfile::TempDir, Sources, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("multi.toml");
        std::fs::write(&file, text).unwrap();
        let mut sources = env(pairs);
        sources.file = Some(file.clone());
        (dir, sources, file.display().to_string())
    }

    #[test]
    fn named_blocks_in_toml_each_have_their_own_settings() {
        let text = format!(
            "state_dir = \"/var/lib/s\"\nready_interval = \"20s\"\n\
             [upstreams.tracker]\nupstream_url = \"https://tracker.example/mcp\"\ntoken = \"{CANARY_A}\"\n\
             [upstreams.code-host]\nupstream_url = \"https://code.example/mcp\"\ntoken = \"{CANARY_B}\"\n\
             required = false\nready_interval = \"5s\"\n"
        );
        let (_dir, sources, _) = toml_sources(&text, &[]);
        let config = load(&sources).unwrap();
        assert!(!config.is_single());
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["code-host", "tracker"], "name order");
        let code = &config.upstreams[0];
        let tracker = &config.upstreams[1];
        assert_eq!(code.path, "/mcp/code-host");
        assert_eq!(tracker.path, "/mcp/tracker");
        assert!(!code.required);
        assert!(tracker.required, "required defaults to true");
        assert_eq!(
            code.ready.interval,
            Duration::from_secs(5),
            "a block overrides"
        );
        assert_eq!(
            tracker.ready.interval,
            Duration::from_secs(20),
            "else the top level"
        );
        assert_eq!(code.state_dir, Path::new("/var/lib/s/upstreams/code-host"));
        assert_eq!(tracker.state_dir, Path::new("/var/lib/s/upstreams/tracker"));
        let token = |u: &UpstreamSettings| match &u.auth {
            AuthConfig::Bearer(SecretSource::Inline(t)) => t.expose().to_string(),
            other => panic!("expected an inline bearer token, got {}", other.name()),
        };
        assert_eq!(token(tracker), CANARY_A);
        assert_eq!(token(code), CANARY_B);
        // check-config's rows: secrets redacted in every section.
        let mut shown = format!("{:?}", config.summary());
        for upstream in &config.upstreams {
            shown.push_str(&format!("{:?}", upstream.summary()));
        }
        for canary in [CANARY_A, CANARY_B] {
            assert!(!shown.contains(canary), "{shown}");
            assert!(!shown.contains(&canary[..20]), "{shown}");
        }
        assert!(shown.contains("/mcp/code-host"), "{shown}");
    }

    #[test]
    fn the_single_form_is_one_upstream_named_default_with_todays_layout() {
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("STATE_DIR", "/var/lib/s"),
        ]))
        .unwrap();
        assert!(config.is_single());
        let only = &config.upstreams[0];
        assert_eq!(only.name, "default");
        assert_eq!(only.path, "/mcp");
        assert!(only.required);
        assert_eq!(only.state_dir, Path::new("/var/lib/s"));
        let problems = problems(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("REQUIRED", "false"),
        ]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "MCP_SIDECAR_REQUIRED");
    }

    #[test]
    fn named_upstreams_from_the_environment() {
        let config = load(&env(&[
            ("UPSTREAMS__GITHUB__UPSTREAM_URL", "https://gh.example/mcp"),
            ("UPSTREAMS__GITHUB__TOKEN", CANARY_A),
            (
                "UPSTREAMS__MY_TRACKER__UPSTREAM_URL",
                "https://t.example/mcp",
            ),
            ("UPSTREAMS__MY_TRACKER__AUTH", "none"),
            ("UPSTREAMS__MY_TRACKER__REQUIRED", "false"),
            ("UPSTREAMS__MY_TRACKER__CONNECT_TIMEOUT", "3s"),
            ("PATH", "/agents"),
        ]))
        .unwrap();
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            ["github", "my-tracker"],
            "_ in a variable is - in the name"
        );
        assert_eq!(config.upstreams[0].path, "/agents/github");
        assert_eq!(config.upstreams[1].path, "/agents/my-tracker");
        assert!(!config.upstreams[1].required);
        assert_eq!(
            config.upstreams[1].upstream.connect_timeout,
            Duration::from_secs(3)
        );
        assert_eq!(
            config.upstreams[0].upstream.connect_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn an_env_variable_overrides_a_key_of_a_toml_block_and_is_named_so() {
        let text =
            "[upstreams.github]\nupstream_url = \"https://gh.example/mcp\"\nauth = \"none\"\n";
        let (_dir, sources, _) = toml_sources(
            text,
            &[
                ("UPSTREAMS__GITHUB__AUTH", "bogus"),
                ("UPSTREAMS__GITHUB__READY_TIMEOUT", "soon"),
            ],
        );
        let keys: Vec<String> = problems(&sources).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "MCP_SIDECAR_UPSTREAMS__GITHUB__AUTH",
                "MCP_SIDECAR_UPSTREAMS__GITHUB__READY_TIMEOUT"
            ]
        );
        let (_dir, sources, file) = toml_sources(&text.replace("\"none\"", "\"bogus\""), &[]);
        let keys: Vec<String> = problems(&sources).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, [format!("upstreams.github.auth in {file}")]);
    }

    #[test]
    fn every_problem_of_the_named_form_at_once_each_named_as_written() {
        let text = format!(
            "upstream_url = \"https://top.example/mcp\"\ntoken = \"{CANARY_A}\"\n\
             [upstreams.Bad_Name]\nupstream_url = \"https://bad.example/mcp\"\n\
             [upstreams.ok]\nupstream_url = \"http://remote.example/mcp\"\nlisten = \"0.0.0.0:1\"\n\
             token = \"{CANARY_B}\"\ntokn = \"x\"\n\
             [upstreams.missing]\nauth = \"none\"\n"
        );
        let (_dir, sources, file) = toml_sources(
            &text,
            &[
                ("UPSTREAMS__GITHUB", "x"),
                ("UPSTREAMS__GIT.HUB__UPSTREAM_URL", "https://gh.example/mcp"),
            ],
        );
        let found = problems(&sources);
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        let expected = [
            "MCP_SIDECAR_UPSTREAMS__GIT.HUB__UPSTREAM_URL".to_string(),
            "MCP_SIDECAR_UPSTREAMS__GITHUB".to_string(),
            format!("token in {file}"),
            format!("upstream_url in {file}"),
            format!("upstreams.Bad_Name in {file}"),
            format!("upstreams.missing.upstream_url in {file}"),
            format!("upstreams.ok.listen in {file}"),
            format!("upstreams.ok.tokn in {file}"),
            format!("upstreams.ok.upstream_url in {file}"),
        ];
        assert_eq!(keys, expected, "{found:#?}");
        let message = |key: &str| &found.iter().find(|p| p.key == key).unwrap().message;
        assert!(message(&format!("token in {file}")).contains("named blocks (missing, ok)"));
        assert!(message(&format!("upstreams.Bad_Name in {file}")).contains("lower-case"));
        assert!(message(&format!("upstreams.ok.listen in {file}")).contains("whole sidecar"));
        assert!(
            message(&format!("upstreams.ok.tokn in {file}")).contains("upstreams.ok.token"),
            "suggestion spelled inside the block"
        );
        assert!(
            message(&format!("upstreams.ok.upstream_url in {file}"))
                .contains("upstreams.ok.allow_insecure_upstream=true")
        );
        let all = format!("{found:?}");
        for canary in [CANARY_A, CANARY_B] {
            assert!(!all.contains(&canary[..12]), "{all}");
        }
    }

    #[test]
    fn a_misspelt_block_only_key_is_suggested_in_a_block_and_never_at_the_top() {
        let text = "requird = true\n[upstreams.gh]\nupstream_url = \"https://gh.example/mcp\"\n\
                    auth = \"none\"\nrequird = false\n";
        let (_dir, sources, file) = toml_sources(text, &[]);
        let found = problems(&sources);
        let message = |key: &str| {
            found
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.message.clone())
                .unwrap_or_else(|| panic!("no problem for {key}: {found:#?}"))
        };
        assert!(
            message(&format!("upstreams.gh.requird in {file}"))
                .contains("did you mean upstreams.gh.required?"),
            "{found:#?}"
        );
        assert!(
            !message(&format!("requird in {file}")).contains("did you mean"),
            "{found:#?}"
        );
    }

    #[test]
    fn upstream_names_are_lower_case_url_safe_and_short() {
        for good in ["a", "0", "github", "my-tracker", "a-1", &"x".repeat(63)] {
            assert!(is_valid_upstream_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "git_hub",
            "git.hub",
            "a/b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(!is_valid_upstream_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_named_upstream_logs_in_at_its_own_callback() {
        let config = load(&env(&[
            ("UPSTREAMS__GH__UPSTREAM_URL", "https://gh.example/mcp"),
            ("UPSTREAMS__GH__AUTH", "authorization_code"),
            ("UPSTREAMS__GH__CLIENT_ID", "c"),
            (
                "UPSTREAMS__GH__AUTHORIZATION_URL",
                "https://as.example/authorize",
            ),
            ("UPSTREAMS__GH__TOKEN_URL", "https://as.example/token"),
        ]))
        .unwrap();
        let AuthConfig::OAuth(oauth) = &config.upstreams[0].auth else {
            panic!("expected oauth");
        };
        assert_eq!(
            oauth.redirect_uri.as_str(),
            "http://localhost:4510/oauth/gh/callback"
        );
    }
}
