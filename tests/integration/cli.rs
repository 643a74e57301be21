//! The binary as operators run it: exit codes, `check-config`, `probe`, `wait`, and the promise
//! that no secret ever reaches a log line or a response.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;

use serde_json::json;

use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{Sidecar, call, mcp_post, poll};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-sidecar");

/// The binary with a clean environment plus `env` (keys without the prefix).
fn sidecar_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(format!("MCP_SIDECAR_{k}"), v);
    }
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    sidecar_cmd(args, env).output().expect("run the binary")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_configuration_exits_64_listing_every_bad_key() {
    let env = [
        ("UPSTREAM_URL", "ftp://mcp.example.com/mcp"),
        ("LISTEN", "everywhere"),
        ("READY_TIMEOUT", "soon"),
        ("TOKEN", "a"),
        ("TOKEN_FILE", "/run/secrets/none"),
        ("LOG_FORMAT", "xml"),
        ("READY_INTERVL", "1s"),
    ];
    for command in ["check-config", "serve"] {
        let output = run(&[command], &env);
        assert_eq!(output.status.code(), Some(64), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("6 problems"), "{command}: {stderr}");
        for key in [
            "MCP_SIDECAR_UPSTREAM_URL",
            "MCP_SIDECAR_LISTEN",
            "MCP_SIDECAR_READY_TIMEOUT",
            "MCP_SIDECAR_TOKEN:",
            "MCP_SIDECAR_LOG_FORMAT",
            "MCP_SIDECAR_READY_INTERVL: unknown key (did you mean MCP_SIDECAR_READY_INTERVAL?)",
        ] {
            assert!(
                stderr.contains(key),
                "{command}: {key} missing from:\n{stderr}"
            );
        }
    }
}

