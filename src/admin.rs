//! The sidecar's own endpoints: `/healthz`, `/ready`, `/status`, `/metrics`, and JSON 404s.
//!
//! Every request, whatever its path, passes the Host and Origin rule first ([`host_rule`]): a web
//! page that rebinds a name must not read even `/ready`, which shows a pending device-code login.
//! Orchestrators still probe by IP address, which the rule accepts. With a `CLIENT_TOKEN`,
//! `/status` and `/metrics` need it too (they describe the credential and its use); `/healthz`
//! and `/ready`'s status code stay open to probes that cannot send it, but `/ready` without the
//! token says only `ready`, `reason` and `since`: no detail and no login prompt.
//!
//! With several upstreams `/ready` is 200 only when every required one is ready and lists each in
//! `upstreams`; `/ready/NAME` answers for one; `/upstreams` names them for gates (one line each,
//! `NAME PATH required|optional`); `/status` has a section per upstream.
//!
//! `/.well-known/*` and every unknown path answer `404` with `{"error":"not_found"}` as JSON:
//! Claude Code probes OAuth discovery paths and treats a plain-text 404 as a crash and a 200 as
//! "needs authentication" (PROTOCOL.md).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::{App, Apps};

pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

/// Middleware: the Host and Origin rule for every path but the MCP endpoints', which check it
/// themselves to answer in JSON-RPC form and count the refusal.
pub async fn host_rule(State(apps): State<Arc<Apps>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !apps.all.iter().any(|app| is_mcp_path(app, path))
        && let Err(refusal) = apps
            .guard
            .check_host_and_origin(request.uri(), request.headers())
    {
        tracing::warn!(
            method = %request.method(),
            path = request.uri().path(),
            reason = %refusal,
            "refused a request"
        );
        return refused(&refusal);
    }
    next.run(request).await
}

