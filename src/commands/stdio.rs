//! `mcp-sidecar stdio`: load the configuration as `serve` does and run the stdio front
//! ([`crate::stdio`]) on this process's stdin and stdout until EOF or SIGTERM/SIGINT. With
//! `--connect URL` the upstream is a running sidecar, which holds the credential
//! ([`crate::config::Sources::for_connect`]): the process is then a thin pipe with no secret of
//! the upstream's, and a host that kills and respawns it costs nothing.

use std::path::PathBuf;

use crate::config::{self, Sources};
use crate::output::{errln, exit};

/// How long the exit waits for blocking tasks (see the end of [`run`]).
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(config_file: Option<PathBuf>, upstream: Option<String>, connect: Option<String>) -> u8 {
    let mut sources = Sources::from_process(config_file);
    if let Some(url) = &connect
        && let Err(problems) = sources.for_connect(url)
    {
        errln!(
            "mcp-sidecar stdio: --connect cannot be used with this configuration ({} problem{}):",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for problem in problems {
            errln!("  - {problem}");
        }
        return exit::CONFIG;
    }
    let mut config = match config::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            errln!("mcp-sidecar: {e}");
            return exit::CONFIG;
        }
    };
    if let Err(code) = super::one_upstream(&mut config, "stdio", upstream.as_deref()) {
        return code;
    }
    crate::telemetry::init(&config.log);
    if !config.state_dir_set
        && let Some(dir) =
            crate::stdio::user_state_dir(&sources.env, crate::stdio::in_container(&sources.env))
    {
        config.relocate_state_dir(dir);
    }
    super::warn_pending_files(&config);
    // A host gives the process a pipe; a terminal means a person ran it by hand.
    let started = if connect.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        crate::stdio::Started::ByHand {
            env: sources.env.clone(),
        }
    } else {
        crate::stdio::Started::ByHost
    };
    let runtime = match super::server_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return exit::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = match crate::shutdown::signal() {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return exit::FAILURE;
            }
        };
        let input = tokio::io::BufReader::new(tokio::io::stdin());
        match crate::stdio::run(config, input, tokio::io::stdout(), shutdown, started).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the stdio front");
                exit::FAILURE
            }
        }
    });
    // Blocking tasks still running include a token state being written to STATE_DIR (a respawned
    // process must find it) and, after SIGTERM, the read of stdin, which never returns: the
    // first finish in milliseconds, the second must not hold the exit longer than this.
    runtime.shutdown_timeout(EXIT_WAIT);
    code
}
