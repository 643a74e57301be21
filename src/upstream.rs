//! The one connection to the upstream MCP server, shared by the proxy and the readiness checker.
//!
//! It owns the pooled keep-alive HTTP client, the extra static headers, and the rule that every
//! request carries the current token: on a 401 (or a 403 `invalid_token`) it asks the token
//! source for a fresh token once and sends the request once more. Keeping that rule here means the
//! readiness handshake exercises exactly the path that client requests take.
//!
//! The client is hyper's own ([`crate::net::upstream_client`]): HTTP/2 by ALPN when the upstream
//! offers it, HTTP/1.1 otherwise. A [`Response`]'s body streams straight from that connection
//! ([`Body`]), with one read-timeout timer per body, moved on lazily.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::challenge::BearerChallenge;
use crate::config::UpstreamConfig;
use crate::failure::Failure;
use crate::secret::{Secret, SecretSource};
use crate::token::{AccessToken, TokenError, TokenSource};

/// Why a request could not be delivered with a credential the upstream accepts.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No credential is available (missing or empty token file, ...).
    #[error("no credential available: {0}")]
    NoCredential(#[from] TokenError),
    /// The upstream could not be reached (DNS, connect, TLS, reset).
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// Nothing listens at the upstream's address (connection refused): costs nothing to retry,
    /// so readiness looks again often.
    #[error("upstream unreachable: {0}")]
    ConnectionRefused(String),
    /// The upstream accepted the request but sent no byte of an answer within `READ_TIMEOUT`.
    #[error("the upstream sent nothing for {}s (MCP_SIDECAR_READ_TIMEOUT)", .0.as_secs_f32())]
    TimedOut(Duration),
    /// The upstream refused the credential, also after a fresh one was obtained.
    #[error("upstream rejected the sidecar's credentials (HTTP {status}{})", detail_suffix(.detail))]
    AuthRejected { status: u16, detail: String },
    /// `HEADERS_FILE` changed into something that is not `Name: value` lines.
    #[error("{0}")]
    Headers(String),
    /// The upstream answered with a redirect the sidecar does not follow.
    #[error(
        "the upstream redirected (HTTP {status}) to {location}; set MCP_SIDECAR_UPSTREAM_URL to the final URL"
    )]
    Redirected { status: u16, location: String },
    /// A 403 without a Bearer challenge (`invalid_token`, `insufficient_scope`): the upstream
    /// refused this request (a tool denied, a policy), not the credential. The response is kept
    /// so that its answer can be passed on.
    #[error("the upstream refused the request (HTTP {})", .0.status().as_u16())]
    Forbidden(Box<Response>),
}

/// An upstream's answer: its head, and its body still on the connection.
pub struct Response {
    head: http::response::Parts,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.head.status)
            .finish_non_exhaustive()
    }
}

impl Response {
    pub fn from_parts(head: http::response::Parts, body: Body) -> Self {
        Self { head, body }
    }

    pub fn into_parts(self) -> (http::response::Parts, Body) {
        (self.head, self.body)
    }

    pub fn status(&self) -> StatusCode {
        self.head.status
    }

    pub fn version(&self) -> http::Version {
        self.head.version
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.head.headers
    }

    /// The body, chunk by chunk as the connection delivers it.
    pub fn bytes_stream(self) -> Body {
        self.body
    }
}

/// Why an upstream body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for `READ_TIMEOUT`.
    #[error("the upstream sent nothing for {}s (MCP_SIDECAR_READ_TIMEOUT)", .0.as_secs_f32())]
    TimedOut(Duration),
    /// The connection broke (reset, protocol error, the upstream went away).
    #[error("{}", crate::net::describe_error(.0))]
    Broken(#[from] hyper::Error),
}

impl BodyError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut(_))
    }
}

/// A body the sidecar made itself (a response rebuilt after reading its start).
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// An upstream body as a stream of data chunks (trailers are dropped: MCP has none).
pub struct Body(BodyKind);

enum BodyKind {
    Upstream {
        body: hyper::body::Incoming,
        /// `READ_TIMEOUT`: one timer for the whole body. Each chunk only moves `deadline`; the
        /// timer is re-armed when it fires early or when the body waits.
        read_timeout: Option<(Duration, tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>,
    },
    Made(Chunks),
}

impl Body {
    fn upstream(body: hyper::body::Incoming, read_timeout: Option<Duration>) -> Self {
        let read_timeout = read_timeout.map(|every| {
            let deadline = tokio::time::Instant::now() + every;
            (
                every,
                deadline,
                Box::pin(tokio::time::sleep_until(deadline)),
            )
        });
        Self(BodyKind::Upstream { body, read_timeout })
    }

