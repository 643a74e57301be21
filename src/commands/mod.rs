//! One module per subcommand. Each `run` returns the process exit code ([`crate::cli::exit`]).

pub mod check_config;
pub mod demo;
pub mod login;
pub mod probe;
pub mod serve;
pub mod wait;

use std::path::PathBuf;

use crate::config::{self, Sources};

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
            eprintln!("mcp-sidecar {command}: {e}");
            crate::cli::exit::CONFIG
        }),
    }
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

/// A small runtime for the client-side commands (`probe`, `wait`): one thread is plenty.
pub fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
