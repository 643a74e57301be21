//! The defects of issue 11 that are not about structure or streams, each as a client sees it:
//! redirect classification, repeated static tokens, the client's query on replays, and never a
//! 404 for a fault that passes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{Sidecar, call, mcp_post};

/// Serves `router` on 127.0.0.1 port 0 until the test's runtime ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// A canary as the suite's rules want them: `+ / = &` and longer than 200 characters.
fn canary(tag: &str) -> String {
    format!("{tag}+/=&{}", "c".repeat(220))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_301_302_303_307_308_are_redirects_300_and_304_pass_on() {
    let router = Router::new().route(
        "/s/{code}",
        axum::routing::any(
            |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                let status = StatusCode::from_u16(code).unwrap();
                (
                    status,
                    [(header::LOCATION, "https://elsewhere.example/mcp")],
                )
                    .into_response()
            },
        ),
    );
    let addr = serve(router).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for code in [300u16, 304, 301, 302, 303, 307, 308] {
        let upstream = format!("http://{addr}/s/{code}");
        let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", "t")]).await;
        let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
            .send()
            .await
            .unwrap();
        if code == 300 || code == 304 {
            assert_eq!(
                response.status().as_u16(),
                code,
                "HTTP {code} is the upstream's answer, not a redirect"
            );
        } else {
            assert_eq!(
                response.status(),
                502,
                "HTTP {code} never reaches the client"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body["error"]["data"]["reason"], "upstream_redirected",
                "HTTP {code}"
            );
        }
    }
}

/// An upstream that accepts one token; the first test request with another one makes it
/// rewrite the token file with the accepted one (a rotator that acts between the sidecar's
/// request and its refresh) and answers 401.
#[derive(Default)]
struct Rotating {
    accepted: Mutex<String>,
    rotate: Mutex<Option<(std::path::PathBuf, String)>>,
    /// The Authorization of every request marked `x-test`, in order.
    seen: Mutex<Vec<String>>,
}

async fn rotating(
    axum::extract::State(state): axum::extract::State<Arc<Rotating>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let marked = headers.contains_key("x-test");
    if marked {
        state.seen.lock().unwrap().push(presented.clone());
    }
    let accepted = format!("Bearer {}", state.accepted.lock().unwrap());
    if presented != accepted {
        if marked && let Some((path, token)) = state.rotate.lock().unwrap().take() {
            let fresh = path.with_extension("new");
            std::fs::write(&fresh, format!("{token}\n")).unwrap();
            std::fs::rename(&fresh, &path).unwrap();
        }
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
        )
            .into_response();
    }
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{"body_len": body.len()}})).into_response()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_that_changed_after_a_401_is_retried_with_the_new_value() {
    let old = canary("old-token");
    let new = canary("new-token");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{old}\n")).unwrap();
    let state = Arc::new(Rotating::default());
    *state.accepted.lock().unwrap() = old.clone();
    let router = Router::new()
        .route("/mcp", axum::routing::any(rotating))
        .with_state(state.clone());
    let addr = serve(router).await;
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &format!("http://{addr}/mcp")),
        ("TOKEN_FILE", token_file.to_str().unwrap()),
        ("READY_INTERVAL", "300s"),
    ])
    .await;
    let client = reqwest::Client::new();

    // The upstream moves on; the rotator writes the new token only once the sidecar has sent
    // the old one.
    *state.accepted.lock().unwrap() = new.clone();
    *state.rotate.lock().unwrap() = Some((token_file.clone(), new.clone()));
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(5, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 5);
    assert_eq!(
        *state.seen.lock().unwrap(),
        [format!("Bearer {old}"), format!("Bearer {new}")],
        "refused once, retried with the file's new value"
    );

    // Refused again with the file unchanged: answered at once, the token is not sent twice.
    *state.accepted.lock().unwrap() = canary("yet-another");
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(6, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(!text.contains(&new[..40]), "no token in the answer: {text}");
    assert_eq!(
        state.seen.lock().unwrap().len(),
        3,
        "one request, no resend"
    );
}

async fn ready_mock() -> (MockUpstream, Sidecar) {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
    (mock, sidecar)
}

const TOKEN: &str = "defects-token";

fn initialize_body() -> String {
    json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"1"}}})
    .to_string()
}