    pub fn from_stream<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    {
        Self(BodyKind::Made(Box::pin(stream)))
    }
}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (body, read_timeout) = match &mut self.get_mut().0 {
            BodyKind::Made(chunks) => return chunks.as_mut().poll_next(cx),
            BodyKind::Upstream { body, read_timeout } => (body, read_timeout),
        };
        loop {
            match http_body::Body::poll_frame(Pin::new(&mut *body), cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Some((every, deadline, _)) = read_timeout {
                        *deadline = tokio::time::Instant::now() + *every;
                    }
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    let Some((every, deadline, timer)) = read_timeout else {
                        return Poll::Pending;
                    };
                    loop {
                        if timer.deadline() != *deadline {
                            timer.as_mut().reset(*deadline);
                        }
                        match timer.as_mut().poll(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(()) if timer.deadline() == *deadline => {
                                return Poll::Ready(Some(Err(BodyError::TimedOut(*every))));
                            }
                            Poll::Ready(()) => {}
                        }
                    }
                }
            }
        }
    }
}

impl UpstreamError {
    /// What this means to the client, `/ready` and the metrics.
    pub fn failure(&self) -> Failure {
        match self {
            // The authorization server is down or slow: nobody needs to log in.
            Self::NoCredential(TokenError::Temporary(_)) => Failure::TokenEndpointUnavailable,
            Self::NoCredential(_) | Self::Headers(_) => Failure::AuthRequired,
            Self::Unreachable(_) | Self::ConnectionRefused(_) => Failure::UpstreamUnreachable,
            Self::TimedOut(_) => Failure::UpstreamTimeout,
            Self::Redirected { .. } => Failure::UpstreamRedirected,
            Self::AuthRejected { .. } => Failure::UpstreamAuthRejected,
            Self::Forbidden(_) => Failure::UpstreamForbidden,
        }
    }
}

/// Whether `status` sends the client elsewhere. Not every 3xx does: 300 (a choice of
/// representations) and 304 (not modified, an answer to a conditional request) carry no
/// redirect to follow, so they are the upstream's answer and pass on unchanged.
pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// How many same-origin 307/308 redirects one request follows.
const MAX_REDIRECTS: usize = 3;

pub struct Upstream {
    client: crate::net::UpstreamClient,
    url: Url,
    headers: Option<SecretSource>,
    /// `headers` parsed, with the text they came from: parsing (and registering the values for
    /// scrubbing) happens when the text changes, not on every request.
    parsed_headers: Mutex<Option<(Secret, ExtraHeaders)>>,
    tokens: Arc<dyn TokenSource>,
    read_timeout: Option<Duration>,
    /// Held here, with this upstream's other settings, so that every front's forwarder applies
    /// it ([`crate::forwarder`]).
    tools: crate::tools::ToolPolicy,
}

type ExtraHeaders = Arc<[(HeaderName, HeaderValue)]>;

impl Upstream {
    /// What every front (`serve`, `stdio`) builds first: the configured credential's token
    /// source, started, and the client that carries it. The [`crate::token::Built`] comes back
    /// for the front's own use of the manager (the `/oauth/*` login). Errors are start-up
    /// messages.
    pub fn start(
        name: &str,
        auth: crate::config::AuthConfig,
        config: &UpstreamConfig,
        state_dir: &std::path::Path,
        fleet_store: Option<&crate::config::FleetStoreConfig>,
    ) -> Result<(Arc<Self>, crate::token::Built), String> {
        let built = crate::token::build(name, auth, config, state_dir, fleet_store)
            .map_err(|e| e.to_string())?;
        built.source.clone().start();
        let upstream = Self::new(config, built.source.clone())?;
        Ok((Arc::new(upstream), built))
    }

    /// Builds the client. Errors are start-up messages (an unreadable `CA_FILE`).
    pub fn new(config: &UpstreamConfig, tokens: Arc<dyn TokenSource>) -> Result<Self, String> {
        let client = crate::net::upstream_client(&config.client_settings())?;
        Ok(Self {
            client,
            url: config.url.clone(),
            headers: config.headers.clone(),
            parsed_headers: Mutex::new(None),
            tokens,
            read_timeout: config.read_timeout,
            tools: config.tools.clone(),
        })
    }

