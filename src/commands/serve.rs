//! `mcp-sidecar serve`: load the configuration, bind, and run until SIGTERM/SIGINT.

use std::path::PathBuf;

use crate::config::{self, Sources};
use crate::output::{errln, exit};

pub fn run(config_file: Option<PathBuf>) -> u8 {
    let config = match config::load(&Sources::from_process(config_file)) {
        Ok(config) => config,
        Err(e) => {
            errln!("mcp-sidecar: {e}");
            return exit::CONFIG;
        }
    };
    crate::telemetry::init(&config.log);
    super::warn_pending_files(&config);
    let runtime = match super::server_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return exit::FAILURE;
        }
    };
    let mut traces = None;
    let code = runtime.block_on(async {
        // Started here, inside the runtime its exporter's HTTP client needs.
        traces = match start_traces(&config) {
            Ok(traces) => traces,
            Err(e) => {
                tracing::error!(error = %e, "cannot start traces");
                return exit::CONFIG;
            }
        };
        let shutdown = match crate::shutdown::signal() {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return exit::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot listen (MCP_SIDECAR_LISTEN)");
                return exit::UNAVAILABLE;
            }
        };
        match crate::server::serve(config, listener, shutdown).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                exit::FAILURE
            }
        }
    });
    // Off the runtime's workers, which its last export still needs.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    code
}

fn start_traces(config: &config::Config) -> Result<Option<crate::trace::Traces>, String> {
    if !config.trace.is_enabled() {
        return Ok(None);
    }
    // The exporter takes the first upstream's network settings (CA file, connect timeout), and
    // its address names the span's peer; `validate` never yields a configuration without one.
    let Some(first) = config.upstreams.first() else {
        return Ok(None);
    };
    let client = crate::net::http_client(
        &first.upstream.client_settings(),
        reqwest::redirect::Policy::none(),
    )?;
    let upstream = match (
        first.upstream.url.host_str(),
        first.upstream.url.port_or_known_default(),
    ) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => String::new(),
    };
    crate::trace::start(&config.trace, client, &upstream)
}
