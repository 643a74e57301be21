//! The legacy HTTP+SSE front at `PATH/sse`, as a 2024-11-05 client sees it: an event stream
//! whose `endpoint` event names where to POST, every answer a `message` event on that stream,
//! bridged to a Streamable HTTP upstream with the credential injected.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{DEADLINE, Sidecar, mcp_post, poll, read_until};

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

/// The other direction: a Streamable HTTP client in front of an HTTP+SSE upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamable_http_client_is_bridged_to_an_sse_transport_upstream() {
    let token = canary();
    let mock = MockUpstream::start(&token, Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", &token)]).await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let post = |body: String, session: Option<&str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let response = post(initialize.to_string(), None).await.unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["result"]["serverInfo"]["name"], "mock-sse-transport",
        "{body}"
    );

    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    let response = post(initialized.to_string(), Some(&session)).await.unwrap();
    assert_eq!(response.status(), 202);
    let call = json!({"jsonrpc":"2.0","id":"c-2","method":"tools/call","params":{"name":"echo","arguments":{"text":"bridged"}}});
    let response = post(call.to_string(), Some(&session)).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "c-2");
    assert_eq!(body["result"]["content"][0]["text"], "bridged");

    // An upstream that echoes the credential: scrubbed on the way back.
    let leak = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":token}}});
    let text = post(leak.to_string(), Some(&session))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(&token[..40]), "{text}");

    // The messages went to the announced endpoint with the credential; the stream was opened
    // with it too.
    let posts: Vec<_> = mock
        .state
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.query
                    .as_deref()
                    .is_some_and(|q| q.starts_with("sessionId="))
        })
        .collect();
    assert!(posts.len() >= 4, "{}", posts.len());
    for post in &posts {
        assert_eq!(
            post.authorization(),
            Some(format!("Bearer {token}").as_str())
        );
    }

    // DELETE ends it; the id is then unknown, and the client is told to initialize again.
    let deleted = client
        .delete(&url)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let response = post(call.to_string(), Some(&session)).await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], "session_not_found");
    assert_eq!(body["id"], "c-2");
    sidecar.shutdown().await;
}

