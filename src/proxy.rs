//! The HTTP front of the proxied MCP endpoint (`PATH`, POST/GET/DELETE).
//!
//! It only receives and writes: requests are checked ([`crate::guard`]), their body read up to
//! the limit, turned into a [`Prepared`] request once, and handed to the upstream's
//! [`crate::forwarder::Forwarder`], which owns everything between (credential, retries,
//! sessions, `Last-Event-ID`). The answer goes back unbuffered: status, headers (minus hop-by-hop
//! ones), and a body streamed chunk by chunk, so an SSE event reaches the client the moment the
//! upstream flushes it; idle SSE streams get `:` comment keepalives between events. When the
//! client goes away, axum drops this handler's future or the response body, which drops the
//! upstream request with it.
//!
//! Failures the client cannot act on (unreachable upstream, refused credential) come back as a
//! JSON-RPC error with the request's id and status 502/503, never 401 or a bare 403; what they
//! mean is decided once, in [`crate::failure`]. A 403 that is not about the credential carries the
//! upstream's own answer (`relay_forbidden`). Error bodies are scrubbed whole before they go out.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use crate::app::App;
use crate::forwarder::{Answer, ForwardError, Forwarded, Prepared};
use crate::jsonrpc::{self, Code};
use crate::mcp::MCP_SESSION_ID;
use crate::metrics::Outcome;
use crate::upstream::{BodyError, RefusedAnswer};

/// Where a request goes upstream.
enum Target {
    /// The configured upstream URL, with the client's query appended.
    Endpoint,
    /// A legacy message endpoint the upstream announced (already checked to be open).
    Legacy(url::Url),
}

/// The MCP endpoint (`PATH`).
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    forward(app, request, Target::Endpoint).await
}

/// `PATH/legacy/...`: POSTs to a message endpoint a legacy SSE stream announced.
pub async fn handle_legacy(State(app): State<Arc<App>>, request: Request) -> Response {
    // Refuse before saying anything about which endpoints are open.
    if let Some(refusal) = refuse(&app, request.method(), request.uri(), request.headers()) {
        return refusal;
    }
    let prefix = format!("{}{}", app.path, crate::legacy::LEGACY_SEGMENT);
    let announced = request
        .uri()
        .path_and_query()
        .and_then(|pq| pq.as_str().strip_prefix(&prefix))
        .map(str::to_string)
        .filter(|key| app.legacy.is_open(key))
        .and_then(|key| app.upstream.same_origin(&key));
    match announced {
        Some(url) if request.method() == Method::POST => {
            forward(app, request, Target::Legacy(url)).await
        }
        Some(_) => {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                Value::Null,
                Code::Refused,
                "legacy message endpoints take POST only",
                "method_not_allowed",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            response
        }
        // Not announced on an open stream (or already closed): the session is gone.
        None => crate::admin::not_found_for(request.method(), request.uri()),
    }
}

