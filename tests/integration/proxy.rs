//! The proxied MCP endpoint, as a client sees it.

use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use crate::common::mock_upstream::{Forbid, MockUpstream, Mode};
use crate::common::{Sidecar, call, mcp_post, read_until};

const TOKEN: &str = "upstream-token-1";

async fn ready_pair() -> (MockUpstream, Sidecar) {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
    (mock, sidecar)
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_injected_on_post_get_and_delete_replacing_the_clients() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp?tenant=a");
    let session = client_initialize(&client, &url).await;

    let post = mcp_post(&client, &url, call(1, "echo", json!({"text": "hi"})))
        .header("authorization", "Bearer client-supplied")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-param-region", "eu")
        .header("last-event-id", "e-7")
        .header("origin", "http://localhost:6274")
        .header("x-forwarded-for", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let body: Value = post.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "hi");

    let get = client
        .get(&url)
        .header("accept", "text/event-stream")
        .header("x-test", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405, "status codes pass through unchanged");
    assert_eq!(get.headers()["allow"], "POST, DELETE");

    let delete = client
        .delete(&url)
        .header("mcp-session-id", &session)
        .header("x-test", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);

    // The first two requests were the client's initialize and initialized notification.
    let seen = mock.state.client_requests().split_off(2);
    let methods: Vec<&str> = seen.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["POST", "GET", "DELETE"]);
    for request in &seen {
        assert_eq!(request.authorization(), Some("Bearer upstream-token-1"));
        assert_eq!(request.query.as_deref(), Some("tenant=a"));
    }
    let post = &seen[0];
    for (name, value) in [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-param-region", "eu"),
        ("last-event-id", "e-7"),
    ] {
        assert_eq!(post.headers[name], value, "{name} is forwarded");
    }
    for name in ["origin", "x-forwarded-for"] {
        assert!(
            !post.headers.contains_key(name),
            "{name} stays on the client's side"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_reach_the_client_one_by_one() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let mut response = mcp_post(&client, &sidecar.url("/mcp"), call(5, "gated", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");

    // The upstream holds its second event until the gate opens: the first must arrive before.
    let mut seen = String::new();
    assert!(
        read_until(&mut response, &mut seen, "notifications/progress").await,
        "first event did not arrive while the upstream held the second; got {seen:?}"
    );
    assert!(!seen.contains("\"result\""), "second event arrived early");
    mock.state.gate.notify_one();
    assert!(
        read_until(&mut response, &mut seen, "\"result\"").await,
        "{seen:?}"
    );
    assert!(
        seen.contains("id: 1\n") && seen.contains("id: 2\n"),
        "event ids intact: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_closes_the_upstream_request() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let mut response = mcp_post(&client, &sidecar.url("/mcp"), call(6, "hang", json!({})))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut response, &mut seen, "progress").await);
    assert!(!mock.state.hang_dropped.load(Ordering::SeqCst));
    drop(response);
    drop(client);
    let dropped = crate::common::poll(
        || async { Some(mock.state.hang_dropped.load(Ordering::SeqCst)) },
        |dropped| *dropped,
    )
    .await;
    assert!(
        dropped.is_some(),
        "upstream stream still open after the client went away"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_to_a_static_token_is_answered_at_once_without_resending_it() {
    let (mock, sidecar) = ready_pair().await;
    mock.state.reject_next.store(1, Ordering::SeqCst);
    let client = reqwest::Client::new();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(2, "echo", json!({"text": "again"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 502, "never 401 to the client");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 2);
    assert_eq!(body["error"]["data"]["reason"], "upstream_auth_rejected");
    assert_eq!(
        mock.state.client_requests().len(),
        1,
        "TOKEN has no other value: the same token is not sent twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_token_file_is_used_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "old-token\n").unwrap();
    let mock = MockUpstream::start("old-token", Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN_FILE", token_file.to_str().unwrap()),
        ("READY_INTERVAL", "60s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();

    // The upstream moves on to a new token before the file does: the request fails cleanly.
    mock.state.set_token("new-token");
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(3, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 502);

    // Kubernetes-style rotation: the secret directory's symlink is swapped.
    let fresh = dir.path().join("token.new");
    std::fs::write(&fresh, "new-token\n").unwrap();
    std::fs::rename(&fresh, &token_file).unwrap();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(4, "echo", json!({"text": "y"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let last = mock.state.client_requests().pop().unwrap();
    assert_eq!(last.authorization(), Some("Bearer new-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_401_gives_502_with_the_request_id_and_not_ready() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    // A long interval: /ready must change because the proxy reported the failure, not by timer.
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("READY_INTERVAL", "300s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    mock.state.set_token("only-a-different-token-works");

    let client = reqwest::Client::new();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(42, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 502, "never 401 to the client");
    assert!(response.headers().get("www-authenticate").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["data"]["reason"], "upstream_auth_rejected");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rejected") && message.contains("token expired"),
        "{message}"
    );
    assert_eq!(
        mock.state.client_requests().len(),
        1,
        "a static token refused is not sent again"
    );

    let ready = sidecar.wait_reason("upstream_auth_rejected").await;
    assert_eq!(ready["ready"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_gives_502_and_unreachable() {
    let (mut mock, sidecar) = ready_pair().await;
    mock.stop();
    let client = reqwest::Client::new();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(7, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["data"]["reason"], "upstream_unreachable");
    sidecar.wait_reason("upstream_unreachable").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_token_file_is_auth_required_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN_FILE", token_file.to_str().unwrap()),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    std::fs::remove_file(&token_file).unwrap();
    let client = reqwest::Client::new();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(8, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], "auth_required");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{body}"
    );
    let ready = sidecar.wait_reason("auth_required").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("TOKEN_FILE"),
        "{ready}"
    );
    // An empty file is bridged for a short grace (a rewrite in place), then reported.
    std::fs::write(&token_file, TOKEN).unwrap();
    sidecar.wait_reason("ready").await;
    std::fs::write(&token_file, "").unwrap();
    let refused = crate::common::poll(
        || {
            let request = mcp_post(
                &client,
                &sidecar.url("/mcp"),
                call(9, "echo", json!({"text": "x"})),
            );
            async move {
                let response = request.send().await.ok()?;
                Some((response.status(), response.text().await.ok()?))
            }
        },
        |(status, _)| *status != 200,
    )
    .await
    .expect("an empty file is reported once the grace has passed");
    assert_eq!(refused.0, 503);
    assert!(refused.1.contains("is empty"), "{}", refused.1);
    let ready = sidecar.wait_reason("auth_required").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("is empty"),
        "{ready}"
    );
}

/// `cmd > token` truncates the file, then writes it (here a byte at a time, the slowest a writer
/// gets): calls made in between must still go out with the previous, still valid, token.
#[tokio::test(flavor = "multi_thread")]
async fn token_file_rewritten_in_place_fails_no_call() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    const CALLS: usize = 300;
    let canary: String = format!("canary+/=&{}", "Zx9+/=&".repeat(40));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{canary}\n")).unwrap();
    let mock = MockUpstream::start(&canary, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN_FILE", token_file.to_str().unwrap()),
    ])
    .await;
    sidecar.wait_reason("ready").await;

    let made = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rewriter = {
        let (made, stop, path, canary) = (
            made.clone(),
            stop.clone(),
            token_file.clone(),
            canary.clone(),
        );
        std::thread::spawn(move || {
            let mut rewrites = 0u32;
            // Bounded: until the calls are done, and never more than this many rewrites.
            while !stop.load(Ordering::SeqCst)
                && made.load(Ordering::SeqCst) < CALLS
                && rewrites < 200_000
            {
                let mut file = std::fs::File::create(&path).unwrap();
                for byte in canary.as_bytes().iter().chain(b"\n") {
                    file.write_all(std::slice::from_ref(byte)).unwrap();
                }
                rewrites += 1;
            }
            rewrites
        })
    };
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let mut failures = Vec::new();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (client, url, made) = (client.clone(), url.clone(), made.clone());
            tokio::spawn(async move {
                let mut failed = Vec::new();
                loop {
                    let n = made.fetch_add(1, Ordering::SeqCst);
                    if n >= CALLS {
                        return failed;
                    }
                    let response =
                        mcp_post(&client, &url, call(n as u64, "echo", json!({"text": w})))
                            .send()
                            .await
                            .unwrap();
                    let status = response.status();
                    if status != 200 {
                        failed.push(format!(
                            "{status} {}",
                            response.text().await.unwrap_or_default()
                        ));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    let rewrites = rewriter.join().unwrap();
    assert!(rewrites > 0);
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls failed during {rewrites} rewrites: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    for failure in &failures {
        assert!(!failure.contains(&canary));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_host_or_origin_is_403_json() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    for (header, value) in [("host", "evil.example"), ("origin", "https://evil.example")] {
        let response = mcp_post(&client, &url, call(9, "echo", json!({"text": "x"})))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{header}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("evil.example")
        );
    }
    let ok = mcp_post(&client, &url, call(10, "echo", json!({"text": "x"})))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        mock.state.client_requests().len(),
        1,
        "refused requests never reach the upstream"
    );

    // Every endpoint applies the rule: a rebinding page must not read /ready's login prompt.
    for path in [
        "/status",
        "/metrics",
        "/ready",
        "/healthz",
        "/.well-known/oauth-authorization-server",
    ] {
        let response = client
            .get(sidecar.url(path))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("evil.example"));
        let response = client
            .get(sidecar.url(path))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path} with a foreign Origin");
    }
    // The kubelet probes by IP address (reqwest sends Host: 127.0.0.1:port here).
    for path in ["/ready", "/healthz"] {
        let response = client.get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// One HTTP/1.1 exchange on a fresh connection, as raw text: for requests reqwest refuses to
/// send (two Host headers, an absolute-form target).
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::common::DEADLINE, stream.read_to_end(&mut answer));
    read.await.expect("the sidecar answers and closes").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_contradictory_hosts_are_400() {
    let (mock, sidecar) = ready_pair().await;
    let body = call(1, "echo", json!({"text": "x"}));
    let post = |host_lines: &str, target: &str| {
        format!(
            "POST {target} HTTP/1.1\r\n{host_lines}content-type: application/json\r\n\
             accept: application/json, text/event-stream\r\nx-test: 1\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (what, request) in [
        (
            "two Host headers",
            post("host: localhost\r\nhost: localhost\r\n", "/mcp"),
        ),
        (
            "two Host headers, one foreign",
            post("host: localhost\r\nhost: evil.example\r\n", "/mcp"),
        ),
        ("text after an IPv6 literal", post("host: [::1]evil.com\r\n", "/mcp")),
        (
            "an absolute target naming another host",
            post("host: localhost\r\n", "http://evil.example/mcp"),
        ),
        (
            "two Host headers on /ready",
            "GET /ready HTTP/1.1\r\nhost: localhost\r\nhost: evil.example\r\nconnection: close\r\n\r\n"
                .to_string(),
        ),
    ] {
        let answer = raw_exchange(sidecar.addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains("application/json"), "{what}: {answer}");
    }
    assert_eq!(
        mock.state.client_requests().len(),
        0,
        "refused requests never reach the upstream"
    );
    let agreeing = post(
        &format!("host: {}\r\n", sidecar.addr),
        &format!("http://{}/mcp", sidecar.addr),
    );
    let answer = raw_exchange(sidecar.addr, &agreeing).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A canary as the brief demands of secrets in tests: over 200 characters, with `+ / = &`.
fn canary(tag: &str) -> String {
    format!("{tag}-+/=&-{}", "k9+Z/q=&".repeat(30))
}

#[tokio::test(flavor = "multi_thread")]
async fn client_token_guards_status_metrics_and_readys_detail() {
    let client_token = canary("client");
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("CLIENT_TOKEN", &client_token),
    ])
    .await;
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {client_token}");
    for path in ["/status", "/metrics"] {
        let response = client.get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path} without the client token");
        let text = response.text().await.unwrap();
        assert!(text.contains("client token"), "{path}: {text}");
        let response = client
            .get(sidecar.url(path))
            .header("authorization", "Bearer wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path} with a wrong token");
        let response = client
            .get(sidecar.url(path))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} with the client token");
        assert!(!response.text().await.unwrap().contains(&client_token));
    }

    // /ready's status code is open to probes; its detail is not.
    sidecar.wait_reason("ready").await;
    let shallow: Value = client
        .get(sidecar.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = shallow
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["ready", "reason", "since", "upstreams"], "{shallow}");
    // Each upstream's entry is as shallow: no detail, no login, without the token.
    for entry in shallow["upstreams"].as_array().unwrap() {
        assert!(
            entry.get("detail").is_none() && entry.get("login").is_none(),
            "{shallow}"
        );
    }
    let full: Value = client
        .get(sidecar.url("/ready"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        full["detail"].as_str().unwrap().contains("mock-legacy"),
        "{full}"
    );
    let healthz = client.get(sidecar.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);

    // `mcp-sidecar wait`, reading the same configuration, sends the token: it shows the detail.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
        .args(["wait", "--timeout", "10s", "--url", &sidecar.url("/ready")])
        .env_clear()
        .env("MCP_SIDECAR_CLIENT_TOKEN", &client_token)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("mock-legacy"), "{stderr}");
    assert!(!stderr.contains(&client_token), "{stderr}");
    for args in [["probe", "--ready"], ["probe", "--live"]] {
        let path = if args[1] == "--ready" {
            "/ready"
        } else {
            "/healthz"
        };
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
            .args(args)
            .args(["--url", &sidecar.url(path)])
            .env_clear()
            .env("MCP_SIDECAR_CLIENT_TOKEN", &client_token)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_token_is_enforced_and_never_forwarded() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("CLIENT_TOKEN", "client-shared-secret"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let refused = mcp_post(&client, &url, call(1, "echo", json!({"text": "x"})))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let accepted = mcp_post(&client, &url, call(2, "echo", json!({"text": "x"})))
        .header("authorization", "Bearer client-shared-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let seen = mock.state.client_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization(), Some("Bearer upstream-token-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_413_json_and_other_methods_405() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("MAX_BODY_BYTES", "1024"),
    ])
    .await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let big = call(1, "echo", json!({"text": "x".repeat(2000)}));
    let response = mcp_post(&client, &url, big.clone()).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024 bytes")
    );

    // Without a declared length (chunked), the limit still holds.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    let response = client.put(&url).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(mock.state.client_requests().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn well_known_and_unknown_paths_are_json_404s() {
    let (_mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/register",
    ] {
        let response = client.get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"error": "not_found"})
        );
    }
    let response = client
        .post(sidecar.url("/register"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let mut response = mcp_post(&client, &sidecar.url("/mcp"), call(5, "gated", json!({})))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut response, &mut seen, "progress").await);
    let addr = sidecar.addr;
    let shutdown = tokio::spawn(sidecar.shutdown());
    // Draining has begun once the listener refuses new connections.
    let refused = crate::common::poll(
        || async move { Some(tokio::net::TcpStream::connect(addr).await.is_err()) },
        |refused| *refused,
    )
    .await;
    assert!(
        refused.is_some(),
        "the sidecar kept accepting connections after shutdown"
    );
    // The stream in flight still completes.
    mock.state.gate.notify_one();
    assert!(
        read_until(&mut response, &mut seen, "\"result\"").await,
        "{seen:?}"
    );
    shutdown.await.unwrap();
}

/// Initializes through the sidecar as a client does; returns the session id the client got.
async fn client_initialize(client: &reqwest::Client, url: &str) -> String {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_upstream_forgot_is_reinitialized_transparently() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = client_initialize(&client, &url).await;

    mock.state.forget_sessions();
    // Several requests hit the forgotten session at once: one re-initialization serves them all.
    let calls = (0..8).map(|i| {
        let request = mcp_post(
            &client,
            &url,
            call(100 + i, "echo", json!({"text": format!("after-{i}")})),
        )
        .header("mcp-session-id", &session);
        async move { request.send().await.unwrap() }
    });
    for (i, response) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(response.status(), 200, "the client never sees the 404");
        assert_eq!(
            response.headers()["mcp-session-id"],
            session.as_str(),
            "an echoed session id is the client's own, not the new upstream one"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["result"]["content"][0]["text"], format!("after-{i}"));
    }

    let seen = mock.state.client_requests();
    let initializes: Vec<_> = seen
        .iter()
        .filter(|r| r.rpc_method().as_deref() == Some("initialize"))
        .collect();
    assert_eq!(
        initializes.len(),
        2,
        "the client's initialize, and exactly one replay"
    );
    assert_eq!(
        initializes[0].body, initializes[1].body,
        "the replay is the client's own initialize"
    );
    let replayed_session = seen
        .iter()
        .rev()
        .find(|r| r.rpc_method().as_deref() == Some("tools/call"))
        .unwrap()
        .headers["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(
        replayed_session, session,
        "retried under the new upstream session"
    );
    let initialized_after_replay = seen
        .iter()
        .filter(|r| r.rpc_method().as_deref() == Some("notifications/initialized"))
        .count();
    assert_eq!(initialized_after_replay, 2);

    // The client's DELETE ends the upstream session it does not know about.
    let delete = client
        .delete(&url)
        .header("mcp-session-id", &session)
        .header("x-test", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(
        mock.state.client_requests().last().unwrap().headers["mcp-session-id"],
        replayed_session.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_forgotten_session_replays_nothing() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = client_initialize(&client, &url).await;
    mock.state.forget_sessions();
    let delete = client
        .delete(&url)
        .header("mcp-session-id", &session)
        .header("x-test", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404, "the upstream's answer, unchanged");
    let initializes = mock
        .state
        .client_requests()
        .iter()
        .filter(|r| r.rpc_method().as_deref() == Some("initialize"))
        .count();
    assert_eq!(initializes, 1, "no replay just to end a session");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_sessions_get_the_upstreams_404() {
    let (_mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::new();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(1, "echo", json!({"text": "x"})),
    )
    .header("mcp-session-id", "never-initialized-here")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sse_streams_get_keepalive_comments_between_events() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("SSE_KEEPALIVE", "100ms"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let mut response = mcp_post(&client, &sidecar.url("/mcp"), call(5, "gated", json!({})))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    assert!(
        read_until(&mut response, &mut seen, ": keepalive\n").await,
        "{seen:?}"
    );
    assert!(
        !seen.contains(": keepalive\n\n"),
        "no blank line after the comment: {seen:?}"
    );
    let first_event_end = seen.find("\n\n").unwrap();
    assert!(
        seen.find(": keepalive").unwrap() > first_event_end,
        "only between events: {seen:?}"
    );
    mock.state.gate.notify_one();
    assert!(read_until(&mut response, &mut seen, "\"result\"").await);
    // The stream still parses as the same events.
    let mut parser = mcp_sidecar::sse::Parser::new();
    let events: Vec<_> = parser
        .push(seen.as_bytes())
        .into_iter()
        .filter(|e| !e.data.is_empty())
        .collect();
    assert_eq!(events.len(), 2, "{seen:?}");
}

/// A Streamable HTTP client POSTing to a sidecar whose upstream speaks only the 2024-11-05
/// HTTP+SSE transport gets a JSON-RPC error that names the transport to use, never the
/// upstream's page ("Cannot POST /sse", a bare 405).
#[tokio::test(flavor = "multi_thread")]
async fn a_post_to_an_sse_transport_upstream_says_which_transport_to_use() {
    let mock = MockUpstream::start(TOKEN, Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    // An `initialize` is bridged (tests/integration/bridge.rs); a message outside any session
    // cannot be.
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 1, "{body}");
    assert_eq!(
        body["error"]["data"]["reason"], "transport_mismatch",
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("HTTP+SSE"), "{message}");
    assert!(message.contains("--transport sse"), "{message}");
    // /ready is not changed by a client's choice of transport.
    let ready = sidecar.wait_reason("ready").await;
    assert_eq!(ready["ready"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_sse_transport_endpoint_is_rewritten_through_the_sidecar() {
    let mock = MockUpstream::start(TOKEN, Mode::SseTransport);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let ready = sidecar.wait_reason("ready").await;
    assert!(
        ready["detail"]
            .as_str()
            .unwrap()
            .contains("mock-sse-transport"),
        "{ready}"
    );

    let client = reqwest::Client::new();
    let mut stream = client
        .get(sidecar.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("x-test", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, "\n\n").await, "{seen:?}");
    let endpoint = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("an endpoint event")
        .to_string();
    assert!(seen.starts_with("event: endpoint\n"), "{seen:?}");
    assert!(
        endpoint.starts_with("/mcp/legacy/messages?sessionId="),
        "{endpoint}"
    );

    let posted = mcp_post(
        &client,
        &sidecar.url(&endpoint),
        call(11, "echo", json!({"text": "old-school"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(posted.status(), 202);
    assert!(
        read_until(&mut stream, &mut seen, "old-school").await,
        "{seen:?}"
    );
    let forwarded = mock.state.client_requests().pop().unwrap();
    assert_eq!(forwarded.authorization(), Some("Bearer upstream-token-1"));

    // Only endpoints the upstream announced, and only while their stream is open, are forwarded.
    let other = mcp_post(
        &client,
        &sidecar.url("/mcp/legacy/admin?x=1"),
        call(12, "echo", json!({})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(other.status(), 404);
    drop(stream);
    let closed = crate::common::poll(
        || {
            let request = mcp_post(
                &client,
                &sidecar.url(&endpoint),
                call(13, "echo", json!({"text": "x"})),
            );
            async move { Some(request.send().await.unwrap().status()) }
        },
        |status| *status == 404,
    )
    .await;
    assert!(closed.is_some(), "the endpoint outlived its stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_get_streams_end_cleanly_at_shutdown_instead_of_holding_it() {
    let mock = MockUpstream::start(TOKEN, Mode::SseTransport);
    // A grace period far beyond the test's deadline: shutdown must not need it.
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("SHUTDOWN_GRACE", "120s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let mut stream = client
        .get(sidecar.url("/mcp"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, "\n\n").await);
    sidecar.shutdown().await;
    let end = tokio::time::timeout(crate::common::DEADLINE, stream.chunk())
        .await
        .expect("the stream ends");
    assert!(
        matches!(end, Ok(None)),
        "a clean end of the stream, not a cut: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sdk_style_400_for_a_forgotten_session_is_recovered_too() {
    let (mock, sidecar) = ready_pair().await;
    mock.state
        .sdk_style_unknown_session
        .store(true, Ordering::SeqCst);
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let session = client_initialize(&client, &url).await;

    // A 400 that is not about the session passes through unchanged, body included.
    let response = mcp_post(&client, &url, call(20, "bad_request", json!({})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "invalid arguments");
    assert_eq!(body["id"], 20);

    mock.state.forget_sessions();
    let response = mcp_post(&client, &url, call(21, "echo", json!({"text": "survived"})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "survived");
}

#[tokio::test(flavor = "multi_thread")]
async fn same_origin_307_308_are_followed_other_redirects_explained_never_passed_on() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let old = format!("http://{}/old", mock.addr);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &old), ("TOKEN", TOKEN)]).await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(1, "echo", json!({"text": "via 308"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let followed = mock.state.client_requests().pop().unwrap();
    assert_eq!(
        followed.authorization(),
        Some("Bearer upstream-token-1"),
        "token kept on the same origin"
    );

    let moved = format!("http://{}/moved", mock.addr);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &moved), ("TOKEN", TOKEN)]).await;
    let report = sidecar.wait_reason("handshake_failed").await;
    let detail = report["detail"].as_str().unwrap();
    assert!(detail.contains("https://new.example.com/mcp"), "{detail}");
    assert!(
        !detail.contains("canary-location"),
        "the Location's query is not shown: {detail}"
    );
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(2, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502, "a 3xx never reaches the client");
    assert!(response.headers().get("location").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], "upstream_redirected");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MCP_SIDECAR_UPSTREAM_URL")
    );
    // Classified once: the JSON-RPC code and the metrics outcome are /ready's handshake_failed,
    // not "unreachable".
    assert_eq!(body["error"]["code"], -32005);
    let metrics = client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"mcp_sidecar_requests_total{method="POST",outcome="handshake_failed",upstream="default"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_quotes_the_token_back_has_it_scrubbed() {
    const SECRET: &str = "canary-echoed-by-upstream-5150";
    let mock = MockUpstream::start("another-token", Mode::Legacy);
    mock.state.echo_token.store(true, Ordering::SeqCst);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", SECRET)]).await;
    let report = sidecar.wait_reason("upstream_auth_rejected").await;
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains("the key <redacted> is not valid"),
        "{detail}"
    );
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(!body.contains(SECRET), "{body}");
    assert!(body.contains("<redacted>"), "{body}");

    // A credential in HEADERS (here a static Authorization with AUTH=none) is scrubbed too.
    const BASIC: &str = "canary-basic-credential-6174";
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("HEADERS", &format!("Authorization: Basic {BASIC}")),
    ])
    .await;
    let report = sidecar.wait_reason("upstream_auth_rejected").await;
    let detail = report["detail"].as_str().unwrap();
    assert!(!detail.contains(BASIC), "{detail}");
    assert!(detail.contains("<redacted>"), "{detail}");
}

/// Log lines written while the returned guard lives, on this thread only: a current-thread test
/// runtime keeps the in-process sidecar's tasks on it.
pub fn capture_logs(
    filter: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(lines.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}

pub fn logged(lines: &std::sync::Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&lines.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn sidecar_404s_are_logged_at_debug_without_the_query() {
    let (lines, _guard) = capture_logs("mcp_sidecar=debug");
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", TOKEN)]).await;
    let secret = canary("query");
    let client = reqwest::Client::new();
    let response = client
        .get(sidecar.url("/.well-known/oauth-authorization-server/mcp"))
        .query(&[("key", secret.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client
        .post(sidecar.url("/no-such-path"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    sidecar.shutdown().await;
    let log = logged(&lines);
    let line = log
        .lines()
        .find(|l| l.contains("/.well-known/oauth-authorization-server/mcp"))
        .unwrap_or_else(|| panic!("the 404 is logged:\n{log}"));
    assert!(
        line.contains("DEBUG") && line.contains("GET") && line.contains("404"),
        "{line}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("POST") && l.contains("/no-such-path") && l.contains("404")),
        "{log}"
    );
    assert!(!log.contains("key="), "no query string in the log:\n{log}");
    assert!(!log.contains("k9+Z"), "no query string in the log:\n{log}");
}

/// Reads until the peer closes the connection (EOF or reset), with the suite's deadline; returns
/// what arrived, or None when the connection was still open at the deadline.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::common::DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_its_headers_too_slowly_is_cut_off() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("HEADER_TIMEOUT", "300ms"),
        ("CLIENT_IDLE_TIMEOUT", "1h"),
    ])
    .await;
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    // Half a request head, then nothing: a slowloris client.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow)
        .await
        .expect("the slow connection is closed");
    assert!(!answer.contains("200 OK"), "{answer}");
    // Others are served meanwhile and after.
    let healthz = reqwest::get(sidecar.url("/healthz")).await.unwrap();
    assert_eq!(healthz.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_client_connections_are_closed_but_busy_ones_are_not() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("HEADER_TIMEOUT", "1h"),
        ("CLIENT_IDLE_TIMEOUT", "300ms"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A long tool call stays in flight, silent after its first event.
    let client = reqwest::Client::new();
    let mut busy = mcp_post(&client, &sidecar.url("/mcp"), call(5, "gated", json!({})))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut busy, &mut seen, "notifications/progress").await);

    // A connection that never sends a byte is closed...
    let mut silent = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent).await.is_some(),
        "silent connection closed"
    );

    // ...and so is a kept-alive one after its response.
    let mut kept = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let rest = read_until_closed(&mut kept)
        .await
        .expect("the kept-alive connection is closed once idle");
    assert!(rest.contains(r#"{"status":"ok"}"#), "{rest}");

    // The busy connection outlived both idle ones: its reply still arrives.
    mock.state.gate.notify_one();
    assert!(
        read_until(&mut busy, &mut seen, r#""id":5"#).await,
        "{seen}"
    );
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_and_the_limit_is_logged_once() {
    let (lines, _guard) = capture_logs("mcp_sidecar=info");
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("MAX_CONNECTIONS", "3"),
        ("HEADER_TIMEOUT", "1h"),
        ("CLIENT_IDLE_TIMEOUT", "1h"),
    ])
    .await;
    use tokio::io::AsyncWriteExt;
    let reached = |log: &str| log.matches("client connection limit reached").count();

    // One served client with a kept-alive connection, and two that hold theirs idle.
    let served = reqwest::Client::new();
    let healthz = served.get(sidecar.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let idle_a = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let idle_b = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let found =
        crate::common::poll(|| async { Some(logged(&lines)) }, |log| reached(log) == 1).await;
    assert!(found.is_some(), "the limit is logged:\n{}", logged(&lines));

    // Two more clients queue in the backlog.
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut waiting_c = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    waiting_c.write_all(request).await.unwrap();
    let mut waiting_d = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    waiting_d.write_all(request).await.unwrap();
    // The connected client is served all along.
    for _ in 0..5 {
        let response = served.get(sidecar.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut probe = [0u8; 1];
    assert!(
        matches!(waiting_c.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a client over the limit waits"
    );

    // Each closed connection lets one waiting client in.
    drop(idle_a);
    let answer = read_until_closed(&mut waiting_c).await.expect("served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle_b);
    let answer = read_until_closed(&mut waiting_d).await.expect("served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    sidecar.shutdown().await;
    assert_eq!(reached(&logged(&lines)), 1, "{}", logged(&lines));
}

#[tokio::test(flavor = "multi_thread")]
async fn read_timeout_ends_calls_to_a_silent_upstream() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("READ_TIMEOUT", "1s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");

    // Nothing at all: a JSON-RPC error with the request's id.
    let response = mcp_post(&client, &url, call(41, "silent", json!({})))
        .timeout(crate::common::DEADLINE)
        .send()
        .await
        .expect("the sidecar answers a call to a silent upstream");
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 41, "{body}");
    assert_eq!(
        body["error"]["data"]["reason"], "upstream_timeout",
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("READ_TIMEOUT"),
        "{body}"
    );

    // Silence after an event: the stream ends cleanly after it.
    let mut response = mcp_post(&client, &url, call(42, "hang", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(crate::common::DEADLINE, response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => break,
            other => panic!("the stream ends cleanly, got {other:?} after {seen:?}"),
        }
    }
    assert!(seen.contains("notifications/progress"), "{seen}");
    assert!(
        seen.ends_with("\n\n"),
        "ends at an event boundary: {seen:?}"
    );

    // Upstream comments are bytes: a call kept alive by them outlasts the timeout.
    let response = mcp_post(&client, &url, call(43, "ticking", json!({})))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.contains(r#""id":43"#), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_served_and_checked_by_authority() {
    let (mock, sidecar) = ready_pair().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(sidecar.url("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let response = mcp_post(
        &client,
        &sidecar.url("/mcp"),
        call(3, "echo", json!({"text": "h2"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("h2"));
    assert_eq!(mock.state.client_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_raises_the_soft_open_files_limit_to_the_hard_one() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tempfile::tempdir().unwrap();
    // Started with the soft limit at 256, as in the lock-out the issue describes.
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            r#"ulimit -Sn 256 && exec "$0" serve"#,
            env!("CARGO_BIN_EXE_mcp-sidecar"),
        ])
        .env_clear()
        .env("MCP_SIDECAR_UPSTREAM_URL", mock.url())
        .env("MCP_SIDECAR_TOKEN", TOKEN)
        .env("MCP_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("MCP_SIDECAR_STATE_DIR", state.path())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let up = crate::common::poll(
        || async { reqwest::get(&healthz).await.ok().map(|r| r.status()) },
        |status| *status == 200,
    )
    .await;
    assert!(up.is_some(), "the sidecar serves");
    let pid = child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_ne!(soft, "256", "{line}");
    assert_eq!(soft, hard, "{line}");
    child.kill().await.unwrap();
}

/// hyper (1.12) starts the header timer as soon as a kept-alive connection waits for its next
/// request: README promises that an idle HTTP/1.1 connection closes after the shorter timeout.
#[tokio::test(flavor = "multi_thread")]
async fn the_header_timeout_also_bounds_the_wait_for_the_next_request() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("HEADER_TIMEOUT", "300ms"),
        ("CLIENT_IDLE_TIMEOUT", "1h"),
    ])
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kept = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    let rest = read_until_closed(&mut kept).await;
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(rest.is_some(), "closed by the header timeout while idle");
}

/// A server error page that quotes the request back (a debug page, a misbehaving gateway):
/// the agent must not get the credential from its body.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_error_page_quoting_the_token_has_it_scrubbed() {
    let secret = format!("canary-{}-end", "a+b/c=d&e".repeat(25));
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [
                ("content-type", "text/html".to_string()),
                ("x-debug-authorization", presented.clone()),
            ],
            format!("<pre>request failed; headers: authorization: {presented}</pre>"),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", &secret)]).await;
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.headers()["x-debug-authorization"],
        "Bearer <redacted>"
    );
    let body = response.text().await.unwrap();
    assert!(!body.contains(&secret[..40]), "{body}");
    assert!(body.contains("authorization: Bearer <redacted>"), "{body}");
}

/// A hostile or debugging upstream that answers 200 with the request quoted (a tool returning
/// its headers, an echo endpoint): the agent gets neither the token nor a prefix of it, in a JSON
/// body, in an SSE event cut in the middle of the token, or in a header.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_success_answer_quoting_the_token_has_it_scrubbed() {
    let secret = format!("canary-{}-end", "k+l/m=n&o".repeat(25));
    let app = axum::Router::new().fallback(
        |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
            let presented = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let text = serde_json::to_string(&presented).unwrap();
            let sse = String::from_utf8_lossy(&body).contains("\"sse\"");
            if sse {
                // The token split over two chunks, at its middle, then a clean event.
                let event = format!("event: message\ndata: {{\"echo\":{text}}}\n\n");
                let (a, b) = event.split_at(event.len() / 2);
                let chunks: Vec<Result<String, std::convert::Infallible>> = vec![
                    Ok(a.to_string()),
                    Ok(b.to_string()),
                    Ok("event: message\ndata: {\"clean\":true}\n\n".to_string()),
                ];
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from_stream(futures_util::stream::iter(
                        chunks,
                    )))
                    .unwrap()
            } else {
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .header("x-seen-authorization", presented.clone())
                    .body(axum::body::Body::from(format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"echo\":{text}}}}}"
                    )))
                    .unwrap()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", &secret)]).await;
    let client = reqwest::Client::new();
    let json_escaped = serde_json::to_string(&secret).unwrap();

    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-seen-authorization"],
        "Bearer <redacted>"
    );
    let body = response.text().await.unwrap();
    assert!(!body.contains(&secret[..40]), "{body}");
    assert!(!body.contains(&json_escaped[1..41]), "{body}");
    let parsed: Value = serde_json::from_str(&body).expect("still JSON");
    assert_eq!(parsed["result"]["echo"], "Bearer <redacted>");

    let response = mcp_post(&client, &sidecar.url("/mcp"), call(2, "sse", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(!body.contains(&json_escaped[1..41]), "{body}");
    assert!(
        body.contains("data: {\"echo\":\"Bearer <redacted>\"}\n\n"),
        "{body}"
    );
    assert!(body.contains("data: {\"clean\":true}\n\n"), "{body}");
}

/// HTTP/2 has no header timer in hyper: the idle timeout bounds a connection whose request head
/// never completes, even when the peer never answers the GOAWAY's ping either.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_never_finishes_its_headers_is_cut_off() {
    let mock = MockUpstream::start(TOKEN, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", TOKEN),
        ("HEADER_TIMEOUT", "1h"),
        ("CLIENT_IDLE_TIMEOUT", "300ms"),
    ])
    .await;
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    slow.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame, then HEADERS for stream 1 without END_HEADERS: the
    // CONTINUATION that would finish them never comes.
    slow.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    slow.write_all(&[0, 0, 3, 1, 0, 0, 0, 0, 1, 0x82, 0x86, 0x84])
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut slow).await.is_some(),
        "the half-open HTTP/2 connection stays open"
    );
}

/// An error body too large to buffer is withheld, not cut: a cut could leave a secret's prefix.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_error_body_too_large_to_scrub_is_withheld() {
    let secret = format!("canary-{}-end", "q+r/s=t&u".repeat(25));
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut page = "x".repeat(300 * 1024);
        page.push_str(&presented);
        (axum::http::StatusCode::BAD_GATEWAY, page)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", &secret)]).await;
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(!body.contains("canary-"), "the secret's prefix leaked");
    assert!(
        body.contains("was withheld"),
        "{}",
        &body[..body.len().min(200)]
    );
}

/// Issue 11, defect 1: a 403 without a Bearer challenge (a tool denied, a policy) is the upstream
/// refusing one request, not the credential: the client gets the upstream's answer as a JSON-RPC
/// error (never a bare 403), the credential is not marked rejected and `/ready` stays ready. A 403
/// with a Bearer `insufficient_scope` challenge keeps its meaning.
#[tokio::test(flavor = "multi_thread")]
async fn a_403_without_a_bearer_challenge_carries_the_upstreams_answer() {
    let token = canary("forbidden");
    let mock = MockUpstream::start(&token, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", &token),
        ("READY_INTERVAL", "1h"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");

    // A JSON-RPC error body: passed on as it is, with 200 since the request carried an id.
    let denial = json!({"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"tool echo is not allowed for this user"}});
    *mock.state.forbid.lock().unwrap() = Some(Forbid {
        challenge: None,
        content_type: "application/json",
        body: denial.to_string(),
    });
    let response = mcp_post(&client, &url, call(7, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "an MCP server's answer to a refused call"
    );
    assert_eq!(response.json::<Value>().await.unwrap(), denial);

    // A text body quoting the credential: scrubbed, then cut, in the sidecar's JSON-RPC error.
    *mock.state.forbid.lock().unwrap() = Some(Forbid {
        challenge: None,
        content_type: "text/plain",
        body: format!(
            "Forbidden by policy: key {token} may not call echo. {}",
            "padding ".repeat(500)
        ),
    });
    let response = mcp_post(&client, &url, call(8, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 8);
    assert_eq!(body["error"]["code"], -32006);
    assert_eq!(body["error"]["data"]["reason"], "upstream_forbidden");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("may not call echo"), "{message}");
    assert!(message.contains("HTTP 403"), "{message}");
    assert!(
        !body.to_string().contains(&token),
        "the token is scrubbed: {body}"
    );
    assert!(
        !body.to_string().contains(&token[..40]),
        "no prefix of it either"
    );
    assert!(message.len() < 700, "cut: {} bytes", message.len());

    // Without an id (a notification) there is nothing to attach a result to: 400, still not 403.
    let response = mcp_post(
        &client,
        &url,
        json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"}).to_string(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], "upstream_forbidden");

    // Not the credential's fault: /ready stays ready, and the metrics name the refusal.
    let ready = client.get(sidecar.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"mcp_sidecar_requests_total{method="POST",outcome="upstream_forbidden",upstream="default"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"outcome="upstream_auth_rejected"} 1"#),
        "{metrics}"
    );

    // A 403 WITH a Bearer insufficient_scope challenge is about the credential, as before: a
    // static token cannot be stepped up, so the credential is reported rejected.
    *mock.state.forbid.lock().unwrap() = Some(Forbid {
        challenge: Some(r#"Bearer error="insufficient_scope", scope="admin""#.into()),
        content_type: "text/plain",
        body: "insufficient scope".into(),
    });
    let response = mcp_post(&client, &url, call(9, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["data"]["reason"], "upstream_auth_rejected");
}

/// An error answer's headers lose every registered form, short ones too (as its body does): the
/// body scrubber's forms start at 8 bytes, and with no form that long it scrubs no header.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_answer_header_quoting_a_short_header_value_is_scrubbed() {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        axum::response::Response::builder()
            .status(500)
            .header("content-type", "text/plain")
            .header("x-debug-api-key", key)
            .body(axum::body::Body::from("internal error"))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream),
        ("AUTH", "none"),
        ("HEADERS", "X-Api-Key: k7Qz9w"),
    ])
    .await;
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-debug-api-key"], "<redacted>");
}

/// An upstream that compresses its answer all the same: the scrubber would search compressed
/// bytes and the client decode the token out of them, so the body is withheld. (Without an
/// Accept-Encoding any coding is acceptable, RFC 9110 12.5.3: the sidecar asks for identity.)
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_echo_of_the_token_is_not_passed_on() {
    let secret = format!("canary-{}-end", "gzipgzip".repeat(10));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = asked.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| async move {
        if headers.contains_key("x-test") {
            // The proxied request, not the readiness handshake.
            *seen.lock().unwrap() = headers
                .get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_string());
        }
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body =
            format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"echo\":\"{presented}\"}}}}");
        let mut child = std::process::Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let gz = child.wait_with_output().unwrap().stdout;
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(axum::body::Body::from(gz))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", &secret)]).await;
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let encoding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.bytes().await.unwrap();
    // What the agent's HTTP client would show it after decoding.
    let decoded = if encoding.as_deref() == Some("gzip") {
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap().stdout
    } else {
        body.to_vec()
    };
    let text = String::from_utf8_lossy(&decoded);
    assert!(
        !text.contains(&secret[..20]),
        "the agent reads the token: {text}"
    );
    assert!(text.contains("handshake_failed"), "{text}");
    assert_eq!(asked.lock().unwrap().as_deref(), Some("identity"));
}

/// A 403's JSON-RPC error is passed on, and JSON may escape any character: a token quoted with
/// one letter escaped (`\u0063`) matches no form in the bytes, but the client decodes it whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_jsonrpc_error_quoting_an_escaped_token_is_scrubbed_once_decoded() {
    let secret = format!("canary-{}-end", "escaped".repeat(10));
    let upstream = escaping_upstream(|escaped| {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{{\"code\":-32000,\"message\":\"denied for {escaped}\"}}}}"
        )
    })
    .await;
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", &secret)]).await;
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(&secret[..20]),
        "the agent reads the token: {message}"
    );
    assert_eq!(message, "denied for Bearer <redacted>");
    assert_eq!(body["error"]["code"], -32000);
}

/// A 403 whose body is JSON but not a JSON-RPC error is quoted in the sidecar's own error: its
/// strings are decoded and scrubbed first, so a token with one letter escaped (`\u0063`) is not
/// quoted in the escaped form the agent could read back.
#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_json_body_quoting_an_escaped_token_is_scrubbed_once_decoded() {
    let secret = format!("canary-{}-end", "escaped+/=&".repeat(10));
    let upstream =
        escaping_upstream(|escaped| format!("{{\"detail\":\"denied for {escaped}\"}}")).await;
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &upstream), ("TOKEN", &secret)]).await;
    let client = reqwest::Client::new();
    let response = mcp_post(&client, &sidecar.url("/mcp"), call(1, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32006, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("denied for Bearer"), "{message}");
    assert!(
        !message.contains(&secret[1..30]),
        "the agent reads the escaped token: {message}"
    );
}

/// An upstream that answers the test's client (`x-test`) 403, and everything else 200, with
/// `body(the Authorization it got, one letter JSON-escaped)` as JSON; its URL.
async fn escaping_upstream(body: fn(&str) -> String) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| async move {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let escaped = presented.replacen("Bearer c", "Bearer \\u0063", 1);
        let status = if headers.contains_key("x-test") {
            403
        } else {
            200
        };
        axum::response::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body(&escaped)))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    upstream
}
