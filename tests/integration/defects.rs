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