    /// `TOOLS_ALLOW` / `TOOLS_DENY` of this upstream.
    pub fn tools(&self) -> &crate::tools::ToolPolicy {
        &self.tools
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Resolves `reference` (absolute, or relative to the upstream URL) and returns it only if it
    /// is on the upstream's origin: the token must never travel anywhere else.
    pub fn same_origin(&self, reference: &str) -> Option<Url> {
        let url = self.url.join(reference).ok()?;
        (url.origin() == self.url.origin()).then_some(url)
    }

    pub fn tokens(&self) -> &Arc<dyn TokenSource> {
        &self.tokens
    }

    /// Sends one request to the upstream endpoint with the current token, refreshing it and
    /// retrying once if the upstream says the token is no good.
    ///
    /// `query` is appended to the upstream URL. The body is `Bytes` so the retry can replay it.
    pub async fn send(
        &self,
        method: Method,
        query: Option<&str>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, UpstreamError> {
        // Borrowed without a query: no copy of the URL per request.
        let url = match query {
            Some(q) if !q.is_empty() => {
                let mut url = self.url.clone();
                let joined = match self.url.query() {
                    Some(existing) => format!("{existing}&{q}"),
                    None => q.to_string(),
                };
                url.set_query(Some(&joined));
                std::borrow::Cow::Owned(url)
            }
            _ => std::borrow::Cow::Borrowed(&self.url),
        };
        self.send_url(method, &url, headers, body).await
    }

    /// Like [`Upstream::send`], to another URL on the upstream's origin (a legacy SSE server's
    /// message endpoint). Callers guarantee the origin: see [`Upstream::same_origin`].
    pub async fn send_to(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, UpstreamError> {
        self.send_url(method, &url, headers, body).await
    }

    async fn send_url(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, UpstreamError> {
        let token = self.tokens.token().await?;
        let response = self
            .send_once(&method, url, &headers, &body, token.as_ref())
            .await?;
        let challenge = match auth_failure(&response) {
            None => return Ok(response),
            Some(AuthFailure::Forbidden) => return Err(UpstreamError::Forbidden(response.into())),
            Some(AuthFailure::Refreshable(challenge)) => challenge,
            Some(AuthFailure::Final(challenge)) => {
                return self
                    .step_up(
                        &method,
                        url,
                        &headers,
                        &body,
                        token.as_ref(),
                        response,
                        challenge,
                    )
                    .await;
            }
        };
        if token.is_none() {
            // AUTH=none: there is nothing to refresh, and a retry would be refused the same way.
            return Err(rejected(response.status(), challenge));
        }
        let status = response.status();
        drop(response);
        let fresh = self.tokens.refresh(token.as_ref()).await?;
        let reason = crate::secret::scrub(
            &challenge
                .as_ref()
                .map(BearerChallenge::explain)
                .unwrap_or_default(),
        );
        if fresh == token {
            // A static token (or an unchanged TOKEN_FILE) that the upstream refuses: sending it
            // again would be refused the same way, doubling the upstream traffic for nothing. The
            // readiness state change already reports it once; a line per request would only bury
            // other lines.
            tracing::debug!(%reason, "upstream rejected the token; the source has no other, not retrying");
            return Err(rejected(status, challenge));
        }
        tracing::info!(%reason, "upstream rejected the token; obtained a new one, retrying");
        crate::trace::note(crate::trace::Note::TokenRefreshed);
        let response = self
            .send_once(&method, url, &headers, &body, fresh.as_ref())
            .await?;
        let response = self.retried(response)?;
        if let Some(fresh) = &fresh {
            self.tokens.accepted(fresh);
        }
        Ok(response)
    }

    /// 403 `insufficient_scope` naming the scopes it wants: ask the source for a token with
    /// them and retry once. The source bounds how often that happens.
    #[allow(
        clippy::too_many_arguments,
        reason = "one request's parts, passed through once"
    )]
    async fn step_up(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: &Bytes,
        token: Option<&AccessToken>,
        response: Response,
        challenge: Option<BearerChallenge>,
    ) -> Result<Response, UpstreamError> {
        let status = response.status();
        let scope = challenge
            .as_ref()
            .filter(|c| c.error.as_deref() == Some("insufficient_scope"))
            .and_then(|c| c.scope.clone());
        let (Some(scope), Some(token)) = (scope, token) else {
            return Err(rejected(status, challenge));
        };
        drop(response);
        let Some(fresh) = self.tokens.step_up(Some(token), &scope).await? else {
            return Err(rejected(status, challenge));
        };
        let response = self
            .send_once(method, url, headers, body, Some(&fresh))
            .await?;
        self.retried(response)
    }

    /// The answer to a retry with a new token: a second refusal is final.
    fn retried(&self, response: Response) -> Result<Response, UpstreamError> {
        match auth_failure(&response) {
            None => Ok(response),
            // The new credential got through; this request is refused for another reason.
            Some(AuthFailure::Forbidden) => Err(UpstreamError::Forbidden(response.into())),
            Some(AuthFailure::Refreshable(c) | AuthFailure::Final(c)) => {
                Err(rejected(response.status(), c))
            }
        }
    }

    /// One request with `token`, following same-origin 307/308 (method and body kept, so an MCP
    /// POST survives; the token never leaves the origin) [`MAX_REDIRECTS`] times at most. Any
    /// other redirect is reported ([`UpstreamError::Redirected`]): passed to the client, the
    /// client would follow it past the sidecar without a token, get a 401 and start its own OAuth.
    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: &Bytes,
        token: Option<&AccessToken>,
    ) -> Result<Response, UpstreamError> {
        let extra = self.extra_headers()?;
        let authorization = token.map(AccessToken::authorization).transpose()?;
        let mut url = std::borrow::Cow::Borrowed(url);
        let mut followed = 0;
        loop {
            let mut sent = headers.clone();
            crate::trace::inject(&mut sent);
            if let Some(extra) = &extra {
                crate::headers::add_extra(&mut sent, extra);
            }
            if let Some(value) = &authorization {
                sent.insert(AUTHORIZATION, value.clone());
            }
            sent.entry(USER_AGENT)
                .or_insert(HeaderValue::from_static(concat!(
                    "mcp-sidecar/",
                    env!("CARGO_PKG_VERSION")
                )));
            // What reqwest sent when a request named none: upstreams may insist on the header.
            sent.entry(http::header::ACCEPT)
                .or_insert(HeaderValue::from_static("*/*"));
            let uri = http::Uri::try_from(url.as_str()).map_err(|e| {
                UpstreamError::Unreachable(format!("the upstream URL is not a valid URI: {e}"))
            })?;
            let mut request = http::Request::new(http_body_util::Full::new(body.clone()));
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = sent;
            let answer = self.client.request(request);
            let answer = match self.read_timeout {
                // The head must come within it too; a connect timeout is an unreachable upstream.
                Some(timeout) => tokio::time::timeout(timeout, answer)
                    .await
                    .map_err(|_| UpstreamError::TimedOut(timeout))?,
                None => answer.await,
            };
            let answer = answer.map_err(|e| {
                if e.is_connect() && crate::net::is_refused(&e) {
                    UpstreamError::ConnectionRefused(crate::net::describe_error(&e))
                } else {
                    UpstreamError::Unreachable(crate::net::describe_error(&e))
                }
            })?;
            let status = answer.status();
            if !is_redirect(status) {
                let (head, incoming) = answer.into_parts();
                return Ok(Response::from_parts(
                    head,
                    Body::upstream(incoming, self.read_timeout),
                ));
            }
            let location = answer
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok());
            match location {
                Some(next)
                    if matches!(status.as_u16(), 307 | 308)
                        && followed < MAX_REDIRECTS
                        && next.origin() == url.origin() =>
                {
                    followed += 1;
                    url = std::borrow::Cow::Owned(next);
                }
                location => {
                    return Err(UpstreamError::Redirected {
                        status: status.as_u16(),
                        location: location
                            .map(|url| crate::net::display_url(&url))
                            .unwrap_or_else(|| "(no Location)".into()),
                    });
                }
            }
        }
    }
}