fn is_mcp_path(app: &App, path: &str) -> bool {
    path == app.path
        || path
            .strip_prefix(app.path.as_str())
            .and_then(|rest| rest.strip_prefix(crate::legacy::LEGACY_SEGMENT))
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The JSON answer to a refused request: 400 or 403, never 401.
fn refused(refusal: &crate::guard::Refusal) -> Response {
    let error = refusal.reason();
    (
        refusal.status(),
        Json(json!({ "error": error, "detail": refusal.message() })),
    )
        .into_response()
}

/// The client token, for the endpoints that need it when one is configured.
fn token_refused(apps: &Apps, headers: &HeaderMap) -> Option<Response> {
    let refusal = apps.guard.check_client_token(headers).err()?;
    tracing::warn!(reason = %refusal, "refused a request without the client token");
    Some(refused(&refusal))
}

/// One upstream's `/ready` object. Without the client token (probes that cannot send it, such as
/// kubelet's httpGet) only `ready`, `reason` and `since`: the detail and a pending login are for
/// clients that hold it.
fn ready_entry(app: &App, report: &crate::readiness::Report, deep: bool) -> serde_json::Value {
    let mut entry = json!({
        "name": app.name,
        "path": app.path,
        "required": app.required,
        "ready": report.ready,
        "reason": report.reason,
        "since": report.since,
    });
    if deep {
        entry["detail"] = json!(report.detail);
        if let Some(login) = &report.login {
            entry["login"] = json!(login);
        }
    }
    entry
}

/// The top-level fields `/ready` has always had, from one upstream's report.
fn top_level(report: &crate::readiness::Report, deep: bool) -> serde_json::Value {
    if deep {
        json!(report)
    } else {
        json!({ "ready": report.ready, "reason": report.reason, "since": report.since })
    }
}

pub async fn ready(State(apps): State<Arc<Apps>>, headers: HeaderMap) -> Response {
    let deep = apps.guard.client_token_ok(&headers);
    let reports: Vec<_> = apps.all.iter().map(|app| app.readiness.report()).collect();
    let ready = apps
        .all
        .iter()
        .zip(&reports)
        .all(|(app, report)| report.ready || !app.required);
    // Today's top-level fields come from the upstream that decides: the first required one that
    // is not ready, else the first ready one (for a single upstream: that upstream).
    let lead = apps
        .all
        .iter()
        .zip(&reports)
        .position(|(app, report)| app.required && !report.ready)
        .or_else(|| reports.iter().position(|report| report.ready))
        .unwrap_or(0);
    let mut body = match reports.get(lead) {
        Some(report) => top_level(report, deep),
        None => json!({}),
    };
    body["ready"] = json!(ready);
    body["upstreams"] = apps
        .all
        .iter()
        .zip(&reports)
        .map(|(app, report)| ready_entry(app, report, deep))
        .collect();
    (ready_status(ready), Json(body)).into_response()
}

/// `GET /ready/NAME`: one upstream's readiness, whether or not it is required.
pub async fn ready_one(
    State(apps): State<Arc<Apps>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(app) = apps.get(&name) else {
        return (
            StatusCode::NOT_FOUND,
            // `ready` and `reason` too, so that `probe`/`wait --upstream` say what is wrong.
            Json(json!({
                "error": "not_found",
                "ready": false,
                "reason": "unknown_upstream",
                "detail": format!("no upstream is named {name:?}; GET /upstreams lists them"),
            })),
        )
            .into_response();
    };
    let deep = apps.guard.client_token_ok(&headers);
    let report = app.readiness.report();
    (
        ready_status(report.ready),
        Json(ready_entry(app, &report, deep)),
    )
        .into_response()
}

fn ready_status(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /upstreams`: `NAME PATH required|optional`, one line per upstream in configuration
/// order, for gates that register each with an agent. Names and paths are not secret, so no
/// client token is asked; the Host and Origin rule applies as everywhere.
pub async fn upstreams(State(apps): State<Arc<Apps>>) -> Response {
    let mut text = String::new();
    for app in &apps.all {
        let kind = if app.required { "required" } else { "optional" };
        text.push_str(&format!("{} {} {kind}\n", app.name, app.path));
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// One upstream's `/status` section.
fn status_section(app: &App) -> serde_json::Value {
    let state = app.readiness.state();
    json!({
        "name": app.name,
        "required": app.required,
        "upstream": crate::net::display_url(app.upstream.url()),
        "path": app.path,
        "ready": app.readiness.report(),
        "handshake": {
            "last_attempt": state.last_attempt_at.map(crate::time::rfc3339),
            "last_success": state.last_success_at.map(crate::time::rfc3339),
            "server": state.server,
        },
        "token": app.upstream.tokens().status(),
        "counters": app.metrics.totals(),
    })
}

pub async fn status(State(apps): State<Arc<Apps>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = token_refused(&apps, &headers) {
        return refusal;
    }
    let sections: Vec<serde_json::Value> = apps.all.iter().map(|app| status_section(app)).collect();
    // Today's top-level fields stay those of the first upstream (the only one, in the
    // single-upstream form); `upstreams` has every one.
    let mut body = match sections.first() {
        Some(serde_json::Value::Object(first)) => {
            let mut top = first.clone();
            top.remove("name");
            top.remove("required");
            serde_json::Value::Object(top)
        }
        _ => json!({}),
    };
    body["version"] = json!(env!("CARGO_PKG_VERSION"));
    body["started_at"] = json!(crate::time::rfc3339(apps.started_at));
    body["counters"] = json!(crate::metrics::Totals::sum(
        apps.all.iter().map(|app| app.metrics.totals())
    ));
    body["upstreams"] = json!(sections);
    (StatusCode::OK, Json(body)).into_response()
}

pub async fn metrics(State(apps): State<Arc<Apps>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = token_refused(&apps, &headers) {
        return refusal;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        apps.metrics.encode(),
    )
        .into_response()
}

/// The fallback for every path the sidecar does not serve.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    not_found_for(&method, &uri)
}

/// The JSON 404, logged at debug: clients probing `/.well-known/*` (Codex CLI sends seven such
/// requests) or a wrong `PATH` otherwise leave no trace. The path only: a query string may carry
/// a secret.
pub fn not_found_for(method: &Method, uri: &Uri) -> Response {
    tracing::debug!(%method, path = uri.path(), status = 404, "answered 404: nothing is served here");
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" }))).into_response()
}

/// `GET /oauth/login` (AUTH=authorization_code): redirects the browser to the authorization
/// endpoint with a fresh state and PKCE challenge.
pub async fn oauth_login(State(app): State<Arc<App>>, request: Request) -> Response {
    let Some((manager, grant)) = &app.login else {
        return not_found_for(request.method(), request.uri());
    };
    if !app.guard.login_token_ok(request.headers()) {
        // Whoever starts a login picks the account the sidecar then holds: with a client token,
        // only someone who has it. A browser cannot send a Bearer token, so it is asked for as a
        // Basic password (this page is for people; MCP clients never see this 401).
        tracing::warn!("refused /oauth/login without the client token");
        return (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"mcp-sidecar login (password: MCP_SIDECAR_CLIENT_TOKEN)\", charset=\"UTF-8\"",
                ),
                (header::CACHE_CONTROL, "no-store"),
            ],
            "mcp-sidecar requires its client token to start a login: enter it as the password.\n",
        )
            .into_response();
    }
    if !manager.login_pending() {
        // Only while a login is needed: otherwise anyone reaching the port could replace the
        // sidecar's credential with their own account's.
        return plain(
            StatusCode::CONFLICT,
            "mcp-sidecar already holds a credential; no login is needed.\n".into(),
        );
    }
    match grant.begin().await {
        Ok(url) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, url.to_string()),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
        Err(e) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Cannot start the login: {e}\n"),
        ),
    }
}

/// `GET /oauth/callback`: the authorization server's redirect back with the code.
pub async fn oauth_callback(State(app): State<Arc<App>>, request: Request) -> Response {
    let Some((manager, grant)) = &app.login else {
        return not_found_for(request.method(), request.uri());
    };
    match grant.complete(request.uri().query().unwrap_or("")).await {
        Ok(issued) => {
            manager.accept(issued).await;
            app.readiness.trigger();
            tracing::info!("authorization-code login complete");
            plain(
                StatusCode::OK,
                "Logged in: mcp-sidecar has its tokens. You can close this tab.\n".into(),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "authorization-code login failed");
            plain(
                StatusCode::BAD_REQUEST,
                format!("The login did not complete: {e}\n"),
            )
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}
