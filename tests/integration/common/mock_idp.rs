//! A mock OAuth authorization server: every grant the sidecar uses, rotating refresh tokens
//! with reuse detection, and knobs for each way real servers fail.
//!
//! Like the mock upstream it runs on its own thread and runtime. Issued access tokens are
//! `at-<n>-<scopes joined by +>` and are handed to the linked mock upstream, which accepts only
//! the newest one, so a request with a stale token really fails.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::mock_upstream::MockState;

pub const CLIENT_ID: &str = "sidecar-client";
pub const CLIENT_SECRET: &str = "canary-client-secret-5c1e";

/// How the token endpoint misbehaves, when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    None,
    /// 503 with an HTML page, as a gateway in front of the IdP answers.
    Html503,
    /// 200 with an HTML page (a login portal in the way).
    Html200,
    /// 200 JSON without `access_token`.
    NoAccessToken,
    /// 401 `invalid_client` whose `error_description` echoes the whole request: the form body as
    /// sent, the `Authorization` header, the decoded credential fields, and a JSON-escaped copy,
    /// led by the one named (what comes first straddles a 200-character cut).
    EchoJson(Echo),
    /// 400 with an HTML error page echoing the same.
    EchoHtml,
}

/// Which part of the request an echoing server quotes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// The form body as sent (form-urlencoded).
    Body,
    /// `Authorization: Basic ...`.
    Header,
    /// The decoded `client_secret` and `client_assertion`.
    Fields,
    /// A JSON-escaped copy of body and header (`/` as `\/`, as PHP writes it).
    Escaped,
}

/// What an echoing server quotes back: everything the sidecar sent, `lead` first.
fn echo_request(headers: &HeaderMap, body: &str, lead: Echo) -> String {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let fields = ["client_secret", "client_assertion"]
        .iter()
        .filter_map(|name| form.get(*name).map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    let escaped = serde_json::to_string(&json!({"body": body, "authorization": authorization}))
        .unwrap()
        .replace('/', "\\/");
    let mut parts = vec![
        (Echo::Body, body.to_string()),
        (Echo::Header, format!("Authorization: {authorization}")),
        (Echo::Fields, fields),
        (Echo::Escaped, escaped),
    ];
    parts.sort_by_key(|(part, _)| *part != lead);
    parts
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
    pub outcome: String,
}

pub struct IdpState {
    pub base: Mutex<String>,
    pub upstream: Mutex<Option<Arc<MockState>>>,
    /// Lifetime of issued access tokens; `None` leaves `expires_in` out.
    pub expires_in: Mutex<Option<u64>>,
    pub failure: Mutex<Failure>,
    /// Metadata names this issuer instead of the real one.
    pub wrong_issuer: AtomicBool,
    pub requests: Mutex<Vec<TokenRequest>>,
    pub token_requests: AtomicUsize,
    pub invalid_grants: AtomicUsize,
    counter: AtomicU64,
    /// Valid refresh tokens and their scopes; a used one is revoked (rotation).
    refresh_tokens: Mutex<HashMap<String, String>>,
    revoked: Mutex<HashSet<String>>,
    /// Device codes: user_code → (device_code, approved).
    devices: Mutex<HashMap<String, (String, bool)>>,
    pub device_requests: AtomicUsize,
    pub device_expires_in: Mutex<u64>,
    /// Answer the next N device polls with `slow_down`.
    pub slow_down_next: AtomicUsize,
    pub poll_times: Mutex<Vec<std::time::Instant>>,
    /// Authorization codes: code → (code_challenge, redirect_uri).
    codes: Mutex<HashMap<String, (String, String)>>,
    pub authorize_queries: Mutex<Vec<HashMap<String, String>>>,
    /// While set, token requests wait for `release` (to pile callers up at expiry).
    pub hold: AtomicBool,
    /// While set, token requests are answered (refresh tokens rotated) but the reply waits for
    /// `release`, as a slow server's would.
    pub hold_reply: AtomicBool,
    pub release: Notify,
    pub held: AtomicUsize,
    /// Public keys trusted for `private_key_jwt`.
    pub assertion_keys: Mutex<Vec<(jsonwebtoken::Algorithm, jsonwebtoken::DecodingKey)>>,
    pub subject_token: Mutex<Option<String>>,
    /// Earlier access tokens stay valid at the upstream (the default: only the newest does).
    pub keep_old_tokens: AtomicBool,
    /// Clients registered through `/register` (RFC 7591), with the request bodies.
    pub registrations: Mutex<Vec<Value>>,
    registered: Mutex<HashSet<String>>,
}

impl IdpState {
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn grant_count(&self, grant: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.form.get("grant_type").map(String::as_str) == Some(grant))
            .count()
    }

    /// Issues a refresh token directly (as a prior login would have).
    pub fn mint_refresh_token(&self, scope: &str) -> String {
        let token = format!("canary-rt-{}", self.counter.fetch_add(1, Ordering::SeqCst));
        self.refresh_tokens
            .lock()
            .unwrap()
            .insert(token.clone(), scope.to_string());
        token
    }

    #[cfg(feature = "fleet")]
    /// Accepts `token` as a refresh token (a canary of the test's choosing).
    pub fn insert_refresh_token(&self, token: &str, scope: &str) {
        self.refresh_tokens
            .lock()
            .unwrap()
            .insert(token.to_string(), scope.to_string());
    }

    #[cfg(feature = "fleet")]
    /// Every refresh token issued and not yet spent.
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        self.refresh_tokens
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    pub fn approve(&self, user_code: &str) {
        if let Some(entry) = self.devices.lock().unwrap().get_mut(user_code) {
            entry.1 = true;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.lock().unwrap())
    }
}

