//! `mcp-sidecar stdio` as a host runs it: the built binary with piped stdin/stdout in front of
//! the mock upstream. Every stdout line must be one JSON-RPC message; no secret canary may reach
//! stdout or stderr.

use std::process::Stdio;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::mock_idp::{CLIENT_ID, MockIdp};
use crate::common::mock_upstream::{Forbid, MockUpstream, Mode};
use crate::common::{DEADLINE, Sidecar, poll};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-sidecar");

/// Longer than 200 characters, with the characters that encodings and scrubbers trip on.
fn canary() -> String {
    format!("stdio-canary+/=&{}", "x7+/=&".repeat(40))
}

/// A host's view of one `mcp-sidecar stdio` process.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<Lines<BufReader<ChildStdout>>>,
    /// Every stdout line read so far.
    seen: Vec<String>,
    state_home: tempfile::TempDir,
}

impl Host {
    fn spawn(env: &[(&str, &str)]) -> Self {
        Self::spawn_with(&[], env)
    }

    fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let state_home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("stdio")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", state_home.path())
            .env("XDG_STATE_HOME", state_home.path().join("state"))
            .env("MCP_SIDECAR_STATE_DIR", state_home.path().join("sidecar"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(format!("MCP_SIDECAR_{k}"), v);
        }
        let mut child = cmd.spawn().expect("spawn mcp-sidecar stdio");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
        Self {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            state_home,
        }
    }

    async fn send(&mut self, message: &Value) {
        self.send_raw(&message.to_string()).await;
    }

    async fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Reads stdout lines until one satisfies `accept`; each must be a JSON-RPC message.
    async fn expect(&mut self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let stdout = self.stdout.as_mut().expect("stdout open");
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                self.seen.push(line.clone());
                let message: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                assert_eq!(message["jsonrpc"], "2.0", "{line}");
                if accept(&message) {
                    return Some(message);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(message)) => message,
            _ => panic!("no {what} on stdout; saw {:#?}", self.seen),
        }
    }

    async fn initialize(&mut self) {
        self.send(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{"roots":{}},
            "clientInfo":{"name":"test-host","version":"1"}}}),
        )
        .await;
        let reply = self.expect("initialize reply", |m| m["id"] == 1).await;
        assert_eq!(reply["result"]["protocolVersion"], "2025-11-25", "{reply}");
        self.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
    }

    /// Closes stdin (what a host does to stop a server) and waits for the exit; returns the
    /// exit code, the rest of stdout and stderr.
    async fn close(mut self) -> (Option<i32>, String, String) {
        drop(self.stdin.take());
        self.finish().await
    }

    async fn finish(mut self) -> (Option<i32>, String, String) {
        let mut rest = self.seen.join("\n");
        if let Some(mut stdout) = self.stdout.take() {
            while let Ok(Some(line)) = stdout.next_line().await {
                rest.push('\n');
                rest.push_str(&line);
            }
        }
        let output = tokio::time::timeout(DEADLINE, self.child.wait_with_output())
            .await
            .expect("the process exits")
            .unwrap();
        drop(self.state_home);
        (
            output.status.code(),
            rest,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
}

/// The requests the stdio front sent (the readiness handshake sends no protocol header after
/// its own initialize, but its requests carry no client payloads; match on the body).
fn bodies(mock: &MockUpstream) -> Vec<(http::Method, Option<String>, Value)> {
    mock.state
        .requests()
        .into_iter()
        .map(|r| {
            let session = r
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.method, session, body)
        })
        .collect()
}

#[tokio::test]
async fn a_tools_call_goes_through_and_eof_ends_the_session() {
    let secret = canary();
    let mock = MockUpstream::start(&secret, Mode::Legacy);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", &secret)]);
    host.initialize().await;
    host.send(&call(
        2,
        "echo",
        json!({"text": format!("quoted {secret}")}),
    ))
    .await;
    let reply = host.expect("tools/call reply", |m| m["id"] == 2).await;
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("quoted "), "{reply}");
    assert!(!text.contains(&secret), "the echoed token is scrubbed");

    let requests = mock.state.requests();
    let call = requests
        .iter()
        .find(|r| r.rpc_method().as_deref() == Some("tools/call"))
        .expect("the call reached the upstream");
    assert_eq!(
        call.authorization(),
        Some(format!("Bearer {secret}").as_str())
    );
    assert_eq!(
        call.headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok()),
        Some("2025-11-25")
    );
    let session = call
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("the front holds the upstream session")
        .to_string();

    let (code, stdout, stderr) = host.close().await;
    assert_eq!(
        code,
        Some(0),
        "stdin EOF is a clean exit; stderr:\n{stderr}"
    );
    assert!(
        bodies(&mock)
            .iter()
            .any(|(m, s, _)| *m == http::Method::DELETE && s.as_deref() == Some(&session)),
        "the upstream session was ended with DELETE"
    );
    assert!(!stdout.contains(&secret), "no canary on stdout:\n{stdout}");
    assert!(!stderr.contains(&secret), "no canary on stderr:\n{stderr}");
    assert!(
        !stdout.contains(&session),
        "the host never sees the session id"
    );
}

