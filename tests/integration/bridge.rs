//! The legacy HTTP+SSE front at `PATH/sse`, as a 2024-11-05 client sees it: an event stream
//! whose `endpoint` event names where to POST, every answer a `message` event on that stream,
//! bridged to a Streamable HTTP upstream with the credential injected.

use std::time::Instant;

use serde_json::{Value, json};

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{DEADLINE, Sidecar, poll, read_until};

/// Longer than any cut, with the characters that encodings and scrubbers trip on.
fn canary() -> String {
    format!("bridge-canary+/=&{}", "q9+/=&".repeat(40))
}

/// A legacy client's open stream: the events read so far and the message URL it was given.
struct LegacyClient {
    client: reqwest::Client,
    stream: reqwest::Response,
    seen: String,
    post_url: String,
}

impl LegacyClient {
    async fn open(sidecar: &Sidecar, path: &str) -> Self {
        let client = reqwest::Client::new();
        let mut stream = client
            .get(sidecar.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        assert_eq!(stream.headers()["content-type"], "text/event-stream");
        let mut seen = String::new();
        assert!(
            read_until(&mut stream, &mut seen, "\n\n").await,
            "no first event: {seen:?}"
        );
        let endpoint = seen
            .strip_prefix("event: endpoint\ndata: ")
            .and_then(|rest| rest.split_once("\n\n"))
            .map(|(endpoint, _)| endpoint.to_string())
            .unwrap_or_else(|| panic!("the first event is not the endpoint: {seen:?}"));
        seen.clear();
        Self {
            client,
            stream,
            seen,
            post_url: sidecar.url(&endpoint),
        }
    }

    async fn post(&self, body: &str) -> reqwest::Response {
        self.client
            .post(&self.post_url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Reads events until the message answering `id` arrived; returns it.
    async fn answer(&mut self, id: u64) -> Value {
        let needle = format!("\"id\":{id}");
        assert!(
            read_until(&mut self.stream, &mut self.seen, &needle).await,
            "no answer to {id}: {:?}",
            self.seen
        );
        // Let the rest of that event arrive.
        assert!(read_until(&mut self.stream, &mut self.seen, "\n\n").await);
        let events: Vec<String> = self.seen.split("\n\n").map(str::to_string).collect();
        let event = events
            .iter()
            .find(|event| event.contains(&needle))
            .unwrap()
            .clone();
        let data = event
            .strip_prefix("event: message\ndata: ")
            .unwrap_or_else(|| panic!("not a message event: {event:?}"));
        assert!(!data.contains('\n'), "one data line per message: {event:?}");
        serde_json::from_str(data).unwrap()
    }
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"legacy","version":"1"}}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_sse_client_is_bridged_to_a_streamable_http_upstream() {
    let token = canary();
    let mock = MockUpstream::start(&token, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", &token)]).await;
    sidecar.wait_reason("ready").await;
    let mut legacy = LegacyClient::open(&sidecar, "/mcp/sse").await;
    assert!(
        legacy.post_url.contains("/mcp/sse/message?sessionId="),
        "{}",
        legacy.post_url
    );

    let accepted = legacy.post(INITIALIZE).await;
    assert_eq!(accepted.status(), 202, "the answer goes on the stream");
    let initialized = legacy.answer(1).await;
    assert!(
        initialized["result"]["protocolVersion"].is_string(),
        "{initialized}"
    );
    assert_eq!(
        legacy
            .post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await
            .status(),
        202
    );
    // Pretty-printed, as some clients send: still one message for the pump.
    let pretty = serde_json::to_string_pretty(&json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi\nthere"}}
    }))
    .unwrap();
    assert_eq!(legacy.post(&pretty).await.status(), 202);
    let echoed = legacy.answer(2).await;
    assert_eq!(echoed["result"]["content"][0]["text"], "hi\nthere");

    // An upstream that echoes the credential: the client gets it scrubbed.
    let echo_token = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text": token}}});
    assert_eq!(legacy.post(&echo_token.to_string()).await.status(), 202);
    let scrubbed = legacy.answer(3).await;
    assert!(!scrubbed.to_string().contains(&token), "{scrubbed}");
    assert!(!legacy.seen.contains(&token[..40]));

    // Every message went upstream with the credential and one session.
    let upstream: Vec<_> = mock
        .state
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter(|r| r.rpc_method().is_some_and(|m| m != "server/discover"))
        .collect();
    let calls: Vec<_> = upstream
        .iter()
        .filter(|r| r.rpc_method().as_deref() == Some("tools/call"))
        .collect();
    assert_eq!(calls.len(), 2);
    let session = calls[0].headers["mcp-session-id"].clone();
    for call in &calls {
        assert_eq!(
            call.authorization(),
            Some(format!("Bearer {token}").as_str())
        );
        assert_eq!(call.headers["mcp-session-id"], session);
    }

    // Refusals are answered on the POST itself.
    let not_json = legacy.post("{not json").await;
    assert_eq!(not_json.status(), 400);
    let unknown = legacy
        .client
        .post(sidecar.url("/mcp/sse/message?sessionId=nobody"))
        .header("content-type", "application/json")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"]["data"]["reason"],
        "session_not_found"
    );

