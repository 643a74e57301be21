//! One module per subcommand. Each `run` returns the process exit code ([`crate::cli::exit`]).

pub mod check_config;
pub mod demo;
pub mod probe;
pub mod serve;
pub mod wait;

use crate::config::{DEFAULT_LISTEN, ENV_PREFIX};

/// The local URL of one of the sidecar's endpoints, from `MCP_SIDECAR_LISTEN` as the running
/// sidecar sees it. `probe` and `wait` run in the sidecar's container (or the agent's, with the
/// same environment), so they need no full configuration; a wildcard bind is reached on loopback.
pub fn local_url(path: &str) -> String {
    let listen =
        std::env::var(format!("{ENV_PREFIX}LISTEN")).unwrap_or_else(|_| DEFAULT_LISTEN.into());
    let addr: std::net::SocketAddr = listen.trim().parse().unwrap_or_else(|_| {
        DEFAULT_LISTEN
            .parse()
            .expect("DEFAULT_LISTEN is a valid socket address")
    });
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}{path}", addr.port())
}

/// A small runtime for the client-side commands (`probe`, `wait`): one thread is plenty.
pub fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