impl Upstream {
    /// The `HEADERS` to add, re-parsed only when their text (a rotated `HEADERS_FILE`) changed;
    /// `None` (no allocation) when none are configured.
    fn extra_headers(&self) -> Result<Option<ExtraHeaders>, UpstreamError> {
        let Some(source) = &self.headers else {
            return Ok(None);
        };
        let text = source
            .read()
            .map_err(|e| UpstreamError::Headers(e.to_string()))?;
        let mut cache = self
            .parsed_headers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((cached, parsed)) = cache.as_ref()
            && *cached == text
        {
            return Ok(Some(parsed.clone()));
        }
        // Read errors already name HEADERS_FILE; parse errors give only the line.
        let parsed: ExtraHeaders = crate::headers::parse_extra_headers(text.expose())
            .map_err(|e| UpstreamError::Headers(format!("HEADERS_FILE: {e}")))?
            .into();
        *cache = Some((text, parsed.clone()));
        Ok(Some(parsed))
    }
}

enum AuthFailure {
    /// A fresh token may help: 401, or 403 with `error="invalid_token"`.
    Refreshable(Option<BearerChallenge>),
    /// A fresh token of the same kind will not help: 403 `insufficient_scope` (a token with
    /// more scopes may).
    Final(Option<BearerChallenge>),
    /// A 403 without a Bearer challenge about the token: not about the credential at all.
    Forbidden,
}