    // The client goes away: the upstream session is ended, and the id is no longer taken.
    let post_url = legacy.post_url.clone();
    let client = legacy.client.clone();
    drop(legacy);
    let deleted =
        poll(
            || async {
                Some(mock.state.requests().into_iter().any(|r| {
                    r.method == "DELETE" && r.headers.get("mcp-session-id") == Some(&session)
                }))
            },
            |deleted| *deleted,
        )
        .await;
    assert_eq!(deleted, Some(true), "no DELETE for the bridged session");
    let late = client
        .post(&post_url)
        .header("content-type", "application/json")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 404);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_is_behind_the_same_guard_as_the_endpoint() {
    let client_token = canary();
    let mock = MockUpstream::start("t", Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", "t"),
        ("CLIENT_TOKEN", &client_token),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let refused = client.get(sidecar.url("/mcp/sse")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let rebinding = client
        .get(sidecar.url("/mcp/sse"))
        .bearer_auth(&client_token)
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), 403);
    let message = client
        .post(sidecar.url("/mcp/sse/message?sessionId=x"))
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        message.status(),
        403,
        "refused before saying whether the id is open"
    );
    let mut stream = client
        .get(sidecar.url("/mcp/sse"))
        .bearer_auth(&client_token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, "sessionId=").await);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_of_the_sse_transport_is_passed_through_at_path_sse() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let mut stream = client
        .get(sidecar.url("/mcp/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, "endpoint").await);
    assert!(read_until(&mut stream, &mut seen, "\n\n").await);
    assert!(
        seen.contains("/mcp/legacy/"),
        "the upstream's own endpoint, rewritten: {seen:?}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_a_bridged_stream_and_its_upstream_session() {
    let mock = MockUpstream::start("t", Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", "t"),
        ("SHUTDOWN_GRACE", "4s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let mut legacy = LegacyClient::open(&sidecar, "/mcp/sse").await;
    assert_eq!(legacy.post(INITIALIZE).await.status(), 202);
    legacy.answer(1).await;
    let started = Instant::now();
    sidecar.shutdown().await;
    assert!(started.elapsed() < DEADLINE);
    // The stream ends rather than hanging the client.
    let rest = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(_)) = legacy.stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the bridged stream outlived the sidecar");
    assert!(
        mock.state.requests().iter().any(|r| r.method == "DELETE"),
        "the upstream session was not ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_one_upstream_the_root_sse_path_that_inspector_makes_is_its_sse_front() {
    let mock = MockUpstream::start("t", Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let mut legacy = LegacyClient::open(&sidecar, "/sse").await;
    assert!(legacy.post_url.contains("/mcp/sse/message?sessionId="));
    assert_eq!(legacy.post(INITIALIZE).await.status(), 202);
    assert!(legacy.answer(1).await["result"].is_object());
    sidecar.shutdown().await;

    // With several, the root names none of them.
    let other = MockUpstream::start("u", Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAMS__ONE__UPSTREAM_URL", &mock.url()),
        ("UPSTREAMS__ONE__TOKEN", "t"),
        ("UPSTREAMS__TWO__UPSTREAM_URL", &other.url()),
        ("UPSTREAMS__TWO__TOKEN", "u"),
    ])
    .await;
    let client = reqwest::Client::new();
    let root = client.get(sidecar.url("/sse")).send().await.unwrap();
    assert_eq!(root.status(), 404);
    let mut named = client
        .get(sidecar.url("/mcp/two/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 200);
    let mut seen = String::new();
    assert!(read_until(&mut named, &mut seen, "/mcp/two/sse/message?sessionId=").await);
    sidecar.shutdown().await;
}
