//! Configuration from the environment (`config::load`): any set of `MCP_SIDECAR_*` variables
//! must give a configuration or a list of problems, never a panic; `check-config`'s summary of a
//! valid one must render.
//!
//! Input: lines `KEY=VALUE` (the `MCP_SIDECAR_` prefix is added when missing). Keys that name a
//! file or directory get a fixed harmless path (see `fixed_file`).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::config::{self, Sources};
use mcp_sidecar_fuzz::{fixed_file, is_path_key};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut env = HashMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = if key.starts_with("MCP_SIDECAR_") {
            key.to_string()
        } else {
            format!("MCP_SIDECAR_{key}")
        };
        let value = if is_path_key(&key) {
            fixed_file().to_string()
        } else {
            value.to_string()
        };
        env.insert(key, value);
    }
    let sources = Sources { file: None, env };
    match config::load(&sources) {
        Ok(config) => {
            let _ = config.summary();
            for upstream in &config.upstreams {
                let _ = upstream.summary();
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            let _ = e.to_string();
        }
    }
    let _ = config::listen_address(&sources);
});
