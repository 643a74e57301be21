//! Several upstreams behind one sidecar: each served at `PATH/NAME` with its own credential,
//! readiness and routes. The canaries hold `+ / = &` and are longer than any cut, so a token of
//! one upstream found anywhere near another (its requests, the sidecar's logs, its errors) is
//! caught whole or in part.

use serde_json::{Value, json};

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{Sidecar, call, mcp_post, poll};

const CANARY_A: &str = "alpha-canary+/=&-0123456789abcdefghijklmnopqrstuvwxyz-ALPHA";
const CANARY_B: &str = "beta-canary+/=&-zyxwvutsrqponmlkjihgfedcba-9876543210-BETA";

/// Every byte of every request the mock received, headers and body.
fn received(mock: &MockUpstream) -> String {
    mock.state
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{:?} {:?} {}",
                r.headers,
                r.query,
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect()
}

fn leaks(text: &str, canary: &str) -> bool {
    text.contains(canary)
        || text.contains(&canary[..16])
        || text.contains(&canary[canary.len() - 16..])
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/mcp")
}

/// Polls `/ready` until `accept` holds for (status, body).
async fn ready_until(sidecar: &Sidecar, accept: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = sidecar.url("/ready");
    let mut last = (0, Value::Null);
    let found = poll(
        || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = client.get(&url).send().await.ok()?;
                let status = response.status().as_u16();
                Some((status, response.json::<Value>().await.ok()?))
            }
        },
        |(status, body)| {
            last = (*status, body.clone());
            accept(*status, body)
        },
    )
    .await;
    found.unwrap_or_else(|| panic!("/ready never matched; last: {last:?}"))
}

fn entry<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["upstreams"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["name"] == name))
        .unwrap_or_else(|| panic!("no upstream {name} in {body}"))
}

