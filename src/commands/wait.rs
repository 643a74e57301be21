//! `mcp-sidecar wait`: hold an agent's start until the sidecar is ready.
//!
//! Polls `/ready`, prints each change of reason (and a device-code prompt when a login is
//! pending) to stderr, a progress line every 15 s, and then execs the given command so the agent
//! replaces this process (signals reach it directly, no zombie parent).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::output::{errln, exit};

const PROGRESS_EVERY: Duration = Duration::from_secs(15);

type Observation = super::Answer;

pub fn run(
    config_file: Option<PathBuf>,
    url: Option<String>,
    timeout: Duration,
    interval: Duration,
    command: Vec<String>,
) -> u8 {
    let headers = super::client_headers(config_file.clone());
    let url = match super::target_url("wait", config_file, url, "/ready") {
        Ok(url) => url,
        Err(code) => return code,
    };
    let runtime = match super::client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("mcp-sidecar wait: cannot start: {e}");
            return exit::FAILURE;
        }
    };
    let ready = runtime.block_on(wait_ready(&url, timeout, interval, headers));
    drop(runtime);
    if !ready {
        return exit::FAILURE;
    }
    if command.is_empty() {
        return exit::OK;
    }
    exec(&command)
}

async fn wait_ready(
    url: &str,
    timeout: Duration,
    interval: Duration,
    headers: reqwest::header::HeaderMap,
) -> bool {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5).min(timeout))
        .default_headers(headers)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            errln!("mcp-sidecar wait: {e}");
            return false;
        }
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last: Option<Observation> = None;
    let mut last_print = Instant::now();
    errln!(
        "mcp-sidecar wait: waiting up to {} for {url}",
        humantime::format_duration(timeout)
    );
    loop {
        let (ready, observation) = ask(&client, url).await;
        if ready {
            errln!(
                "mcp-sidecar wait: ready after {:.1}s: {}",
                started.elapsed().as_secs_f32(),
                observation.detail
            );
            return true;
        }
        if last.as_ref() != Some(&observation) {
            errln!(
                "mcp-sidecar wait: not ready: {}: {}",
                observation.reason,
                observation.detail
            );
            if let Some(login) = &observation.login {
                print_login(login);
            }
            last_print = Instant::now();
            last = Some(observation.clone());
        } else if last_print.elapsed() >= PROGRESS_EVERY {
            errln!(
                "mcp-sidecar wait: still waiting after {}s: {}",
                started.elapsed().as_secs(),
                observation.reason
            );
            last_print = Instant::now();
        }
        let now = Instant::now();
        if now >= deadline {
            let last = last.unwrap_or(observation);
            errln!(
                "mcp-sidecar wait: gave up after {}: last reason: {}: {}",
                humantime::format_duration(timeout),
                last.reason,
                last.detail
            );
            return false;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

async fn ask(client: &reqwest::Client, url: &str) -> (bool, Observation) {
    match client.get(url).send().await {
        Ok(response) => {
            let answer = super::read_answer(url, response).await;
            (answer.ready, answer)
        }
        Err(e) => (
            false,
            Observation {
                ready: false,
                reason: "sidecar_unreachable".into(),
                detail: super::describe_unreachable(url, &e),
                login: None,
            },
        ),
    }
}

fn print_login(login: &Value) {
    let field = |k: &str| login.get(k).and_then(Value::as_str);
    let uri = field("verification_uri").unwrap_or("?");
    let expires = field("expires_at")
        .map(|e| format!(" (expires {e})"))
        .unwrap_or_default();
    match field("user_code") {
        Some(code) => {
            errln!("mcp-sidecar wait: sign in: open {uri} and enter the code {code}{expires}")
        }
        None => errln!("mcp-sidecar wait: sign in: open {uri} in a browser{expires}"),
    }
    if let Some(complete) = field("verification_uri_complete") {
        errln!("mcp-sidecar wait: or open {complete} (the code is filled in)");
    }
}

fn exec(command: &[String]) -> u8 {
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    errln!("mcp-sidecar wait: cannot run {}: {error}", command[0]);
    if error.kind() == std::io::ErrorKind::NotFound {
        exit::NOT_FOUND
    } else {
        exit::CANNOT_EXEC
    }
}
