//! Command-line interface: parses arguments and dispatches to [`crate::commands`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::output::exit;

#[derive(Debug, Parser)]
#[command(
    name = "mcp-sidecar",
    version,
    about = "Holds OAuth credentials for an AI agent and proxies MCP to the remote server with a fresh token",
    after_help = "Configuration comes from MCP_SIDECAR_* environment variables and an optional TOML file; \
                  see `mcp-sidecar check-config` and the README."
)]
pub struct Cli {
    /// TOML configuration file (default: $MCP_SIDECAR_CONFIG). Environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Exit 0 when the running sidecar answers 200: the container healthcheck (no curl needed).
    Probe {
        /// Check /ready (the default): the upstream handshake succeeded.
        #[arg(long, conflicts_with = "live")]
        ready: bool,
        /// Check /healthz: the process is serving.
        #[arg(long)]
        live: bool,
        /// Full URL to check (default: from the sidecar's LISTEN setting).
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// Check only this upstream (`/ready/NAME`); repeatable: healthy when every one named is.
        #[arg(long = "upstream", value_name = "NAME", conflicts_with = "live")]
        upstreams: Vec<String>,
        /// Print the sidecar's upstreams (`/upstreams`: `NAME PATH required|optional` a line)
        /// instead of checking readiness: for a gate without curl or wget.
        #[arg(long, conflicts_with_all = ["live", "upstreams"])]
        list: bool,
    },
    /// Block until the sidecar is ready, printing each change of reason; then run CMD, or exit 0.
    Wait {
        /// Give up after this long and exit 1 with the last reason.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
        /// The /ready URL (default: from the sidecar's LISTEN setting).
        #[arg(long)]
        url: Option<String>,
        /// How often to ask.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        interval: Duration,
        /// Wait only for this upstream (`/ready/NAME`); repeatable: ready when every one named is.
        #[arg(long = "upstream", value_name = "NAME")]
        upstreams: Vec<String>,
        /// Command to exec once ready (after `--`).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Serve MCP on stdin/stdout (for hosts that spawn servers), forwarding to the upstream with
    /// the same configuration, credentials and sessions as `serve`.
    Stdio {
        /// The upstream to serve, when the configuration has several (`[upstreams.NAME]`).
        #[arg(long = "upstream", value_name = "NAME")]
        upstream: Option<String>,
        /// Attach to a running sidecar's MCP endpoint (e.g. http://127.0.0.1:4510/mcp) instead of
        /// holding the credential here; sends MCP_SIDECAR_CLIENT_TOKEN(_FILE) when set.
        #[arg(long, value_name = "URL", conflicts_with = "upstream")]
        connect: Option<String>,
    },
    /// Validate the configuration and print it with secrets redacted; exit 64 on any problem.
    CheckConfig,
    /// Log in interactively (device code, or authorization code with the redirected URL pasted
    /// back) and persist the tokens in STATE_DIR, before or beside a running sidecar.
    Login {
        /// The upstream to log in to, when the configuration has several (`[upstreams.NAME]`).
        #[arg(long = "upstream", value_name = "NAME")]
        upstream: Option<String>,
    },
    /// Run a demo MCP upstream that demands a token, and the sidecar in front of it.
    Demo {
        /// Run only the demo upstream (for compose's demo profile and tests).
        #[arg(long)]
        upstream_only: bool,
        /// Where the demo upstream listens.
        #[arg(long, default_value = crate::demo::DEFAULT_DEMO_LISTEN, value_parser = crate::demo::parse_listen)]
        listen: std::net::SocketAddr,
        /// The token the demo upstream demands (default with the sidecar: a random one).
        #[arg(
            long,
            env = "MCP_DEMO_TOKEN",
            hide_env_values = true,
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// File holding the token the demo upstream demands (re-read when it changes).
        #[arg(long, env = "MCP_DEMO_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 2m: {e}"))?;
    if d > Duration::from_secs(24 * 60 * 60) {
        return Err(format!("{s:?} is longer than 24h"));
    }
    Ok(d)
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => crate::commands::serve::run(cli.config),
        Command::Stdio { upstream, connect } => {
            crate::commands::stdio::run(cli.config, upstream, connect)
        }
        Command::CheckConfig => crate::commands::check_config::run(cli.config),
        Command::Login { upstream } => crate::commands::login::run(cli.config, upstream),
        Command::Probe {
            live,
            url,
            timeout,
            upstreams,
            list,
            ..
        } => crate::commands::probe::run(cli.config, live, list, url, timeout, upstreams),
        Command::Wait {
            timeout,
            url,
            interval,
            upstreams,
            command,
        } => crate::commands::wait::run(cli.config, url, timeout, interval, upstreams, command),
        Command::Demo {
            upstream_only,
            listen,
            token,
            token_file,
        } => crate::commands::demo::run(cli.config, upstream_only, listen, token, token_file),
    };
    ExitCode::from(code)
}