#[tokio::test]
async fn each_token_reaches_only_its_own_upstream() {
    let (lines, _guard) = crate::proxy::capture_logs("mcp_sidecar=debug");
    let alpha = MockUpstream::start(CANARY_A, Mode::Legacy);
    let beta = MockUpstream::start(CANARY_B, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", &alpha.url()),
        ("UPSTREAMS__ALPHA__TOKEN", CANARY_A),
        ("UPSTREAMS__BETA__UPSTREAM_URL", &beta.url()),
        ("UPSTREAMS__BETA__TOKEN", CANARY_B),
    ])
    .await;
    let (status, body) = ready_until(&sidecar, |status, _| status == 200).await;
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
    assert_eq!(entry(&body, "alpha")["path"], "/mcp/alpha");
    assert_eq!(entry(&body, "beta")["required"], true);

    let client = reqwest::Client::new();
    for (path, text) in [("/mcp/alpha", "to-alpha"), ("/mcp/beta", "to-beta")] {
        let response = mcp_post(
            &client,
            &sidecar.url(path),
            call(1, "echo", json!({"text": text})),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["result"]["content"][0]["text"], text);
    }
    // Each call reached its own upstream only.
    let to_alpha = received(&alpha);
    let to_beta = received(&beta);
    assert!(to_alpha.contains("to-alpha") && !to_alpha.contains("to-beta"));
    assert!(to_beta.contains("to-beta") && !to_beta.contains("to-alpha"));
    for request in alpha.state.requests() {
        assert_eq!(
            request.authorization(),
            Some(format!("Bearer {CANARY_A}").as_str())
        );
    }
    for request in beta.state.requests() {
        assert_eq!(
            request.authorization(),
            Some(format!("Bearer {CANARY_B}").as_str())
        );
    }
    assert!(!leaks(&to_alpha, CANARY_B), "beta's token reached alpha");
    assert!(!leaks(&to_beta, CANARY_A), "alpha's token reached beta");

    // The gate's list, one upstream's readiness, an unknown name.
    let listed = client.get(sidecar.url("/upstreams")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    assert!(
        listed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        listed.text().await.unwrap(),
        "alpha /mcp/alpha required\nbeta /mcp/beta required\n"
    );
    let one = client.get(sidecar.url("/ready/beta")).send().await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["name"], "beta");
    let unknown = client
        .get(sidecar.url("/ready/gamma"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["error"], "not_found");
    // No upstream is named default here: PATH itself serves nothing.
    let bare = mcp_post(&client, &sidecar.url("/mcp"), call(2, "echo", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 404);

    let status: Value = client
        .get(sidecar.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sections = status["upstreams"].as_array().unwrap();
    assert_eq!(sections.len(), 2);
    assert_eq!(sections[1]["name"], "beta");
    assert!(
        sections[1]["upstream"]
            .as_str()
            .unwrap()
            .contains(&beta.addr.port().to_string())
    );
    // Metrics: every series carries its upstream.
    let metrics = client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in ["alpha", "beta"] {
        let forwarded = format!(
            "mcp_sidecar_requests_total{{method=\"POST\",outcome=\"forwarded\",upstream=\"{name}\"}} 1"
        );
        assert!(metrics.contains(&forwarded), "{metrics}");
        let ready = format!("mcp_sidecar_ready{{upstream=\"{name}\"}} 1");
        assert!(metrics.contains(&ready), "{metrics}");
    }
    assert_eq!(sections[0]["counters"]["requests"], 1);
    assert_eq!(status["counters"]["requests"], 2, "the sidecar's totals");
    let shown = format!("{status}{body}{}", crate::proxy::logged(&lines));
    for canary in [CANARY_A, CANARY_B] {
        assert!(
            !leaks(&shown, canary),
            "{canary} in /status, /ready or the log: {shown}"
        );
    }
}

#[tokio::test]
async fn one_upstream_down_fails_its_route_and_ready_while_the_other_serves() {
    let (lines, _guard) = crate::proxy::capture_logs("mcp_sidecar=debug");
    let beta = MockUpstream::start(CANARY_B, Mode::Legacy);
    let down = closed_port_url();
    let sidecar = Sidecar::start(&[
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", &down),
        ("UPSTREAMS__ALPHA__TOKEN", CANARY_A),
        ("UPSTREAMS__BETA__UPSTREAM_URL", &beta.url()),
        ("UPSTREAMS__BETA__TOKEN", CANARY_B),
    ])
    .await;
    let (status, body) = ready_until(&sidecar, |_, body| {
        body["upstreams"][1]["ready"] == true
            && body["upstreams"][0]["reason"] == "upstream_unreachable"
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["reason"], "upstream_unreachable",
        "the failing required upstream's reason"
    );
    assert_eq!(entry(&body, "alpha")["ready"], false);

    let client = reqwest::Client::new();
    let failed = mcp_post(
        &client,
        &sidecar.url("/mcp/alpha"),
        call(1, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(failed.status(), 502);
    let error: Value = failed.json().await.unwrap();
    assert_eq!(error["jsonrpc"], "2.0", "{error}");
    assert!(error["error"]["code"].is_i64(), "{error}");
    let served = mcp_post(
        &client,
        &sidecar.url("/mcp/beta"),
        call(2, "echo", json!({"text": "y"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(served.status(), 200);
    let alone = client.get(sidecar.url("/ready/beta")).send().await.unwrap();
    assert_eq!(alone.status(), 200);
    let failing = client
        .get(sidecar.url("/ready/alpha"))
        .send()
        .await
        .unwrap();
    assert_eq!(failing.status(), 503);

    // Alpha's failure never carries beta's token, nor alpha's own.
    let shown = format!("{error}{body}{}", crate::proxy::logged(&lines));
    for canary in [CANARY_A, CANARY_B] {
        assert!(!leaks(&shown, canary), "{shown}");
    }
    assert!(!leaks(&received(&beta), CANARY_A));
}

#[tokio::test]
async fn an_optional_upstream_down_leaves_ready_green() {
    let beta = MockUpstream::start(CANARY_B, Mode::Legacy);
    let down = closed_port_url();
    let sidecar = Sidecar::start(&[
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", &down),
        ("UPSTREAMS__ALPHA__REQUIRED", "false"),
        ("UPSTREAMS__ALPHA__AUTH", "none"),
        ("UPSTREAMS__BETA__UPSTREAM_URL", &beta.url()),
        ("UPSTREAMS__BETA__TOKEN", CANARY_B),
    ])
    .await;
    let (status, body) = ready_until(&sidecar, |_, body| {
        body["upstreams"][0]["reason"] == "upstream_unreachable"
            && body["upstreams"][1]["ready"] == true
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["reason"], "ready");
    assert_eq!(entry(&body, "alpha")["required"], false);
    let client = reqwest::Client::new();
    let listed = client.get(sidecar.url("/upstreams")).send().await.unwrap();
    assert_eq!(
        listed.text().await.unwrap(),
        "alpha /mcp/alpha optional\nbeta /mcp/beta required\n"
    );
}

#[tokio::test]
async fn the_single_form_keeps_its_fields_and_lists_itself_as_default() {
    let mock = MockUpstream::start(CANARY_A, Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", CANARY_A)]).await;
    let body = sidecar.wait_reason("ready").await;
    assert_eq!(body["upstreams"][0]["name"], "default");
    assert_eq!(body["upstreams"][0]["path"], "/mcp");
    let client = reqwest::Client::new();
    let listed = client.get(sidecar.url("/upstreams")).send().await.unwrap();
    assert_eq!(listed.text().await.unwrap(), "default /mcp required\n");
    let status: Value = client
        .get(sidecar.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["path"], "/mcp", "today's top-level fields stay");
    assert!(status["token"].is_object());
}

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(format!("MCP_SIDECAR_{k}"), v);
    }
    cmd.output().expect("run the binary")
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_and_wait_for_only_the_upstreams_named() {
    let beta = MockUpstream::start(CANARY_B, Mode::Legacy);
    let down = closed_port_url();
    let sidecar = Sidecar::start(&[
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", &down),
        ("UPSTREAMS__ALPHA__AUTH", "none"),
        ("UPSTREAMS__BETA__UPSTREAM_URL", &beta.url()),
        ("UPSTREAMS__BETA__TOKEN", CANARY_B),
    ])
    .await;
    ready_until(&sidecar, |_, body| {
        body["upstreams"][1]["ready"] == true
            && body["upstreams"][0]["reason"] == "upstream_unreachable"
    })
    .await;
    let ready = sidecar.url("/ready");
    let output = tokio::task::spawn_blocking(move || {
        let beta = run_binary(&["probe", "--url", &ready, "--upstream", "beta"], &[]);
        let both = run_binary(
            &[
                "probe",
                "--url",
                &ready,
                "--upstream",
                "beta",
                "--upstream",
                "alpha",
            ],
            &[],
        );
        let unknown = run_binary(&["probe", "--url", &ready, "--upstream", "gamma"], &[]);
        let bad = run_binary(&["probe", "--url", &ready, "--upstream", "../x"], &[]);
        let wait_beta = run_binary(
            &[
                "wait",
                "--url",
                &ready,
                "--upstream",
                "beta",
                "--timeout",
                "5s",
            ],
            &[],
        );
        let wait_both = run_binary(
            &[
                "wait",
                "--url",
                &ready,
                "--upstream",
                "alpha",
                "--upstream",
                "beta",
                "--timeout",
                "1s",
            ],
            &[],
        );
        (beta, both, unknown, bad, wait_beta, wait_both)
    })
    .await
    .unwrap();
    let (beta, both, unknown, bad, wait_beta, wait_both) = output;
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(beta.status.code(), Some(0), "{}", stderr(&beta));
    assert_eq!(both.status.code(), Some(1));
    assert!(
        stderr(&both).contains("upstream_unreachable"),
        "{}",
        stderr(&both)
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown_upstream"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(bad.status.code(), Some(64));
    assert_eq!(wait_beta.status.code(), Some(0), "{}", stderr(&wait_beta));
    assert_eq!(wait_both.status.code(), Some(1));
    let lines = stderr(&wait_both);
    assert!(
        lines.contains("alpha: not ready: upstream_unreachable"),
        "{lines}"
    );
    assert!(lines.contains("beta: ready"), "{lines}");
    assert!(lines.contains("alpha: gave up"), "{lines}");
    assert!(!lines.contains("beta: gave up"), "{lines}");

    // `probe --list`: the gate's way to read /upstreams with this binary alone.
    let list_url = sidecar.url("/upstreams");
    let missing_url = sidecar.url("/no-such-list");
    let (list, missing) = tokio::task::spawn_blocking(move || {
        (
            run_binary(&["probe", "--list", "--url", &list_url], &[]),
            run_binary(&["probe", "--list", "--url", &missing_url], &[]),
        )
    })
    .await
    .unwrap();
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "alpha /mcp/alpha required\nbeta /mcp/beta required\n"
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("answered 404"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn check_config_prints_each_upstream_with_secrets_redacted() {
    let output = run_binary(
        &["check-config"],
        &[
            (
                "UPSTREAMS__ALPHA__UPSTREAM_URL",
                "https://alpha.example/mcp",
            ),
            ("UPSTREAMS__ALPHA__TOKEN", CANARY_A),
            ("UPSTREAMS__BETA__UPSTREAM_URL", "https://beta.example/mcp"),
            (
                "UPSTREAMS__BETA__HEADERS",
                &format!("X-Api-Key: {CANARY_B}"),
            ),
            ("UPSTREAMS__BETA__REQUIRED", "false"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("upstream alpha:"), "{stdout}");
    assert!(stdout.contains("upstream beta:"), "{stdout}");
    assert!(stdout.contains("/mcp/beta"), "{stdout}");
    assert!(stdout.contains("x-api-key: <redacted>"), "{stdout}");
    for canary in [CANARY_A, CANARY_B] {
        assert!(!leaks(&stdout, canary), "{stdout}");
    }
    // Mixing the forms: exit 64 naming the misplaced key.
    let mixed = run_binary(
        &["check-config"],
        &[
            ("UPSTREAM_URL", "https://top.example/mcp"),
            (
                "UPSTREAMS__ALPHA__UPSTREAM_URL",
                "https://alpha.example/mcp",
            ),
        ],
    );
    assert_eq!(mixed.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(
        stderr.contains("MCP_SIDECAR_UPSTREAM_URL: is a setting of one upstream"),
        "{stderr}"
    );
}