/// Initializes a session through the sidecar at `url`; returns the client's session id.
async fn initialize(client: &reqwest::Client, url: &str) -> String {
    let response = mcp_post(client, url, initialize_body())
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

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_initialize_keeps_the_clients_query() {
    let (mock, sidecar) = ready_mock().await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp?tenant=a&region=eu");
    let session = initialize(&client, &url).await;
    mock.state.forget_sessions();

    let response = mcp_post(&client, &url, call(1, "echo", json!({"text": "x"})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = mock.state.client_requests();
    let methods: Vec<_> = seen.iter().map(|r| r.rpc_method()).collect();
    assert_eq!(
        methods
            .iter()
            .filter(|m| m.as_deref() == Some("initialize"))
            .count(),
        2,
        "the client's initialize and one replay: {methods:?}"
    );
    for request in &seen {
        assert_eq!(
            request.query.as_deref(),
            Some("tenant=a&region=eu"),
            "{:?} went upstream without the client's query",
            request.rpc_method()
        );
    }
}

/// How [`flaky`] answers an `initialize` once the test has set it.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Replay {
    /// Makes a session, like any server.
    #[default]
    Works,
    /// Answers this status (a server restarting behind a gateway, or refusing the request).
    Status(u16),
    /// Accepts the request and never answers.
    Hangs,
    /// Makes the session and forgets it right after `notifications/initialized`.
    ForgetsAtOnce,
    /// Starts a reply and breaks off (the server died mid-answer).
    BreaksOff,
}

#[derive(Default)]
struct Flaky {
    sessions: Mutex<std::collections::HashSet<String>>,
    made: std::sync::atomic::AtomicUsize,
    replay: Mutex<Replay>,
}

/// An MCP upstream (2025-11-25, JSON replies) whose `initialize` fails on command.
async fn flaky(
    axum::extract::State(state): axum::extract::State<Arc<Flaky>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &session
        && !state.sessions.lock().unwrap().contains(id)
    {
        return (StatusCode::NOT_FOUND, "session not found").into_response();
    }
    if method == axum::http::Method::DELETE {
        state
            .sessions
            .lock()
            .unwrap()
            .remove(session.as_deref().unwrap_or(""));
        return StatusCode::NO_CONTENT.into_response();
    }
    if method != axum::http::Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let replay = *state.replay.lock().unwrap();
    match message["method"].as_str().unwrap_or("") {
        "initialize" => {
            match replay {
                Replay::Status(code) => {
                    return (StatusCode::from_u16(code).unwrap(), "no").into_response();
                }
                Replay::Hangs => return std::future::pending::<Response>().await,
                Replay::BreaksOff => {
                    let chunks = futures_util::stream::iter([
                        Ok(axum::body::Bytes::from_static(b"{\"jsonrpc\":")),
                        Err(std::io::Error::other("killed")),
                    ]);
                    return (
                        [
                            ("mcp-session-id", "flaky-broken"),
                            ("content-type", "application/json"),
                        ],
                        axum::body::Body::from_stream(chunks),
                    )
                        .into_response();
                }
                Replay::Works | Replay::ForgetsAtOnce => {}
            }
            let n = state.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let new = format!("flaky-{n}");
            state.sessions.lock().unwrap().insert(new.clone());
            (
                [("mcp-session-id", new)],
                axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{
                    "protocolVersion":"2025-11-25","capabilities":{},
                    "serverInfo":{"name":"flaky","version":"1"}}})),
            )
                .into_response()
        }
        "notifications/initialized" => {
            if replay == Replay::ForgetsAtOnce {
                state.sessions.lock().unwrap().clear();
            }
            StatusCode::ACCEPTED.into_response()
        }
        _ => axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}})).into_response(),
    }
}

/// A flaky upstream, a sidecar in front of it, and a client session made through both.
async fn flaky_session(extra: &[(&str, &str)]) -> (Arc<Flaky>, Sidecar, String) {
    let state = Arc::new(Flaky::default());
    let router = Router::new()
        .route("/mcp", axum::routing::any(flaky))
        .with_state(state.clone());
    let addr = serve(router).await;
    let upstream = format!("http://{addr}/mcp");
    let mut env = vec![
        ("UPSTREAM_URL", upstream.as_str()),
        ("TOKEN", TOKEN),
        ("READY_INTERVAL", "300s"),
    ];
    env.extend_from_slice(extra);
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_reason("ready").await;
    let session = initialize(&reqwest::Client::new(), &sidecar.url("/mcp")).await;
    (state, sidecar, session)
}

async fn call_in(sidecar: &Sidecar, session: &str, id: u64) -> reqwest::Response {
    mcp_post(
        &reqwest::Client::new(),
        &sidecar.url("/mcp"),
        call(id, "echo", json!({})),
    )
    .header("mcp-session-id", session)
    .send()
    .await
    .unwrap()
}

