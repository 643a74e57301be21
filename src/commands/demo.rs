//! `mcp-sidecar demo`: the quick start. Runs the demo upstream (which demands a token) and, unless
//! `--upstream-only`, the sidecar in front of it holding that token, then prints what to try.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{self, ENV_PREFIX, Sources};
use crate::output::{errln, exit, outln};
use crate::secret::{Secret, SecretFile, SecretSource};

pub fn run(
    config_file: Option<PathBuf>,
    upstream_only: bool,
    listen: SocketAddr,
    token: Option<String>,
    token_file: Option<PathBuf>,
) -> u8 {
    let token_source = match (token, token_file) {
        (Some(t), _) if !t.trim().is_empty() => SecretSource::Inline(Secret::new(t.trim())),
        (_, Some(path)) => SecretSource::File(SecretFile::new("MCP_DEMO_TOKEN_FILE", path)),
        _ if upstream_only => {
            errln!(
                "mcp-sidecar demo: --upstream-only needs --token or --token-file (or MCP_DEMO_TOKEN)"
            );
            return exit::CONFIG;
        }
        _ => SecretSource::Inline(Secret::new(crate::demo::random_hex())),
    };
    if let Err(e) = token_source.read() {
        errln!("mcp-sidecar demo: {e}");
        return exit::CONFIG;
    }

    // The sidecar's configuration: the user's environment, pointed at the demo upstream.
    let sidecar_config = if upstream_only {
        None
    } else {
        let mut sources = Sources::from_process(config_file);
        for key in ["UPSTREAM_URL", "TOKEN", "TOKEN_FILE", "AUTH"] {
            sources.env.remove(&format!("{ENV_PREFIX}{key}"));
        }
        sources.env.insert(
            format!("{ENV_PREFIX}UPSTREAM_URL"),
            format!("http://{listen}/mcp"),
        );
        let secret = match &token_source {
            SecretSource::Inline(s) => s.expose().to_string(),
            SecretSource::File(f) => {
                sources.env.insert(
                    format!("{ENV_PREFIX}TOKEN_FILE"),
                    f.path().display().to_string(),
                );
                String::new()
            }
        };
        if !secret.is_empty() {
            sources.env.insert(format!("{ENV_PREFIX}TOKEN"), secret);
        }
        match config::load(&sources) {
            Ok(c) => Some(c),
            Err(e) => {
                errln!("mcp-sidecar demo: {e}");
                return exit::CONFIG;
            }
        }
    };
    let log = sidecar_config
        .as_ref()
        .map(|c| c.log.clone())
        .unwrap_or(config::LogConfig {
            format: config::LogFormat::Text,
            filter: "info".into(),
        });
    crate::telemetry::init(&log);

    let runtime = match super::server_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("mcp-sidecar demo: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = match crate::shutdown::signal() {
            Ok(s) => s,
            Err(e) => {
                errln!("mcp-sidecar demo: cannot install signal handlers: {e}");
                return exit::FAILURE;
            }
        };
        let demo_listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                errln!("mcp-sidecar demo: cannot listen on {listen} (--listen): {e}");
                return exit::UNAVAILABLE;
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let demo = crate::demo::Demo::new(token_source);
        let demo_task = tokio::spawn(crate::demo::serve(demo, demo_listener, stopped()));
        tracing::info!(url = %format!("http://{listen}/mcp"), "demo MCP upstream listening (it demands a bearer token)");

        let Some(config) = sidecar_config else {
            shutdown.await;
            let _ = stop_tx.send(true);
            let _ = demo_task.await;
            return exit::OK;
        };
        let sidecar_listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                errln!("mcp-sidecar demo: cannot listen on {} (MCP_SIDECAR_LISTEN): {e}", config.listen);
                return exit::UNAVAILABLE;
            }
        };
        let base = format!("http://{}", config.listen);
        let path = config.path.clone();
        outln!(
            "\nmcp-sidecar demo\n  upstream (demands a token): http://{listen}/mcp\n  sidecar (injects it):       {base}{path}\n\n\
             Try, in another terminal:\n  curl -s {base}/ready\n  \
             curl -s {base}{path} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\\n    \
             -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello\"}}}}}}'\n  \
             claude mcp add --transport http demo {base}{path}\n\nCtrl-C stops both.\n"
        );
        let result = crate::server::serve(config, sidecar_listener, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = demo_task.await;
        match result {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                exit::FAILURE
            }
        }
    })
}
