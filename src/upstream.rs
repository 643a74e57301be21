//! The one connection to the upstream MCP server, shared by the proxy and the readiness checker.
//!
//! It owns the pooled keep-alive HTTP client, the extra static headers, and the rule that every
//! request carries the current token: on a 401 (or a 403 `invalid_token`) it asks the token
//! source for a fresh token once and sends the request once more. Keeping that rule here means the
//! readiness handshake exercises exactly the path that client requests take.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
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
    Forbidden(Box<reqwest::Response>),
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

/// Follows only what cannot hurt: same-origin 307/308 (method and body kept, so an MCP POST
/// survives; the token never leaves the origin), three hops at most. Anything else is reported
/// (see [`UpstreamError::Redirected`]): passed to the client, the client would follow it past the
/// sidecar without a token, get a 401 and start its own OAuth.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        let keeps_method = matches!(attempt.status().as_u16(), 307 | 308);
        if same_origin && keeps_method && attempt.previous().len() <= 3 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
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

pub struct Upstream {
    client: reqwest::Client,
    url: Url,
    headers: Option<SecretSource>,
    /// `headers` parsed, with the text they came from: parsing (and registering the values for
    /// scrubbing) happens when the text changes, not on every request.
    parsed_headers: Mutex<Option<(Secret, ExtraHeaders)>>,
    tokens: Arc<dyn TokenSource>,
    read_timeout: Option<Duration>,
}

type ExtraHeaders = Arc<[(HeaderName, HeaderValue)]>;

impl Upstream {
    /// Builds the client. Errors are start-up messages (an unreadable `CA_FILE`).
    pub fn new(config: &UpstreamConfig, tokens: Arc<dyn TokenSource>) -> Result<Self, String> {
        let mut builder =
            crate::net::http_client_builder(&config.client_settings(), redirect_policy())?;
        // Per read, reset by every byte: the response head and each body chunk (reqwest applies
        // it to the body too), so a stream that sends anything, comments included, lives on.
        if let Some(timeout) = config.read_timeout {
            builder = builder.read_timeout(timeout);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url: config.url.clone(),
            headers: config.headers.clone(),
            parsed_headers: Mutex::new(None),
            tokens,
            read_timeout: config.read_timeout,
        })
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
    ) -> Result<reqwest::Response, UpstreamError> {
        // Borrowed without a query: the only copy of the URL per request is the one reqwest
        // takes.
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
    ) -> Result<reqwest::Response, UpstreamError> {
        self.send_url(method, &url, headers, body).await
    }

    async fn send_url(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, UpstreamError> {
        let token = self.tokens.token().await?;
        let response = self
            .send_once(&method, url, &headers, &body, token.as_ref())
            .await?;
        let response = self.refuse_redirect(response)?;
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
        response: reqwest::Response,
        challenge: Option<BearerChallenge>,
    ) -> Result<reqwest::Response, UpstreamError> {
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
    fn retried(&self, response: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
        let response = self.refuse_redirect(response)?;
        match auth_failure(&response) {
            None => Ok(response),
            // The new credential got through; this request is refused for another reason.
            Some(AuthFailure::Forbidden) => Err(UpstreamError::Forbidden(response.into())),
            Some(AuthFailure::Refreshable(c) | AuthFailure::Final(c)) => {
                Err(rejected(response.status(), c))
            }
        }
    }

    fn refuse_redirect(
        &self,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, UpstreamError> {
        if !is_redirect(response.status()) {
            return Ok(response);
        }
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .map(|url| crate::net::display_url(&url))
            .unwrap_or_else(|| "(no Location)".into());
        Err(UpstreamError::Redirected {
            status: response.status().as_u16(),
            location,
        })
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: &Bytes,
        token: Option<&AccessToken>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = headers.clone();
        crate::trace::inject(&mut headers);
        if let Some(extra) = self.extra_headers()? {
            crate::headers::add_extra(&mut headers, &extra);
        }
        if let Some(token) = token {
            headers.insert(AUTHORIZATION, token.authorization()?);
        }
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .headers(headers);
        if !body.is_empty() {
            request = request.body(body.clone());
        }
        request.send().await.map_err(|e| match self.read_timeout {
            // A connect timeout is an unreachable upstream; only a silent one is this.
            Some(timeout) if e.is_timeout() && !e.is_connect() => UpstreamError::TimedOut(timeout),
            _ if e.is_connect() && crate::net::is_connection_refused(&e) => {
                UpstreamError::ConnectionRefused(crate::net::describe_reqwest_error(&e))
            }
            _ => UpstreamError::Unreachable(crate::net::describe_reqwest_error(&e)),
        })
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

fn auth_failure(response: &reqwest::Response) -> Option<AuthFailure> {
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