/// The answer a client may retry: 502/503/504 with a JSON-RPC error carrying its id.
async fn assert_retryable(response: reqwest::Response, id: u64, reason: &str, case: &str) {
    let status = response.status().as_u16();
    assert!(
        matches!(status, 502..=504),
        "{case}: HTTP {status}, never a 404 for a fault that passes"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{case}");
    assert_eq!(body["id"], id, "{case}");
    assert_eq!(body["error"]["data"]["reason"], reason, "{case}: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_session_that_cannot_be_remade_yet_is_never_a_404() {
    for (replay, case) in [
        (Replay::Status(503), "replayed initialize answered 503"),
        (
            Replay::Status(502),
            "replayed initialize answered 502 by a gateway",
        ),
        (Replay::Status(404), "initialize route not served yet"),
        (Replay::Status(429), "replayed initialize rate-limited"),
        (Replay::ForgetsAtOnce, "re-made session forgotten at once"),
    ] {
        let (state, sidecar, session) = flaky_session(&[]).await;
        state.sessions.lock().unwrap().clear();
        *state.replay.lock().unwrap() = replay;
        let response = call_in(&sidecar, &session, 7).await;
        assert_retryable(response, 7, "session_reinit_failed", case).await;

        // Once the upstream works again, the same client session carries on.
        *state.replay.lock().unwrap() = Replay::Works;
        let response = call_in(&sidecar, &session, 8).await;
        assert_eq!(response.status(), 200, "{case}: recovered afterwards");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_initialize_that_hangs_is_a_503_not_a_404() {
    let (state, sidecar, session) = flaky_session(&[("READY_TIMEOUT", "1s")]).await;
    state.sessions.lock().unwrap().clear();
    *state.replay.lock().unwrap() = Replay::Hangs;
    let response = call_in(&sidecar, &session, 9).await;
    assert_retryable(response, 9, "session_reinit_failed", "replay hangs").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_initialize_whose_reply_breaks_off_is_a_502_not_a_404() {
    let (state, sidecar, session) = flaky_session(&[]).await;
    state.sessions.lock().unwrap().clear();
    *state.replay.lock().unwrap() = Replay::BreaksOff;
    let response = call_in(&sidecar, &session, 6).await;
    assert_retryable(response, 6, "upstream_unreachable", "reply broke off").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_down_under_a_session_is_a_502_not_a_404() {
    let mut mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
    let session = initialize(&reqwest::Client::new(), &sidecar.url("/mcp")).await;
    mock.stop();
    let response = call_in(&sidecar, &session, 3).await;
    assert_retryable(response, 3, "upstream_unreachable", "upstream down").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_upstream_will_not_remake_gets_its_404() {
    // The replayed initialize is refused as a bad request: the session cannot be recovered, and
    // the client must learn that its session is gone (the spec's 404) to start a new one.
    // So is a 403 without a Bearer challenge: a policy, not the credential.
    for refused in [400, 403] {
        let (state, sidecar, session) = flaky_session(&[]).await;
        state.sessions.lock().unwrap().clear();
        *state.replay.lock().unwrap() = Replay::Status(refused);
        assert_eq!(
            call_in(&sidecar, &session, 4).await.status(),
            404,
            "replay refused with {refused}"
        );
    }
    let (_state, sidecar, _session) = flaky_session(&[]).await;
    // A session id the sidecar never saw is unknown to it too: nothing to replay.
    assert_eq!(call_in(&sidecar, "never-seen", 5).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_past_the_byte_budget_are_forgotten_oldest_first() {
    // 100 initializes of 256 KiB against a 1 MiB budget: only the last few are remembered.
    let (state, sidecar, first) = flaky_session(&[("MAX_SESSION_BYTES", "1048576")]).await;
    let client = reqwest::Client::new();
    let padding = "p".repeat(256 * 1024);
    let mut last = String::new();
    for i in 0..100 {
        let body = json!({"jsonrpc":"2.0","id":i,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},
            "clientInfo":{"name":"big","version":"1","padding":padding}}});
        let response = mcp_post(&client, &sidecar.url("/mcp"), body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        last = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
    }
    state.sessions.lock().unwrap().clear();
    assert_eq!(
        call_in(&sidecar, &last, 1).await.status(),
        200,
        "the newest session is re-made"
    );
    assert_eq!(
        call_in(&sidecar, &first, 2).await.status(),
        404,
        "the oldest was forgotten to stay within MAX_SESSION_BYTES: nothing to replay"
    );
}