pub struct MockIdp {
    pub addr: SocketAddr,
    pub state: Arc<IdpState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockIdp {
    /// Starts the server; tokens it issues are given to `upstream` when set.
    pub fn start(upstream: Option<Arc<MockState>>) -> Self {
        let state = Arc::new(IdpState {
            base: Mutex::new(String::new()),
            upstream: Mutex::new(upstream),
            expires_in: Mutex::new(Some(3600)),
            failure: Mutex::new(Failure::None),
            wrong_issuer: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            token_requests: AtomicUsize::new(0),
            invalid_grants: AtomicUsize::new(0),
            counter: AtomicU64::new(1),
            refresh_tokens: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            devices: Mutex::new(HashMap::new()),
            device_requests: AtomicUsize::new(0),
            device_expires_in: Mutex::new(600),
            slow_down_next: AtomicUsize::new(0),
            poll_times: Mutex::new(Vec::new()),
            codes: Mutex::new(HashMap::new()),
            authorize_queries: Mutex::new(Vec::new()),
            hold: AtomicBool::new(false),
            hold_reply: AtomicBool::new(false),
            release: Notify::new(),
            held: AtomicUsize::new(0),
            assertion_keys: Mutex::new(Vec::new()),
            subject_token: Mutex::new(None),
            keep_old_tokens: AtomicBool::new(false),
            registrations: Mutex::new(Vec::new()),
            registered: Mutex::new(HashSet::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock idp");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        *state.base.lock().unwrap() = format!("http://{addr}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new()
                    .route("/.well-known/oauth-authorization-server", get(metadata))
                    .route("/token", post(token))
                    .route("/device", post(device))
                    .route("/authorize", get(authorize))
                    .route("/register", post(register))
                    .with_state(app_state);
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn metadata(State(state): State<Arc<IdpState>>) -> Response {
    let base = state.base.lock().unwrap().clone();
    let issuer = if state.wrong_issuer.load(Ordering::SeqCst) {
        "https://evil.example".to_string()
    } else {
        base.clone()
    };
    axum::Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/token"),
        "device_authorization_endpoint": format!("{base}/device"),
        "authorization_endpoint": format!("{base}/authorize"),
        "registration_endpoint": format!("{base}/register"),
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["client_credentials", "refresh_token", "authorization_code",
            "urn:ietf:params:oauth:grant-type:device_code"],
    }))
    .into_response()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// Checks client authentication: basic, post, a signed assertion, or a public client.
fn authenticate(
    state: &IdpState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), &'static str> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .map_err(|_| "bad basic")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "bad basic")?;
        return (decoded == format!("{CLIENT_ID}:{CLIENT_SECRET}"))
            .then_some(())
            .ok_or("bad basic credentials");
    }
    if let Some(secret) = form.get("client_secret") {
        return (form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && secret == CLIENT_SECRET)
            .then_some(())
            .ok_or("bad post credentials");
    }
    if let Some(assertion) = form.get("client_assertion") {
        let token_url = state.url("/token");
        for (alg, key) in state.assertion_keys.lock().unwrap().iter() {
            let mut validation = jsonwebtoken::Validation::new(*alg);
            validation.set_audience(&[token_url.as_str()]);
            validation.set_issuer(&[CLIENT_ID]);
            validation.sub = Some(CLIENT_ID.into());
            if jsonwebtoken::decode::<Value>(assertion, key, &validation).is_ok() {
                return Ok(());
            }
        }
        return Err("bad assertion");
    }
    // A public client (device code, authorization code), configured or registered.
    let id = form.get("client_id").map(String::as_str).unwrap_or("");
    (id == CLIENT_ID || state.registered.lock().unwrap().contains(id))
        .then_some(())
        .ok_or("unknown client")
}

async fn token(State(state): State<Arc<IdpState>>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    if state.hold.load(Ordering::SeqCst) {
        let released = state.release.notified();
        state.held.fetch_add(1, Ordering::SeqCst);
        released.await;
    }
    // Copied out: `issue` takes the lock again.
    let failure = *state.failure.lock().unwrap();
    let (response, outcome) = match failure {
        Failure::EchoJson(lead) => (
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                &echo_request(&headers, &body, lead),
            ),
            "echo_json".to_string(),
        ),
        Failure::EchoHtml => (
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/html")],
                format!(
                    "<html><body><h1>Bad request</h1><pre>{}</pre></body></html>",
                    echo_request(&headers, &body, Echo::Body)
                ),
            )
                .into_response(),
            "echo_html".to_string(),
        ),
        _ => issue(&state, &headers, &form),
    };
    if state.hold_reply.load(Ordering::SeqCst) {
        let released = state.release.notified();
        state.held.fetch_add(1, Ordering::SeqCst);
        released.await;
    }
    state.requests.lock().unwrap().push(TokenRequest {
        form,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        outcome,
    });
    response
}

