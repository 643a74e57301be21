//! Configuration from a TOML file (`--config`): any file must give a configuration or problems
//! that name their keys, never a panic. Keys that name a file or directory get a fixed harmless
//! path (see `fixed_file`); the environment adds nothing.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::config::{self, Sources};
use mcp_sidecar_fuzz::{fixed_file, is_path_key};

fn defuse(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        if is_path_key(key) {
            *value = toml::Value::String(fixed_file().to_string());
        } else if let toml::Value::Table(inner) = value {
            defuse(inner);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Not UTF-8 or not TOML: the sidecar's own reader reports it; hand over the bytes as they are.
    let bytes = match std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
    {
        Some(mut table) => {
            defuse(&mut table);
            match toml::to_string(&table) {
                Ok(text) => text.into_bytes(),
                Err(_) => return,
            }
        }
        None => data.to_vec(),
    };
    let path = PathBuf::from(fixed_file()).with_file_name("config.toml");
    std::fs::write(&path, &bytes).expect("the fuzz temp dir is writable");
    let sources = Sources {
        file: Some(path),
        env: HashMap::new(),
    };
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
});