/// A Streamable HTTP client that goes away without `DELETE` leaves an upstream stream open; a
/// session idle past `SESSION_IDLE_TIMEOUT` is ended when the next one is made.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_bridged_session_is_ended_by_the_next_initialize() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", "t"),
        ("SESSION_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
    .to_string();
    let open = || async {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(initialize.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let first = open().await;
    let ping = json!({"jsonrpc":"2.0","id":2,"method":"ping"}).to_string();
    let status = |session: String| {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("mcp-session-id", session)
            .body(ping.clone());
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(first.clone()).await, 200);
    let last_used = Instant::now();
    // Any message would keep it alive: wait, untouched, past the timeout.
    let idle = poll(
        || async { (last_used.elapsed() > Duration::from_millis(1100)).then_some(()) },
        |_| true,
    )
    .await;
    assert!(idle.is_some());
    // The next session ends it.
    let _second = open().await;
    assert_eq!(status(first.clone()).await, 404);
    sidecar.shutdown().await;
}

/// A Streamable HTTP client's session bridged to the mock's HTTP+SSE transport.
struct Bridged {
    client: reqwest::Client,
    url: String,
    session: String,
}

impl Bridged {
    async fn open(sidecar: &Sidecar) -> Self {
        let client = reqwest::Client::new();
        let url = sidecar.url("/mcp");
        let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
        let response = mcp_post(&client, &url, initialize.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        Self {
            client,
            url,
            session,
        }
    }

    async fn post(&self, body: Value) -> reqwest::Response {
        mcp_post(&self.client, &self.url, body.to_string())
            .header("mcp-session-id", &self.session)
            .send()
            .await
            .unwrap()
    }
}

/// Whether a request whose body holds `needle` reaches the upstream before the poll gives up.
async fn reached_upstream(mock: &MockUpstream, needle: &[u8]) -> bool {
    let seen = || async {
        mock.state
            .requests()
            .iter()
            .any(|r| r.body.windows(needle.len()).any(|w| w == needle))
            .then_some(())
    };
    poll(seen, |_| true).await.is_some()
}

fn call(id: Value, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":arguments}})
}

/// The answer to `tools/list` arrives on the upstream's stream, not in the POST's reply: the
/// tool policy filters it there too, in a batch as well; a batch gets its answers as an array.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridged_session_filters_tools_list_by_the_policy_and_answers_batches() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", "t"),
        ("TOOLS_DENY", "delete_*"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let bridged = Bridged::open(&sidecar).await;
    let names = |list: &Value| -> Vec<String> {
        list["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools: {list}"))
            .iter()
            .map(|tool| tool["name"].as_str().unwrap().to_string())
            .collect()
    };
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list"});
    let response = bridged.post(list.clone()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(names(&answer), ["echo"]);

    let batch = json!([
        {"jsonrpc":"2.0","id":"b-1","method":"tools/list"},
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},
        call(json!("b-2"), "echo", json!({"text":"in a batch"})),
    ]);
    let response = bridged.post(batch).await;
    assert_eq!(response.status(), 200);
    let answers: Value = response.json().await.unwrap();
    let answers = answers
        .as_array()
        .expect("a batch is answered with an array");
    assert_eq!(answers.len(), 2, "{answers:?}");
    let by_id = |id: &str| answers.iter().find(|a| a["id"] == id).unwrap().clone();
    assert_eq!(names(&by_id("b-1")), ["echo"]);
    assert_eq!(by_id("b-2")["result"]["content"][0]["text"], "in a batch");
    // A denied tool is refused by the sidecar, as on every path.
    let refused: Value = bridged
        .post(call(json!(3), "delete_all", json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert!(refused["error"].is_object(), "{refused}");
    sidecar.shutdown().await;
}

/// Two requests in flight with one id could not be told apart when the answer arrives: the
/// second is refused, the first still gets its answer, and the id is free again after.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridged_session_refuses_a_second_request_with_an_id_in_flight() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let bridged = std::sync::Arc::new(Bridged::open(&sidecar).await);
    let first = tokio::spawn({
        let bridged = bridged.clone();
        async move { bridged.post(call(json!(7), "gated", json!({}))).await }
    });
    assert!(
        reached_upstream(&mock, b"\"gated\"").await,
        "the gated call never reached the upstream"
    );
    let second = bridged
        .post(call(json!(7), "echo", json!({"text":"x"})))
        .await;
    assert_eq!(second.status(), 400);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], "duplicate_request_id");
    assert_eq!(body["id"], 7);

    mock.state.gate.notify_one();
    let first = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("the first request was never answered")
        .unwrap();
    assert_eq!(first.status(), 200);
    let again: Value = bridged
        .post(call(json!(7), "echo", json!({"text":"again"})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["result"]["content"][0]["text"], "again");
    sidecar.shutdown().await;
}

/// The sidecar holds an upstream event whole to read it: one past `MAX_BODY_BYTES` ends the
/// session instead of growing memory, and the client is told to initialize again.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_event_over_max_body_bytes_ends_the_bridged_session() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", "t"),
        ("MAX_BODY_BYTES", "65536"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let bridged = Bridged::open(&sidecar).await;
    let small = bridged
        .post(call(json!(2), "flood", json!({"bytes": 1000})))
        .await;
    assert_eq!(small.status(), 200);
    let big = bridged
        .post(call(json!(3), "flood", json!({"bytes": 300_000})))
        .await;
    assert_eq!(big.status(), 502);
    let body = big.text().await.unwrap();
    assert!(body.contains("closed before it answered"), "{body}");
    assert!(body.len() < 1000, "{} bytes", body.len());
    let after = bridged
        .post(call(json!(4), "echo", json!({"text":"x"})))
        .await;
    assert_eq!(after.status(), 404);
    sidecar.shutdown().await;
}

/// An upstream that forgot the session its stream announced (404 on the message endpoint; a
/// proxy in between may keep the old stream looking open): the message is answered 502 (it did
/// not run), and the next one gets a new stream with the client's initialize replayed.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_endpoint_that_answers_404_gets_a_new_stream_for_the_next_message() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let bridged = Bridged::open(&sidecar).await;
    mock.state
        .legacy_forget
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let response = bridged
        .post(call(json!(2), "echo", json!({"text":"x"})))
        .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 2);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not run")),
        "{body}"
    );
    mock.state
        .legacy_forget
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let response = bridged
        .post(call(json!(3), "echo", json!({"text":"again"})))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "again");
    // The old stream was let go: one is open, the new one.
    let one = poll(
        || async { (mock.state.open_legacy_streams() == 1).then_some(()) },
        |_| true,
    )
    .await;
    assert!(
        one.is_some(),
        "{} streams open",
        mock.state.open_legacy_streams()
    );
    sidecar.shutdown().await;
}