fn issue(
    state: &IdpState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> (Response, String) {
    match *state.failure.lock().unwrap() {
        Failure::None | Failure::EchoJson(_) | Failure::EchoHtml => {}
        Failure::Html503 => {
            return (
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body>upstream connect error canary-html</body></html>",
                )
                    .into_response(),
                "html503".into(),
            );
        }
        Failure::Html200 => {
            return (
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html>Sign in to the portal canary-html</html>",
                )
                    .into_response(),
                "html200".into(),
            );
        }
        Failure::NoAccessToken => {
            return (
                axum::Json(json!({"token_type": "Bearer", "expires_in": 60})).into_response(),
                "no_access_token".into(),
            );
        }
    }
    if let Err(why) = authenticate(state, headers, form) {
        return (
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why),
            "invalid_client".into(),
        );
    }
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    let requested = form.get("scope").cloned();
    let (scope, rotate) = match grant {
        "client_credentials" => (requested.unwrap_or_else(|| "mcp:tools".into()), false),
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let granted = state.refresh_tokens.lock().unwrap().remove(&presented);
            match granted {
                Some(scope) => {
                    state.revoked.lock().unwrap().insert(presented);
                    (requested.unwrap_or(scope), true)
                }
                None => {
                    state.invalid_grants.fetch_add(1, Ordering::SeqCst);
                    return (
                        oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "refresh token revoked or unknown",
                        ),
                        "invalid_grant".into(),
                    );
                }
            }
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            state
                .poll_times
                .lock()
                .unwrap()
                .push(std::time::Instant::now());
            if state
                .slow_down_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return (
                    oauth_error(StatusCode::BAD_REQUEST, "slow_down", "slow down"),
                    "slow_down".into(),
                );
            }
            let device_code = form.get("device_code").cloned().unwrap_or_default();
            let devices = state.devices.lock().unwrap();
            match devices.values().find(|(code, _)| *code == device_code) {
                Some((_, true)) => ("mcp:tools offline_access".to_string(), true),
                Some((_, false)) => {
                    return (
                        oauth_error(StatusCode::BAD_REQUEST, "authorization_pending", "waiting"),
                        "authorization_pending".into(),
                    );
                }
                None => {
                    return (
                        oauth_error(StatusCode::BAD_REQUEST, "expired_token", "expired"),
                        "expired_token".into(),
                    );
                }
            }
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect)) = state.codes.lock().unwrap().remove(&code) else {
                return (
                    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code"),
                    "invalid_grant".into(),
                );
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            if computed != challenge || form.get("redirect_uri") != Some(&redirect) {
                return (
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "PKCE or redirect mismatch",
                    ),
                    "invalid_grant".into(),
                );
            }
            ("mcp:tools offline_access".to_string(), true)
        }
        "urn:ietf:params:oauth:grant-type:token-exchange" => {
            let expected = state.subject_token.lock().unwrap().clone();
            if expected.is_none() || form.get("subject_token") != expected.as_ref() {
                return (
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "bad subject token",
                    ),
                    "invalid_grant".into(),
                );
            }
            (requested.unwrap_or_else(|| "mcp:tools".into()), false)
        }
        _ => {
            return (
                oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", grant),
                "unsupported_grant_type".into(),
            );
        }
    };
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let access = format!("at-{n}-{}", scope.replace(' ', "+"));
    if let Some(upstream) = state.upstream.lock().unwrap().as_ref() {
        if state.keep_old_tokens.load(Ordering::SeqCst) {
            let previous = upstream.token.lock().unwrap().clone();
            upstream.also_accepted.lock().unwrap().insert(previous);
        }
        upstream.set_token(&access);
    }
    let mut body = json!({"access_token": access, "token_type": "Bearer", "scope": scope});
    if grant == "refresh_token" {
        // Like many servers: a refresh reply without scope means "unchanged".
        body.as_object_mut().unwrap().remove("scope");
    }
    if let Some(expires_in) = *state.expires_in.lock().unwrap() {
        body["expires_in"] = json!(expires_in);
    }
    if rotate {
        let refresh = format!("canary-rt-{}", state.counter.fetch_add(1, Ordering::SeqCst));
        state
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(refresh.clone(), scope.clone());
        body["refresh_token"] = json!(refresh);
    }
    (axum::Json(body).into_response(), "ok".into())
}

