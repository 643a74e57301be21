//! Traces (issue 16): the sidecar as a binary exporting OTLP/HTTP protobuf to a receiver here
//! (decoded with the official `opentelemetry-proto` definitions) and to a JSONL file.

#![cfg(feature = "otel")]

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{call, mcp_post, poll};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Default)]
struct Received {
    bodies: Vec<Bytes>,
    api_keys: Vec<String>,
}

/// An OTLP/HTTP traces receiver on 127.0.0.1:0; the server stops with the runtime.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let mut state = state.lock().unwrap();
                if let Some(key) = headers.get("x-otlp-key").and_then(|v| v.to_str().ok()) {
                    state.api_keys.push(key.to_string());
                }
                state.bodies.push(body);
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn spans(received: &Mutex<Received>) -> Vec<Span> {
    let state = received.lock().unwrap();
    state
        .bodies
        .iter()
        .flat_map(|body| {
            ExportTraceServiceRequest::decode(body.as_ref())
                .expect("the export is OTLP protobuf")
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxied_call_is_a_span_under_the_clients_trace_and_its_context_reaches_the_upstream() {
    let token = format!("tok-{}", "a+b/c=d&e".repeat(30));
    let api_key = format!("key-{}", "k+/=&".repeat(50));
    let mock = MockUpstream::start(&token, Mode::Legacy);
    let (collector, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Percent-encoded as OTEL_EXPORTER_OTLP_HEADERS values are.
    let encoded_key = api_key
        .replace('%', "%25")
        .replace(',', "%2C")
        .replace('=', "%3D");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
        .arg("serve")
        .env_clear()
        .env("MCP_SIDECAR_UPSTREAM_URL", mock.url())
        .env("MCP_SIDECAR_TOKEN", &token)
        .env("MCP_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("MCP_SIDECAR_STATE_DIR", dir.path())
        .env("MCP_SIDECAR_LOG_FORMAT", "json")
        .env("MCP_SIDECAR_LOG", "debug")
        .env("MCP_SIDECAR_TRACES_FILE", &file)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-otlp-key={encoded_key}"),
        )
        .env("OTEL_SERVICE_NAME", "sidecar-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = poll(
        || async {
            let r = client.get(format!("{base}/ready")).send().await.ok()?;
            Some(r.status().as_u16())
        },
        |status| *status == 200,
    )
    .await;
    assert_eq!(ready, Some(200), "the sidecar turns ready");

    let response = mcp_post(
        &client,
        &format!("{base}/mcp"),
        call(5, "echo", json!({"text": "hi"})),
    )
    .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
    .header("tracestate", "client=1")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.text().await.unwrap();

    // The upstream sees the client's trace, under the sidecar's span: header and `_meta`.
    let forwarded = mock
        .state
        .client_requests()
        .into_iter()
        .find(|r| r.rpc_method().as_deref() == Some("tools/call"))
        .expect("the call reached the upstream");
    let traceparent = forwarded.headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], CLIENT_TRACE, "{traceparent}");
    assert_ne!(parts[2], CLIENT_SPAN, "{traceparent}");
    let sidecar_span = parts[2].to_string();
    assert_eq!(forwarded.headers["tracestate"], "client=1");
    let body: Value = serde_json::from_slice(&forwarded.body).unwrap();
    assert_eq!(body["params"]["_meta"]["traceparent"], traceparent.as_str());
    assert_eq!(body["params"]["arguments"]["text"], "hi");

    let found = poll(
        || async {
            spans(&received)
                .into_iter()
                .find(|s| s.name == "tools/call echo")
        },
        |_| true,
    )
    .await
    .expect("the call's span was exported over OTLP");
    assert_eq!(hex(&found.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&found.parent_span_id), CLIENT_SPAN);
    assert_eq!(hex(&found.span_id), sidecar_span);
    assert_eq!(
        attribute(&found, "mcp.method.name").as_deref(),
        Some("tools/call")
    );
    assert_eq!(
        attribute(&found, "gen_ai.tool.name").as_deref(),
        Some("echo")
    );
    assert_eq!(
        attribute(&found, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attribute(&found, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&found, "mcp_sidecar.outcome").as_deref(),
        Some("forwarded")
    );
    assert_eq!(
        attribute(&found, "http.response.body.size"),
        Some(answer.len().to_string())
    );
    assert_eq!(
        attribute(&found, "server.address"),
        Some(mock.addr.to_string())
    );
    let handshake = poll(
        || async {
            spans(&received)
                .into_iter()
                .find(|s| s.name == "mcp handshake")
        },
        |_| true,
    )
    .await
    .expect("the readiness handshake is a span");
    assert_eq!(
        attribute(&handshake, "mcp_sidecar.outcome").as_deref(),
        Some("ready")
    );
    {
        let state = received.lock().unwrap();
        assert!(
            state.api_keys.iter().all(|k| *k == api_key) && !state.api_keys.is_empty(),
            "OTEL_EXPORTER_OTLP_HEADERS reach the collector"
        );
        for body in &state.bodies {
            for canary in [&token, &api_key] {
                assert!(
                    memchr::memmem::find(body, canary.as_bytes()).is_none()
                        && memchr::memmem::find(body, &canary.as_bytes()[..40]).is_none(),
                    "a secret in an export"
                );
            }
        }
    }

    // The JSONL file: the same span, owner-only.
    let line = poll(
        || async {
            let text = std::fs::read_to_string(&file).ok()?;
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|s| s["name"] == "tools/call echo")
        },
        |_| true,
    )
    .await
    .expect("the span is written to TRACES_FILE");
    assert_eq!(line["trace_id"], CLIENT_TRACE);
    assert_eq!(line["parent_span_id"], CLIENT_SPAN);
    assert_eq!(line["resource"]["service.name"], "sidecar-under-test");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&token[..40]) && !text.contains(&api_key[..40]));

    child.start_kill().unwrap();
    let _ = child.wait().await;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(
        !logs.contains(&token[..40]) && !logs.contains(&api_key[..40]),
        "{logs}"
    );
    // The request's log line names its trace and span.
    let proxied = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "proxied" && l["rpc"] == "tools/call")
        .unwrap_or_else(|| panic!("no proxied line in {logs}"));
    assert_eq!(proxied["trace_id"], CLIENT_TRACE, "{proxied}");
    assert_eq!(proxied["span_id"], sidecar_span.as_str(), "{proxied}");
}

#[test]
fn check_config_shows_the_trace_settings_with_header_values_redacted_and_refuses_bad_ones() {
    let key = format!("otlp-{}", "k+/=&".repeat(50)).replace('=', "%3D");
    let run = |extra: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
            .arg("check-config")
            .env_clear()
            .env("MCP_SIDECAR_UPSTREAM_URL", "https://mcp.example.com/mcp")
            .env("MCP_SIDECAR_TOKEN", "t")
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    };
    let output = run(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", &format!("x-api-key={key}")),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("x-api-key: <redacted>"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:4318/v1/traces"),
        "{stdout}"
    );
    assert!(!stdout.contains("otlp-k+"), "{stdout}");

    let output = run(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", &key),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT:"), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_HEADERS:"), "{stderr}");
    assert!(!stderr.contains("otlp-k+"), "{stderr}");
}