/// The host sends `notifications/initialized` and its first request back to back; the request
/// must not overtake the notification (server-everything lists its roots tools only once it has
/// seen it, which made interop G fail now and then).
#[tokio::test]
async fn the_first_request_waits_for_the_initialized_notification() {
    let secret = canary();
    let mock = MockUpstream::start(&secret, Mode::Legacy);
    let delay = std::time::Duration::from_millis(300);
    *mock.state.initialized_delay.lock().unwrap() = Some(delay);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", &secret)]);
    host.initialize().await;
    host.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    host.expect("tools/list reply", |m| m["id"] == 2).await;
    let requests = mock.state.requests();
    let session = |r: &&crate::common::mock_upstream::Recorded| {
        r.headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let list = requests
        .iter()
        .find(|r| r.rpc_method().as_deref() == Some("tools/list"))
        .expect("tools/list reached the upstream");
    // The host's own notification, not the readiness handshake's: the one in its session.
    let initialized = requests
        .iter()
        .find(|r| {
            r.rpc_method().as_deref() == Some("notifications/initialized")
                && session(r) == session(&list)
        })
        .expect("the host's notifications/initialized reached the upstream");
    assert!(
        list.at >= initialized.at + delay,
        "tools/list reached the upstream before notifications/initialized was answered"
    );
    host.close().await;
}

#[tokio::test]
async fn sse_events_arrive_as_they_come_and_calls_run_concurrently() {
    let mock = MockUpstream::start("t0ken", Mode::Legacy);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t0ken")]);
    host.initialize().await;
    host.send(&call(2, "gated", json!({}))).await;
    let progress = host
        .expect("progress notification", |m| {
            m["method"] == "notifications/progress"
        })
        .await;
    assert_eq!(progress["params"]["progress"], 1);
    // The gated call is still open: another call must not wait for it.
    host.send(&call(3, "echo", json!({"text": "meanwhile"})))
        .await;
    let reply = host
        .expect("the second call's reply", |m| m.get("id").is_some())
        .await;
    assert_eq!(
        reply["id"], 3,
        "the second call overtook the first: {reply}"
    );
    mock.state.gate.notify_one();
    let reply = host
        .expect("the gated call's reply", |m| m["id"] == 2)
        .await;
    assert!(reply["result"].is_object(), "{reply}");
    let (code, _, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn a_server_request_on_the_get_stream_is_answered_by_the_host() {
    let mock = MockUpstream::start_streaming_on(0, "t0ken");
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t0ken")]);
    host.initialize().await;
    let streams = poll(
        || async { Some(mock.state.open_get_streams()) },
        |n| *n >= 1,
    )
    .await;
    assert!(streams.is_some(), "the front opened the GET stream");
    mock.state.push(&format!(
        "event: message\nid: 7\ndata: {}\n\n",
        json!({"jsonrpc":"2.0","id":"s-1","method":"roots/list"})
    ));
    let request = host
        .expect("the server's request", |m| m["method"] == "roots/list")
        .await;
    assert_eq!(request["id"], "s-1");
    host.send(&json!({"jsonrpc":"2.0","id":"s-1","result":{"roots":[]}}))
        .await;
    let answered = poll(
        || async {
            bodies(&mock)
                .into_iter()
                .find(|(m, s, b)| *m == http::Method::POST && s.is_some() && b["id"] == "s-1")
        },
        |_| true,
    )
    .await;
    let (_, _, body) = answered.expect("the host's answer was POSTed upstream in the session");
    assert_eq!(body["result"]["roots"], json!([]));
    let (code, _, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn cancellation_ends_the_upstream_request_and_is_forwarded() {
    let mock = MockUpstream::start("t0ken", Mode::Legacy);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t0ken")]);
    host.initialize().await;
    host.send(&call(5, "hang", json!({}))).await;
    host.expect("progress of the hanging call", |m| {
        m["method"] == "notifications/progress"
    })
    .await;
    host.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled",
        "params":{"requestId":5,"reason":"user"}}))
        .await;
    let dropped = poll(
        || async { Some(mock.state.hang_dropped.load(Ordering::SeqCst)) },
        |d| *d,
    )
    .await;
    assert!(dropped.is_some(), "the upstream request was dropped");
    let forwarded = poll(
        || async {
            bodies(&mock)
                .into_iter()
                .find(|(_, _, b)| b["method"] == "notifications/cancelled")
        },
        |_| true,
    )
    .await;
    assert!(forwarded.is_some(), "the cancellation reached the upstream");
    let (code, stdout, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.lines().any(|l| l.contains(r#""id":5"#)),
        "a cancelled request gets no answer: {stdout}"
    );
}

/// Each request in flight holds an upstream request open: past 64 a request is answered with
/// an error at once instead of opening more; a cancellation still gets through and frees a place.
#[tokio::test]
async fn requests_in_flight_are_bounded_and_a_cancellation_still_frees_a_place() {
    let mock = MockUpstream::start("t0ken", Mode::Legacy);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t0ken")]);
    host.initialize().await;
    for id in 100..164 {
        host.send(&call(id, "hang", json!({}))).await;
    }
    host.send(&call(164, "echo", json!({"text": "one too many"})))
        .await;
    let refused = host.expect("the refusal", |m| m["id"] == 164).await;
    assert_eq!(
        refused["error"]["data"]["reason"], "too_many_requests",
        "{refused}"
    );
    let reached = |text: &'static str| {
        let mock = &mock;
        move || async move {
            let n = bodies(mock)
                .into_iter()
                .filter(|(_, _, b)| b["params"]["name"] == text)
                .count();
            Some(n)
        }
    };
    assert_eq!(reached("echo")().await, Some(0));
    assert_eq!(
        poll(reached("hang"), |n| *n == 64).await,
        Some(64),
        "every request under the bound reached the upstream"
    );
    host.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled",
        "params":{"requestId":100,"reason":"user"}}))
        .await;
    host.send(&call(165, "echo", json!({"text": "after a cancel"})))
        .await;
    let reply = host
        .expect("the call after the cancel", |m| m["id"] == 165)
        .await;
    assert_eq!(
        reply["result"]["content"][0]["text"], "after a cancel",
        "{reply}"
    );
    drop(host);
}

