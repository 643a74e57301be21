//! One upstream's request pipeline: what happens to a client request between the front that
//! received it and the answer the front writes back.
//!
//! A front (the HTTP endpoint in [`crate::proxy`] today; the stdio front next) builds a
//! [`Prepared`] request once and calls [`Forwarder::forward`]. The forwarder alone decides what
//! goes upstream and what the answer means:
//! - the credential: [`Upstream::send`] injects it, refreshes it and retries once on a 401 or
//!   `invalid_token`, steps up on `insufficient_scope`; the readiness handshake takes that same
//!   path on purpose, which is why it lives one layer down;
//! - sessions ([`Sessions`], owned here): a client's session id is sent as the upstream id the
//!   sidecar holds for it, a session the upstream forgot (404) is re-made and the request
//!   retried, an answer naming the upstream id is renamed back, an `initialize` is remembered, a
//!   DELETE forgets it, `resources/subscribe` calls are noted for a replay;
//! - `Last-Event-ID`: mapped to the session generation that issued it, never forwarded into a
//!   session the sidecar re-made ([`crate::stream`]);
//! - `/ready`: an answer that shows the upstream broken (or working again) asks readiness to
//!   look again;
//! - the tool policy ([`crate::tools`]): a `tools/call` it refuses is answered here and never
//!   sent ([`Forwarded::Refused`]), and a `tools/list` answer is filtered as it streams.
//!
//! What comes back is typed and knows nothing of axum: a streamed [`Answer`] (status, headers,
//! body), a GET stream held open while the upstream is away ([`Forwarded::Away`]), or a
//! [`ForwardError`] whose [`crate::failure::Failure`] tells the front the status, JSON-RPC code,
//! reason and metrics outcome. Writing the answer (keepalives, scrubbing, JSON-RPC error bodies,
//! metrics) is the front's; what a request the upstream refused (a 403 not about the credential)
//! is answered with is the same on every front ([`crate::upstream::refused_answer`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::failure::Failure;
use crate::mcp::MCP_SESSION_ID;
use crate::readiness::Readiness;
use crate::session::{ReinitError, Session, Sessions};
use crate::stream::Follow;
use crate::upstream::{Upstream, UpstreamError};

/// Where a request goes upstream.
#[derive(Debug, Clone)]
pub enum Target {
    /// The configured upstream URL, with the client's query (as it sent it) appended.
    Endpoint { query: Option<String> },
    /// A legacy message endpoint the upstream announced (already checked to be open and on the
    /// upstream's origin).
    Legacy(Url),
}

/// A client request as the forwarder takes it, built once by the front.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: Method,
    pub target: Target,
    /// The whole body: kept to replay after a refresh or a re-initialization.
    pub body: Bytes,
    /// The client's `Mcp-Session-Id`, which may name a session the sidecar re-made upstream.
    pub client_session: Option<String>,
    /// What goes upstream ([`crate::headers::upstream_request_headers`]), before the credential,
    /// `HEADERS` and the session mapping are applied.
    pub headers: HeaderMap,
}