fn auth_failure(response: &Response) -> Option<AuthFailure> {
    let status = response.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return None;
    }
    let challenge = BearerChallenge::from_headers(response.headers());
    if status == StatusCode::UNAUTHORIZED
        || challenge.as_ref().is_some_and(|c| c.is_invalid_token())
    {
        Some(AuthFailure::Refreshable(challenge))
    } else if challenge
        .as_ref()
        .is_some_and(|c| c.error.as_deref() == Some("insufficient_scope"))
    {
        Some(AuthFailure::Final(challenge))
    } else {
        Some(AuthFailure::Forbidden)
    }
}

fn rejected(status: StatusCode, challenge: Option<BearerChallenge>) -> UpstreamError {
    UpstreamError::AuthRejected {
        status: status.as_u16(),
        // The upstream's own words, which may quote the token it was given.
        detail: crate::secret::scrub(&challenge.map(|c| c.explain()).unwrap_or_default()),
    }
}

/// The most of an upstream error body that is buffered to be scrubbed: error pages are a few
/// KiB, and each error in flight holds this much.
const ERROR_BODY_LIMIT: usize = 256 * 1024;

/// The most of a refusing upstream's text quoted in the sidecar's JSON-RPC error message.
const FORBIDDEN_TEXT_LIMIT: usize = 500;