/// Past 128 messages being handled a request is still answered, with an error, never left
/// without one (here the requests share one id, so fewer than 64 are counted in flight).
#[tokio::test]
async fn past_the_bound_on_messages_being_handled_a_request_is_refused_not_dropped() {
    let mock = MockUpstream::start("t0ken", Mode::Legacy);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t0ken")]);
    host.initialize().await;
    for _ in 0..128 {
        host.send(&call(7, "hang", json!({}))).await;
    }
    host.send(&call(900, "echo", json!({"text": "one too many"})))
        .await;
    let refused = host.expect("the refusal", |m| m["id"] == 900).await;
    assert_eq!(
        refused["error"]["data"]["reason"], "too_many_requests",
        "{refused}"
    );
    drop(host);
}

#[tokio::test]
async fn an_upstream_that_is_down_fails_initialize_in_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut host = Host::spawn(&[
        ("UPSTREAM_URL", &url),
        ("TOKEN", "t0ken"),
        ("STDIO_READY_TIMEOUT", "1s"),
    ]);
    // Framing first: a broken line is answered, not fatal.
    host.send_raw("{not json").await;
    let parse = host
        .expect("parse error", |m| m["error"]["code"] == -32700)
        .await;
    assert_eq!(parse["id"], Value::Null);
    host.send(
        &json!({"jsonrpc":"2.0","id":"init","method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    )
    .await;
    let error = host.expect("initialize error", |m| m["id"] == "init").await;
    assert_eq!(error["error"]["code"], -32001, "{error}");
    assert_eq!(error["error"]["data"]["reason"], "upstream_unreachable");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("not ready"), "{message}");

    let pid = host.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (code, _, stderr) = host.finish().await;
    assert_eq!(code, Some(0), "SIGTERM is a clean exit: {stderr}");
}

#[tokio::test]
async fn a_closed_stdout_ends_the_process_without_a_panic() {
    let mock = MockUpstream::start("t0ken", Mode::Legacy);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", "t0ken")]);
    drop(host.stdout.take());
    // Its parse error cannot be written: the host is gone.
    host.send_raw("{not json").await;
    let exited = tokio::time::timeout(DEADLINE, host.child.wait())
        .await
        .expect("the process exits once stdout is closed")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut err) = host.child.stderr.take() {
        use tokio::io::AsyncReadExt;
        err.read_to_string(&mut stderr).await.unwrap();
    }
    assert_eq!(exited.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
}

/// Sends `initialize` until its answer satisfies `accept` (a host reconnecting), with a deadline.
async fn initialize_until(
    host: &mut Host,
    first_id: u64,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut id = first_id;
    loop {
        host.send(&initialize(id)).await;
        let answer = host.expect("initialize answer", |m| m["id"] == id).await;
        if accept(&answer) || std::time::Instant::now() > deadline {
            return answer;
        }
        id += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_login_is_in_the_initialize_error_and_a_respawn_needs_no_new_login() {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    let idp = MockIdp::start(Some(upstream.state.clone()));
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("tokens");
    let (url, issuer) = (upstream.url(), idp.url(""));
    let env = [
        ("UPSTREAM_URL", url.as_str()),
        ("AUTH", "device_code"),
        ("CLIENT_ID", CLIENT_ID),
        ("ISSUER", issuer.as_str()),
        ("STATE_DIR", dir.to_str().unwrap()),
        ("STDIO_READY_TIMEOUT", "1s"),
    ];
    let mut host = Host::spawn(&env);
    let error = initialize_until(&mut host, 1, |m| m["error"]["data"]["login"].is_object()).await;
    assert_eq!(error["error"]["code"], -32003, "{error}");
    assert_eq!(error["error"]["data"]["reason"], "auth_required");
    let code = error["error"]["data"]["login"]["user_code"]
        .as_str()
        .expect("the device code is in the error")
        .to_string();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&code),
        "the prompt is in the message: {message}"
    );

    idp.state.approve(&code);
    let ready = initialize_until(&mut host, 100, |m| m["result"].is_object()).await;
    assert_eq!(ready["result"]["protocolVersion"], "2025-11-25", "{ready}");
    let (exit, _, stderr) = host.close().await;
    assert_eq!(exit, Some(0), "{stderr}");

    // A host respawning the server: the persisted tokens are used, no new login.
    let logins = idp.state.device_requests.load(Ordering::SeqCst);
    let mut host = Host::spawn(&env);
    let ready = initialize_until(&mut host, 1, |m| m["result"].is_object()).await;
    let (exit, _, stderr) = host.close().await;
    assert!(ready["result"].is_object(), "{ready}\n{stderr}");
    assert_eq!(idp.state.device_requests.load(Ordering::SeqCst), logins);
    assert_eq!(exit, Some(0), "{stderr}");
}

/// The stdio front goes through the same forwarder: a refused call is answered on stdout and
/// never reaches the upstream, and `tools/list` loses the refused tools.
#[tokio::test]
async fn the_tool_policy_applies_to_the_stdio_front() {
    let secret = canary();
    let mock = MockUpstream::start(&secret, Mode::Legacy);
    let mut host = Host::spawn(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", &secret),
        ("TOOLS_DENY", "delete_*"),
    ]);
    host.initialize().await;
    host.send(&call(2, "delete_repo", json!({}))).await;
    let reply = host.expect("the refusal", |m| m["id"] == 2).await;
    assert_eq!(reply["error"]["data"]["reason"], "tool_refused", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MCP_SIDECAR_TOOLS_DENY"),
        "{reply}"
    );
    host.send(&json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}))
        .await;
    let reply = host.expect("the list", |m| m["id"] == 3).await;
    let names: Vec<&str> = reply["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "read_file", "admin/reset"], "{reply}");
    let (code, _, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !bodies(&mock)
            .iter()
            .any(|(_, _, body)| body["params"]["name"] == "delete_repo"),
        "the refused call reached the upstream"
    );
}

