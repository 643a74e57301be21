//! `mcp-sidecar check-config`: validate, print the resolved settings with secrets redacted.

use std::path::PathBuf;

use crate::cli::exit;
use crate::config::{self, Sources};

pub fn run(config_file: Option<PathBuf>) -> u8 {
    match config::load(&Sources::from_process(config_file)) {
        Ok(config) => {
            let rows = config.summary();
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            println!(
                "configuration is valid (keys are MCP_SIDECAR_* variables or TOML keys in lower case):"
            );
            for (key, value) in rows {
                println!("  {key:width$}  {value}");
            }

            exit::OK
        }
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            exit::CONFIG
        }
    }
}