/// An upstream error body with every known secret scrubbed. A longer one is withheld rather
/// than cut, since a secret straddling the cut would leak its prefix.
pub async fn scrubbed_error_body<S>(chunks: S) -> Result<Bytes, BodyError>
where
    S: futures_util::Stream<Item = Result<Bytes, BodyError>>,
{
    use futures_util::StreamExt;
    let mut chunks = std::pin::pin!(chunks);
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > ERROR_BODY_LIMIT {
            return Ok(Bytes::from(format!(
                "mcp-sidecar: the upstream's error body exceeds {ERROR_BODY_LIMIT} bytes and was withheld\n"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(crate::secret::scrub_bytes(&body)))
}

/// What a front tells its client about a request the upstream refused with a 403 that is not
/// about the credential ([`crate::upstream::UpstreamError::Forbidden`]), the same on every front.
pub enum RefusedAnswer {
    /// The upstream's own JSON-RPC error (what an MCP server sends for a refused call), its
    /// bytes and its decoded strings scrubbed.
    JsonRpc(Value),
    /// What the upstream said, scrubbed and then cut, in a sentence of the sidecar's (without
    /// the `mcp-sidecar: ` a front's error message starts with; `/ready`'s detail has none).
    Message(String),
}

pub async fn refused_answer(refused: Response) -> RefusedAnswer {
    let upstream_status = refused.status().as_u16();
    let body = match scrubbed_error_body(refused.bytes_stream()).await {
        Ok(body) => body,
        Err(e) => Bytes::from(e.to_string()),
    };
    if is_jsonrpc_error(&body)
        && let Ok(mut message) = serde_json::from_slice::<Value>(&body)
    {
        // Scrubbed again once decoded: JSON may escape any character (`\u0063` for `c`), and
        // the client decodes them all.
        crate::secret::scrub_json(&mut message);
        return RefusedAnswer::JsonRpc(message);
    }
    // Other JSON is quoted decoded and scrubbed too: an escaped form of a secret (`\u0063`)
    // matches nothing in the bytes, and whoever reads the quote can decode it.
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(mut value) => {
            crate::secret::scrub_json(&mut value);
            Bytes::from(value.to_string())
        }
        Err(_) => body,
    };
    let text = crate::secret::excerpt(String::from_utf8_lossy(&body).trim(), FORBIDDEN_TEXT_LIMIT);
    RefusedAnswer::Message(if text.is_empty() {
        format!("the upstream refused the request (HTTP {upstream_status})")
    } else {
        format!("the upstream refused the request (HTTP {upstream_status}): {text}")
    })
}

/// Whether `body` is one JSON-RPC error response (what an MCP server sends for a refused call).
fn is_jsonrpc_error(body: &[u8]) -> bool {
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    message.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
        && message
            .get("error")
            .is_some_and(|e| e.get("code").is_some_and(Value::is_i64) && e["message"].is_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A TLS upstream offering `alpn` whose every answer is an event stream that stays open
    /// after its first comment; returns its URL and the count of TCP connections it accepted.
    async fn tls_upstream(alpn: &[&[u8]]) -> (Url, Arc<AtomicUsize>) {
        let certs = CertificateDer::pem_file_iter(fixture("tls-cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("tls-key.pem")).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_request| async {
                        let events = futures_util::stream::once(async {
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                Bytes::from_static(b": open\n\n"),
                            ))
                        })
                        .chain(futures_util::stream::pending());
                        http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "text/event-stream")
                            .body(http_body_util::StreamBody::new(events))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        let url = Url::parse(&format!("https://localhost:{port}/mcp")).unwrap();
        (url, accepted)
    }

    fn upstream(url: Url) -> Upstream {
        let config = UpstreamConfig {
            url,
            headers: None,
            ca_file: Some(fixture("tls-ca.pem")),
            connect_timeout: Duration::from_secs(10),
            read_timeout: None,
            tools: Default::default(),
        };
        Upstream::new(&config, Arc::new(crate::token::NoAuth)).unwrap()
    }

    /// Opens `count` GET streams one after another and holds them, each past its first chunk.
    async fn open_streams(upstream: &Upstream, count: usize) -> Vec<Body> {
        let mut streams = Vec::new();
        for _ in 0..count {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            let response = upstream
                .send(Method::GET, None, headers, Bytes::new())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            streams.push((response.version(), response.bytes_stream()));
        }
        let mut bodies = Vec::new();
        for (version, mut body) in streams {
            assert_eq!(body.next().await.unwrap().unwrap(), &b": open\n\n"[..]);
            bodies.push((version, body));
        }
        let versions: Vec<_> = bodies.iter().map(|(v, _)| *v).collect();
        assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
        bodies.into_iter().map(|(_, b)| b).collect()
    }

    #[tokio::test]
    async fn a_request_without_accept_or_user_agent_gets_them_as_reqwest_sent_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/mcp", listener.local_addr().unwrap())).unwrap();
        let echo = |request: http::Request<axum::body::Body>| async move {
            let header = |name| {
                request
                    .headers()
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            format!("{}|{}", header(http::header::ACCEPT), header(USER_AGENT))
        };
        let router = axum::Router::new().route("/mcp", axum::routing::get(echo));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let config = UpstreamConfig {
            url,
            headers: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Some(Duration::from_secs(10)),
            tools: Default::default(),
        };
        let upstream = Upstream::new(&config, Arc::new(crate::token::NoAuth)).unwrap();
        let response = upstream
            .send(Method::GET, None, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let text = body.next().await.unwrap().unwrap();
        assert_eq!(
            text,
            format!("*/*|mcp-sidecar/{}", env!("CARGO_PKG_VERSION")).as_bytes()
        );
    }

    #[tokio::test]
    async fn idle_get_streams_share_one_http2_connection_when_the_upstream_offers_h2() {
        let (url, accepted) = tls_upstream(&[b"h2", b"http/1.1"]).await;
        let upstream = upstream(url);
        let response = upstream
            .send(Method::GET, None, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let streams = open_streams(&upstream, 5).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        drop((response, streams));
    }

    #[tokio::test]
    async fn an_upstream_without_h2_gets_http1_one_connection_per_open_stream() {
        let (url, accepted) = tls_upstream(&[b"http/1.1"]).await;
        let upstream = upstream(url);
        let response = upstream
            .send(Method::GET, None, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_11);
        let streams = open_streams(&upstream, 3).await;
        // The first stream is still open too: each holds its connection.
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        drop((response, streams));
    }

    #[test]
    fn only_a_jsonrpc_error_counts_as_one() {
        assert!(is_jsonrpc_error(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"denied"}}"#
        ));
        assert!(!is_jsonrpc_error(
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        ));
        assert!(!is_jsonrpc_error(br#"{"error":{"code":1,"message":"x"}}"#));
        assert!(!is_jsonrpc_error(b"Forbidden"));
        assert!(!is_jsonrpc_error(
            br#"[{"jsonrpc":"2.0","error":{"code":1,"message":"x"}}]"#
        ));
    }
}