/// `PATH/sse`: a client of the legacy HTTP+SSE transport. An upstream that speaks it too gets
/// the stream passed through as at `PATH` (its endpoint rewritten); any other upstream is
/// bridged ([`crate::bridge`]).
pub async fn handle_sse(State(app): State<Arc<App>>, request: Request) -> Response {
    if let Some(refusal) = refuse(&app, request.method(), request.uri(), request.headers()) {
        return refusal;
    }
    if request.method() != Method::GET {
        app.metrics
            .record_request(request.method(), Outcome::refused);
        return method_not_allowed(
            &format!(
                "{}{} is the legacy SSE transport's event stream: GET it, and POST the messages to the endpoint its first event names",
                app.path,
                crate::bridge::SSE_SEGMENT
            ),
            "GET",
        );
    }
    if app.readiness.speaks_sse_transport() {
        return forward(app, request, Target::Endpoint).await;
    }
    let settings = crate::stdio::Pump {
        forwarder: app.forwarder.clone(),
        sse_sessions: app.sse_sessions.clone(),
        readiness: app.readiness.clone(),
        ready_timeout: app.bridge_ready_timeout,
        max_message_bytes: app.max_body_bytes,
        shutdown_grace: app.shutdown_grace,
        input: "POSTed message",
        output: "event stream",
        wrong_transport: crate::legacy::WRONG_TRANSPORT_HTTP,
    };
    let message_path = format!("{}{}", app.path, crate::bridge::MESSAGE_SEGMENT);
    let events = app.bridges.open(
        &message_path,
        settings,
        app.shutdown.clone(),
        app.sse_keepalive,
    );
    app.metrics.record_request(&Method::GET, Outcome::forwarded);
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `PATH/sse/message?sessionId=ID`: a bridged legacy client's message, handed to its stream's
/// pump; the answer arrives on the stream, so the POST itself gets `202 Accepted`.
pub async fn handle_sse_message(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(refusal) = refuse(&app, &parts.method, &parts.uri, &parts.headers) {
        return refusal;
    }
    if parts.method != Method::POST {
        app.metrics.record_request(&parts.method, Outcome::refused);
        return method_not_allowed(
            "the legacy SSE transport's message endpoint takes POST only",
            "POST",
        );
    }
    let id = parts
        .uri
        .query()
        .into_iter()
        .flat_map(|query| url::form_urlencoded::parse(query.as_bytes()))
        .find(|(key, _)| key == "sessionId")
        .map(|(_, value)| value.into_owned());
    let body = match read_body(body, &parts.headers, app.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => {
            app.metrics.record_request(&parts.method, Outcome::refused);
            return response;
        }
    };
    let delivered = match id.as_deref() {
        Some(id) => app.bridges.deliver(id, &body).await,
        None => Err(crate::bridge::Refused::Unknown),
    };
    match delivered {
        Ok(()) => {
            app.metrics
                .record_request(&parts.method, Outcome::forwarded);
            (StatusCode::ACCEPTED, "Accepted").into_response()
        }
        Err(crate::bridge::Refused::NotJson) => {
            app.metrics.record_request(&parts.method, Outcome::refused);
            error_response(
                StatusCode::BAD_REQUEST,
                Value::Null,
                Code::Refused,
                "the body is not a JSON-RPC message (JSON)",
                "parse_error",
            )
        }
        Err(crate::bridge::Refused::Unknown) => {
            app.metrics.record_request(&parts.method, Outcome::refused);
            error_response(
                StatusCode::NOT_FOUND,
                Value::Null,
                Code::Refused,
                "no open SSE stream has this sessionId (it closed, or never opened): open a new one with GET on the SSE URL",
                "session_not_found",
            )
        }
    }
}

fn method_not_allowed(message: &str, allow: &'static str) -> Response {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        Value::Null,
        Code::Refused,
        message,
        "method_not_allowed",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

async fn forward(app: Arc<App>, request: Request, target: Target) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let method = parts.method;

    if let Some(refusal) = refuse(&app, &method, &parts.uri, &parts.headers) {
        return refusal;
    }
    if !matches!(method, Method::POST | Method::GET | Method::DELETE) {
        app.metrics.record_request(&method, Outcome::refused);
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Value::Null,
            Code::Refused,
            &format!("method {method} is not supported on the MCP endpoint"),
            "method_not_allowed",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return response;
    }

    let body = match read_body(body, &parts.headers, app.max_body_bytes).await {
        Ok(body) => crate::trace::request_body(body),
        Err(response) => {
            app.metrics.record_request(&method, Outcome::refused);
            return response;
        }
    };
    let target = match target {
        Target::Endpoint => crate::forwarder::Target::Endpoint {
            query: parts.uri.query().map(str::to_string),
        },
        Target::Legacy(url) => crate::forwarder::Target::Legacy(url),
    };
    let request = Prepared::new(method, target, &parts.headers, body);
    let method = &request.method;

    if matches!(request.target, crate::forwarder::Target::Endpoint { .. })
        && app.readiness.speaks_sse_transport()
    {
        use crate::sse_upstream::Handled;
        match app
            .sse_sessions
            .handle(&app.forwarder, &request, app.sse_keepalive)
            .await
        {
            Handled::No => {}
            Handled::Yes(response) => {
                app.metrics.record_request(method, Outcome::forwarded);
                return response;
            }
            Handled::Failed(error) => return forward_failed(&app, &request, error).await,
        }
    }

    match app.forwarder.forward(&request).await {
        Ok(Forwarded::Away(follow)) => {
            app.metrics.record_request(method, Outcome::forwarded);
            away_stream_response(&app, request.client_session.as_deref(), follow)
        }
        Ok(Forwarded::Answer(answer))
            if *method == Method::POST
                && matches!(request.target, crate::forwarder::Target::Endpoint { .. })
                && crate::legacy::is_wrong_transport(&answer, &app.readiness) =>
        {
            let id = request.rpc_id();
            tracing::info!(
                status = answer.status.as_u16(),
                "a client POSTed Streamable HTTP to an upstream that speaks only the HTTP+SSE transport; told it which transport to use"
            );
            app.metrics.record_request(method, Outcome::refused);
            error_response(
                StatusCode::BAD_REQUEST,
                id,
                Code::UpstreamFailed,
                crate::legacy::WRONG_TRANSPORT_HTTP,
                crate::legacy::WRONG_TRANSPORT,
            )
        }
        Ok(Forwarded::Answer(answer)) => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(
                    %method,
                    rpc = request.rpc_method().as_deref().unwrap_or("-"),
                    status = answer.status.as_u16(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "proxied"
                );
            }
            app.metrics.record_request(method, Outcome::forwarded);
            let get_stream = *method == Method::GET
                && matches!(request.target, crate::forwarder::Target::Endpoint { .. });
            forward_response(&app, answer, get_stream, &request)
        }
        Ok(Forwarded::Refused(refusal)) => {
            app.metrics.record_request(method, Outcome::tool_refused);
            // As an MCP server answers a refused call: 200 with the error for the request's id.
            let status = if refusal.has_id {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, axum::Json(refusal.body)).into_response()
        }
        Err(error) => forward_failed(&app, &request, error).await,
    }
}

