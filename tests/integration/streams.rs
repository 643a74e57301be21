//! A client's GET stream through an upstream outage (issue 11, defects 3 and 4): it stays open,
//! keepalives flow, it is re-attached to the session the sidecar re-makes, the client's
//! subscriptions are replayed, a dead session's `Last-Event-ID` is never forwarded, and a
//! stream that cannot be re-attached ends at an event boundary.

use serde_json::{Value, json};

use crate::common::mock_upstream::{MockUpstream, Recorded};
use crate::common::{DEADLINE, Sidecar, mcp_post, poll, read_until};

/// A canary (TESTING.md: `+ / = &`, over 200 characters): it must never reach the client.
const TOKEN: &str = concat!(
    "stream-canary+/=&-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz",
    "-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdef",
    "ghijklmnopqrstuvwxyz-end"
);

async fn streaming_pair() -> (MockUpstream, Sidecar) {
    let mock = MockUpstream::start_streaming_on(0, TOKEN);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("SSE_KEEPALIVE", "100ms"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    (mock, sidecar)
}

async fn initialize(client: &reqwest::Client, url: &str) -> String {
    let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"1"}}});
    let response = mcp_post(client, url, body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let notified = mcp_post(
        client,
        url,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
    )
    .header("mcp-session-id", &session)
    .send()
    .await
    .unwrap();
    assert_eq!(notified.status(), 202);
    session
}

fn open_get(client: &reqwest::Client, url: &str, session: &str) -> reqwest::RequestBuilder {
    client
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("x-test", "1")
}

/// Waits until `mock` has `n` GET streams open (the sidecar's re-attached one among them).
async fn wait_streams(mock: &MockUpstream, n: usize) {
    let state = mock.state.clone();
    poll(
        || async { Some(state.open_get_streams()) },
        |open| *open >= n,
    )
    .await
    .unwrap_or_else(|| panic!("the mock never had {n} GET stream(s) open"));
}

/// The session the upstream issued last (the re-made one), from its initialize replies' GETs.
fn gets(mock: &MockUpstream) -> Vec<Recorded> {
    mock.state
        .client_requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect()
}

