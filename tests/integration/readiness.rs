//! `/ready` means a real MCP handshake with the upstream succeeded.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::common::Sidecar;
use crate::common::mock_upstream::{Forbid, MockUpstream, Mode};

const TOKEN: &str = "readiness-token";

#[tokio::test(flavor = "multi_thread")]
async fn legacy_handshake_initializes_notifies_and_ends_the_session() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let ready = sidecar.wait_reason("ready").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("mock-legacy"),
        "{ready}"
    );

    let steps: Vec<String> = mock
        .state
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.rpc_method().unwrap_or_default()))
        .collect();
    let start = steps
        .iter()
        .position(|s| s == "POST initialize")
        .expect("initialize sent");
    assert_eq!(
        steps[start..start + 3],
        [
            "POST initialize",
            "POST notifications/initialized",
            "DELETE "
        ],
        "{steps:?}"
    );
    let requests = mock.state.requests();
    let initialized = &requests[start + 1];
    assert!(initialized.headers.contains_key("mcp-session-id"));
    assert_eq!(initialized.headers["mcp-protocol-version"], "2025-11-25");
    assert!(
        requests
            .iter()
            .all(|r| r.authorization() == Some("Bearer readiness-token"))
    );

    let status: Value = reqwest::get(sidecar.url("/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["handshake"]["server"]["server_name"], "mock-legacy");
    assert_eq!(
        status["handshake"]["server"]["protocol_version"],
        "2025-11-25"
    );
    assert_eq!(status["handshake"]["server"]["mode"], "initialize");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_initialize_reply_after_priming_event_is_understood() {
    let mock = MockUpstream::start(TOKEN, Mode::LegacySse);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn modern_server_is_probed_with_server_discover() {
    let mock = MockUpstream::start(TOKEN, Mode::Modern);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let ready = sidecar.wait_reason("ready").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("mock-modern"),
        "{ready}"
    );
    let discover = mock
        .state
        .requests()
        .into_iter()
        .find(|r| r.rpc_method().as_deref() == Some("server/discover"))
        .unwrap();
    assert_eq!(discover.headers["mcp-protocol-version"], "2026-07-28");
    assert_eq!(discover.headers["mcp-method"], "server/discover");
    assert!(
        !mock
            .state
            .requests()
            .iter()
            .any(|r| r.rpc_method().as_deref() == Some("initialize")),
        "a modern server needs no initialize"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_initialize_reply_is_handshake_failed() {
    let mock = MockUpstream::start(TOKEN, Mode::Garbage);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let report = sidecar.wait_reason("handshake_failed").await;
    assert_eq!(report["ready"], false);
    assert!(
        report["detail"].as_str().unwrap().contains("text/html"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_at_start_then_ready_when_the_upstream_comes_up() {
    // Reserve a port, then free it: nothing listens there until the mock starts on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &url), ("TOKEN", TOKEN)]).await;
    let report = sidecar.wait_reason("upstream_unreachable").await;
    assert!(report["since"].as_str().unwrap().ends_with('Z'));
    let _mock = MockUpstream::start_on(port, TOKEN, Mode::Legacy);
    sidecar.wait_reason("ready").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_is_upstream_auth_rejected_after_one_retry() {
    let mock = MockUpstream::start("the-right-one", Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let report = sidecar.wait_reason("upstream_auth_rejected").await;
    assert!(
        report["detail"].as_str().unwrap().contains("HTTP 401"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_do_not_cause_upstream_traffic() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("READY_INTERVAL", "300s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let before = mock.state.requests().len();
    let client = reqwest::Client::new();
    for _ in 0..50 {
        assert_eq!(
            client
                .get(sidecar.url("/ready"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(mock.state.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_401_during_the_handshake_is_retried_with_a_fresh_token() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    mock.state.reject_next.store(1, Ordering::SeqCst);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
    let first_two: Vec<Option<String>> = mock.state.requests()[..2]
        .iter()
        .map(|r| r.rpc_method())
        .collect();
    assert_eq!(
        first_two,
        [
            Some("server/discover".to_string()),
            Some("server/discover".to_string())
        ],
        "the rejected first step is sent again, not skipped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upstream_is_looked_at_again_every_100_ms_without_backoff() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &url), ("TOKEN", TOKEN)]).await;
    let report = sidecar.wait_reason("upstream_unreachable").await;
    assert!(
        report["detail"].as_str().unwrap().contains("refused"),
        "{report}"
    );
    // With the old backoff (0.25 s doubling to 2 s) fewer than ten checks fit in the deadline;
    // at 100 ms thirty take three seconds.
    let client = reqwest::Client::new();
    let checks = crate::common::poll(
        || async {
            let status: Value = client
                .get(sidecar.url("/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            status["counters"]["handshakes_failed"].as_u64()
        },
        |failed| *failed >= 30,
    )
    .await;
    assert!(
        checks.is_some(),
        "the refused upstream is retried without backoff"
    );
    // The full handshake runs as soon as something listens.
    let _mock = MockUpstream::start_on(port, TOKEN, Mode::Legacy);
    sidecar.wait_reason("ready").await;
}

#[tokio::test]
async fn a_call_that_succeeds_while_not_ready_triggers_the_handshake_at_once() {
    let (lines, _guard) = crate::proxy::capture_logs("mcp_sidecar::readiness=debug");
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("READY_INTERVAL", "300s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let post = |id| {
        crate::common::mcp_post(
            &client,
            &url,
            crate::common::call(id, "echo", serde_json::json!({"text": "x"})),
        )
    };

    // The credential is refused: the failing call makes /ready say so, without waiting for
    // the 300 s interval.
    mock.state.set_token("rotated-elsewhere");
    assert_eq!(post(1).send().await.unwrap().status(), 502);
    sidecar.wait_reason("upstream_auth_rejected").await;
    assert!(
        crate::proxy::logged(&lines).contains("cause=\"proxy_failure\""),
        "{}",
        crate::proxy::logged(&lines)
    );

    // Let the retries back off to their 2 s cap, so the next scheduled one is far away.
    let failed_checks = |log: &str| log.matches("readiness check").count();
    let before = failed_checks(&crate::proxy::logged(&lines));
    crate::common::poll(
        || async { Some(failed_checks(&crate::proxy::logged(&lines))) },
        |n| *n >= before + 4,
    )
    .await
    .expect("retries run");

    // The credential works again; a call that succeeds turns /ready green at once.
    mock.state.set_token(TOKEN);
    assert_eq!(post(2).send().await.unwrap().status(), 200);
    sidecar.wait_reason("ready").await;
    let log = crate::proxy::logged(&lines);
    assert!(log.contains("cause=\"proxy_recovered\""), "{log}");
}

/// A 403 without a Bearer challenge to the handshake itself: the server will not serve the
/// sidecar, but nothing says the credential is wrong, so `/ready` says `handshake_failed` (not
/// `upstream_auth_rejected`) with the upstream's status and what it said (scrubbed) in the detail.
#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_refused_without_a_bearer_challenge_is_handshake_failed() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    *mock.state.forbid.lock().unwrap() = Some(Forbid {
        challenge: None,
        content_type: "text/plain",
        body: format!("blocked by policy for key {TOKEN}"),
    });
    mock.state.forbid_everyone.store(true, Ordering::SeqCst);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let report = sidecar.wait_reason("handshake_failed").await;
    let detail = report["detail"].as_str().unwrap();
    assert!(detail.contains("HTTP 403"), "{detail}");
    assert!(detail.contains("blocked by policy for key"), "{detail}");
    assert!(!detail.contains(TOKEN), "scrubbed: {detail}");
}