/// The answer to a request the upstream could not be reached for, or refused.
async fn forward_failed(app: &App, request: &Prepared, error: ForwardError) -> Response {
    let method = &request.method;
    match error {
        ForwardError::Upstream(crate::upstream::UpstreamError::Forbidden(refused)) => {
            relay_forbidden(app, method, request.rpc_id(), *refused).await
        }
        error => {
            let id = request.rpc_id();
            let failure = error.failure();
            let reason = failure.reason();
            // The cause may quote the upstream, which may echo a secret.
            let cause = crate::secret::scrub(&error.to_string());
            let message = match &error {
                ForwardError::Session(_) => {
                    tracing::warn!(%method, reason, error = %cause, "the upstream forgot a client's session and re-making it failed; the client may retry");
                    format!(
                        "mcp-sidecar: the upstream lost this session and re-initializing it failed ({cause}); retry"
                    )
                }
                ForwardError::Upstream(_) => {
                    tracing::warn!(%method, reason, error = %cause, "could not proxy a request");
                    format!("mcp-sidecar: {cause}")
                }
            };
            app.metrics.record_request(method, failure.outcome());
            error_response(
                failure.status(!id.is_null()),
                id,
                failure.code(),
                &message,
                reason,
            )
        }
    }
}

/// The 403 for a request the guard refuses (Host, Origin, client token).
fn refuse(app: &App, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Option<Response> {
    let refusal = app.guard.check(uri, headers).err()?;
    tracing::warn!(%method, reason = %refusal, "refused a client request");
    app.metrics.record_request(method, Outcome::refused);
    let reason = refusal.reason();
    Some(error_response(
        refusal.status(),
        Value::Null,
        Code::Refused,
        refusal.message(),
        reason,
    ))
}

/// Reads the whole request body (MCP requests are single JSON-RPC messages), refusing bodies
/// over the limit with 413.
///
/// An oversized body is drained (up to [`DRAIN_LIMIT`] bytes, for at most [`DRAIN_TIME`]) before
/// the 413 goes out: answering while the client is still sending makes the connection close under
/// it, and the client then reports a broken connection instead of the 413 and its reason.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            Value::Null,
            Code::Refused,
            &format!(
                "the request body exceeds the limit of {limit} bytes (MCP_SIDECAR_MAX_BODY_BYTES)"
            ),
            "body_too_large",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that waits for `100 Continue` has sent nothing yet: reading would invite the very
    // upload being refused, so it gets the 413 at once.
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut chunks = body.into_data_stream();
    if declared.is_some_and(|len| len > limit as u64) {
        if !expects_continue {
            drain(chunks).await;
        }
        return Err(too_large());
    }
    // The declared length is only a claim: reserve at most a little up front.
    let reserve = declared.unwrap_or(0).min(INITIAL_RESERVE as u64) as usize;
    let mut buffer = bytes::BytesMut::with_capacity(reserve);
    let read = async {
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else {
                return Err(ReadError::Broken);
            };
            if buffer.len() + chunk.len() > limit {
                drain(chunks).await;
                return Err(ReadError::TooLarge);
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIME, read).await {
        Ok(Ok(())) => Ok(buffer.freeze()),
        Ok(Err(ReadError::TooLarge)) => Err(too_large()),
        Ok(Err(ReadError::Broken)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            Value::Null,
            Code::Refused,
            "the request body could not be read",
            "bad_request",
        )),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            Value::Null,
            Code::Refused,
            &format!(
                "the request body did not arrive within {}s",
                BODY_TIME.as_secs()
            ),
            "body_timeout",
        )),
    }
}