async fn device(State(state): State<Arc<IdpState>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let id = form.get("client_id").map(String::as_str).unwrap_or("");
    if id != CLIENT_ID && !state.registered.lock().unwrap().contains(id) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    let n = state.device_requests.fetch_add(1, Ordering::SeqCst);
    let user_code = format!("WDJB-MJH{n}");
    let device_code = format!("canary-device-code-{n}");
    let expires_in = *state.device_expires_in.lock().unwrap();
    {
        let mut devices = state.devices.lock().unwrap();
        devices.insert(user_code.clone(), (device_code.clone(), false));
    }
    axum::Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": state.url("/activate"),
        "verification_uri_complete": state.url(&format!("/activate?user_code={user_code}")),
        "expires_in": expires_in,
        "interval": 1,
    }))
    .into_response()
}

/// The authorization endpoint: records the request and "logs the user in" at once, redirecting
/// back with a code (a real server would show pages first).
async fn authorize(
    State(state): State<Arc<IdpState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state.authorize_queries.lock().unwrap().push(query.clone());
    let (Some(challenge), Some(redirect), Some(st)) = (
        query.get("code_challenge"),
        query.get("redirect_uri"),
        query.get("state"),
    ) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing parameters",
        );
    };
    let code = format!(
        "canary-code-{}",
        state.counter.fetch_add(1, Ordering::SeqCst)
    );
    state
        .codes
        .lock()
        .unwrap()
        .insert(code.clone(), (challenge.clone(), redirect.clone()));
    let mut location = url::Url::parse(redirect).unwrap();
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", st)
        .append_pair("iss", &state.base.lock().unwrap());
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// Dynamic Client Registration (RFC 7591): every request gets a new public client.
async fn register(State(state): State<Arc<IdpState>>, body: String) -> Response {
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "not JSON",
        );
    };
    let id = format!(
        "dcr-client-{}",
        state.counter.fetch_add(1, Ordering::SeqCst)
    );
    state.registered.lock().unwrap().insert(id.clone());
    state.registrations.lock().unwrap().push(request.clone());
    let mut reply = request;
    reply["client_id"] = json!(id);
    (StatusCode::CREATED, axum::Json(reply)).into_response()
}

/// A token endpoint that serves one request per connection although its answers say
/// `Connection: keep-alive`: a second request on a connection is read, then the connection is
/// closed without an answer. That is what a client sees when it reuses an idle connection just
/// as the server closes it (Node does after 5 s). Issues `ka-<n>` tokens living `expires_in`
/// seconds, each accepted by `upstream` (which keeps accepting the earlier ones: whether a
/// token was sent after its expiry is for the test to check against [`Self::issued`]).
pub struct OneRequestPerConnection {
    pub addr: SocketAddr,
    /// Every token issued, with when it was issued and its lifetime in seconds.
    pub issued: Arc<Mutex<Vec<(String, std::time::SystemTime, u64)>>>,
    /// Requests that arrived on a reused connection and were dropped unanswered.
    pub dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl OneRequestPerConnection {
    pub async fn start(upstream: Arc<MockState>, expires_in: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issued = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let issued = issued.clone();
            let dropped = dropped.clone();
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.spawn(serve_one(
                        stream,
                        upstream.clone(),
                        expires_in,
                        issued.clone(),
                        dropped.clone(),
                    ));
                }
            }
        });
        Self {
            addr,
            issued,
            dropped,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
}

impl Drop for OneRequestPerConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    upstream: Arc<MockState>,
    expires_in: u64,
    issued: Arc<Mutex<Vec<(String, std::time::SystemTime, u64)>>>,
    dropped: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    let mut served = 0;
    loop {
        // One request: the head, then a body of Content-Length bytes.
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        if served == 1 {
            dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        served += 1;
        let token = {
            let mut issued = issued.lock().unwrap();
            let token = format!("ka-{}", issued.len() + 1);
            issued.push((token.clone(), std::time::SystemTime::now(), expires_in));
            token
        };
        upstream.set_token(&token);
        upstream.also_accepted.lock().unwrap().insert(token.clone());
        let body = json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
            .to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
