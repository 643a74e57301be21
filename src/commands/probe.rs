//! `mcp-sidecar probe`: the container healthcheck. The image has no shell and no curl, so the
//! binary checks itself: exit 0 when `/ready` (or `/healthz` with `--live`) answers 200. With
//! `--upstream NAME` (repeatable) it asks `/ready/NAME` for each instead, and all must be 200.
//! With `--list` it prints `/upstreams` instead: the agent gate's way to learn what to register
//! where the agent's image has this binary but neither curl nor wget.

use std::path::PathBuf;
use std::time::Duration;

use crate::output::{errln, exit, outln};

pub fn run(
    config_file: Option<PathBuf>,
    live: bool,
    list: bool,
    url: Option<String>,
    timeout: Duration,
    upstreams: Vec<String>,
) -> u8 {
    let headers = super::client_headers(config_file.clone());
    let url = match super::target_url(
        "probe",
        config_file,
        url,
        if list {
            "/upstreams"
        } else if live {
            "/healthz"
        } else {
            "/ready"
        },
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
        if list {
            return print_list(&client, &url).await;
        }
        let mut code = exit::OK;
        for (_, url) in &urls {
            if probe(&client, url).await != exit::OK {
                code = exit::FAILURE;
            }
        }
        code
    })
}

/// The body of a 200 on stdout, as it came (the sidecar's list is names and paths, no secret);
/// any other answer is a failure that names its status, so a gate can tell an older sidecar's 404.
async fn print_list(client: &reqwest::Client, url: &str) -> u8 {
    let response = match client.get(url).send().await {
        Ok(response) => response,
        Err(e) => {
            errln!(
                "mcp-sidecar probe: {}",
                super::describe_unreachable(url, &e)
            );
            return exit::FAILURE;
        }
    };
    let status = response.status();
    if !status.is_success() {
        errln!("mcp-sidecar probe: {url} answered {}", status.as_u16());
        return exit::FAILURE;
    }
    match response.text().await {
        Ok(body) => {
            // A reader that went away (`| head -1`) ends the printing, not the success.
            for line in body.lines() {
                if !outln!("{line}") {
                    break;
                }
            }
            exit::OK
        }
        Err(e) => {
            errln!("mcp-sidecar probe: {url}: reading the answer: {e}");
            exit::FAILURE
        }
    }
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
