//! `mcp-sidecar check-config`: validate, print the resolved settings with secrets redacted.

use std::path::PathBuf;

use crate::config::{self, Sources};
use crate::output::{errln, exit, outln};

pub fn run(config_file: Option<PathBuf>) -> u8 {
    match config::load(&Sources::from_process(config_file)) {
        Ok(config) => {
            let rows = config.summary();
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            outln!(
                "configuration is valid (keys are MCP_SIDECAR_* variables or TOML keys in lower case):"
            );
            for (key, value) in rows {
                if !outln!("  {key:width$}  {value}") {
                    break;
                }
            }
            // Named upstreams: one block each, keys as they are spelled inside the block
            // (`upstreams.NAME.KEY`, or `MCP_SIDECAR_UPSTREAMS__NAME__KEY`).
            if !config.is_single() {
                for upstream in &config.upstreams {
                    let rows = upstream.summary();
                    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                    outln!("upstream {}:", upstream.name);
                    for (key, value) in rows {
                        if !outln!("  {key:width$}  {value}") {
                            break;
                        }
                    }
                }
            }
            // A block of their own: the OTEL_* names are the standard ones, not MCP_SIDECAR_*.
            let traces = config.trace.summary();
            let width = traces.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            outln!("traces (OTEL_* variables as named; TRACES_FILE is MCP_SIDECAR_TRACES_FILE):");
            for (key, value) in traces {
                if !outln!("  {key:width$}  {value}") {
                    break;
                }
            }
            for pending in config.pending_files() {
                errln!(
                    "mcp-sidecar: note: {pending}; the sidecar serves and reports auth_required until it is written"
                );
            }

            exit::OK
        }
        Err(e) => {
            errln!("mcp-sidecar: {e}");
            exit::CONFIG
        }
    }
}
