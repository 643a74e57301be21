//! Logging: human-readable lines by default, one JSON object per line with `LOG_FORMAT=json`.
//!
//! Nothing here filters secrets: secrets are unprintable by type ([`crate::secret::Secret`]) and
//! header values carrying them are marked sensitive, so there is nothing to filter.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    // The filter was validated with the configuration; fall back to `info` rather than panic.
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its fallback report of a failed write is an `eprintln!`, which panics when stderr is a
        // closed pipe; a log line that cannot be written is simply lost.
        .log_internal_errors(false)
        .with_target(false);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    // A subscriber is already installed only in tests that start several servers in one process.
    let _ = result;
}
