//! `mcp-sidecar probe`: the container healthcheck. The image has no shell and no curl, so the
//! binary checks itself: exit 0 when `/ready` (or `/healthz` with `--live`) answers 200.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::exit;

pub fn run(config_file: Option<PathBuf>, live: bool, url: Option<String>, timeout: Duration) -> u8 {
    let headers = super::client_headers(config_file.clone());
    let url = match super::target_url(
        "probe",
        config_file,
        url,
        if live { "/healthz" } else { "/ready" },
    ) {
        Ok(url) => url,
        Err(code) => return code,
    };
    let runtime = match super::client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-sidecar probe: cannot start: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        let client = match reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mcp-sidecar probe: {e}");
                return exit::FAILURE;
            }
        };
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => exit::OK,
            Ok(response) => {
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let reason = body.get("reason").and_then(|v| v.as_str()).unwrap_or("");
                let detail = body.get("detail").and_then(|v| v.as_str()).unwrap_or("");
                eprintln!("mcp-sidecar probe: {url} answered {status}: {reason}: {detail}");
                exit::FAILURE
            }
            Err(e) => {
                eprintln!(
                    "mcp-sidecar probe: {url}: {}",
                    crate::upstream::describe_reqwest_error(&e)
                );
                exit::FAILURE
            }
        }
    })
}