fn notification(text: &str) -> String {
    json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":text}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_stream_outlives_an_upstream_restart_and_carries_the_new_sessions_events() {
    let (mut mock, sidecar) = streaming_pair().await;
    let port = mock.addr.port();
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp?tenant=a");
    let session = initialize(&client, &url).await;
    let subscribe = json!({"jsonrpc":"2.0","id":7,"method":"resources/subscribe","params":{"uri":"test://watched"}});
    let subscribed = mcp_post(&client, &url, subscribe.to_string())
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(subscribed.status(), 200);

    let mut stream = open_get(&client, &url, &session).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    assert!(
        read_until(&mut stream, &mut seen, &format!("id: {session}-0\n")).await,
        "{seen:?}"
    );
    wait_streams(&mock, 1).await;
    mock.state.push(&format!(
        "event: message\nid: e1\ndata: {}\n\n",
        notification("before")
    ));
    assert!(
        read_until(&mut stream, &mut seen, "before").await,
        "{seen:?}"
    );

    // SIGKILL-like: every session forgotten, every connection dropped, nothing listening.
    mock.stop();
    let mut outage = String::new();
    assert!(
        read_until(&mut stream, &mut outage, ": keepalive\n").await,
        "the client's stream stays open and keepalives flow while the upstream is down: {outage:?}"
    );
    seen.push_str(&outage);

    let mock = MockUpstream::start_streaming_on(port, TOKEN);
    assert!(
        read_until(&mut stream, &mut seen, "id: mcp-sidecar:1:").await,
        "the stream is re-attached to the re-made session: {seen:?}"
    );
    wait_streams(&mock, 1).await;
    mock.state.push(&format!(
        "event: message\nid: e1\ndata: {}\n\n",
        notification("after")
    ));
    assert!(
        read_until(&mut stream, &mut seen, "after").await,
        "{seen:?}"
    );
    assert!(
        seen.contains("id: mcp-sidecar:1:e1\n"),
        "ids of the re-made session are the sidecar's, unique across sessions: {seen:?}"
    );

    // The same client stream, parsed: both notifications, each whole.
    let mut parser = mcp_sidecar::sse::Parser::new();
    let messages: Vec<Value> = parser
        .push(seen.as_bytes())
        .into_iter()
        .filter(|e| !e.data.is_empty())
        .map(|e| serde_json::from_str(&e.data).expect("every event is whole JSON"))
        .collect();
    let texts: Vec<&str> = messages
        .iter()
        .map(|m| m["params"]["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["before", "after"]);

    // The re-attached stream is scrubbed like the first one.
    mock.state.push(&format!(
        "event: message\ndata: {}\n\n",
        notification(&format!("leak {TOKEN}"))
    ));
    assert!(
        read_until(&mut stream, &mut seen, "leak <redacted>").await,
        "{seen:?}"
    );
    assert!(!seen.contains(TOKEN));

    let requests = mock.state.client_requests();
    let replayed = requests
        .iter()
        .find(|r| r.rpc_method().as_deref() == Some("resources/subscribe"))
        .expect("the client's subscription is replayed into the new session");
    let body: Value = serde_json::from_slice(&replayed.body).unwrap();
    assert_eq!(body["params"]["uri"], "test://watched");
    assert_eq!(
        replayed.query.as_deref(),
        Some("tenant=a"),
        "to the client's target"
    );
    let new_session = replayed.headers["mcp-session-id"].to_str().unwrap();
    assert_ne!(new_session, session);
    let attached = gets(&mock);
    let last = attached
        .last()
        .expect("the sidecar re-opened the GET stream");
    assert_eq!(last.headers["mcp-session-id"], new_session);
    assert!(
        !last.headers.contains_key("last-event-id"),
        "no id of the dead session goes to the new one"
    );
    assert_eq!(
        last.authorization(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_while_the_upstream_is_down_is_held_open_not_502() {
    let (mut mock, sidecar) = streaming_pair().await;
    let port = mock.addr.port();
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = initialize(&client, &url).await;
    mock.stop();

    let mut stream = open_get(&client, &url, &session).send().await.unwrap();
    assert_eq!(
        stream.status(),
        200,
        "a client reconnecting during the outage is not refused"
    );
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert_eq!(stream.headers()["mcp-session-id"], session.as_str());
    let mut seen = String::new();
    assert!(
        read_until(&mut stream, &mut seen, ": keepalive\n").await,
        "{seen:?}"
    );

    let mock = MockUpstream::start_streaming_on(port, TOKEN);
    assert!(
        read_until(&mut stream, &mut seen, "id: mcp-sidecar:1:").await,
        "{seen:?}"
    );
    wait_streams(&mock, 1).await;
    mock.state.push(&format!(
        "event: message\ndata: {}\n\n",
        notification("back")
    ));
    assert!(read_until(&mut stream, &mut seen, "back").await, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_event_id_is_forwarded_only_to_the_session_that_issued_it() {
    let (mock, sidecar) = streaming_pair().await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = initialize(&client, &url).await;
    mock.state.forget_sessions();

    // The client resumes with an id of the session the upstream just forgot.
    let mut stream = open_get(&client, &url, &session)
        .header("last-event-id", format!("{session}-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    assert!(
        read_until(&mut stream, &mut seen, "id: mcp-sidecar:1:").await,
        "{seen:?}"
    );
    let retried = gets(&mock).last().cloned().unwrap();
    let new_session = retried.headers["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(new_session, session);
    assert!(
        !retried.headers.contains_key("last-event-id"),
        "the dead session's Last-Event-ID is not forwarded to the re-made one: {:?}",
        retried.headers.get("last-event-id")
    );
    drop(stream);

    // Resuming with the id the sidecar wrote reaches the upstream as the upstream's own id.
    let issued = format!("mcp-sidecar:1:{new_session}-0");
    assert!(seen.contains(&format!("id: {issued}\n")), "{seen:?}");
    let resumed = open_get(&client, &url, &session)
        .header("last-event-id", &issued)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    drop(resumed);
    let sent = gets(&mock).last().cloned().unwrap();
    assert_eq!(
        sent.headers["last-event-id"],
        format!("{new_session}-0").as_str()
    );

    // An id of the dead session again (a client that kept it): still not forwarded.
    let stale = open_get(&client, &url, &session)
        .header("last-event-id", format!("{session}-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    drop(stale);
    let sent = gets(&mock).last().cloned().unwrap();
    assert!(!sent.headers.contains_key("last-event-id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_cannot_be_reattached_ends_at_an_event_boundary() {
    let (mut mock, sidecar) = streaming_pair().await;
    let port = mock.addr.port();
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = initialize(&client, &url).await;
    let mut stream = open_get(&client, &url, &session).send().await.unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, &format!("id: {session}-0\n")).await);
    wait_streams(&mock, 1).await;
    // One whole event and the start of another in one write; then the upstream dies.
    mock.state.push(&format!(
        "event: message\ndata: {}\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"unfinished",
        notification("whole")
    ));
    assert!(
        read_until(&mut stream, &mut seen, "whole").await,
        "{seen:?}"
    );
    mock.stop();
    // It comes back without GET streams (405): the stream cannot be re-attached.
    let _mock = MockUpstream::start_on(port, TOKEN, crate::common::mock_upstream::Mode::Legacy);

    let rest = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.chunk().await {
                Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the stream ends once re-attaching is refused");
    assert!(rest.is_ok(), "the stream ends cleanly, not cut: {rest:?}");
    assert!(
        !seen.contains("unfinished"),
        "no part of an unfinished event: {seen:?}"
    );
    let mut boundary = mcp_sidecar::sse::Boundary::default();
    boundary.observe(seen.as_bytes());
    assert!(boundary.at_boundary(), "it ends between events: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_a_session_the_client_ended_is_not_remade() {
    let (mut mock, sidecar) = streaming_pair().await;
    let port = mock.addr.port();
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = initialize(&client, &url).await;
    let mut stream = open_get(&client, &url, &session).send().await.unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, &format!("id: {session}-0\n")).await);
    let deleted = client
        .delete(&url)
        .header("mcp-session-id", &session)
        .header("x-test", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    mock.stop();
    let mock = MockUpstream::start_streaming_on(port, TOKEN);

    let ended = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends: {seen:?}");
    let remade: Vec<_> = mock
        .state
        .client_requests()
        .into_iter()
        .filter(|r| r.rpc_method().as_deref() == Some("initialize"))
        .collect();
    assert!(
        remade.is_empty(),
        "an ended session is not re-made upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reattached_stream_that_cannot_be_scrubbed_is_not_passed_on() {
    let (mut mock, sidecar) = streaming_pair().await;
    let port = mock.addr.port();
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = initialize(&client, &url).await;
    let mut stream = open_get(&client, &url, &session).send().await.unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, &format!("id: {session}-0\n")).await);
    mock.stop();
    // Back, but its streams claim a coding the scrubber cannot read through.
    let mock = MockUpstream::start_coded_streaming_on(port, TOKEN);

    let ended = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends: {seen:?}");
    assert!(
        gets(&mock)
            .iter()
            .any(|r| r.headers.contains_key("mcp-session-id")),
        "the sidecar did try to re-attach"
    );
    assert!(
        !seen.contains("mcp-sidecar:1:"),
        "nothing of the coded stream reached the client: {seen:?}"
    );
}
