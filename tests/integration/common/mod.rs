//! Test harness: an in-process sidecar on port 0, the mock upstream, and polling helpers.
//! No test sleeps for a fixed time; every wait polls against a deadline.

pub mod mock_idp;
pub mod mock_upstream;
#[cfg(feature = "fleet")]
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mcp_sidecar::config::{self, Sources};
use serde_json::{Value, json};

pub const DEADLINE: Duration = Duration::from_secs(15);

/// A sidecar served in this process until dropped.
pub struct Sidecar {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    /// Starts a sidecar configured by `env` (keys without the `MCP_SIDECAR_` prefix).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (format!("{}{k}", config::ENV_PREFIX), v.to_string()))
            .collect();
        let config =
            config::load(&Sources { file: None, env }).expect("test configuration is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mcp_sidecar::server::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("sidecar serves");
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Polls `/ready` until its reason is `reason`; returns the body.
    pub async fn wait_reason(&self, reason: &str) -> Value {
        let client = reqwest::Client::new();
        let url = self.url("/ready");
        let mut last = Value::Null;
        let found = poll(
            || {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let response = client.get(&url).send().await.ok()?;
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.ok()?;
                    Some((status, body))
                }
            },
            |(status, body)| {
                last = body.clone();
                body["reason"] == reason && (*status == 200) == (reason == "ready")
            },
        )
        .await;
        found
            .unwrap_or_else(|| panic!("/ready never reported {reason}; last: {last}"))
            .1
    }

    /// Stops the sidecar (graceful shutdown) and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("sidecar stops within the deadline")
                .expect("sidecar task ends cleanly");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Calls `probe` until `accept` holds for its result or the deadline passes.
pub async fn poll<T, F, Fut>(mut probe: F, mut accept: impl FnMut(&T) -> bool) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Some(value) = probe().await
            && accept(&value)
        {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// A JSON-RPC `tools/call` body.
pub fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}}).to_string()
}

/// A POST to the sidecar as an MCP client sends it, marked for the mock with `x-test`.
pub fn mcp_post(client: &reqwest::Client, url: &str, body: String) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-test", "1")
        .body(body)
}

/// Reads from a streaming response until `needle` has arrived, with a deadline.
pub async fn read_until(response: &mut reqwest::Response, seen: &mut String, needle: &str) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while !seen.contains(needle) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => return false,
        }
    }
    true
}