/// Shutdown ends a bridged session's GET stream between events, rather than the client
/// holding the sidecar for the whole grace.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_the_get_stream_of_a_session_bridged_to_an_sse_upstream() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", "t"),
        ("SHUTDOWN_GRACE", "60s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let bridged = Bridged::open(&sidecar).await;
    let mut stream = bridged
        .client
        .get(&bridged.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &bridged.session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let started = Instant::now();
    // Within DEADLINE (15 s), well inside the 60 s grace.
    sidecar.shutdown().await;
    assert!(started.elapsed() < DEADLINE);
    let rest = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the client's stream outlived the sidecar");
}

/// A client that gives up during its `initialize` never learns the session's id: the session
/// and its upstream stream end then, not at the idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_gives_up_during_initialize_leaves_no_upstream_stream_open() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let closed = || async { (mock.state.open_legacy_streams() == 0).then_some(()) };
    assert!(
        poll(closed, |_| true).await.is_some(),
        "the handshake's stream stayed open"
    );
    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"silent","version":"1"}}});
    let request = reqwest::Client::new()
        .post(sidecar.url("/mcp"))
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send();
    let client = tokio::spawn(request);
    // The client gives up once its initialize reached the upstream (the session is made).
    assert!(
        reached_upstream(&mock, b"\"silent\"").await,
        "the initialize never reached the upstream"
    );
    assert_eq!(mock.state.open_legacy_streams(), 1);
    client.abort();
    assert!(
        client.await.is_err_and(|e| e.is_cancelled()),
        "the silent initialize was answered"
    );
    assert!(
        poll(closed, |_| true).await.is_some(),
        "the upstream stream of an unclaimed session stayed open"
    );
    sidecar.shutdown().await;
}

/// The upstream's stream of a bridged session ends (the server restarted): the request in
/// flight fails, and the next message, with the same session id, opens another stream into
/// which the client's initialize and initialized notification are replayed first.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridged_session_outlives_the_end_of_its_upstream_stream() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let bridged = Bridged::open(&sidecar).await;
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(bridged.post(initialized).await.status(), 202);
    let sent = |method: &'static str| {
        mock.state
            .requests()
            .iter()
            .filter(|r| {
                r.query
                    .as_deref()
                    .is_some_and(|q| q.starts_with("sessionId="))
                    && r.rpc_method().as_deref() == Some(method)
            })
            .count()
    };
    let (initializes, notifications) = (sent("initialize"), sent("notifications/initialized"));
    let cut = bridged.post(call(json!(2), "end_stream", json!({}))).await;
    assert_eq!(cut.status(), 502);
    let closed = poll(
        || async { (mock.state.open_legacy_streams() == 0).then_some(()) },
        |_| true,
    )
    .await;
    assert!(closed.is_some(), "the mock's stream did not end");

    let response = bridged
        .post(call(json!(3), "echo", json!({"text": "after the restart"})))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 3);
    assert_eq!(body["result"]["content"][0]["text"], "after the restart");
    assert_eq!(
        sent("initialize"),
        initializes + 1,
        "initialize not replayed"
    );
    assert_eq!(
        sent("notifications/initialized"),
        notifications + 1,
        "initialized not replayed"
    );
    assert_eq!(mock.state.open_legacy_streams(), 1);
    sidecar.shutdown().await;
}

/// A client that gives up while its message waits for the replay into a re-opened stream:
/// the stream opened for it is let go, not left running beside the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_gives_up_during_the_replay_leaves_no_stream_open() {
    let mock = MockUpstream::start("t", Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let bridged = std::sync::Arc::new(Bridged::open(&sidecar).await);
    let cut = bridged.post(call(json!(2), "end_stream", json!({}))).await;
    assert_eq!(cut.status(), 502);
    let none_open = || async { (mock.state.open_legacy_streams() == 0).then_some(()) };
    assert!(poll(none_open, |_| true).await.is_some());
    mock.state
        .legacy_silent_initialize
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let initializes = || {
        mock.state
            .requests()
            .iter()
            .filter(|r| r.rpc_method().as_deref() == Some("initialize"))
            .count()
    };
    let before = initializes();
    let waiting = tokio::spawn({
        let bridged = bridged.clone();
        async move {
            bridged
                .post(call(json!(3), "echo", json!({"text":"x"})))
                .await
        }
    });
    let replaying = poll(
        || async { (initializes() > before).then_some(()) },
        |_| true,
    )
    .await;
    assert!(replaying.is_some(), "the initialize was not replayed");
    assert_eq!(mock.state.open_legacy_streams(), 1);
    waiting.abort();
    assert!(
        poll(none_open, |_| true).await.is_some(),
        "the re-opened stream outlived the request that opened it"
    );
    sidecar.shutdown().await;
}
