//! The tool policy (`TOOLS_ALLOW` / `TOOLS_DENY`) over HTTP, against the mock upstream, which
//! records every request: a refused call never reaches it, `tools/list` answers (JSON and SSE)
//! lose the refused tools, and what the policy does not change passes byte-identical.

use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{Sidecar, call, mcp_post};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-sidecar");
const TOKEN: &str = "tools-token+/=&-0123456789";

fn list(id: u64, cursor: Option<&str>) -> String {
    let params = match cursor {
        Some(cursor) => json!({"cursor": cursor}),
        None => json!({}),
    };
    json!({"jsonrpc":"2.0","id":id,"method":"tools/list","params":params}).to_string()
}

/// Status, content type and body bytes of one POST.
async fn post(sidecar: &Sidecar, body: String) -> (u16, String, Vec<u8>) {
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// The tool names of a JSON or SSE `tools/list` answer, with its `nextCursor`.
fn names(body: &[u8]) -> (Vec<String>, Option<String>) {
    let text = String::from_utf8_lossy(body);
    let message: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        // SSE: the event whose data holds the result.
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|m| m.get("result").is_some())
            .unwrap_or_else(|| panic!("no list in {text}"))
    });
    let tools = message["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {message}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    let cursor = message["result"]["nextCursor"].as_str().map(str::to_string);
    (tools, cursor)
}

fn calls_of(mock: &MockUpstream, tool: &str) -> usize {
    mock.state
        .client_requests()
        .iter()
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .is_ok_and(|b| b["method"] == "tools/call" && b["params"]["name"] == tool)
        })
        .count()
}

#[tokio::test]
async fn a_denied_tool_is_answered_by_the_sidecar_and_never_reaches_the_upstream() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("TOOLS_DENY", "delete_*, admin/*"),
    ])
    .await;

    let (status, content_type, body) =
        post(&sidecar, call(41, "delete_repo", json!({"repo": "x"}))).await;
    assert_eq!(status, 200, "answered as a refused tool call is");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["id"], 41, "{reply}");
    assert_eq!(reply["error"]["code"], -32004, "{reply}");
    assert_eq!(reply["error"]["data"]["reason"], "tool_refused", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"delete_repo\"") && message.contains("MCP_SIDECAR_TOOLS_DENY"),
        "names the tool, the policy and its key: {message}"
    );

    // Globs: `admin/*` too; an allowed tool goes through.
    let (_, _, body) = post(&sidecar, call(42, "admin/reset", json!({}))).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["data"]["reason"],
        "tool_refused"
    );
    let (status, _, body) = post(&sidecar, call(43, "echo", json!({"text": "hi"}))).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["result"]["content"][0]["text"], "hi", "{reply}");

    assert_eq!(
        calls_of(&mock, "delete_repo"),
        0,
        "the denied call reached the upstream"
    );
    assert_eq!(calls_of(&mock, "admin/reset"), 0);
    assert_eq!(calls_of(&mock, "echo"), 1);

    let metrics = reqwest::get(sidecar.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("outcome=\"tool_refused\"") && l.ends_with(" 2")),
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_json_tools_list_loses_refused_tools_and_keeps_its_cursor() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    // Allow and deny together: allowed and not denied.
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("TOOLS_ALLOW", "echo read_* admin/* gat?d"),
        ("TOOLS_DENY", "admin/*"),
    ])
    .await;
    let (status, _, body) = post(&sidecar, list(1, None)).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&body),
        (
            vec!["echo".to_string(), "read_file".to_string()],
            Some("page-2".to_string())
        )
    );
    let (_, _, body) = post(&sidecar, list(2, Some("page-2"))).await;
    assert_eq!(
        names(&body),
        (vec!["read_dir".to_string(), "gated".to_string()], None)
    );
    // Not in TOOLS_ALLOW: refused as a call too, naming that key.
    let (_, _, body) = post(&sidecar, call(3, "deploy_prod", json!({}))).await;
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("matches nothing in MCP_SIDECAR_TOOLS_ALLOW"),
        "{reply}"
    );
    assert_eq!(calls_of(&mock, "deploy_prod"), 0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_sse_tools_list_is_filtered_event_by_event() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    mock.state.tools_list_sse.store(true, Ordering::SeqCst);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("TOOLS_DENY", "delete_repo admin/*"),
    ])
    .await;
    let (status, content_type, body) = post(&sidecar, list(5, None)).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert_eq!(
        names(&body),
        (
            vec!["echo".to_string(), "read_file".to_string()],
            Some("page-2".to_string())
        )
    );
    let text = String::from_utf8(body).unwrap();
    // The events before the answer, and the answer's other fields, as the upstream sent them.
    assert!(
        text.starts_with(": warming up\n\nevent: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\""),
        "{text}"
    );
    assert!(
        text.contains("event: message\r\nid: 8\r\ndata: {"),
        "{text}"
    );
    assert!(!text.contains("delete_repo"), "{text}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn what_the_policy_does_not_change_passes_byte_identical() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let plain = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let policed = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("TOOLS_DENY", "no_such_tool"),
    ])
    .await;
    for sse in [false, true] {
        mock.state.tools_list_sse.store(sse, Ordering::SeqCst);
        for body in [
            list(9, None),
            list(9, Some("page-2")),
            call(9, "echo", json!({"text": "same"})),
        ] {
            let expected = post(&plain, body.clone()).await;
            let got = post(&policed, body.clone()).await;
            assert_eq!(
                String::from_utf8_lossy(&got.2),
                String::from_utf8_lossy(&expected.2),
                "{body} (sse: {sse})"
            );
            assert_eq!(got.0, expected.0);
        }
    }
    plain.shutdown().await;
    policed.shutdown().await;
}

fn check_config(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(format!("MCP_SIDECAR_{k}"), v);
    }
    cmd.output().expect("run the binary")
}

#[test]
fn bad_patterns_are_configuration_errors_naming_the_key() {
    let output = check_config(&[
        ("UPSTREAM_URL", "https://mcp.example.com/mcp"),
        ("TOOLS_ALLOW", "echo,,read_*"),
        ("TOOLS_DENY", "drop;table"),
    ]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MCP_SIDECAR_TOOLS_ALLOW: holds an empty pattern"),
        "{stderr}"
    );
    assert!(
        stderr.contains("MCP_SIDECAR_TOOLS_DENY: pattern \"drop;table\" holds ';'"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.toml");
    std::fs::write(
        &file,
        "upstream_url = \"https://mcp.example.com/mcp\"\ntools_allow = [\"echo\", \"\"]\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    let output = cmd
        .args(["check-config", "--config", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "tools_allow in {}: holds an empty pattern",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_the_policy() {
    let output = check_config(&[
        ("UPSTREAM_URL", "https://mcp.example.com/mcp"),
        ("TOOLS_ALLOW", "echo read_*"),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let row = |key: &str| {
        stdout.lines().find_map(|l| {
            l.trim_start()
                .strip_prefix(key)
                .map(str::trim)
                .map(str::to_string)
        })
    };
    assert_eq!(
        row("TOOLS_ALLOW").as_deref(),
        Some("echo,read_*"),
        "{stdout}"
    );
    assert_eq!(row("TOOLS_DENY").as_deref(), Some("(none)"), "{stdout}");
}