/// With several upstreams configured, `--upstream NAME` serves that one alone: its token goes
/// to its origin, the other upstream is never contacted, and its state is where `serve` keeps it.
#[tokio::test]
async fn upstream_name_chooses_one_of_several_and_only_its_credential_is_sent() {
    let (a_secret, b_secret) = (format!("a-{}", canary()), format!("b-{}", canary()));
    let a = MockUpstream::start(&a_secret, Mode::Legacy);
    let b = MockUpstream::start(&b_secret, Mode::Legacy);
    let env = [
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", a.url()),
        ("UPSTREAMS__ALPHA__TOKEN", a_secret.clone()),
        ("UPSTREAMS__BETA__UPSTREAM_URL", b.url()),
        ("UPSTREAMS__BETA__TOKEN", b_secret.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut host = Host::spawn_with(&["--upstream", "beta"], &env);
    host.initialize().await;
    host.send(&call(2, "echo", json!({"text": "to beta"})))
        .await;
    let reply = host.expect("tools/call reply", |m| m["id"] == 2).await;
    assert!(reply["result"].is_object(), "{reply}");
    let state = host.state_home.path().join("sidecar/upstreams/beta");
    let (code, stdout, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        b.state
            .requests()
            .iter()
            .all(|r| r.authorization() == Some(format!("Bearer {b_secret}").as_str())),
        "beta got its own token"
    );
    assert!(
        a.state.requests().is_empty(),
        "alpha is not served, so never contacted"
    );
    for secret in [&a_secret, &b_secret] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
    assert!(
        stderr.contains(&state.display().to_string()),
        "the state directory of beta is the one serve uses: {stderr}"
    );
}

/// Several upstreams and no `--upstream`, or a name the configuration lacks: a configuration
/// error (64) that names the choices, before anything is contacted.
#[tokio::test]
async fn several_upstreams_without_a_valid_choice_is_a_configuration_error() {
    let a = MockUpstream::start("tok-a", Mode::Legacy);
    let env = [
        ("UPSTREAMS__ALPHA__UPSTREAM_URL", a.url()),
        ("UPSTREAMS__BETA__UPSTREAM_URL", a.url()),
        ("UPSTREAMS__ALPHA__AUTH", "none".into()),
        ("UPSTREAMS__BETA__AUTH", "none".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (args, expected) in [
        (&[][..], "choose one with --upstream NAME"),
        (
            &["--upstream", "gamma"][..],
            "--upstream \"gamma\": this configuration has no upstream of that name (it has alpha, beta)",
        ),
        (
            &["--upstream", "Gamma!"][..],
            "upstream names are lower-case",
        ),
    ] {
        let host = Host::spawn_with(args, &env);
        let (code, stdout, stderr) = host.finish().await;
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: nothing on stdout: {stdout}");
    }
    assert!(a.state.requests().is_empty());
}

/// A 403 without a Bearer challenge (a policy, a denied tool) reaches the host as the HTTP
/// front passes it on: the upstream's JSON-RPC error under the request's id, else its text,
/// scrubbed, in an `upstream_forbidden` error; the credential is not taken for rejected.
#[tokio::test]
async fn an_upstream_refusal_reaches_the_host_with_its_answer() {
    let secret = canary();
    let mock = MockUpstream::start(&secret, Mode::Legacy);
    let mut host = Host::spawn(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", &secret),
        // One handshake only: the refusals below must not turn readiness.
        ("READY_INTERVAL", "1h"),
    ]);
    host.initialize().await;
    mock.state.forbid_everyone.store(true, Ordering::SeqCst);

    // The upstream's own JSON-RPC error, quoting the token and without the request's id.
    *mock.state.forbid.lock().unwrap() = Some(Forbid {
        challenge: None,
        content_type: "application/json",
        body: json!({"jsonrpc":"2.0","id":null,"error":{"code":-32001,
            "message":format!("tool echo is not allowed for key {secret}")}})
        .to_string(),
    });
    host.send(&call(2, "echo", json!({}))).await;
    let reply = host.expect("the refusal of call 2", |m| m["id"] == 2).await;
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("tool echo is not allowed"), "{reply}");
    assert!(!message.contains(&secret[..24]), "scrubbed: {reply}");

    // Text: quoted, scrubbed, under the sidecar's own code and reason.
    *mock.state.forbid.lock().unwrap() = Some(Forbid {
        challenge: None,
        content_type: "text/plain",
        body: format!("Forbidden by policy: key {secret} may not call echo"),
    });
    host.send(&call(3, "echo", json!({}))).await;
    let reply = host.expect("the refusal of call 3", |m| m["id"] == 3).await;
    assert_eq!(reply["error"]["code"], -32006, "{reply}");
    assert_eq!(reply["error"]["data"]["reason"], "upstream_forbidden");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 403") && message.contains("may not call echo"),
        "{reply}"
    );

    let (code, stdout, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.contains(&secret[..24]),
        "no canary on stdout:\n{stdout}"
    );
    assert!(
        !stderr.contains(&secret[..24]),
        "no canary on stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("rejected"),
        "the credential is not taken for rejected:\n{stderr}"
    );
}

/// `--connect URL`: the stdio process is a pipe into a running sidecar, which holds the
/// credential; the pipe presents the sidecar's client token and nothing else.
#[tokio::test]
async fn connect_pipes_into_a_running_sidecar_that_holds_the_credential() {
    let secret = canary();
    let client_token = format!("client-{}", canary());
    let mock = MockUpstream::start(&secret, Mode::Legacy);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &mock.url()),
        ("TOKEN", &secret),
        ("CLIENT_TOKEN", &client_token),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let url = sidecar.url("/mcp");

    let mut host = Host::spawn_with(&["--connect", &url], &[("CLIENT_TOKEN", &client_token)]);
    host.initialize().await;
    host.send(&call(2, "echo", json!({"text": "through the daemon"})))
        .await;
    let reply = host.expect("tools/call reply", |m| m["id"] == 2).await;
    assert!(reply["result"].is_object(), "{reply}");
    let (code, stdout, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
    let calls: Vec<_> = mock
        .state
        .requests()
        .into_iter()
        .filter(|r| r.rpc_method().as_deref() == Some("tools/call"))
        .collect();
    assert_eq!(calls.len(), 1, "the call reached the upstream once");
    assert_eq!(
        calls[0].authorization(),
        Some(format!("Bearer {secret}").as_str()),
        "with the sidecar's credential, not the pipe's client token"
    );
    for canary in [&secret, &client_token] {
        assert!(!stdout.contains(&canary[..24]) && !stderr.contains(&canary[..24]));
    }

    // Without the client token the sidecar refuses the pipe, and initialize says so in time.
    let mut host = Host::spawn_with(
        &["--connect", &url],
        &[("STDIO_READY_TIMEOUT", "2s"), ("READY_INTERVAL", "500ms")],
    );
    host.send(&initialize(1)).await;
    let reply = host.expect("initialize error", |m| m["id"] == 1).await;
    assert_eq!(
        reply["error"]["data"]["reason"], "handshake_failed",
        "{reply}"
    );
    assert!(
        reply["error"]["data"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("requires its client token")),
        "the sidecar's refusal is quoted: {reply}"
    );
    let (_, _, stderr) = host.close().await;
    assert!(!stderr.contains(&secret[..24]), "{stderr}");
    sidecar.shutdown().await;
}

/// `--connect` with an upstream of the process's own, a configuration file or a bad URL is a
/// configuration error naming each problem.
#[tokio::test]
async fn connect_refuses_settings_it_would_ignore() {
    let secret = canary();
    let host = Host::spawn_with(
        &["--connect", "ftp://sidecar/mcp"],
        &[
            ("UPSTREAM_URL", "https://mcp.example/mcp"),
            ("TOKEN", &secret),
        ],
    );
    let (code, stdout, stderr) = host.finish().await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for expected in [
        "a ftp: URL; it takes an http:// or https:// URL",
        "MCP_SIDECAR_TOKEN: with --connect the running sidecar holds",
        "MCP_SIDECAR_UPSTREAM_URL: with --connect",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(!stderr.contains(&secret[..24]), "{stderr}");

    // A password in the URL is never printed, whatever else is wrong with it; both client-token
    // forms at once, any case after the prefix, are one problem; plain http to a remote host
    // needs ALLOW_INSECURE_UPSTREAM, the one upstream key --connect takes.
    let host = Host::spawn_with(
        &[
            "--connect",
            &format!("ftp://user:{secret}@sidecar:99999/mcp"),
        ],
        &[("CLIENT_TOKEN", "a"), ("client_token_FILE", "/run/x")],
    );
    let (code, _, stderr) = host.finish().await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(!stderr.contains(&secret[..24]), "{stderr}");
    assert!(stderr.contains("set one of them, not both"), "{stderr}");
    // (A password with a `/` ends the authority early: the parse error above covers it.)
    let password = "url-password-canary-0123456789abcdef";
    let host = Host::spawn_with(
        &["--connect", &format!("http://u:{password}@sidecar/mcp")],
        &[],
    );
    let (code, _, stderr) = host.finish().await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("the URL holds credentials"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
    let host = Host::spawn_with(&["--connect", "http://sidecar.internal:4510/mcp"], &[]);
    let (code, _, stderr) = host.finish().await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("plain http to sidecar.internal"),
        "{stderr}"
    );
    let host = Host::spawn_with(
        &["--connect", "http://sidecar.internal:4510/mcp"],
        &[
            ("ALLOW_INSECURE_UPSTREAM", "true"),
            ("STDIO_READY_TIMEOUT", "1s"),
        ],
    );
    let (_, _, stderr) = host.close().await;
    assert!(
        !stderr.contains("plain http"),
        "accepted with the key: {stderr}"
    );
    let host = Host::spawn_with(
        &["--connect", "http://127.0.0.1:1/mcp", "--upstream", "a"],
        &[],
    );
    let (code, _, stderr) = host.finish().await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// An upstream that speaks only the 2024-11-05 HTTP+SSE transport: the stdio front's session
/// is bridged to it ([`mcp_sidecar::sse_upstream`]): the answers arrive on the upstream's
/// stream, the messages go to the endpoint it announced, with the credential, and EOF ends it.
#[tokio::test]
async fn the_stdio_front_is_bridged_to_an_sse_transport_upstream() {
    let token = canary();
    let mock = MockUpstream::start(&token, Mode::SseTransport);
    let mut host = Host::spawn(&[("UPSTREAM_URL", &mock.url()), ("TOKEN", &token)]);
    host.send(&initialize(1)).await;
    let reply = host.expect("initialize reply", |m| m["id"] == 1).await;
    assert_eq!(
        reply["result"]["serverInfo"]["name"], "mock-sse-transport",
        "{reply}"
    );
    host.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    host.send(&call(2, "echo", json!({"text": "over the bridge"})))
        .await;
    let reply = host.expect("the call's reply", |m| m["id"] == 2).await;
    assert_eq!(
        reply["result"]["content"][0]["text"], "over the bridge",
        "{reply}"
    );
    // An upstream that echoes the credential: scrubbed on the way to the host.
    host.send(&call(3, "echo", json!({"text": token}))).await;
    let reply = host.expect("the echo's reply", |m| m["id"] == 3).await;
    assert!(!reply.to_string().contains(&token[..40]), "{reply}");
    let posts: Vec<_> = mock
        .state
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(
        posts
            .iter()
            .filter(|r| r
                .query
                .as_deref()
                .is_some_and(|q| q.starts_with("sessionId=")))
            .count()
            >= 4,
        "{posts:?}"
    );
    for post in &posts {
        assert_eq!(
            post.authorization(),
            Some(format!("Bearer {token}").as_str())
        );
    }
    let (code, _, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(&token[..40]), "{stderr}");
    // EOF ended the session: the sidecar closed the upstream stream.
    let closed = poll(
        || async { (mock.state.open_legacy_streams() == 0).then_some(()) },
        |_| true,
    )
    .await;
    assert!(closed.is_some(), "the upstream stream stayed open");
}

/// `mcp-sidecar stdio` run by hand: stdin a terminal, here through `script(1)`, whose output is
/// the terminal (stdout and stderr both), with `AUTH=auth` against `idp` and a fresh STATE_DIR.
struct Terminal {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every terminal line read so far.
    seen: Vec<String>,
    dir: std::path::PathBuf,
    _state: tempfile::TempDir,
}

impl Terminal {
    fn spawn(auth: &str, upstream: &MockUpstream, idp: &MockIdp) -> Self {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("tokens");
        let mut child = Command::new("script")
            .args(["-qfec", &format!("{BIN} stdio"), "/dev/null"])
            .env("MCP_SIDECAR_UPSTREAM_URL", upstream.url())
            .env("MCP_SIDECAR_AUTH", auth)
            .env("MCP_SIDECAR_CLIENT_ID", CLIENT_ID)
            .env("MCP_SIDECAR_ISSUER", idp.url(""))
            .env("MCP_SIDECAR_STATE_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("script(1) runs (util-linux)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            lines,
            seen: Vec::new(),
            dir,
            _state: state,
        }
    }

    /// The next terminal line holding `needle`, within [`DEADLINE`].
    async fn line_with(&mut self, needle: &str) -> Option<String> {
        tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Run by hand in a terminal (stdin a tty, here through `script`), a pending device login is
/// shown on stderr with its code; approving that code is all it takes. A host's pipe gets no
/// such line (the prompt travels in the `initialize` error instead).
#[tokio::test(flavor = "multi_thread")]
async fn run_by_hand_in_a_terminal_a_pending_login_is_shown_on_stderr() {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    let idp = MockIdp::start(Some(upstream.state.clone()));
    let mut terminal = Terminal::spawn("device_code", &upstream, &idp);
    let prompt = terminal
        .line_with("to log in, open")
        .await
        .expect("the login prompt on the terminal");
    let code = prompt
        .split("enter the code ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {prompt:?}"))
        .to_string();
    assert!(prompt.contains(&idp.url("")), "{prompt}");
    idp.state.approve(&code);
    // The checker picks the approved login up: the device code is exchanged for a token.
    let issued = poll(
        || async {
            Some(idp.state.requests.lock().unwrap().iter().any(|r| {
                r.form.get("grant_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:grant-type:device_code")
                    && r.outcome == "ok"
            }))
        },
        |issued| *issued,
    )
    .await;
    assert_eq!(
        issued,
        Some(true),
        "the approved device code was not exchanged"
    );
    terminal.kill().await;
}

/// `AUTH=authorization_code` run by hand: the authorization URL is shown on the terminal, the
/// URL the browser was sent to is pasted back on stdin (not taken as a message), the code is
/// exchanged and the tokens kept in `STATE_DIR` for the host that runs it later.
#[tokio::test]
async fn run_by_hand_an_authorization_code_login_takes_the_pasted_redirect() {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    let idp = MockIdp::start(Some(upstream.state.clone()));
    let mut terminal = Terminal::spawn("authorization_code", &upstream, &idp);
    let authorize = terminal
        .line_with("/authorize?")
        .await
        .expect("the authorization URL on the terminal")
        .trim()
        .to_string();
    assert!(
        authorize.starts_with(&idp.url("/authorize?")),
        "{authorize}"
    );
    // The "browser" logs in and is sent to the redirect URI, where nothing listens.
    let back = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&authorize)
        .send()
        .await
        .unwrap();
    let redirected = back.headers()["location"].to_str().unwrap().to_string();
    let stdin = terminal.child.stdin.as_mut().unwrap();
    stdin
        .write_all(format!("{redirected}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let done = terminal.line_with("logged in").await;
    assert!(
        done.is_some(),
        "no login on the terminal: {:#?}",
        terminal.seen
    );
    let exchanged = idp.state.requests.lock().unwrap().iter().any(|r| {
        r.form.get("grant_type").map(String::as_str) == Some("authorization_code")
            && r.outcome == "ok"
    });
    assert!(exchanged, "the pasted code was not exchanged");
    let stored = std::fs::read_dir(&terminal.dir)
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert!(stored > 0, "nothing stored in STATE_DIR");
    terminal.kill().await;
}

/// Spawned by a host with `AUTH=authorization_code` and no token: `initialize` says how to log
/// in, not to open the sidecar's own login page, which nothing serves in a stdio process.
#[tokio::test]
async fn a_pending_authorization_code_login_says_to_log_in_from_a_terminal() {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    let idp = MockIdp::start(Some(upstream.state.clone()));
    let mut host = Host::spawn(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "authorization_code"),
        ("CLIENT_ID", CLIENT_ID),
        ("ISSUER", &idp.url("")),
        ("STDIO_READY_TIMEOUT", "1s"),
    ]);
    let answer = initialize_until(&mut host, 1, |m| {
        m["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("to log in"))
    })
    .await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("run mcp-sidecar stdio (or mcp-sidecar login)"),
        "{answer}"
    );
    assert!(!answer.to_string().contains("/oauth/login"), "{answer}");
    let (code, _, stderr) = host.close().await;
    assert_eq!(code, Some(0), "{stderr}");
}
