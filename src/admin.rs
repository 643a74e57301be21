//! The sidecar's own endpoints: `/healthz`, `/ready`, `/status`, `/metrics`, and JSON 404s.
//!
//! `/status` and `/metrics` check Host and Origin like the MCP endpoint (a web page must not read
//! them); `/healthz` and `/ready` do not, because orchestrators probe them by any address.
//!
//! `/.well-known/*` and every unknown path answer `404` with `{"error":"not_found"}` as JSON:
//! Claude Code probes OAuth discovery paths and treats a plain-text 404 as a crash and a 200 as
//! "needs authentication" (PROTOCOL.md).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::server::App;

pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let report = app.readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// 403 JSON for a request whose Host or Origin is not allowed.
fn refused(app: &App, request: &axum::extract::Request) -> Option<Response> {
    let refusal = app
        .guard
        .check_host_and_origin(request.uri(), request.headers())
        .err()?;
    Some(
        (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "forbidden", "detail": refusal.0 })),
        )
            .into_response(),
    )
}

pub async fn status(State(app): State<Arc<App>>, request: axum::extract::Request) -> Response {
    if let Some(refusal) = refused(&app, &request) {
        return refusal;
    }
    let state = app.readiness.state();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": crate::time::rfc3339(app.started_at),
        "upstream": crate::upstream::display_url(app.upstream.url()),
        "path": app.path,
        "ready": app.readiness.report(),
        "handshake": {
            "last_attempt": state.last_attempt_at.map(crate::time::rfc3339),
            "last_success": state.last_success_at.map(crate::time::rfc3339),
            "server": state.server,
        },
        "token": app.upstream.tokens().status(),
        "counters": app.metrics.totals(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>, request: axum::extract::Request) -> Response {
    if let Some(refusal) = refused(&app, &request) {
        return refusal;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" }))).into_response()
}

/// `GET /oauth/login` (AUTH=authorization_code): redirects the browser to the authorization
/// endpoint with a fresh state and PKCE challenge.
pub async fn oauth_login(State(app): State<Arc<App>>, request: axum::extract::Request) -> Response {
    if let Some(refusal) = refused(&app, &request) {
        return refusal;
    }
    let Some((manager, grant)) = &app.login else {
        return not_found().await;
    };
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
pub async fn oauth_callback(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
) -> Response {
    if let Some(refusal) = refused(&app, &request) {
        return refusal;
    }
    let Some((manager, grant)) = &app.login else {
        return not_found().await;
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