#[test]
fn unknown_command_line_flag_exits_64() {
    let output = run(&["serve", "--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(64));
    let output = run(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("mcp-sidecar "));
}

#[test]
fn check_config_prints_resolved_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "canary-in-file-3141").unwrap();
    let output = run(
        &["check-config"],
        &[
            (
                "UPSTREAM_URL",
                "https://mcp.example.com/mcp?key=canary-query-2718",
            ),
            ("TOKEN_FILE", token_file.to_str().unwrap()),
            ("HEADERS", "X-Api-Key: canary-header-1618"),
            ("CLIENT_TOKEN", "canary-client-1414"),
        ],
    );
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for canary in [
        "canary-in-file",
        "canary-query",
        "canary-header",
        "canary-client",
    ] {
        assert!(!stdout.contains(canary), "{canary} leaked:\n{stdout}");
    }
    // The key column is as wide as the longest key shown, which new keys change.
    let row = |key: &str, value: &str| {
        stdout.lines().any(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(' ') && rest.trim_start() == value)
        })
    };
    assert!(row("AUTH", "bearer"), "{stdout}");
    assert!(
        stdout.contains(&format!("file {}", token_file.display())),
        "{stdout}"
    );
    assert!(stdout.contains("x-api-key: <redacted>"), "{stdout}");
    assert!(row("CLIENT_TOKEN", "<redacted>"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_exits_0_when_ready_and_1_when_not() {
    let mock = MockUpstream::start("t", Mode::Legacy);
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t")]).await;
    sidecar.wait_reason("ready").await;
    let ready_url = sidecar.url("/ready");
    let output = run(&["probe", "--url", &ready_url], &[]);
    assert_eq!(output.status.code(), Some(0));

    let lonely = Sidecar::start(&[("UPSTREAM_URL", "http://127.0.0.1:9/mcp")]).await;
    lonely.wait_reason("upstream_unreachable").await;
    let output = run(&["probe", "--url", &lonely.url("/ready")], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("upstream_unreachable"));

    // Liveness does not depend on the upstream; the URL comes from MCP_SIDECAR_LISTEN.
    let listen = lonely.addr.to_string();
    let output = run(&["probe", "--live"], &[("LISTEN", &listen)]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // ... or from the TOML file the sidecar runs with.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.toml");
    std::fs::write(&file, format!("listen = \"{listen}\"\n")).unwrap();
    let output = run(
        &["probe", "--live", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(&["probe"], &[("LISTEN", "nonsense")]);
    assert_eq!(
        output.status.code(),
        Some(64),
        "a bad LISTEN is reported, not guessed around: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_reports_reasons_then_execs_the_command() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", &url), ("TOKEN", "t")]).await;
    let ready_url = sidecar.url("/ready");
    let child = sidecar_cmd(
        &[
            "wait",
            "--url",
            &ready_url,
            "--timeout",
            "30s",
            "--",
            "sh",
            "-c",
            "echo launched",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    sidecar.wait_reason("upstream_unreachable").await;
    let _mock = MockUpstream::start_on(port, "t", Mode::Legacy);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "launched\n");
    assert!(
        stderr.contains("not ready: upstream_unreachable"),
        "{stderr}"
    );
    assert!(stderr.contains("ready after"), "{stderr}");
}

#[test]
fn wait_times_out_with_the_last_reason() {
    let port = free_port();
    let output = run(
        &[
            "wait",
            "--url",
            &format!("http://127.0.0.1:{port}/ready"),
            "--timeout",
            "1s",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "gave up after 1s: last reason: sidecar_unreachable: no sidecar answers at http://127.0.0.1:{port}/ready (connection refused)"
        )),
        "{stderr}"
    );
}

/// Runs the real binary at trace level through every path that handles a secret, and greps all
/// output and every response for the canaries.
#[tokio::test(flavor = "multi_thread")]
async fn canary_secrets_never_appear_in_logs_or_responses() {
    const UPSTREAM: &str = "canary-upstream-7c1e9d";
    const CLIENT: &str = "canary-client-2b4f88";
    const HEADER: &str = "canary-header-5a0e31";
    let canaries = [UPSTREAM, CLIENT, HEADER];

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{UPSTREAM}\n")).unwrap();
    let mut mock = MockUpstream::start(UPSTREAM, Mode::LegacySse);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("UPSTREAM_URL", mock.url()),
        ("LISTEN", listen.clone()),
        ("TOKEN_FILE", token_file.to_str().unwrap().to_string()),
        ("CLIENT_TOKEN", CLIENT.to_string()),
        ("HEADERS", format!("X-Api-Key: {HEADER}")),
        ("LOG", "trace".to_string()),
        ("READY_INTERVAL", "1s".to_string()),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let child = sidecar_cmd(&["serve"], &env_refs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();

    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    let mut seen = Vec::<String>::new();
    let ready = poll(
        || {
            let client = client.clone();
            let url = format!("{base}/ready");
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        },
        |status| *status == 200,
    )
    .await;
    assert!(ready.is_some(), "the sidecar never became ready");

    let record = |response: reqwest::Response| {
        let head = format!("{} {:?}", response.status(), response.headers());
        async move { format!("{head}\n{}", response.text().await.unwrap_or_default()) }
    };
    let mcp = format!("{base}/mcp");
    let authed = |b: reqwest::RequestBuilder| b.header("authorization", format!("Bearer {CLIENT}"));
    seen.push(
        record(
            authed(mcp_post(
                &client,
                &mcp,
                call(1, "echo", json!({"text": "ok"})),
            ))
            .send()
            .await
            .unwrap(),
        )
        .await,
    );
    mock.state.reject_next.store(1, Ordering::SeqCst);
    seen.push(
        record(
            authed(mcp_post(
                &client,
                &mcp,
                call(2, "echo", json!({"text": "retry"})),
            ))
            .send()
            .await
            .unwrap(),
        )
        .await,
    );
    seen.push(
        record(
            mcp_post(&client, &mcp, call(3, "echo", json!({})))
                .header("authorization", "Bearer wrong")
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    seen.push(
        record(
            authed(mcp_post(&client, &mcp, call(4, "echo", json!({}))))
                .header("host", "evil.example")
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    for path in [
        "/ready",
        "/status",
        "/metrics",
        "/healthz",
        "/.well-known/oauth-protected-resource",
    ] {
        seen.push(record(client.get(format!("{base}{path}")).send().await.unwrap()).await);
    }
    mock.state.set_token("something-else");
    seen.push(
        record(
            authed(mcp_post(&client, &mcp, call(5, "echo", json!({}))))
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    mock.stop();
    seen.push(
        record(
            authed(mcp_post(&client, &mcp, call(6, "echo", json!({}))))
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    seen.push(record(client.get(format!("{base}/status")).send().await.unwrap()).await);

    let headers_seen = mock.state.requests();
    assert!(
        headers_seen
            .iter()
            .any(|r| r.headers.get("x-api-key").is_some_and(|v| v == HEADER)),
        "HEADERS were injected upstream"
    );

    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "SIGTERM is a clean exit");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        logs.lines().count() > 20,
        "trace logging produced output:\n{logs}"
    );
    assert!(
        logs.contains("upstream rejected the token"),
        "the refresh path ran:\n{logs}"
    );
    for canary in canaries {
        for line in logs.lines() {
            assert!(
                !line.contains(canary),
                "{canary} leaked into the log: {line}"
            );
        }
        for response in &seen {
            assert!(
                !response.contains(canary),
                "{canary} leaked into a response: {response}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let mock = MockUpstream::start("t", Mode::Legacy);
    let listen = format!("127.0.0.1:{}", free_port());
    let child = sidecar_cmd(
        &["serve"],
        &[
            ("UPSTREAM_URL", &mock.url()),
            ("TOKEN", "t"),
            ("LISTEN", &listen),
            ("LOG_FORMAT", "json"),
            ("LOG", "debug"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id().to_string();
    let client = reqwest::Client::new();
    let ready = poll(
        || {
            let client = client.clone();
            let url = format!("http://{listen}/ready");
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        },
        |status| *status == 200,
    )
    .await;
    assert!(ready.is_some());
    let response = mcp_post(
        &client,
        &format!("http://{listen}/mcp"),
        call(1, "echo", json!({"text": "x"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for expected in [
        "mcp-sidecar listening",
        "upstream ready",
        "proxied",
        "received shutdown signal",
    ] {
        assert!(
            messages.contains(&expected),
            "{expected} missing from {messages:?}"
        );
    }
    let proxied = lines.iter().find(|l| l["message"] == "proxied").unwrap();
    assert_eq!(proxied["rpc"], "tools/call");
    assert_eq!(proxied["status"], 200);
    let listening = lines
        .iter()
        .find(|l| l["message"] == "mcp-sidecar listening")
        .unwrap();
    assert_eq!(listening["level"], "INFO");
}

#[test]
fn config_file_errors_name_the_file_as_given_and_only_the_real_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.toml");
    std::fs::write(
        &file,
        "upstream_url = \"https://x.example/mcp\nlisten = 3\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let output = run(&["check-config", "--config", path], &[]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--config: {path} is not valid TOML at line 1")),
        "{stderr}"
    );
    assert!(stderr.contains("(1 problem)"), "{stderr}");
    assert!(!stderr.contains("UPSTREAM_URL"), "{stderr}");
    assert!(!stderr.contains("MCP_SIDECAR_CONFIG"), "{stderr}");

    let output = run(&["check-config"], &[("CONFIG", path)]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("MCP_SIDECAR_CONFIG: {path} is not valid TOML")),
        "{stderr}"
    );

    std::fs::write(&file, "UPSTREAM_URL = \"https://x.example/mcp\"\n").unwrap();
    let output = run(&["check-config", "--config", path], &[]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "UPSTREAM_URL in {path}: unknown key (keys in a TOML file are lower case: did you mean upstream_url?)"
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_accepts_localhost() {
    let port = free_port();
    let listen = format!("localhost:{port}");
    let env = [
        ("UPSTREAM_URL", "http://127.0.0.1:9/mcp"),
        ("LISTEN", listen.as_str()),
    ];
    let output = run(&["check-config"], &env);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let child = sidecar_cmd(&["serve"], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let live = poll(
        || {
            let client = client.clone();
            let url = url.clone();
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        },
        |status| *status == 200,
    )
    .await;
    // probe finds the same address from the same setting.
    let probe = run(&["probe", "--live"], &env);
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        live.is_some(),
        "never served on {listen}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        probe.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_and_probe_say_what_answered_when_it_is_not_a_sidecar() {
    let sidecar = Sidecar::start(&[("UPSTREAM_URL", "http://127.0.0.1:9/mcp")]).await;
    let wrong = sidecar.url("/nope");
    let expected =
        format!("{wrong} answered HTTP 404 Not Found, which is not a sidecar readiness report");
    let wrong_for_wait = wrong.clone();
    let output = tokio::task::spawn_blocking(move || {
        run(&["wait", "--url", &wrong_for_wait, "--timeout", "1s"], &[])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("not ready: not_a_sidecar: {expected}")),
        "{stderr}"
    );
    assert!(!stderr.contains(": : "), "{stderr}");

    let output = tokio::task::spawn_blocking(move || run(&["probe", "--url", &wrong], &[]))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains(": : "), "{stderr}");
}

#[test]
fn a_misspelt_log_level_is_a_configuration_error() {
    let output = run(
        &["check-config"],
        &[("UPSTREAM_URL", "https://x.example/mcp"), ("LOG", "inof")],
    );
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MCP_SIDECAR_LOG: \"inof\" is not a log level (did you mean info?)"),
        "{stderr}"
    );
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE at once, as
/// `mcp-sidecar check-config | head -3` does once head has its lines.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_closed_stdout_or_stderr_is_not_a_panic() {
    let port = free_port();
    let nobody = format!("http://127.0.0.1:{port}/ready");
    let valid = [("UPSTREAM_URL", "https://x.example/mcp")];
    // (arguments, environment, expected exit code, which stream is closed)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: [Case; 8] = [
        (&["check-config"], &valid, 0, "stdout"),
        (&["check-config"], &[], 64, "stderr"),
        (&["--version"], &[], 0, "stdout"),
        (&["--help"], &[], 0, "stdout"),
        (
            &["wait", "--url", &nobody, "--timeout", "1s"],
            &[],
            1,
            "stderr",
        ),
        (&["probe", "--url", &nobody], &[], 1, "stderr"),
        (&["login"], &valid, 64, "stderr"),
        (&["demo", "--listen", "nonsense"], &[], 64, "stderr"),
    ];
    for (args, env, code, closed) in cases {
        let mut cmd = sidecar_cmd(args, env);
        if closed == "stdout" {
            cmd.stdout(closed_pipe()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(closed_pipe());
        }
        let output = cmd.output().expect("run the binary");
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?} with {closed} closed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("panicked"), "{args:?}: {all}");
    }
}

/// In Kubernetes and with secret agents the token file often arrives after the container starts:
/// the sidecar serves, says what it waits for, and becomes ready once the file is there.
#[tokio::test(flavor = "multi_thread")]
async fn serve_waits_for_a_token_file_that_is_not_there_yet() {
    let canary = format!("canary+/=&{}", "Qw7+/=&".repeat(40));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let mock = MockUpstream::start(&canary, Mode::Legacy);
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("UPSTREAM_URL", mock.url()),
        ("LISTEN", listen.clone()),
        ("TOKEN_FILE", token_file.to_str().unwrap().to_string()),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let check = run(&["check-config"], &env_refs);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(&format!(
            "note: TOKEN_FILE: {} does not exist (yet); the sidecar serves and reports auth_required",
            token_file.display()
        )),
        "{check:?}"
    );
    let child = sidecar_cmd(&["serve"], &env_refs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let client = reqwest::Client::new();
    let ready_url = format!("http://{listen}/ready");
    let pending = poll(
        || {
            let (client, url) = (client.clone(), ready_url.clone());
            async move {
                let response = client.get(url).send().await.ok()?;
                response.json::<serde_json::Value>().await.ok()
            }
        },
        |body| body["reason"] == "auth_required",
    )
    .await;
    let waited = {
        let url = ready_url.clone();
        tokio::task::spawn_blocking(move || run(&["wait", "--url", &url, "--timeout", "1s"], &[]))
            .await
            .unwrap()
    };
    std::fs::write(&token_file, format!("{canary}\n")).unwrap();
    let ready = poll(
        || {
            let (client, url) = (client.clone(), ready_url.clone());
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        },
        |status| *status == 200,
    )
    .await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    let pending = pending.unwrap_or_else(|| panic!("never reported auth_required:\n{logs}"));
    let detail = pending["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "TOKEN_FILE: {} does not exist (yet)",
            token_file.display()
        )),
        "{pending}"
    );
    let waited_stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(
        waited_stderr.contains("not ready: auth_required: ")
            && waited_stderr.contains("TOKEN_FILE"),
        "{waited_stderr}"
    );
    assert!(
        ready.is_some(),
        "never ready once the file arrived:\n{logs}"
    );
    assert!(
        logs.contains("a secret file is not there yet"),
        "said at start:\n{logs}"
    );
    assert_eq!(output.status.code(), Some(0), "{logs}");
    assert!(!logs.contains(&canary));

    // A path that can never hold a token is a configuration error, as before.
    for (value, expected) in [
        ("", "MCP_SIDECAR_TOKEN_FILE: is set but empty"),
        (dir.path().to_str().unwrap(), "is a directory, not a file"),
    ] {
        for command in ["check-config", "serve"] {
            let output = run(
                &[command],
                &[
                    ("UPSTREAM_URL", "https://x.example/mcp"),
                    ("TOKEN_FILE", value),
                ],
            );
            assert_eq!(output.status.code(), Some(64), "{command} {value:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(expected), "{command}: {stderr}");
        }
    }
}

/// `mcp-sidecar serve 2>&1 | head` or a log collector that went away: the sidecar keeps serving
/// (a log line nobody reads is lost, not a panic in the request's task).
#[tokio::test(flavor = "multi_thread")]
async fn serve_keeps_serving_when_its_log_reader_is_gone() {
    let mock = MockUpstream::start("t", Mode::Legacy);
    let listen = format!("127.0.0.1:{}", free_port());
    let child = sidecar_cmd(
        &["serve"],
        &[
            ("UPSTREAM_URL", &mock.url()),
            ("TOKEN", "t"),
            ("LISTEN", &listen),
            ("LOG", "debug"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(closed_pipe())
    .spawn()
    .unwrap();
    let pid = child.id().to_string();
    let client = reqwest::Client::new();
    let ready = poll(
        || {
            let client = client.clone();
            let url = format!("http://{listen}/ready");
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        },
        |status| *status == 200,
    )
    .await;
    let mut statuses = Vec::new();
    for id in 0..3 {
        let response = mcp_post(
            &client,
            &format!("http://{listen}/mcp"),
            call(id, "echo", json!({"text": "x"})),
        )
        .send()
        .await;
        statuses.push(
            response
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string()),
        );
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(ready.is_some(), "never ready");
    assert!(statuses.iter().all(|s| s == &Ok(200)), "{statuses:?}");
    assert_eq!(output.status.code(), Some(0));
}

/// `login` with several upstreams logs in to the one `--upstream NAME` chooses; without a valid
/// choice it is a configuration error that names them.
#[test]
fn login_chooses_its_upstream_by_name() {
    let env = [
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", "https://a.example/mcp"),
        ("UPSTREAMS__ALPHA__AUTH", "none"),
        ("UPSTREAMS__BETA__UPSTREAM_URL", "https://b.example/mcp"),
        ("UPSTREAMS__BETA__AUTH", "none"),
    ];
    for (args, code, expected) in [
        (&["login"][..], 64, "choose one with --upstream NAME"),
        (
            &["login", "--upstream", "gamma"][..],
            64,
            "no upstream of that name (it has alpha, beta)",
        ),
        // Chosen: AUTH=none of beta has nothing to log in to, which login says.
        (
            &["login", "--upstream", "beta"][..],
            64,
            "AUTH=none holds no tokens of its own",
        ),
    ] {
        let output = run(args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
