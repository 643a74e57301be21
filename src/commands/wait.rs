//! `mcp-sidecar wait`: hold an agent's start until the sidecar is ready.
//!
//! Polls `/ready`, prints each change of reason (and a device-code prompt when a login is
//! pending) to stderr, a progress line every 15 s, and then execs the given command so the agent
//! replaces this process (signals reach it directly, no zombie parent).
//!
//! With `--upstream NAME` (repeatable) it polls `/ready/NAME` for each and is ready once every
//! one named is; each line about one upstream starts with its name.

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
    upstreams: Vec<String>,
    command: Vec<String>,
) -> u8 {
    let headers = super::client_headers(config_file.clone());
    let url = match super::target_url("wait", config_file, url, "/ready") {
        Ok(url) => url,
        Err(code) => return code,
    };
    if let Err(code) = super::check_upstream_names("wait", &upstreams) {
        return code;
    }
    let targets = super::upstream_urls(&url, &upstreams);
    let runtime = match super::client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("mcp-sidecar wait: cannot start: {e}");
            return exit::FAILURE;
        }
    };
    let ready = runtime.block_on(wait_ready(&targets, timeout, interval, headers));
    drop(runtime);
    if !ready {
        return exit::FAILURE;
    }
    if command.is_empty() {
        return exit::OK;
    }
    exec(&command)
}

/// One thing waited for: `/ready`, or one upstream's `/ready/NAME`.
struct Target<'a> {
    /// `NAME: ` in front of every line about it; empty for `/ready` itself.
    prefix: String,
    url: &'a str,
    last: Option<Observation>,
    ready: bool,
}

async fn wait_ready(
    targets: &[(Option<String>, String)],
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
    let mut targets: Vec<Target<'_>> = targets
        .iter()
        .map(|(name, url)| Target {
            prefix: name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default(),
            url,
            last: None,
            ready: false,
        })
        .collect();
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_print = Instant::now();
    let urls: Vec<&str> = targets.iter().map(|t| t.url).collect();
    errln!(
        "mcp-sidecar wait: waiting up to {} for {}",
        humantime::format_duration(timeout),
        urls.join(", ")
    );
    loop {
        let mut changed = false;
        for target in targets.iter_mut() {
            let (ready, observation) = ask(&client, target.url).await;
            let prefix = &target.prefix;
            if ready {
                // `/ready` alone prints only the final "ready after" line, as it always has.
                if !target.ready && !prefix.is_empty() {
                    errln!("mcp-sidecar wait: {prefix}ready: {}", observation.detail);
                }
                target.ready = true;
                target.last = Some(observation);
                continue;
            }
            target.ready = false;
            if target.last.as_ref() != Some(&observation) {
                errln!(
                    "mcp-sidecar wait: {prefix}not ready: {}: {}",
                    observation.reason,
                    observation.detail
                );
                if let Some(login) = &observation.login {
                    print_login(prefix, login);
                }
                changed = true;
                target.last = Some(observation);
            }
        }
        if targets.iter().all(|t| t.ready) {
            let detail = match targets.as_slice() {
                [only] if only.prefix.is_empty() => only
                    .last
                    .as_ref()
                    .map(|o| o.detail.clone())
                    .unwrap_or_default(),
                _ => "every upstream named is ready".to_string(),
            };
            errln!(
                "mcp-sidecar wait: ready after {:.1}s: {detail}",
                started.elapsed().as_secs_f32(),
            );
            return true;
        }
        if changed {
            last_print = Instant::now();
        } else if last_print.elapsed() >= PROGRESS_EVERY {
            for target in targets.iter().filter(|t| !t.ready) {
                errln!(
                    "mcp-sidecar wait: {}still waiting after {}s: {}",
                    target.prefix,
                    started.elapsed().as_secs(),
                    target.last.as_ref().map_or("", |o| o.reason.as_str())
                );
            }
            last_print = Instant::now();
        }
        let now = Instant::now();
        if now >= deadline {
            for target in targets.iter().filter(|t| !t.ready) {
                let (reason, detail) = target
                    .last
                    .as_ref()
                    .map_or(("", ""), |o| (o.reason.as_str(), o.detail.as_str()));
                errln!(
                    "mcp-sidecar wait: {}gave up after {}: last reason: {reason}: {detail}",
                    target.prefix,
                    humantime::format_duration(timeout),
                );
            }
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

fn print_login(prefix: &str, login: &Value) {
    let field = |k: &str| login.get(k).and_then(Value::as_str);
    let uri = field("verification_uri").unwrap_or("?");
    let expires = field("expires_at")
        .map(|e| format!(" (expires {e})"))
        .unwrap_or_default();
    match field("user_code") {
        Some(code) => {
            errln!(
                "mcp-sidecar wait: {prefix}sign in: open {uri} and enter the code {code}{expires}"
            )
        }
        None => errln!("mcp-sidecar wait: {prefix}sign in: open {uri} in a browser{expires}"),
    }
    if let Some(complete) = field("verification_uri_complete") {
        errln!("mcp-sidecar wait: {prefix}or open {complete} (the code is filled in)");
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
