//! One module per subcommand. Each `run` returns the process exit code ([`crate::output::exit`]).

pub mod check_config;
pub mod demo;
pub mod login;
pub mod probe;
pub mod serve;
pub mod stdio;
pub mod wait;

use std::path::PathBuf;

use crate::config::{self, Sources};
use crate::output::errln;

/// The local URL of one of the sidecar's endpoints, from the listen address the running sidecar
/// uses (its TOML file and environment). `probe` and `wait` run in the sidecar's container (or the
/// agent's, with the same settings); a wildcard bind is reached on loopback.
pub fn local_url(config_file: Option<PathBuf>, path: &str) -> Result<String, config::ConfigError> {
    let addr = config::listen_address(&Sources::from_process(config_file))?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}{path}", addr.port()))
}

/// The URL a client-side command checks: `--url`, else `path` on the configured listen address.
/// Prints the configuration problem and returns the exit code when there is none to be had.
pub fn target_url(
    command: &str,
    config_file: Option<PathBuf>,
    url: Option<String>,
    path: &str,
) -> Result<String, u8> {
    match url {
        Some(url) => Ok(url),
        None => local_url(config_file, path).map_err(|e| {
            errln!("mcp-sidecar {command}: {e}");
            crate::output::exit::CONFIG
        }),
    }
}

/// `--upstream` names must be upstream names: they go into a URL path.
pub fn check_upstream_names(command: &str, upstreams: &[String]) -> Result<(), u8> {
    match upstreams
        .iter()
        .find(|name| !crate::config::is_valid_upstream_name(name))
    {
        Some(bad) => {
            errln!(
                "mcp-sidecar {command}: --upstream {bad:?}: upstream names are lower-case letters, digits and -"
            );
            Err(crate::output::exit::CONFIG)
        }
        None => Ok(()),
    }
}

/// The configuration narrowed to the one upstream a command serves: `--upstream NAME`, else the
/// only one there is. A configuration error (exit 64) names the choices.
pub fn one_upstream(
    config: &mut crate::config::Config,
    command: &str,
    upstream: Option<&str>,
) -> Result<(), u8> {
    let chosen = match upstream {
        Some(name) => {
            check_upstream_names(command, &[name.to_string()])?;
            config.keep_upstream(&format!("mcp-sidecar {command}"), name)
        }
        None if config.upstreams.len() == 1 => Ok(()),
        None => config
            .take_single_upstream(&format!("mcp-sidecar {command}"))
            .map(drop),
    };
    chosen.map_err(|e| {
        errln!("mcp-sidecar: {e}");
        crate::output::exit::CONFIG
    })
}

/// The URLs `probe` and `wait` ask: `ready` itself, or `ready/NAME` for each `--upstream NAME`.
/// Names go into the path as given: the sidecar answers 404 with a reason for one it lacks.
pub fn upstream_urls(ready: &str, upstreams: &[String]) -> Vec<(Option<String>, String)> {
    if upstreams.is_empty() {
        return vec![(None, ready.to_string())];
    }
    let base = ready.trim_end_matches('/');
    upstreams
        .iter()
        .map(|name| (Some(name.clone()), format!("{base}/{name}")))
        .collect()
}

/// What a sidecar endpoint (`/ready`, `/healthz`) answered, in words a user can act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub ready: bool,
    pub reason: String,
    pub detail: String,
    pub login: Option<serde_json::Value>,
}

/// Reads a response as a readiness report. Something that is not one (a 404 from another
/// server, or from the sidecar itself at a wrong path) is named as such, with its status, rather
/// than shown as an empty reason.
pub async fn read_answer(url: &str, response: reqwest::Response) -> Answer {
    use serde_json::Value;
    let status = response.status();
    let body: Option<Value> = response.json().await.ok();
    let json = body.is_some();
    let report = body.filter(|b| {
        b.get("ready").is_some_and(Value::is_boolean)
            || b.get("reason").is_some_and(Value::is_string)
    });
    match report {
        Some(body) => {
            let text = |key: &str| {
                body.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let ok = status.is_success();
            Answer {
                ready: ok && body.get("ready").and_then(Value::as_bool).unwrap_or(ok),
                reason: text("reason"),
                detail: text("detail"),
                login: body.get("login").filter(|l| !l.is_null()).cloned(),
            }
        }
        // `/healthz` answers 200 with JSON but no report; success is all a liveness check asks.
        None if status.is_success() && json => Answer {
            ready: true,
            reason: "ready".into(),
            detail: format!("{url} answered HTTP {status}"),
            login: None,
        },
        None => Answer {
            ready: false,
            reason: "not_a_sidecar".into(),
            detail: format!(
                "{url} answered HTTP {status}, which is not a sidecar readiness report (check the URL: the sidecar serves /ready and /healthz)"
            ),
            login: None,
        },
    }
}

/// Why a request to the sidecar failed; a refused connection says that nothing listens there.
pub fn describe_unreachable(url: &str, e: &reqwest::Error) -> String {
    if crate::net::is_refused(e) {
        return format!("no sidecar answers at {url} (connection refused)");
    }
    format!("{url}: {}", crate::net::describe_reqwest_error(e))
}

/// Headers for the client-side commands: the sidecar's `CLIENT_TOKEN` when its configuration
/// sets one, since `/ready` shows its detail and a pending device-code login only with it.
pub fn client_headers(config_file: Option<PathBuf>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let token =
        config::client_token(&Sources::from_process(config_file)).and_then(|s| s.read().ok());
    if let Some(token) = token
        && let Ok(mut value) =
            reqwest::header::HeaderValue::try_from(format!("Bearer {}", token.expose()))
    {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    headers
}

/// The runtime of the commands that serve (`serve`, `stdio`, `demo`): a thread per core.
pub fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Says, once at start, which secret files are not written yet: until they are, the sidecar
/// reports `auth_required` rather than failing.
pub fn warn_pending_files(config: &config::Config) {
    for pending in config.pending_files() {
        tracing::warn!(
            file = %pending,
            "a secret file is not there yet; reporting auth_required until it is written"
        );
    }
}

/// A small runtime for the client-side commands (`probe`, `wait`): one thread is plenty.
pub fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
