//! The token engine against a mock authorization server: every grant, every failure class,
//! single-flight at expiry, persistence shared by two processes, and crash safety.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::mock_idp::{
    CLIENT_ID, CLIENT_SECRET, Echo, Failure, MockIdp, OneRequestPerConnection,
};
use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::{DEADLINE, Sidecar, call, mcp_post, poll};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-sidecar");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An upstream whose accepted token is whatever the IdP issued last.
fn linked() -> (MockUpstream, MockIdp) {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    let idp = MockIdp::start(Some(upstream.state.clone()));
    (upstream, idp)
}

/// A client-credentials sidecar (client secret, configured token URL, state in memory) in front of
/// `upstream`, with `extra` settings.
async fn client_credentials(
    upstream: &MockUpstream,
    idp: &MockIdp,
    extra: &[(&str, &str)],
) -> Sidecar {
    let upstream_url = upstream.url();
    let token_url = idp.url("/token");
    let mut env = vec![
        ("UPSTREAM_URL", upstream_url.as_str()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("TOKEN_URL", token_url.as_str()),
        ("STATE_DIR", "/proc/not-writable"),
    ];
    env.extend_from_slice(extra);
    Sidecar::start(&env).await
}

async fn echo(sidecar: &Sidecar, id: u64) -> reqwest::Response {
    mcp_post(
        &reqwest::Client::new(),
        &sidecar.url("/mcp"),
        call(id, "echo", json!({"text": "hi"})),
    )
    .send()
    .await
    .unwrap()
}

async fn status(sidecar: &Sidecar) -> Value {
    reqwest::get(sidecar.url("/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `/ready` until it shows a device-code login; returns the body.
async fn wait_for_login(sidecar: &Sidecar) -> Value {
    poll(
        || async {
            let body: Value = reqwest::get(sidecar.url("/ready"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(body)
        },
        |body| body["login"]["user_code"].is_string(),
    )
    .await
    .expect("/ready shows a device-code login")
}

/// Fails if any canary (a client secret, refresh token, device code, code) appears in `text`.
fn assert_no_canary(text: &str) {
    assert!(!text.contains("canary"), "a secret leaked: {text}");
}

async fn assert_clean_endpoints(sidecar: &Sidecar) {
    for path in ["/ready", "/status"] {
        let body = reqwest::get(sidecar.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_no_canary(&body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_with_basic_and_post_secrets() {
    for (method, expect_basic) in [("client_secret_basic", true), ("client_secret_post", false)] {
        let (upstream, idp) = linked();
        let state = tempfile::tempdir().unwrap();
        let sidecar = Sidecar::start(&[
            ("UPSTREAM_URL", &upstream.url()),
            ("AUTH", "client_credentials"),
            ("CLIENT_ID", CLIENT_ID),
            ("CLIENT_SECRET", CLIENT_SECRET),
            ("CLIENT_AUTH", method),
            ("TOKEN_URL", &idp.url("/token")),
            ("SCOPES", "mcp:tools"),
            ("STATE_DIR", state.path().to_str().unwrap()),
        ])
        .await;
        sidecar.wait_reason("ready").await;
        assert_eq!(echo(&sidecar, 1).await.status(), 200, "{method}");

        let requests = idp.state.requests();
        let first = &requests[0];
        assert_eq!(first.outcome, "ok");
        assert_eq!(first.authorization.is_some(), expect_basic, "{method}");
        assert_eq!(first.form.contains_key("client_secret"), !expect_basic);
        assert_eq!(
            first.form.get("scope").map(String::as_str),
            Some("mcp:tools")
        );
        // RFC 8707: the resource defaults to the upstream URL.
        assert_eq!(first.form.get("resource"), Some(&upstream.url()));

        let token = status(&sidecar).await["token"].clone();
        assert_eq!(token["source"], "client_credentials");
        assert!(token["expires_at"].is_string(), "{token}");
        assert!(token["next_refresh"].is_string(), "{token}");
        assert_eq!(token["last_outcome"], "ok");
        assert_clean_endpoints(&sidecar).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_signs_with_rsa_and_ec_keys() {
    for (key, public, alg) in [
        ("rsa-key.pem", "rsa-pub.pem", jsonwebtoken::Algorithm::RS256),
        (
            "rsa-key-pkcs1.pem",
            "rsa-pub.pem",
            jsonwebtoken::Algorithm::RS256,
        ),
        ("ec-key.pem", "ec-pub.pem", jsonwebtoken::Algorithm::ES256),
        (
            "ec-key-sec1.pem",
            "ec-pub.pem",
            jsonwebtoken::Algorithm::ES256,
        ),
    ] {
        let (upstream, idp) = linked();
        let pem = std::fs::read(fixture(public)).unwrap();
        let decoding = match alg {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::DecodingKey::from_ec_pem(&pem),
            _ => jsonwebtoken::DecodingKey::from_rsa_pem(&pem),
        }
        .unwrap();
        idp.state
            .assertion_keys
            .lock()
            .unwrap()
            .push((alg, decoding));
        let sidecar = Sidecar::start(&[
            ("UPSTREAM_URL", &upstream.url()),
            ("CLIENT_ID", CLIENT_ID),
            ("CLIENT_ASSERTION_KEY_FILE", &fixture(key)),
            ("TOKEN_URL", &idp.url("/token")),
            ("STATE_DIR", "/proc/not-writable"),
        ])
        .await;
        sidecar.wait_reason("ready").await;
        let request = &idp.state.requests()[0];
        assert_eq!(
            request
                .form
                .get("client_assertion_type")
                .map(String::as_str),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            "{key}"
        );
        assert_eq!(request.outcome, "ok", "{key}");
        assert_eq!(
            status(&sidecar).await["token"]["persisted_in"],
            "memory only"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_follows_the_upstream_challenge_and_checks_the_issuer() {
    let (upstream, idp) = linked();
    *upstream.state.authorization_server.lock().unwrap() = Some(idp.url(""));
    let env = [
        ("UPSTREAM_URL", upstream.url()),
        ("AUTH", "client_credentials".into()),
        ("CLIENT_ID", CLIENT_ID.into()),
        ("CLIENT_SECRET", CLIENT_SECRET.into()),
        ("STATE_DIR", "/proc/not-writable".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_reason("ready").await;
    // The scope came from the challenge; the token endpoint from the metadata.
    let request = &idp.state.requests()[0];
    assert_eq!(
        request.form.get("scope").map(String::as_str),
        Some("mcp:tools")
    );
    drop(sidecar);

    let (upstream, idp) = linked();
    *upstream.state.authorization_server.lock().unwrap() = Some(idp.url(""));
    idp.state.wrong_issuer.store(true, Ordering::SeqCst);
    let mut env = env.clone();
    let url = upstream.url();
    env[0] = ("UPSTREAM_URL", &url);
    let sidecar = Sidecar::start(&env).await;
    let ready = sidecar.wait_reason("auth_required").await;
    let detail = ready["detail"].as_str().unwrap();
    assert!(
        detail.contains("evil.example") && detail.contains("8414"),
        "{detail}"
    );
    assert_eq!(idp.state.token_requests.load(Ordering::SeqCst), 0);
    drop(sidecar);

    // Metadata describing another resource is refused too (RFC 9728 3.3).
    let (upstream, idp) = linked();
    *upstream.state.authorization_server.lock().unwrap() = Some(idp.url(""));
    *upstream.state.prm_resource.lock().unwrap() = Some("https://other.example/mcp".into());
    let url = upstream.url();
    env[0] = ("UPSTREAM_URL", &url);
    let sidecar = Sidecar::start(&env).await;
    let ready = sidecar.wait_reason("auth_required").await;
    let detail = ready["detail"].as_str().unwrap();
    assert!(
        detail.contains("other.example") && detail.contains("9728"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_refresh_tokens_stay_ready_across_expiries_and_persist() {
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(2);
    let seed = idp.state.mint_refresh_token("mcp:tools");
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("refresh-token");
    std::fs::write(&seed_file, &seed).unwrap();
    let state_dir = dir.path().join("state");
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("REFRESH_TOKEN_FILE", seed_file.to_str().unwrap()),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_DIR", state_dir.to_str().unwrap()),
        ("REFRESH_SKEW", "1s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    // Three expiries pass; every refresh spends the newest refresh token.
    let refreshed = poll(
        || async { Some(idp.state.grant_count("refresh_token")) },
        |n| *n >= 4,
    )
    .await;
    assert!(refreshed.is_some(), "refreshes: {:?}", idp.state.requests());
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 0);
    assert_eq!(echo(&sidecar, 1).await.status(), 200);
    let token = status(&sidecar).await["token"].clone();
    assert_eq!(token["has_refresh_token"], true);

    let files: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = files[0].metadata().unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: Value = serde_json::from_slice(&std::fs::read(files[0].path()).unwrap()).unwrap();
    assert_ne!(
        saved["refresh_token"],
        seed.as_str(),
        "rotation was persisted"
    );
    assert_clean_endpoints(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_refresh_token_is_dropped_and_reported() {
    let (upstream, idp) = linked();
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("REFRESH_TOKEN", "canary-rt-never-issued"),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    let ready = sidecar.wait_reason("auth_required").await;
    let detail = ready["detail"].as_str().unwrap();
    assert!(detail.contains("invalid_grant"), "{detail}");
    assert!(detail.contains("REFRESH_TOKEN_FILE"), "{detail}");
    let token = status(&sidecar).await["token"].clone();
    assert_eq!(token["has_refresh_token"], false);
    // Dropped means dropped: no second attempt with the same dead token.
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 1);
    assert_clean_endpoints(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_outages_keep_the_valid_token_in_service() {
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(4);
    let sidecar = client_credentials(&upstream, &idp, &[("REFRESH_SKEW", "3s")]).await;
    sidecar.wait_reason("ready").await;
    *idp.state.failure.lock().unwrap() = Failure::Html503;
    // The refresh ahead of expiry fails; the current token still serves.
    let failed = poll(
        || async {
            let token = status(&sidecar).await["token"].clone();
            Some(token["last_outcome"].as_str().unwrap_or("").to_string())
        },
        |outcome| outcome.starts_with("failed"),
    )
    .await
    .expect("the refresh was attempted");
    assert!(failed.contains("HTTP 503 with an HTML page"), "{failed}");
    assert_eq!(echo(&sidecar, 1).await.status(), 200);
    // Once it expires, requests fail with a reason naming the token endpoint, not a login.
    let response = poll(
        || async { Some(echo(&sidecar, 2).await) },
        |r| r.status() == 503,
    )
    .await
    .expect("the expired token is not used");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["data"]["reason"],
        "token_endpoint_unavailable"
    );
    let ready = sidecar.wait_reason("upstream_unreachable").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("token endpoint"),
        "{ready}"
    );
    // Recovery without a restart.
    *idp.state.failure.lock().unwrap() = Failure::None;
    let ready = poll(
        || async { Some(echo(&sidecar, 3).await.status()) },
        |s| *s == 200,
    )
    .await;
    assert!(ready.is_some(), "recovered after the outage");
    assert_clean_endpoints(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_authorization_server_answers_are_readable() {
    for (failure, expected) in [
        (Failure::Html200, "HTTP 200 with an HTML page"),
        (Failure::NoAccessToken, "has no access_token"),
    ] {
        let (upstream, idp) = linked();
        *idp.state.failure.lock().unwrap() = failure;
        let sidecar = client_credentials(&upstream, &idp, &[]).await;
        let ready = sidecar.wait_reason("upstream_unreachable").await;
        let detail = ready["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{failure:?}: {detail}");
        assert_clean_endpoints(&sidecar).await;
    }

    // No expires_in: the token is used until the upstream rejects it.
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = None;
    let sidecar = client_credentials(&upstream, &idp, &[]).await;
    sidecar.wait_reason("ready").await;
    assert!(status(&sidecar).await["token"]["expires_at"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn device_code_login_shows_the_code_then_persists_the_refresh_token() {
    let (upstream, idp) = linked();
    let state_dir = tempfile::tempdir().unwrap();
    let env = [
        ("UPSTREAM_URL", upstream.url()),
        ("AUTH", "device_code".into()),
        ("CLIENT_ID", CLIENT_ID.into()),
        ("ISSUER", idp.url("")),
        ("STATE_DIR", state_dir.path().to_str().unwrap().into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sidecar = Sidecar::start(&env).await;
    let ready = wait_for_login(&sidecar).await;
    assert_eq!(ready["reason"], "auth_required");
    assert_eq!(ready["login"]["verification_uri"], idp.url("/activate"));
    assert!(
        ready["detail"].as_str().unwrap().contains("WDJB-MJH"),
        "{ready}"
    );
    assert_no_canary(&ready.to_string());

    *idp.state.expires_in.lock().unwrap() = Some(2);
    idp.state
        .approve(ready["login"]["user_code"].as_str().unwrap());
    let ready = sidecar.wait_reason("ready").await;
    assert!(ready.get("login").is_none(), "{ready}");
    assert_eq!(echo(&sidecar, 1).await.status(), 200);
    // The refresh reply carries no scope: the scopes granted at login are kept.
    poll(
        || async { Some(idp.state.grant_count("refresh_token")) },
        |n| *n >= 1,
    )
    .await
    .expect("the token was refreshed");
    let token = status(&sidecar).await["token"].clone();
    assert_eq!(token["scope"], "mcp:tools offline_access", "{token}");
    *idp.state.expires_in.lock().unwrap() = Some(3600);
    sidecar.shutdown().await;

    // A restart with the same state directory needs no new login.
    let logins = idp.state.device_requests.load(Ordering::SeqCst);
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_reason("ready").await;
    assert_eq!(idp.state.device_requests.load(Ordering::SeqCst), logins);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_client_id_the_sidecar_registers_once_and_remembers_it() {
    let (upstream, idp) = linked();
    *upstream.state.authorization_server.lock().unwrap() = Some(idp.url(""));
    let state_dir = tempfile::tempdir().unwrap();
    let url = upstream.url();
    let env = [
        ("UPSTREAM_URL", url.as_str()),
        ("AUTH", "device_code"),
        ("STATE_DIR", state_dir.path().to_str().unwrap()),
    ];
    let sidecar = Sidecar::start(&env).await;
    let ready = wait_for_login(&sidecar).await;
    let registrations = idp.state.registrations.lock().unwrap().clone();
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0]["token_endpoint_auth_method"], "none");
    assert!(
        registrations[0]["grant_types"]
            .to_string()
            .contains("device_code"),
        "{registrations:?}"
    );
    idp.state
        .approve(ready["login"]["user_code"].as_str().unwrap());
    sidecar.wait_reason("ready").await;
    sidecar.shutdown().await;

    // The registration was persisted with the tokens: a restart registers nothing new.
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_reason("ready").await;
    let response = mcp_post(
        &reqwest::Client::new(),
        &sidecar.url("/mcp"),
        call(1, "echo", json!({})),
    )
    .header("x-force-401", "after-restart")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(idp.state.registrations.lock().unwrap().len(), 1);
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_code_polling_slows_down_and_expired_codes_restart() {
    let (upstream, idp) = linked();
    *idp.state.device_expires_in.lock().unwrap() = 2;
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "device_code"),
        ("CLIENT_ID", CLIENT_ID),
        ("TOKEN_URL", &idp.url("/token")),
        ("DEVICE_AUTHORIZATION_URL", &idp.url("/device")),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    // Nobody approves: the code expires and a new login begins with a new code.
    let restarted = poll(
        || async { Some(idp.state.device_requests.load(Ordering::SeqCst)) },
        |n| *n >= 2,
    )
    .await;
    assert!(restarted.is_some(), "a new device code was requested");
    let user_code = poll(
        || async {
            let body: Value = reqwest::get(sidecar.url("/ready"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["login"]["user_code"].as_str().map(str::to_string)
        },
        |code| code != "WDJB-MJH0",
    )
    .await;
    assert!(user_code.is_some(), "/ready shows the new code");

    // slow_down adds five seconds to the interval (RFC 8628 3.5).
    *idp.state.device_expires_in.lock().unwrap() = 600;
    idp.state.poll_times.lock().unwrap().clear();
    idp.state.slow_down_next.store(1, Ordering::SeqCst);
    let polls = poll(
        || async { Some(idp.state.poll_times.lock().unwrap().clone()) },
        |times| times.len() >= 3,
    )
    .await
    .expect("polling continues");
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().any(|g| *g >= Duration::from_millis(5500)),
        "no slowed-down gap: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_code_login_through_the_sidecars_own_pages() {
    let (upstream, idp) = linked();
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "authorization_code"),
        ("CLIENT_ID", CLIENT_ID),
        ("ISSUER", &idp.url("")),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    let ready = sidecar.wait_reason("auth_required").await;
    assert!(
        ready["login"]["verification_uri"]
            .as_str()
            .unwrap()
            .ends_with("/oauth/login"),
        "{ready}"
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .get(sidecar.url("/oauth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 302);
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let authorize_url = url::Url::parse(&authorize).unwrap();
    let query: std::collections::HashMap<_, _> = authorize_url.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["resource"], upstream.url());
    // The "browser" logs in at the IdP and is sent back to the callback.
    let back = client.get(&authorize).send().await.unwrap();
    let callback = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    let done = client
        .get(sidecar.url(&format!("/oauth/callback?{}", callback.query().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    sidecar.wait_reason("ready").await;

    // With a credential held, no new login can be started from outside.
    let again = client
        .get(sidecar.url("/oauth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // A replayed callback (same state) is refused.
    let replay = client
        .get(sidecar.url(&format!("/oauth/callback?{}", callback.query().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_no_canary(&replay.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_reads_the_subject_token_anew_for_each_exchange() {
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("sa-token");
    std::fs::write(&subject, "canary-subject-1").unwrap();
    *idp.state.subject_token.lock().unwrap() = Some("canary-subject-1".into());
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "token_exchange"),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("SUBJECT_TOKEN_FILE", subject.to_str().unwrap()),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    // The kubelet rotates the projected token; the next exchange must use the new one.
    std::fs::write(&subject, "canary-subject-2").unwrap();
    *idp.state.subject_token.lock().unwrap() = Some("canary-subject-2".into());
    let response = mcp_post(
        &reqwest::Client::new(),
        &sidecar.url("/mcp"),
        call(1, "echo", json!({})),
    )
    .header("x-force-401", "exchange")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let last = idp.state.requests().last().cloned().unwrap();
    assert_eq!(last.form["subject_token"], "canary-subject-2");
    assert_eq!(
        last.form["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_clean_endpoints(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_command_output_is_cached_and_rerun_after_a_401() {
    let upstream = MockUpstream::start("cmd-token-1", Mode::Legacy);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let runs = dir.path().join("runs");
    std::fs::write(&file, "cmd-token-1").unwrap();
    let script = format!(
        "echo run >> {runs}; printf '{{\"access_token\":\"%s\",\"expires_in\":3600}}' \"$(cat {file})\"",
        runs = runs.display(),
        file = file.display()
    );
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("TOKEN_COMMAND", &script),
        ("TOKEN_COMMAND_SHELL", "true"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    for id in 0..5 {
        assert_eq!(echo(&sidecar, id).await.status(), 200);
    }
    let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(count(&runs), 1, "cached, not run per request");
    std::fs::write(&file, "cmd-token-2").unwrap();
    upstream.state.set_token("cmd-token-2");
    assert_eq!(echo(&sidecar, 9).await.status(), 200);
    assert_eq!(count(&runs), 2, "run again after the 401");

    let failing = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        (
            "TOKEN_COMMAND",
            "sh -c 'echo canary-stderr-is-scrubbed-not >&2; exit 3'",
        ),
    ])
    .await;
    let ready = failing.wait_reason("auth_required").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("exit status: 3"),
        "{ready}"
    );

    let hanging = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("TOKEN_COMMAND", "sleep 30"),
        ("TOKEN_COMMAND_TIMEOUT", "1s"),
    ])
    .await;
    // A hanging command is a credential problem (a CLI waiting for a login), not the upstream.
    let ready = hanging.wait_reason("auth_required").await;
    assert!(
        ready["detail"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1s (TOKEN_COMMAND_TIMEOUT); it was killed"),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_scope_is_answered_with_a_bounded_step_up() {
    let (upstream, idp) = linked();
    let sidecar = client_credentials(
        &upstream,
        &idp,
        &[("SCOPES", "mcp:tools"), ("READY_INTERVAL", "1h")],
    )
    .await;
    sidecar.wait_reason("ready").await;
    let before = idp.state.token_requests.load(Ordering::SeqCst);
    let sent = upstream.state.requests.lock().unwrap().len();
    *upstream.state.required_scope.lock().unwrap() = Some("admin".into());
    // Requests refused while the step-up is in flight share it: each is answered, with one
    // token request for all of them.
    idp.state.hold.store(true, Ordering::SeqCst);
    let sidecar = std::sync::Arc::new(sidecar);
    let tasks: Vec<_> = (100..108)
        .map(|id| {
            let sidecar = sidecar.clone();
            tokio::spawn(async move { echo(&sidecar, id).await.status() })
        })
        .collect();
    poll(
        || async {
            let refused = upstream.state.requests.lock().unwrap().len() - sent;
            Some((refused, idp.state.held.load(Ordering::SeqCst)))
        },
        |(refused, held)| *refused >= 8 && *held >= 1,
    )
    .await
    .expect("all eight refused, the step-up held at the IdP");
    idp.state.hold.store(false, Ordering::SeqCst);
    idp.state.release.notify_waiters();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(echo(&sidecar, 1).await.status(), 200);
    let last = idp.state.requests().last().cloned().unwrap();
    assert_eq!(last.form["scope"], "mcp:tools admin");
    let after = idp.state.token_requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 1, "one step-up for every request refused");

    // A scope the server will not grant is asked for once, not forever.
    *upstream.state.required_scope.lock().unwrap() = Some("root".into());
    let before = idp.state.token_requests.load(Ordering::SeqCst);
    for id in 2..5 {
        echo(&sidecar, id).await;
    }
    let after = idp.state.token_requests.load(Ordering::SeqCst);
    assert!(after - before <= 1, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_requests_at_expiry_cause_one_token_request() {
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(2);
    let sidecar = client_credentials(&upstream, &idp, &[("READY_INTERVAL", "1h")]).await;
    sidecar.wait_reason("ready").await;
    // Hold every token request: the refresh ahead of expiry hangs and the token expires.
    idp.state.hold.store(true, Ordering::SeqCst);
    let expired = Instant::now() + Duration::from_millis(2100);
    poll(
        || async { Some(idp.state.held.load(Ordering::SeqCst)) },
        |n| *n >= 1,
    )
    .await
    .expect("the background refresh reached the IdP");
    tokio::time::sleep_until(expired.into()).await;
    let before = idp.state.token_requests.load(Ordering::SeqCst);

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1000)
        .build()
        .unwrap();
    let url = sidecar.url("/mcp");
    let tasks: Vec<_> = (0..1000)
        .map(|id| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                mcp_post(&client, &url, call(id, "echo", json!({})))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The new token lives long enough that no refresh ahead of expiry falls inside the test.
    *idp.state.expires_in.lock().unwrap() = Some(3600);
    idp.state.hold.store(false, Ordering::SeqCst);
    idp.state.release.notify_waiters();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().is_ok_and(|s| s == 200) {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    let after = idp.state.token_requests.load(Ordering::SeqCst);
    assert_eq!(after, before, "the held refresh served all 1000 requests");
}

fn spawn_binary(env: &[(&str, &str)], port: u16) -> std::process::Child {
    let mut cmd = std::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MCP_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(format!("MCP_SIDECAR_{k}"), v);
    }
    cmd.spawn().expect("start the binary")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(port: u16) {
    let ready = poll(
        || async {
            let r = reqwest::get(format!("http://127.0.0.1:{port}/ready"))
                .await
                .ok()?;
            Some(r.status().as_u16())
        },
        |s| *s == 200,
    )
    .await;
    assert!(ready.is_some(), "sidecar on {port} never became ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_sharing_a_state_dir_never_spend_a_refresh_token_twice() {
    let (upstream, idp) = linked();
    // As on real servers, an access token stays valid after a newer one was issued; only the
    // refresh token is single-use.
    idp.state.keep_old_tokens.store(true, Ordering::SeqCst);
    let seed = idp.state.mint_refresh_token("mcp:tools");
    let dir = tempfile::tempdir().unwrap();
    let url = upstream.url();
    let token_url = idp.url("/token");
    let env = [
        ("UPSTREAM_URL", url.as_str()),
        ("CLIENT_ID", CLIENT_ID),
        ("REFRESH_TOKEN", seed.as_str()),
        ("TOKEN_URL", token_url.as_str()),
        ("STATE_DIR", dir.path().to_str().unwrap()),
        ("READY_INTERVAL", "1h"),
    ];
    let ports = [free_port(), free_port()];
    let mut children: Vec<_> = ports.iter().map(|p| spawn_binary(&env, *p)).collect();
    for port in ports {
        wait_ready(port).await;
    }
    // 200 requests, each forcing one refresh (a 401 on its first attempt), from both processes
    // at once.
    let client = reqwest::Client::new();
    let tasks: Vec<_> = ports
        .iter()
        .map(|port| {
            let client = client.clone();
            let url = format!("http://127.0.0.1:{port}/mcp");
            tokio::spawn(async move {
                let mut ok = 0;
                for i in 0..100 {
                    let response = mcp_post(&client, &url, call(i, "echo", json!({})))
                        .header("x-force-401", format!("{url}-{i}"))
                        .send()
                        .await
                        .unwrap();
                    if response.status() == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    let mut logs = String::new();
    for mut child in children.drain(..) {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        logs.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 0, "{logs}");
    assert_eq!(ok, 200, "{logs}");
    assert!(idp.state.grant_count("refresh_token") >= 100);
    assert_no_canary(&logs);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_persistence_always_leaves_a_readable_state_file() {
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let url = upstream.url();
    let token_url = idp.url("/token");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + DEADLINE * 4;
    for round in 0..50 {
        assert!(Instant::now() < deadline, "round {round} took too long");
        // A kill after the server rotated but before the file was replaced leaves the previous
        // (now spent) token: readable, but dead. Each round seeds anew so it can start; a new
        // seed wins over the persisted state.
        let seed = idp.state.mint_refresh_token("mcp:tools");
        let env = [
            ("UPSTREAM_URL", url.as_str()),
            ("CLIENT_ID", CLIENT_ID),
            ("REFRESH_TOKEN", seed.as_str()),
            ("TOKEN_URL", token_url.as_str()),
            ("STATE_DIR", dir.path().to_str().unwrap()),
            ("READY_INTERVAL", "1h"),
        ];
        let port = free_port();
        let mut child = spawn_binary(&env, port);
        wait_ready(port).await;
        // Keep it persisting (each forced refresh rotates and writes), then kill it mid-way.
        let url = format!("http://127.0.0.1:{port}/mcp");
        let hammer = {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let _ = mcp_post(&client, &url, call(i, "echo", json!({})))
                        .header("x-force-401", format!("{round}-{i}"))
                        .send()
                        .await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20 + (round * 7 % 60))).await;
        // std's kill is SIGKILL, as the OOM killer or `kill -9` sends it.
        let _ = child.kill();
        let _ = child.wait();
        hammer.abort();
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .collect();
        assert_eq!(files.len(), 1, "round {round}");
        let saved: Value = serde_json::from_slice(&std::fs::read(files[0].path()).unwrap())
            .unwrap_or_else(|e| panic!("round {round}: unreadable state: {e}"));
        assert!(saved["refresh_token"].is_string(), "round {round}: {saved}");
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert!(leftovers <= 1, "round {round}: {leftovers} temp files");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_command_runs_the_device_flow_in_the_foreground_and_persists() {
    use std::io::BufRead;
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("login")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MCP_SIDECAR_UPSTREAM_URL", upstream.url())
        .env("MCP_SIDECAR_AUTH", "device_code")
        .env("MCP_SIDECAR_CLIENT_ID", CLIENT_ID)
        .env("MCP_SIDECAR_ISSUER", idp.url(""))
        .env("MCP_SIDECAR_STATE_DIR", dir.path())
        .env("MCP_SIDECAR_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let code = loop {
        let line = lines_rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no prompt; saw {seen:?}"));
        seen.push(line.clone());
        if let Some(rest) = line
            .strip_prefix("mcp-sidecar login: open ")
            .and_then(|l| l.split("enter the code ").nth(1))
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    idp.state.approve(&code);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            seen.extend(lines_rx.try_iter());
            panic!("login did not finish after the approval: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The reader thread ends with the process's stderr.
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(line);
    }
    assert!(status.success(), "{seen:?}");
    let output = seen.join("\n");
    assert!(output.contains("mcp-sidecar login: done"), "{output}");
    assert_no_canary(&output);
    let persisted = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .expect("tokens persisted");
    let saved: Value = serde_json::from_slice(&std::fs::read(persisted.path()).unwrap()).unwrap();
    assert!(saved["refresh_token"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_giving_up_does_not_lose_a_rotated_refresh_token() {
    let (upstream, idp) = linked();
    let seed = idp.state.mint_refresh_token("mcp:tools");
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("REFRESH_TOKEN", &seed),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_DIR", "/proc/not-writable"),
        ("READY_INTERVAL", "1s"),
        ("READY_TIMEOUT", "1s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    // The next readiness check gets a 401 and refreshes; the server rotates the refresh token,
    // then answers after the check has timed out and given up.
    idp.state.hold_reply.store(true, Ordering::SeqCst);
    upstream.state.reject_next.store(1, Ordering::SeqCst);
    poll(
        || async { Some(idp.state.held.load(Ordering::SeqCst)) },
        |n| *n >= 1,
    )
    .await
    .expect("the refresh reached the server");
    sidecar.wait_reason("upstream_unreachable").await;
    idp.state.hold_reply.store(false, Ordering::SeqCst);
    idp.state.release.notify_waiters();
    // The answer nobody waited for was still taken into use: the next forced refresh spends
    // the rotated token, not the spent one.
    let mut attempt = 0;
    let next = poll(
        || {
            attempt += 1;
            let url = sidecar.url("/mcp");
            async move {
                let response = mcp_post(&reqwest::Client::new(), &url, call(2, "echo", json!({})))
                    .header("x-force-401", format!("after-{attempt}"))
                    .send()
                    .await
                    .ok()?;
                Some(response.status())
            }
        },
        |s| *s == 200,
    )
    .await;
    assert!(next.is_some());
    assert_eq!(
        idp.state.invalid_grants.load(Ordering::SeqCst),
        0,
        "{:?}",
        idp.state.requests()
    );
    assert_eq!(status(&sidecar).await["token"]["has_refresh_token"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_trouble_never_drops_the_refresh_token() {
    let (upstream, idp) = linked();
    idp.state.wrong_issuer.store(true, Ordering::SeqCst);
    let seed = idp.state.mint_refresh_token("mcp:tools");
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "refresh_token"),
        ("CLIENT_ID", CLIENT_ID),
        ("REFRESH_TOKEN", &seed),
        ("ISSUER", &idp.url("")),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    let ready = sidecar.wait_reason("auth_required").await;
    assert!(
        ready["detail"].as_str().unwrap().contains("8414"),
        "{ready}"
    );
    assert_eq!(status(&sidecar).await["token"]["has_refresh_token"], true);
    // Fixed on the server's side: the same refresh token works, no new login needed.
    idp.state.wrong_issuer.store(false, Ordering::SeqCst);
    let ready = poll(
        || async { Some(echo(&sidecar, 1).await.status()) },
        |s| *s == 200,
    )
    .await;
    assert!(ready.is_some(), "recovered once the metadata was right");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_up_survives_the_next_renewal() {
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(3);
    let sidecar = client_credentials(&upstream, &idp, &[("SCOPES", "mcp:tools")]).await;
    sidecar.wait_reason("ready").await;
    *upstream.state.required_scope.lock().unwrap() = Some("admin".into());
    assert_eq!(echo(&sidecar, 1).await.status(), 200);
    let after_step_up = idp.state.token_requests.load(Ordering::SeqCst);
    poll(
        || async { Some(idp.state.token_requests.load(Ordering::SeqCst)) },
        |n| *n > after_step_up,
    )
    .await
    .expect("the token was renewed");
    assert_eq!(echo(&sidecar, 2).await.status(), 200);
    let renewal = idp.state.requests()[after_step_up].clone();
    assert_eq!(renewal.form["scope"], "mcp:tools admin");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_refusing_every_token_does_not_churn_the_server() {
    let (upstream, idp) = linked();
    let sidecar = client_credentials(&upstream, &idp, &[]).await;
    sidecar.wait_reason("ready").await;
    let before = idp.state.token_requests.load(Ordering::SeqCst);
    // Every token is refused from now on (a wrong audience, say).
    upstream
        .state
        .reject_next
        .store(usize::MAX, Ordering::SeqCst);
    for id in 0..5 {
        assert_eq!(echo(&sidecar, id).await.status(), 502);
    }
    sidecar.wait_reason("upstream_auth_rejected").await;
    // Readiness keeps checking; give it a few rounds.
    let until = Instant::now() + Duration::from_secs(4);
    poll(|| async { Some(Instant::now()) }, |now| *now >= until).await;
    let after = idp.state.token_requests.load(Ordering::SeqCst);
    assert!(after - before <= 2, "{} token requests", after - before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_elsewhere_ends_a_running_device_login() {
    let (upstream, idp) = linked();
    let state_dir = tempfile::tempdir().unwrap();
    let env = [
        ("UPSTREAM_URL", upstream.url()),
        ("AUTH", "device_code".into()),
        ("CLIENT_ID", CLIENT_ID.into()),
        ("ISSUER", idp.url("")),
        ("STATE_DIR", state_dir.path().to_str().unwrap().into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = Sidecar::start(&env).await;
    wait_for_login(&first).await;
    let second = Sidecar::start(&env).await;
    let login = wait_for_login(&second).await;
    idp.state
        .approve(login["login"]["user_code"].as_str().unwrap());
    second.wait_reason("ready").await;
    // The first sidecar finds the tokens on the shared volume and stops its own login.
    let ready = first.wait_reason("ready").await;
    assert!(ready.get("login").is_none(), "{ready}");
    assert_eq!(idp.state.device_requests.load(Ordering::SeqCst), 2);
}

/// A client secret as the issue's canaries are: `+ / = &`, longer than any cut (200).
fn canary_client_secret() -> String {
    format!("Lk4q+/=&{}", "Pz8+/=&m".repeat(30))
}

/// Every form of `secret` that the sidecar sends (`client_id` is the Basic user name) and their
/// first 8 characters, which are what a cut before scrubbing would leave.
fn leak_forms(secret: &str) -> Vec<(String, String)> {
    use base64::Engine;
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let lower = form
        .split('%')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                let (hex, rest) = part.split_at(2.min(part.len()));
                format!("%{}{rest}", hex.to_ascii_lowercase())
            }
        })
        .collect::<String>();
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].to_string();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{form}"));
    // The credential's first 20 characters encode "sidecar-client:", which is not secret.
    let basic_secret_part = basic[20..].to_string();
    let mut forms = Vec::new();
    for (what, value) in [
        ("raw", secret.to_string()),
        ("form-urlencoded", form.clone()),
        ("form-urlencoded, lower-case hex", lower),
        ("json", json.replace('/', "\\/")),
        ("basic", basic_secret_part),
    ] {
        forms.push((format!("{what} prefix"), value.chars().take(8).collect()));
        forms.push((what.to_string(), value));
    }
    forms
}

fn assert_no_leak(text: &str, forms: &[(String, String)], place: &str) {
    for (what, form) in forms {
        assert!(
            !text.contains(form.as_str()),
            "{what} of a secret leaked into {place}: {text}"
        );
    }
}

/// The real binary against an authorization server that echoes every request it gets, in an
/// OAuth error and in an HTML page, for each way of authenticating the client: no form of the
/// secret (or of the signed assertion) reaches a log line, /ready, /status, /metrics or a client.
#[tokio::test(flavor = "multi_thread")]
async fn an_echoing_authorization_server_learns_nothing_it_can_show() {
    use std::io::Read;
    let secret = canary_client_secret();
    let forms = leak_forms(&secret);
    let client = reqwest::Client::new();
    // Each way the secret travels, quoted first by the server, so that it straddles the cut.
    let runs = [
        ("client_secret_post", Failure::EchoJson(Echo::Body)),
        ("client_secret_post", Failure::EchoJson(Echo::Fields)),
        ("client_secret_post", Failure::EchoJson(Echo::Escaped)),
        ("client_secret_basic", Failure::EchoJson(Echo::Header)),
        ("client_secret_basic", Failure::EchoJson(Echo::Escaped)),
        ("private_key_jwt", Failure::EchoJson(Echo::Fields)),
        ("client_secret_post", Failure::EchoHtml),
        ("client_secret_basic", Failure::EchoHtml),
        ("private_key_jwt", Failure::EchoHtml),
    ];
    for (method, failure) in runs {
        let (upstream, idp) = linked();
        *idp.state.failure.lock().unwrap() = failure;
        let url = upstream.url();
        let token_url = idp.url("/token");
        let key = fixture("rsa-key.pem");
        let mut env = vec![
            ("UPSTREAM_URL", url.as_str()),
            ("AUTH", "client_credentials"),
            ("CLIENT_ID", CLIENT_ID),
            ("TOKEN_URL", token_url.as_str()),
            ("STATE_DIR", "/proc/not-writable"),
            ("LOG", "debug"),
        ];
        if method == "private_key_jwt" {
            env.push(("CLIENT_ASSERTION_KEY_FILE", key.as_str()));
        } else {
            env.push(("CLIENT_SECRET", secret.as_str()));
            env.push(("CLIENT_AUTH", method));
        }
        let port = free_port();
        let mut child = spawn_binary(&env, port);
        // Read the log as it is written: a full pipe would stall the sidecar.
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut logs = String::new();
            let _ = stderr.read_to_string(&mut logs);
            logs
        });
        let base = format!("http://127.0.0.1:{port}");
        let ready = poll(
            || async {
                let body: Value = client
                    .get(format!("{base}/ready"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                Some(body)
            },
            |body| {
                body["reason"] != "starting" && idp.state.token_requests.load(Ordering::SeqCst) >= 2
            },
        )
        .await
        .unwrap_or_else(|| panic!("{method} {failure:?}: no failed token request reported"));
        let detail = ready["detail"].as_str().unwrap_or_default().to_string();
        if matches!(failure, Failure::EchoJson(_)) {
            assert!(detail.contains("invalid_client"), "{method}: {detail}");
        }
        let mut answers = vec![("/ready".to_string(), ready.to_string())];
        for path in ["/ready", "/status", "/metrics"] {
            let body = client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            answers.push((path.to_string(), body));
        }
        let call = mcp_post(&client, &format!("{base}/mcp"), call(1, "echo", json!({})))
            .send()
            .await
            .unwrap();
        assert!(
            call.status().is_server_error(),
            "{method}: {}",
            call.status()
        );
        answers.push(("a JSON-RPC error".into(), call.text().await.unwrap()));
        let _ = child.kill();
        let _ = child.wait();
        let logs = reader.join().unwrap();
        answers.push(("the log".into(), logs));

        let mut forms = forms.clone();
        for request in idp.state.requests() {
            if let Some(assertion) = request.form.get("client_assertion") {
                let signature = assertion.rsplit('.').next().unwrap().to_string();
                forms.push((
                    "an assertion's signature".into(),
                    signature[..16].to_string(),
                ));
                forms.push(("an assertion".into(), assertion.clone()));
                // Past the header every JWT shares: the claims, unique to this one.
                let claims: String = assertion.chars().skip(40).take(60).collect();
                forms.push(("an assertion's claims".into(), claims));
            }
        }
        if method == "private_key_jwt" {
            assert!(
                forms.len() > leak_forms(&secret).len(),
                "assertions were sent"
            );
        }
        for (place, text) in &answers {
            assert_no_leak(text, &forms, &format!("{place} ({method}, {failure:?})"));
        }
    }
}

/// A STATE_DIR others can write is refused once, with the fix, and nothing is stored in it; the
/// sidecar keeps working with its tokens in memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_dir_others_can_write_is_refused_with_the_fix() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let (upstream, idp) = linked();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let url = upstream.url();
    let token_url = idp.url("/token");
    let env = [
        ("UPSTREAM_URL", url.as_str()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("TOKEN_URL", token_url.as_str()),
        ("STATE_DIR", dir.to_str().unwrap()),
    ];
    let port = free_port();
    let mut child = spawn_binary(&env, port);
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs);
        logs
    });
    wait_ready(port).await;
    let status: Value = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let logs = reader.join().unwrap();
    assert_eq!(status["token"]["persisted_in"], "memory only", "{status}");
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("MCP_SIDECAR_STATE_DIR"))
        .collect();
    assert_eq!(refusals.len(), 1, "said once: {logs}");
    for needed in [
        dir.to_str().unwrap(),
        "writable by group or others",
        "0777",
        "chmod 700",
    ] {
        assert!(
            refusals[0].contains(needed),
            "{needed} missing: {}",
            refusals[0]
        );
    }
    let stored: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(stored.is_empty(), "nothing is stored in it: {stored:?}");
    assert_no_canary(&logs);
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshes_never_reuse_a_connection_the_server_may_close_nor_send_an_expired_token() {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    // 4 s tokens: the refresh is due after 2 s, long after the first connection went idle.
    let server = OneRequestPerConnection::start(upstream.state.clone(), 4).await;
    let token_url = server.url();
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("TOKEN_URL", &token_url),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let mut id = 0;
    poll(
        || {
            id += 1;
            let sidecar = &sidecar;
            let id = id;
            async move { Some(echo(sidecar, id).await.status().as_u16()) }
        },
        |status| {
            assert_eq!(*status, 200, "every call is answered");
            server.issued.lock().unwrap().len() >= 3
        },
    )
    .await
    .expect("two refreshes ahead of expiry");
    assert_eq!(
        server.dropped.load(Ordering::SeqCst),
        0,
        "a token request was sent on a reused connection"
    );
    let body = status(&sidecar).await;
    assert!(body["token"]["last_error"].is_null(), "{body}");
    let issued = server.issued.lock().unwrap().clone();
    for request in upstream.state.requests() {
        let Some(token) = request
            .authorization()
            .and_then(|a| a.strip_prefix("Bearer "))
        else {
            continue;
        };
        let (_, at, lifetime) = issued
            .iter()
            .find(|(t, _, _)| t == token)
            .unwrap_or_else(|| panic!("{token} was never issued"));
        assert!(
            request.at < *at + Duration::from_secs(*lifetime),
            "{token} was sent after it expired"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_counts_from_when_the_token_request_was_sent() {
    let (upstream, idp) = linked();
    idp.state.hold_reply.store(true, Ordering::SeqCst);
    let sidecar = client_credentials(&upstream, &idp, &[]).await;
    poll(
        || async { Some(idp.state.held.load(Ordering::SeqCst)) },
        |n| *n >= 1,
    )
    .await
    .expect("the first token request reached the IdP");
    // The request was sent before now; its reply comes 3 s later, as a slow server's would.
    let seen = std::time::SystemTime::now();
    let slow = seen + Duration::from_secs(3);
    poll(
        || async { Some(std::time::SystemTime::now()) },
        |now| *now >= slow,
    )
    .await
    .expect("time passes");
    idp.state.hold_reply.store(false, Ordering::SeqCst);
    idp.state.release.notify_waiters();
    sidecar.wait_reason("ready").await;
    let body = status(&sidecar).await;
    let expires =
        humantime::parse_rfc3339(body["token"]["expires_at"].as_str().unwrap()).expect("RFC 3339");
    // The IdP's tokens live 3600 s; counted from the reply, the expiry would be 3 s later.
    assert!(
        expires <= seen + Duration::from_secs(3600),
        "expiry counted from the reply: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_the_last_seconds_of_a_token_waits_for_the_refresh_in_flight() {
    let (upstream, idp) = linked();
    // 8 s tokens: the refresh is due after 4 s; the last 2 s (a quarter) are never sent.
    *idp.state.expires_in.lock().unwrap() = Some(8);
    let sidecar = client_credentials(&upstream, &idp, &[("READY_INTERVAL", "1h")]).await;
    sidecar.wait_reason("ready").await;
    let first = upstream.state.token.lock().unwrap().clone();
    // Hold the refresh ahead of expiry at the IdP.
    idp.state.hold.store(true, Ordering::SeqCst);
    let obtained = std::time::SystemTime::now();
    poll(
        || async { Some(idp.state.held.load(Ordering::SeqCst)) },
        |n| *n >= 1,
    )
    .await
    .expect("the background refresh reached the IdP");
    // Into the last 2 s of the first token (obtained before `obtained`): still valid, but
    // too close to its expiry to be sent.
    let late = obtained + Duration::from_millis(6500);
    poll(
        || async { Some(std::time::SystemTime::now()) },
        |now| *now >= late,
    )
    .await
    .expect("time passes");
    let call = tokio::spawn({
        let url = sidecar.url("/mcp");
        async move {
            mcp_post(&reqwest::Client::new(), &url, call(1, "echo", json!({})))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    // Give a token sent at once the time to arrive (the fixed sidecar sends nothing): the
    // first token still has more than this to live, so nothing here depends on speed.
    let watch = Instant::now() + Duration::from_millis(800);
    while Instant::now() < watch && upstream.state.client_requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        upstream.state.client_requests().is_empty(),
        "the token was sent in its last seconds"
    );
    *idp.state.expires_in.lock().unwrap() = Some(3600);
    idp.state.hold.store(false, Ordering::SeqCst);
    idp.state.release.notify_waiters();
    assert_eq!(call.await.unwrap().ok(), Some(200));
    let sent = upstream.state.client_requests();
    let token = sent.last().and_then(|r| r.authorization()).unwrap();
    assert_ne!(
        token,
        format!("Bearer {first}"),
        "the token was sent in its last seconds"
    );
}

/// A token endpoint that echoes the code exchange must not get the PKCE verifier shown on the
/// login page (or anywhere): with the code, it is what redeems the login.
#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_code_exchange_shows_no_pkce_verifier() {
    let (upstream, idp) = linked();
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "authorization_code"),
        ("CLIENT_ID", CLIENT_ID),
        ("ISSUER", &idp.url("")),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    sidecar.wait_reason("auth_required").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .get(sidecar.url("/oauth/login"))
        .send()
        .await
        .unwrap();
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let back = client.get(&authorize).send().await.unwrap();
    let callback = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    *idp.state.failure.lock().unwrap() = Failure::EchoJson(Echo::Body);
    let done = client
        .get(sidecar.url(&format!("/oauth/callback?{}", callback.query().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 400);
    let page = done.text().await.unwrap();
    assert!(page.contains("code_verifier="), "the echo is shown: {page}");
    for (at, _) in page.match_indices("code_verifier=") {
        let after = &page[at + "code_verifier=".len()..];
        assert!(after.starts_with("<redacted>"), "{page}");
    }
}

/// With a client token, whoever reaches the port must not start a login (and pick the account
/// the sidecar then holds): `/oauth/login` asks for the token as a Basic password.
#[tokio::test(flavor = "multi_thread")]
async fn starting_a_login_needs_the_client_token() {
    let client_token = format!("login-canary-{}", "m+n/o=p&r".repeat(25));
    let (upstream, idp) = linked();
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("AUTH", "authorization_code"),
        ("CLIENT_ID", CLIENT_ID),
        ("ISSUER", &idp.url("")),
        ("STATE_DIR", "/proc/not-writable"),
        ("CLIENT_TOKEN", &client_token),
    ])
    .await;
    sidecar.wait_reason("auth_required").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = sidecar.url("/oauth/login");
    let refused = client.get(&login).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    let body = refused.text().await.unwrap();
    assert!(!body.contains("login-canary"), "{body}");
    let wrong = client
        .get(&login)
        .basic_auth("", Some("not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let browser = client
        .get(&login)
        .basic_auth("anyone", Some(&client_token))
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 302);
    let tool = client
        .get(&login)
        .bearer_auth(&client_token)
        .send()
        .await
        .unwrap();
    assert_eq!(tool.status(), 302);
}
