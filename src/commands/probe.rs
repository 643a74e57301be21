//! `mcp-sidecar probe`: the container healthcheck. The image has no shell and no curl, so the
//! binary checks itself: exit 0 when `/ready` (or `/healthz` with `--live`) answers 200. With
//! `--upstream NAME` (repeatable) it asks `/ready/NAME` for each instead, and all must be 200.

use std::path::PathBuf;
use std::time::Duration;

use crate::output::{errln, exit};

pub fn run(
    config_file: Option<PathBuf>,
    live: bool,
    url: Option<String>,
    timeout: Duration,
    upstreams: Vec<String>,
) -> u8 {
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
    if let Err(code) = super::check_upstream_names("probe", &upstreams) {
        return code;
    }
    let urls = super::upstream_urls(&url, &upstreams);
    let runtime = match super::client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("mcp-sidecar probe: cannot start: {e}");
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
                errln!("mcp-sidecar probe: {e}");
                return exit::FAILURE;
            }
        };
        let mut code = exit::OK;
        for (_, url) in &urls {
            if probe(&client, url).await != exit::OK {
                code = exit::FAILURE;
            }
        }
        code
    })
}

async fn probe(client: &reqwest::Client, url: &str) -> u8 {
    {
        match client.get(url).send().await {
            // Any success is healthy, whatever the body: orchestrators ask no more.
            Ok(response) if response.status().is_success() => exit::OK,
            Ok(response) => {
                let answer = super::read_answer(url, response).await;
                if answer.reason == "not_a_sidecar" {
                    errln!("mcp-sidecar probe: {}", answer.detail);
                } else {
                    errln!(
                        "mcp-sidecar probe: {url}: not ready: {}: {}",
                        answer.reason,
                        answer.detail
                    );
                }
                exit::FAILURE
            }
            Err(e) => {
                errln!(
                    "mcp-sidecar probe: {}",
                    super::describe_unreachable(url, &e)
                );
                exit::FAILURE
            }
        }
    }
}