impl Prepared {
    /// `client_headers` are the headers the client sent; only those meant for the upstream are
    /// kept.
    pub fn new(method: Method, target: Target, client_headers: &HeaderMap, body: Bytes) -> Self {
        let client_session = client_headers
            .get(&MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Self {
            method,
            target,
            body,
            client_session,
            headers: crate::headers::upstream_request_headers(client_headers),
        }
    }

    /// The JSON-RPC id when the body is a request (`Null` otherwise): what a sidecar error
    /// answers to. Parsed on demand: most requests never need it.
    pub fn rpc_id(&self) -> Value {
        crate::jsonrpc::request_id(&self.body)
    }

    /// The JSON-RPC method when the body is a request.
    pub fn rpc_method(&self) -> Option<String> {
        crate::jsonrpc::request_method(&self.body)
    }

    fn query(&self) -> Option<&str> {
        match &self.target {
            Target::Endpoint { query } => query.as_deref(),
            Target::Legacy(_) => None,
        }
    }

    fn to_endpoint(&self) -> bool {
        matches!(self.target, Target::Endpoint { .. })
    }
}

/// The upstream's answer, streamed.
pub struct Answer {
    pub status: StatusCode,
    /// As the upstream sent them (hop-by-hop ones included: the front decides what passes),
    /// with a session id naming the upstream session renamed to the client's.
    pub headers: HeaderMap,
    /// Straight from the upstream connection.
    pub body: crate::upstream::Body,
    /// For a GET stream of a known session: how to re-attach it when the upstream breaks off.
    pub follow: Option<Follow>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What [`Forwarder::forward`] hands back when the request was delivered or can wait.
#[derive(Debug)]
pub enum Forwarded {
    Answer(Answer),
    /// A GET stream of a known session found the upstream away (down, silent, restarting): the
    /// client's stream opens now and is attached ([`crate::stream::follow`]) once it is back.
    Away(Follow),
    /// The tool policy refused the request; nothing went upstream. The front writes this
    /// answer (200, or 400 without a request id to answer).
    Refused(crate::tools::Refusal),
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// It could not be delivered with a credential the upstream accepts, or the upstream
    /// refused it ([`UpstreamError::Forbidden`] keeps the answer to pass on).
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The upstream forgot the client's session and re-making it failed in a way that may pass.
    #[error(transparent)]
    Session(ReinitError),
}

impl ForwardError {
    pub fn failure(&self) -> Failure {
        match self {
            Self::Upstream(e) => e.failure(),
            Self::Session(e) => e.failure(),
        }
    }
}

/// The pipeline to one upstream.
pub struct Forwarder {
    upstream: Arc<Upstream>,
    sessions: Sessions,
    readiness: Arc<Readiness>,
    /// Bound on replaying a forgotten session's initialize (other requests of it wait meanwhile).
    reinit_timeout: Duration,
}

impl Forwarder {
    pub fn new(
        upstream: Arc<Upstream>,
        sessions: Sessions,
        readiness: Arc<Readiness>,
        reinit_timeout: Duration,
    ) -> Self {
        Self {
            upstream,
            sessions,
            readiness,
            reinit_timeout,
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Sends `request` upstream and returns the answer to write.
    pub async fn forward(&self, request: &Prepared) -> Result<Forwarded, ForwardError> {
        let method = &request.method;
        let tools = self.upstream.tools();
        // Only a POST carries messages; without a policy nothing is parsed.
        let lists = if *method == Method::POST {
            match tools.check(&request.body) {
                crate::tools::Checked::Pass(lists) => lists,
                crate::tools::Checked::Refused(refusal) => {
                    tracing::warn!(
                        refused = %crate::secret::scrub(&refusal.what),
                        "the tool policy refused a request; it was not sent upstream"
                    );
                    return Ok(Forwarded::Refused(refusal));
                }
            }
        } else {
            Vec::new()
        };
        let mut headers = request.headers.clone();
        // A session the sidecar re-initialized is known upstream by another id.
        let session = request
            .client_session
            .as_deref()
            .and_then(|id| self.sessions.get(id));
        let mut sent_session = None;
        let mut sent_generation = 0;
        if let Some(session) = &session {
            // The generation first: ids labelled with an older one are never forwarded again.
            sent_generation = session.generation();
            let id = session.upstream_id().await;
            if let Ok(value) = HeaderValue::try_from(id.as_str()) {
                headers.insert(MCP_SESSION_ID.clone(), value);
            }
            crate::stream::map_last_event_id(&mut headers, sent_generation);
            sent_session = Some(id);
        }
        let mut result = self.send(request, headers.clone()).await;

        let mut forgotten = false;
        // A DELETE of a session the upstream already forgot needs no new session to end.
        if session.is_some()
            && *method != Method::DELETE
            && let Ok(response) = result
        {
            let (gone, response) = crate::session::forgotten(response, self.reinit_timeout).await;
            forgotten = gone;
            result = Ok(response);
        }
        if let (true, Some(session), Some(stale)) = (forgotten, &session, &sent_session) {
            match self.reinitialize(session, stale).await {
                Ok(()) => {
                    crate::trace::note(crate::trace::Note::SessionReinitialized);
                    let (fresh, generation) = session.current().await;
                    if let Ok(value) = HeaderValue::try_from(fresh.as_str()) {
                        headers.insert(MCP_SESSION_ID.clone(), value);
                    }
                    // It names an event of the session that is gone.
                    headers.remove(&crate::stream::LAST_EVENT_ID);
                    sent_generation = generation;
                    result = self.send(request, headers.clone()).await;
                    // The retry went out under the new id; a response echoing it is renamed.
                    sent_session = Some(fresh);
                    if let Ok(response) = result {
                        let (gone, response) =
                            crate::session::forgotten(response, self.reinit_timeout).await;
                        if gone {
                            return Err(self.session_unavailable(ReinitError::ForgottenAgain));
                        }
                        result = Ok(response);
                    }
                }
                Err(e) if e.is_transient() => match e {
                    // Answered like any request that cannot be delivered (502/503/504 by cause).
                    ReinitError::Upstream(e) => result = Err(e),
                    e => return Err(self.session_unavailable(e)),
                },
                Err(e) => tracing::warn!(
                    error = %crate::secret::scrub(&e.to_string()),
                    "the upstream forgot a client's session and will not re-make it; passing its answer on"
                ),
            }
        }

        if let Some(id) = &request.client_session
            && *method == Method::DELETE
        {
            self.sessions.forget(id);
        }

        // A GET stream of a known session outlives an upstream that is down: the client's
        // stream opens now and is attached once the upstream is back.
        let mut follow = match &session {
            Some(session) if *method == Method::GET && request.to_endpoint() => Some(Follow {
                upstream: self.upstream.clone(),
                session: session.clone(),
                headers: headers.clone(),
                query: request.query().map(str::to_string),
                generation: sent_generation,
                reinit_timeout: self.reinit_timeout,
            }),
            _ => None,
        };
        if upstream_is_away(&result)
            && let Some(follow) = follow.take()
        {
            self.readiness.trigger();
            return Ok(Forwarded::Away(follow));
        }

        match result {
            Ok(mut upstream) => {
                let status = upstream.status();
                if status.is_server_error() {
                    self.readiness.trigger();
                } else if status.is_success() {
                    self.readiness.recovered();
                }
                if request.client_session.is_none()
                    && *method == Method::POST
                    && status.is_success()
                    && let Some(id) = upstream
                        .headers()
                        .get(&MCP_SESSION_ID)
                        .and_then(|v| v.to_str().ok())
                    && crate::session::is_initialize(&request.body)
                    // A replay goes to the endpoint; a legacy message URL makes no sessions.
                    && request.to_endpoint()
                {
                    self.sessions
                        .remember(id, request.body.clone(), &headers, request.query());
                }
                if status.is_success()
                    && *method == Method::POST
                    && let Some(session) = &session
                {
                    session.subscriptions.observe(&request.body);
                }
                let mut headers = std::mem::take(upstream.headers_mut());
                // Some servers echo the session id: the client sees its own.
                if let (Some(client_id), Some(sent_id)) =
                    (request.client_session.as_deref(), sent_session.as_deref())
                    && headers.get(&MCP_SESSION_ID).is_some_and(|v| v == sent_id)
                    && let Ok(value) = HeaderValue::try_from(client_id)
                {
                    headers.insert(MCP_SESSION_ID.clone(), value);
                }
                let mut body = upstream.bytes_stream();
                if !lists.is_empty() && status.is_success() {
                    // A filtered answer changes length; it ends by itself.
                    headers.remove(http::header::CONTENT_LENGTH);
                    body = if crate::sse::is_event_stream(&headers) {
                        crate::upstream::Body::from_stream(tools.filter_events(lists, body))
                    } else {
                        crate::upstream::Body::from_stream(tools.filter_json(lists, body))
                    };
                }
                Ok(Forwarded::Answer(Answer {
                    status,
                    headers,
                    body,
                    follow,
                }))
            }
            // The upstream works; it refused this one request.
            Err(e @ UpstreamError::Forbidden(_)) => Err(ForwardError::Upstream(e)),
            Err(e) => {
                self.readiness.trigger();
                Err(ForwardError::Upstream(e))
            }
        }
    }

    /// Re-makes `session` upstream, bounded: other requests of this session wait for it.
    async fn reinitialize(&self, session: &Session, stale: &str) -> Result<(), ReinitError> {
        let reinit = tokio::time::timeout(
            self.reinit_timeout,
            session.reinitialize(&self.upstream, stale),
        );
        reinit
            .await
            .unwrap_or(Err(ReinitError::TimedOut))
            .map(|_| ())
    }

    /// A session the upstream forgot could not be re-made for a reason that may pass
    /// ([`Failure::SessionReinitFailed`]): never the upstream's 404, which would tell the client
    /// its session is gone for good.
    fn session_unavailable(&self, error: ReinitError) -> ForwardError {
        self.readiness.trigger();
        ForwardError::Session(error)
    }

    async fn send(
        &self,
        request: &Prepared,
        headers: HeaderMap,
    ) -> Result<crate::upstream::Response, UpstreamError> {
        let method = request.method.clone();
        let body = request.body.clone();
        match &request.target {
            Target::Endpoint { query } => {
                self.upstream
                    .send(method, query.as_deref(), headers, body)
                    .await
            }
            Target::Legacy(url) => {
                self.upstream
                    .send_to(method, url.clone(), headers, body)
                    .await
            }
        }
    }
}

/// Whether a GET found the upstream away (down, silent or restarting) rather than refusing it.
fn upstream_is_away(result: &Result<crate::upstream::Response, UpstreamError>) -> bool {
    match result {
        Ok(response) => matches!(
            response.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        Err(e) => matches!(
            e,
            UpstreamError::Unreachable(_)
                | UpstreamError::ConnectionRefused(_)
                | UpstreamError::TimedOut(_)
        ),
    }
}

#[cfg(test)]
mod tests {
    //! Driven through [`Forwarder::forward`] alone, as a front that is not HTTP would drive it,
    //! against a local test upstream.
    use super::*;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    use futures_util::future::BoxFuture;

    use crate::secret::Secret;
    use crate::token::{AccessToken, TokenError, TokenSource, TokenStatus};

    /// Canaries as the bar wants them: `+ / = &`, longer than 200 characters.
    fn canary(tag: char) -> String {
        format!("{tag}{}+/=&{}", "a".repeat(120), "b".repeat(120))
    }

    /// Hands out `old` until the upstream refuses it, then `new`.
    struct Rotating {
        current: Mutex<String>,
        new: String,
    }

    impl TokenSource for Rotating {
        fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
            let token = self.current.lock().unwrap().clone();
            Box::pin(async move { Ok(Some(AccessToken::new(Secret::new(token)))) })
        }
        fn refresh<'a>(
            &'a self,
            _rejected: Option<&'a AccessToken>,
        ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
            *self.current.lock().unwrap() = self.new.clone();
            self.token()
        }
        fn status(&self) -> TokenStatus {
            TokenStatus::basic("test")
        }
    }

    /// One request the mock got: method, target, session id, `Authorization`, JSON-RPC method.
    type Seen = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    /// A small MCP server: sessions it can forget, one valid token, and a log of what it got.
    #[derive(Default)]
    struct Mock {
        valid_token: String,
        sessions: Mutex<Vec<String>>,
        made: Mutex<u32>,
        seen: Mutex<Vec<Seen>>,
    }

    async fn mock_handler(
        State(mock): State<Arc<Mock>>,
        request: axum::extract::Request,
    ) -> axum::response::Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let session = header("mcp-session-id");
        let authorization = header("authorization");
        let rpc = crate::jsonrpc::request_method(&body);
        mock.seen.lock().unwrap().push((
            parts.method.to_string(),
            parts.uri.to_string(),
            session.clone(),
            authorization.clone(),
            rpc.clone(),
        ));
        if authorization.as_deref() != Some(&format!("Bearer {}", mock.valid_token)) {
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", r#"Bearer error="invalid_token""#)],
            )
                .into_response();
        }
        let id = crate::jsonrpc::request_id(&body);
        if rpc.as_deref() == Some("initialize") {
            let made = {
                let mut made = mock.made.lock().unwrap();
                *made += 1;
                *made
            };
            let new = format!("upstream-{made}");
            mock.sessions.lock().unwrap().push(new.clone());
            let reply = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "serverInfo": {"name": "mock", "version": "1"}}});
            return ([("mcp-session-id", new)], axum::Json(reply)).into_response();
        }
        let known = session
            .as_ref()
            .is_some_and(|s| mock.sessions.lock().unwrap().contains(s));
        if !known {
            return StatusCode::NOT_FOUND.into_response();
        }
        if rpc
            .as_deref()
            .is_some_and(|m| m.starts_with("notifications/"))
        {
            return StatusCode::ACCEPTED.into_response();
        }
        let reply = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}});
        // Echoes the session it served, as some servers do.
        ([("mcp-session-id", session.unwrap())], axum::Json(reply)).into_response()
    }

    async fn start(mock: Arc<Mock>) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/mcp", axum::routing::any(mock_handler))
            .with_state(mock);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Url::parse(&format!("http://{address}/mcp")).unwrap()
    }

    fn forwarder(url: Url, tokens: Arc<dyn TokenSource>) -> Forwarder {
        let config = crate::config::UpstreamConfig {
            url,
            headers: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: None,
            tools: Default::default(),
        };
        let upstream = Arc::new(Upstream::new(&config, tokens).unwrap());
        let readiness = Readiness::new(crate::config::ReadyConfig {
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        });
        Forwarder::new(
            upstream,
            Sessions::new(crate::session::SessionLimits::default()),
            readiness,
            Duration::from_secs(10),
        )
    }

    fn post(body: &'static str, session: Option<&str>, query: Option<&str>) -> Prepared {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Some(session) = session {
            headers.insert(
                MCP_SESSION_ID.clone(),
                HeaderValue::from_str(session).unwrap(),
            );
        }
        let target = Target::Endpoint {
            query: query.map(str::to_string),
        };
        Prepared::new(
            Method::POST,
            target,
            &headers,
            Bytes::from_static(body.as_bytes()),
        )
    }

    async fn answer(forwarded: Forwarded) -> (StatusCode, HeaderMap, Value) {
        let Forwarded::Answer(answer) = forwarded else {
            panic!("expected the upstream's answer, got {forwarded:?}");
        };
        let mut body = Vec::new();
        let mut chunks = answer.body;
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (answer.status, answer.headers, json)
    }

    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    const CALL: &str =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;

    #[tokio::test]
    async fn a_refused_token_is_refreshed_and_the_request_sent_once_more() {
        let (old, new) = (canary('o'), canary('n'));
        let mock = Arc::new(Mock {
            valid_token: new.clone(),
            ..Mock::default()
        });
        let url = start(mock.clone()).await;
        let tokens = Arc::new(Rotating {
            current: Mutex::new(old.clone()),
            new: new.clone(),
        });
        let forwarder = forwarder(url, tokens);

        let (status, headers, json) = answer(
            forwarder
                .forward(&post(INITIALIZE, None, None))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[&MCP_SESSION_ID], "upstream-1");
        assert_eq!(json["result"]["serverInfo"]["name"], "mock");
        let seen = mock.seen.lock().unwrap().clone();
        let sent: Vec<_> = seen.iter().map(|s| s.3.clone().unwrap()).collect();
        assert_eq!(sent, [format!("Bearer {old}"), format!("Bearer {new}")]);
        // The retry carried the same request.
        assert!(seen.iter().all(|s| s.4.as_deref() == Some("initialize")));
    }

    #[tokio::test]
    async fn a_forgotten_session_is_remade_and_the_request_retried_under_the_new_id() {
        let token = canary('t');
        let mock = Arc::new(Mock {
            valid_token: token.clone(),
            ..Mock::default()
        });
        let url = start(mock.clone()).await;
        let tokens = Arc::new(Rotating {
            current: Mutex::new(token.clone()),
            new: token.clone(),
        });
        let forwarder = forwarder(url, tokens);

        let initialize = post(INITIALIZE, None, Some("tenant=a"));
        let (status, headers, _) = answer(forwarder.forward(&initialize).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let client_id = headers[&MCP_SESSION_ID].to_str().unwrap().to_string();
        assert_eq!(client_id, "upstream-1");

        // The upstream restarts and knows no session.
        mock.sessions.lock().unwrap().clear();
        let call = post(CALL, Some(&client_id), Some("tenant=a"));
        let (status, headers, json) = answer(forwarder.forward(&call).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["result"]["ok"], true);
        // The upstream echoed its new id; the client sees its own.
        assert_eq!(headers[&MCP_SESSION_ID], client_id.as_str());

        let seen = mock.seen.lock().unwrap().clone();
        let steps: Vec<_> = seen
            .iter()
            .skip(1)
            .map(|s| (s.1.as_str(), s.2.as_deref(), s.4.as_deref()))
            .collect();
        assert_eq!(
            steps,
            [
                ("/mcp?tenant=a", Some("upstream-1"), Some("tools/call")),
                ("/mcp?tenant=a", None, Some("initialize")),
                (
                    "/mcp?tenant=a",
                    Some("upstream-2"),
                    Some("notifications/initialized")
                ),
                ("/mcp?tenant=a", Some("upstream-2"), Some("tools/call")),
            ]
        );
        assert!(
            seen.iter()
                .all(|s| s.3.as_deref() == Some(&format!("Bearer {token}")))
        );
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_failure_the_front_can_word() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/mcp", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let forwarder = forwarder(url, Arc::new(crate::token::NoAuth));
        let error = forwarder
            .forward(&post(CALL, None, None))
            .await
            .unwrap_err();
        assert_eq!(error.failure(), Failure::UpstreamUnreachable);
    }
}