enum ReadError {
    TooLarge,
    Broken,
}

/// How long a client may take to send a request body: MCP messages are small, and a client
/// trickling one holds a connection and its buffer.
const BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);
/// Reserved up front for a body, whatever length the client declares.
const INITIAL_RESERVE: usize = 64 * 1024;

/// How much of an oversized body is read and discarded so that the client receives the 413.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain(mut chunks: axum::body::BodyDataStream) {
    let discard = async {
        let mut drained = 0usize;
        while let Some(Ok(chunk)) = chunks.next().await {
            drained += chunk.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    };
    // Past either bound the connection closes instead; the client was far over the limit.
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// Writes the upstream's answer: headers as the client should see them, the body scrubbed as it
/// streams, SSE with keepalives, a GET stream of a known session followed through outages.
fn forward_response(
    app: &Arc<App>,
    answer: Answer,
    get_stream: bool,
    request: &Prepared,
) -> Response {
    let Answer {
        status,
        headers,
        body: upstream,
        follow,
    } = answer;
    let mut headers = crate::headers::client_response_headers(&headers);
    // The sidecar asks for `identity`; a body coded all the same cannot be searched for secrets
    // (the client would decode what the scrubber never saw), so it is not passed on.
    if let Some(coding) = headers
        .get(header::CONTENT_ENCODING)
        .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        && !crate::secret::patterns().0.is_empty()
    {
        let coding = String::from_utf8_lossy(coding.as_bytes()).into_owned();
        tracing::warn!(
            coding = %crate::secret::scrub(&coding),
            "the upstream sent a coded body although identity was asked for; it cannot be scrubbed, so it is not passed on"
        );
        let failure = crate::failure::Failure::HandshakeFailed;
        let id = request.rpc_id();
        return error_response(
            failure.status(!id.is_null()),
            id,
            failure.code(),
            "mcp-sidecar: the upstream sent a compressed body (Content-Encoding) although identity was asked for; it cannot be scrubbed of secrets and was withheld",
            failure.reason(),
        );
    }
    let is_sse = crate::sse::is_event_stream(&headers);
    if is_sse {
        // Tells nginx-style intermediaries between agent and sidecar not to hold events back.
        headers.insert(
            crate::headers::X_ACCEL_BUFFERING.clone(),
            HeaderValue::from_static("no"),
        );
        // Keepalives and the endpoint rewrite change the length; the stream ends by itself.
        headers.remove(header::CONTENT_LENGTH);
    }

    let readiness = app.readiness.clone();
    let guard = is_sse.then(|| app.metrics.stream_guard());
    let chunks = upstream.map(move |chunk| {
        match &chunk {
            Err(e) if e.is_timeout() => tracing::warn!(
                "the upstream sent nothing for MCP_SIDECAR_READ_TIMEOUT mid-response; ending it"
            ),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "upstream response broke off mid-stream"
                );
                readiness.trigger();
            }
            Ok(_) => {}
        }
        chunk
    });
    // A success body may echo the credential too (a tool quoting the request): it is scrubbed
    // as it streams, and its headers with it.
    let chunks = match crate::scrubber::scrub_stream(chunks) {
        Ok(scrubbed) => {
            crate::headers::scrub_values(&mut headers);
            // A redaction changes the length; the stream ends by itself.
            headers.remove(header::CONTENT_LENGTH);
            futures_util::future::Either::Left(scrubbed)
        }
        Err(plain) => futures_util::future::Either::Right(plain),
    };
    if !status.is_success() {
        // An error answer's headers (an `X-Debug-Authorization`, a quoting `Warning`) lose short
        // values too, as its body does.
        crate::headers::scrub_error_values(&mut headers);
    }
    // The guard lives as long as the client's stream, counting open SSE streams.
    let chunks = chunks.map(move |chunk| {
        let _ = &guard;
        chunk
    });
    let body = if is_sse
        && get_stream
        && status.is_success()
        && let Some(follow) = follow
    {
        followed_body(app, Some(Box::pin(chunks)), follow, None)
    } else if is_sse && get_stream {
        // A GET stream may be a legacy SSE transport whose endpoint event must point here. It
        // carries no reply to a request, so at shutdown it ends at the next event boundary
        // (the client resumes elsewhere with Last-Event-ID) instead of holding the drain.
        let chunks = crate::legacy::rewrite_endpoint(
            chunks,
            app.upstream.clone(),
            app.legacy.clone(),
            app.path.clone(),
        );
        Body::from_stream(with_keepalives(
            chunks,
            app.sse_keepalive,
            Some(app.shutdown.clone()),
        ))
    } else if is_sse {
        // A POST stream carries a reply: it gets the whole grace period to deliver it.
        Body::from_stream(with_keepalives(chunks, app.sse_keepalive, None))
    } else if !status.is_success() {
        // An error page may quote the request it refused, credential included (a debug page,
        // a gateway's "invalid key ..."), and it goes to the agent: it is scrubbed whole, so it
        // is buffered, up to a bound no error page reaches.
        headers.remove(header::CONTENT_LENGTH);
        Body::from_stream(futures_util::stream::once(
            crate::upstream::scrubbed_error_body(chunks),
        ))
    } else {
        Body::from_stream(chunks)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The client's GET stream of a known session: followed through upstream outages
/// ([`crate::stream`]), with keepalives, ended at an event boundary at shutdown.
fn followed_body(
    app: &Arc<App>,
    first: Option<crate::stream::Chunks>,
    follow: crate::stream::Follow,
    guard: Option<crate::metrics::StreamGuard>,
) -> Body {
    let stream = with_keepalives(
        crate::stream::follow(first, follow),
        app.sse_keepalive,
        Some(app.shutdown.clone()),
    );
    Body::from_stream(stream.map(move |chunk| {
        let _ = &guard;
        chunk
    }))
}

/// The answer to a GET of a known session while the upstream is away: an event stream that
/// carries keepalives until the upstream stream is attached.
fn away_stream_response(
    app: &Arc<App>,
    client_session: Option<&str>,
    follow: crate::stream::Follow,
) -> Response {
    tracing::info!("the upstream is away; holding a client's GET stream open until it is back");
    let guard = app.metrics.stream_guard();
    let mut response = Response::new(followed_body(app, None, follow, Some(guard)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        crate::headers::X_ACCEL_BUFFERING.clone(),
        HeaderValue::from_static("no"),
    );
    if let Some(value) = client_session.and_then(|id| HeaderValue::try_from(id).ok()) {
        headers.insert(MCP_SESSION_ID.clone(), value);
    }
    response
}

/// Answers a request the upstream refused with a 403 that is not about the credential
/// ([`crate::failure::Failure::UpstreamForbidden`]). The client never sees the bare 403 (Claude
/// Code would take it as "needs authentication"), but it gets the upstream's answer
/// ([`crate::upstream::refused_answer`]). The credential is not marked rejected and `/ready`
/// is not asked to look again: the upstream works, it refused this one request.
async fn relay_forbidden(
    app: &App,
    method: &Method,
    id: Value,
    refused: crate::upstream::Response,
) -> Response {
    let failure = crate::failure::Failure::UpstreamForbidden;
    let status = failure.status(!id.is_null());
    tracing::warn!(
        %method,
        reason = failure.reason(),
        upstream_status = refused.status().as_u16(),
        "the upstream refused a request (no Bearer challenge: not about the credential); passing its answer on"
    );
    app.metrics.record_request(method, failure.outcome());
    match crate::upstream::refused_answer(refused).await {
        RefusedAnswer::JsonRpc(message) => {
            let mut response = Response::new(Body::from(message.to_string()));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        RefusedAnswer::Message(message) => error_response(
            status,
            id,
            failure.code(),
            &format!("mcp-sidecar: {message}"),
            failure.reason(),
        ),
    }
}

/// Passes an SSE stream through, inserting a `: keepalive` comment whenever the upstream has been
/// silent for `every` while between events, so load balancers and proxies between agent and
/// sidecar do not cut an idle stream. Clients ignore comment lines; mid-event nothing is inserted.
///
/// With `end_on_shutdown`, the stream ends cleanly at the first event boundary after shutdown
/// begins.
fn with_keepalives<S>(
    chunks: S,
    every: std::time::Duration,
    end_on_shutdown: Option<tokio::sync::watch::Receiver<bool>>,
) -> impl futures_util::Stream<Item = Result<Bytes, BodyError>> + Send
where
    S: futures_util::Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
{
    struct State<S> {
        chunks: std::pin::Pin<Box<S>>,
        boundary: crate::sse::Boundary,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
        stopping: bool,
    }
    let state = State {
        chunks: Box::pin(chunks),
        boundary: crate::sse::Boundary::default(),
        shutdown: end_on_shutdown,
        stopping: false,
    };
    futures_util::stream::unfold(state, move |mut state| async move {
        loop {
            if state.stopping && state.boundary.at_boundary() {
                return None;
            }
            let watching = state.shutdown.is_some() && !state.stopping;
            tokio::select! {
                () = shutdown_begun(&mut state.shutdown), if watching => {
                    state.stopping = true;
                }
                next = tokio::time::timeout(every, state.chunks.next()) => match next {
                    Ok(Some(Ok(chunk))) => {
                        state.boundary.observe(&chunk);
                        return Some((Ok(chunk), state));
                    }
                    // A silent upstream (READ_TIMEOUT): end the stream cleanly. At a boundary
                    // that is a clean end; mid-event, SSE clients drop the incomplete event.
                    Ok(Some(Err(e))) if e.is_timeout() => return None,
                    Ok(Some(Err(e))) => return Some((Err(e), state)),
                    Ok(None) => return None,
                    Err(_) if state.boundary.can_insert() => {
                        return Some((Ok(Bytes::from_static(KEEPALIVE)), state));
                    }
                    Err(_) => {}
                },
            }
        }
    })
}

async fn shutdown_begun(shutdown: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match shutdown {
        // Err: the sender is gone, which only happens once the server has stopped.
        Some(rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

/// A comment line alone, no blank line after it: a blank line would make decoders that keep the
/// last event id (httpx-sse, used by the MCP Python SDK) emit an empty event, which MCP clients
/// then fail to parse as JSON-RPC.
const KEEPALIVE: &[u8] = b": keepalive\n";

/// A JSON-RPC error response produced by the sidecar itself.
pub fn error_response(
    status: StatusCode,
    id: Value,
    code: Code,
    message: &str,
    reason: &str,
) -> Response {
    (
        status,
        axum::Json(jsonrpc::error_body(id, code, message, reason)),
    )
        .into_response()
}
