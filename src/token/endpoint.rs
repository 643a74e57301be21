//! Talking to the authorization server: form-encoded token requests with client authentication
//! (`client_secret_basic`, `client_secret_post`, `private_key_jwt`, or a public client), the
//! RFC 8707 `resource`, and the classification of every answer into "use this token", "this
//! credential is dead" or "try again later".
//!
//! Authorization servers fail in many shapes: HTML error pages from a gateway, a 200 without
//! `access_token`, an `error_description` that quotes the submitted secret. Every message built
//! here names the endpoint and the cause, and passes through [`crate::secret::scrub`], so it can go
//! to `/ready` and the log as it is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use url::Url;

use super::discovery::{self, Endpoints};
use crate::config::{ClientAuth, OAuthConfig, SigningAlg};
use crate::secret::{Secret, SecretFile, SecretSource};

/// What a token endpoint (or a token command) handed out.
#[derive(Clone)]
pub struct Issued {
    pub access_token: Secret,
    pub expires_at: Option<SystemTime>,
    pub refresh_token: Option<Secret>,
    /// The granted scopes, when the server said.
    pub scope: Option<String>,
}

/// Why a grant produced no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    /// The credential is not accepted (`invalid_grant`, `invalid_client`, ...): drop it and report
    /// `auth_required` until something changes.
    #[error("{0}")]
    Rejected(String),
    /// The server is down, slow or answering nonsense: keep what we have and retry with backoff.
    #[error("{0}")]
    Temporary(String),
    /// A person has to log in (device code shown, or `/oauth/login` waiting).
    #[error("{0}")]
    LoginRequired(String),
    /// Something a person must fix that is not the credential itself: the client's
    /// registration or secret, the scopes or resource asked for, discovery, a key file. Reported
    /// as `auth_required`, retried with backoff, and nothing held is dropped.
    #[error("{0}")]
    Config(String),
}

/// An OAuth error reply (RFC 6749 5.2), for flows that react to specific codes (device polling).
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: u16,
    pub code: String,
    pub description: Option<String>,
}

impl OAuthError {
    fn explain(&self, endpoint: &str) -> String {
        let description = self
            .description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        format!(
            "the {endpoint} refused the request (HTTP {}, {}{description})",
            self.status, self.code
        )
    }

    /// What a token-endpoint error means for the credential. Only `invalid_grant` says the grant
    /// itself (refresh token, device code, authorization code) is dead; client and request errors
    /// need a fix elsewhere and must not cost the user a login.
    pub fn classify(&self, endpoint: &str) -> GrantError {
        let message = self.explain(endpoint);
        match self.code.as_str() {
            _ if !self.is_fatal() => GrantError::Temporary(message),
            "invalid_grant" | "expired_token" | "access_denied" => GrantError::Rejected(message),
            "invalid_target" => GrantError::Config(format!(
                "{message}; if the server does not support resource indicators, set MCP_SIDECAR_RESOURCE=off"
            )),
            "invalid_scope" => GrantError::Config(format!("{message}; check MCP_SIDECAR_SCOPES")),
            _ => GrantError::Config(message),
        }
    }

    /// Whether this error means the credential (grant, client) is dead, not the server.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self.code.as_str(),
            "temporarily_unavailable" | "server_error" | "slow_down" | "authorization_pending"
        ) && self.status < 500
            && self.status != 429
    }
}

/// The result of one request to an OAuth endpoint, before the caller decides what it means.
#[derive(Debug)]
pub enum Reply {
    Json(serde_json::Map<String, Value>),
    Error(OAuthError),
}

/// The authorization server as one configured client sees it.
pub struct OAuthClient {
    pub http: reqwest::Client,
    pub config: Arc<OAuthConfig>,
    upstream: Url,
    endpoints: tokio::sync::Mutex<Option<Arc<Endpoints>>>,
    /// A client registered at run time (DCR), persisted with the tokens.
    registered: Mutex<Option<Registered>>,
    /// Scopes the upstream asked for with 403 `insufficient_scope`, added to every later
    /// request (a step-up must survive the next renewal).
    extra_scopes: Mutex<Vec<String>>,
}

/// A client identity obtained by Dynamic Client Registration or a metadata document URL.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    pub client_id: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::on_disk::secret"
    )]
    pub client_secret: Option<Secret>,
    /// The authorization server it was registered with.
    pub issuer: String,
}

impl OAuthClient {
    pub fn new(http: reqwest::Client, config: Arc<OAuthConfig>, upstream: Url) -> Self {
        Self {
            http,
            config,
            upstream,
            endpoints: tokio::sync::Mutex::new(None),
            registered: Mutex::new(None),
            extra_scopes: Mutex::new(Vec::new()),
        }
    }

    pub fn registered(&self) -> Option<Registered> {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_registered(&self, registered: Option<Registered>) {
        // A registered client secret is a `Secret`: known to the scrubber since it was made.
        *self.registered.lock().unwrap_or_else(|p| p.into_inner()) = registered;
    }

    /// The endpoints, from configuration or discovery (done once, retried after a failure).
    pub async fn endpoints(&self) -> Result<Arc<Endpoints>, GrantError> {
        let mut cached = self.endpoints.lock().await;
        if let Some(endpoints) = cached.as_ref() {
            return Ok(endpoints.clone());
        }
        let endpoints =
            Arc::new(discovery::resolve(&self.http, &self.config, &self.upstream).await?);
        *cached = Some(endpoints.clone());
        Ok(endpoints)
    }

    /// The client id to present: configured, else registered at run time.
    pub async fn client_id(&self, endpoints: &Endpoints) -> Result<String, GrantError> {
        if let Some(id) = &self.config.client_id {
            return Ok(id.clone());
        }
        if let Some(r) = self.registered().filter(|r| r.issuer == endpoints.issuer) {
            return Ok(r.client_id);
        }
        let registered = discovery::register(&self.http, &self.config, endpoints).await?;
        self.set_registered(Some(registered.clone()));
        Ok(registered.client_id)
    }

    /// Scopes to ask for: configured, else what the upstream's challenge or metadata named, plus
    /// any the upstream asked for since.
    pub fn scope(&self, endpoints: &Endpoints) -> Option<String> {
        let mut scopes: Vec<String> = if self.config.scopes.is_empty() {
            endpoints.scopes.clone()
        } else {
            self.config.scopes.clone()
        };
        for s in self
            .extra_scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        (!scopes.is_empty()).then(|| scopes.join(" "))
    }

    /// Adds scopes named by an `insufficient_scope` challenge. Returns false when there is
    /// nothing new, or when the total would pass `max` (a server that keeps asking for more is
    /// not answered forever).
    pub fn add_scopes(&self, challenged: &str, granted: Option<&str>, max: usize) -> bool {
        let mut extra = self.extra_scopes.lock().unwrap_or_else(|p| p.into_inner());
        let granted: Vec<&str> = granted.unwrap_or_default().split_whitespace().collect();
        let new: Vec<String> = challenged
            .split_whitespace()
            .filter(|s| !granted.contains(s) && !extra.iter().any(|e| e == s))
            .filter(|s| !self.config.scopes.iter().any(|c| c == s))
            .map(str::to_string)
            .collect();
        if new.is_empty() || extra.len() + new.len() > max {
            return false;
        }
        extra.extend(new);
        true
    }

    /// Whether every scope of `challenged` is granted or was already asked for (by
    /// [`OAuth::add_scopes`] or the configuration).
    pub fn has_requested(&self, challenged: &str, granted: Option<&str>) -> bool {
        let extra = self.extra_scopes.lock().unwrap_or_else(|p| p.into_inner());
        let granted: Vec<&str> = granted.unwrap_or_default().split_whitespace().collect();
        challenged.split_whitespace().all(|s| {
            granted.contains(&s)
                || extra.iter().any(|e| e == s)
                || self.config.scopes.iter().any(|c| c == s)
        })
    }

    /// One token request: `params` plus client authentication and `resource`.
    pub async fn token_request(
        &self,
        endpoints: &Endpoints,
        mut params: Vec<(&'static str, String)>,
    ) -> Result<Issued, GrantError> {
        let token_url = endpoints.token_url.clone();
        if let Some(resource) = &self.config.resource {
            params.push(("resource", resource.clone()));
        }
        if let Some(audience) = &self.config.audience {
            params.push(("audience", audience.clone()));
        }
        // Before the request: `expires_in` counts from when the server issued the token, which
        // is somewhere between sending and the reply, so the send time is the safe base.
        let sent = SystemTime::now();
        let grant = params
            .iter()
            .find(|(k, _)| *k == "grant_type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let reply = self.post(endpoints, &token_url, params);
        match crate::trace::token_request(&grant, reply, |r| match r {
            Ok(Reply::Json(_)) => "issued",
            Ok(Reply::Error(_)) => "refused",
            Err(_) => "failed",
        })
        .await?
        {
            Reply::Json(body) => parse_token(&body, sent),
            Reply::Error(e) => {
                if e.code == "invalid_client"
                    && self.config.client_id.is_none()
                    && self.registered().is_some()
                {
                    // A dynamically registered client the server no longer knows: register
                    // anew on the next attempt instead of failing forever.
                    tracing::warn!(
                        "the authorization server no longer knows the registered client; registering again"
                    );
                    self.set_registered(None);
                }
                Err(e.classify("token endpoint"))
            }
        }
    }

    /// POSTs a form with client authentication to an endpoint of the authorization server and
    /// sorts the answer. Transport failures and non-JSON answers are [`GrantError::Temporary`].
    pub async fn post(
        &self,
        endpoints: &Endpoints,
        url: &Url,
        mut params: Vec<(&'static str, String)>,
    ) -> Result<Reply, GrantError> {
        let client_id = self.client_id(endpoints).await?;
        let mut request = self
            .http
            .post(url.clone())
            .timeout(self.config.token_timeout)
            .header(http::header::ACCEPT, "application/json");
        let registered_secret = self
            .registered()
            .filter(|r| r.client_id == client_id)
            .and_then(|r| r.client_secret);
        match (self.config.client_auth, registered_secret) {
            (ClientAuth::None, Some(secret)) => {
                // A dynamically registered confidential client.
                params.push(("client_id", client_id.clone()));
                params.push(("client_secret", secret.expose().to_string()));
            }
            (ClientAuth::None, None) => params.push(("client_id", client_id.clone())),
            (ClientAuth::ClientSecretBasic, _) => {
                let secret = self.client_secret()?;
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", encode(&client_id), encode(secret.expose()));
                let credential = STANDARD.encode(pair);
                // An error page echoing the request quotes this, not the secret itself.
                crate::secret::register(&credential);
                let mut value = http::HeaderValue::try_from(format!("Basic {credential}"))
                    .map_err(|_| {
                        GrantError::Config("CLIENT_SECRET cannot be sent in an HTTP header".into())
                    })?;
                value.set_sensitive(true);
                request = request.header(http::header::AUTHORIZATION, value);
            }
            (ClientAuth::ClientSecretPost, _) => {
                let secret = self.client_secret()?;
                params.push(("client_id", client_id.clone()));
                params.push(("client_secret", secret.expose().to_string()));
            }
            (ClientAuth::PrivateKeyJwt, _) => {
                let assertion = self.assertion(&client_id, endpoints)?;
                // A signed assertion is a credential for its minute of validity.
                crate::secret::register_ephemeral(&assertion);
                params.push(("client_id", client_id.clone()));
                params.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                params.push(("client_assertion", assertion));
            }
        }
        let what = endpoint_name(url, endpoints);
        let response = request.form(&params).send().await.map_err(|e| {
            GrantError::Temporary(crate::secret::scrub(&format!(
                "the {what} ({}) is unreachable: {}",
                crate::net::display_url(url),
                crate::net::describe_reqwest_error(&e)
            )))
        })?;
        read_reply(response, &what).await
    }

    fn client_secret(&self) -> Result<Secret, GrantError> {
        let source: &SecretSource = self
            .config
            .client_secret
            .as_ref()
            .ok_or_else(|| GrantError::Config("no CLIENT_SECRET is configured".into()))?;
        source.read().map_err(|e| GrantError::Config(e.to_string()))
    }

    fn assertion(&self, client_id: &str, endpoints: &Endpoints) -> Result<String, GrantError> {
        let file = self.config.assertion_key.as_ref().ok_or_else(|| {
            GrantError::Config("private_key_jwt needs CLIENT_ASSERTION_KEY_FILE".into())
        })?;
        sign_assertion(
            file,
            self.config.assertion_alg,
            self.config.assertion_kid.as_deref(),
            client_id,
            endpoints.token_url.as_str(),
        )
    }
}

fn endpoint_name(url: &Url, endpoints: &Endpoints) -> String {
    if *url == endpoints.token_url {
        "token endpoint".into()
    } else if Some(url) == endpoints.device_authorization_url.as_ref() {
        "device authorization endpoint".into()
    } else {
        "authorization server".into()
    }
}

/// Reads an answer: a JSON object on 2xx, an OAuth error object on 4xx/5xx, anything else is
/// described (status, media type) without quoting the body.
pub async fn read_reply(response: reqwest::Response, what: &str) -> Result<Reply, GrantError> {
    let status = response.status();
    let media = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let body = match read_limited(response, 256 * 1024).await {
        Ok(body) => body,
        Err(e) => {
            return Err(GrantError::Temporary(format!(
                "the {what} answer could not be read: {e}"
            )));
        }
    };
    let json: Option<serde_json::Map<String, Value>> = serde_json::from_slice(&body).ok();
    match json {
        Some(object) if status.is_success() => Ok(Reply::Json(object)),
        Some(object) if object.get("error").and_then(Value::as_str).is_some() => {
            let code = clean(object["error"].as_str().unwrap_or_default(), 64);
            let description = object
                .get("error_description")
                .and_then(Value::as_str)
                .map(|d| clean(d, 200));
            Ok(Reply::Error(OAuthError {
                status: status.as_u16(),
                code,
                description,
            }))
        }
        _ => {
            let shape = match media.as_str() {
                "" => "no content type".to_string(),
                "text/html" => "an HTML page".to_string(),
                m if json.is_some() => format!("{m} without an OAuth error object"),
                m => format!("{m}, not JSON"),
            };
            Err(GrantError::Temporary(format!(
                "the {what} answered HTTP {} with {shape}",
                status.as_u16()
            )))
        }
    }
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("{}", crate::net::describe_reqwest_error(.0))]
    Read(#[source] reqwest::Error),
    #[error("larger than {0} bytes")]
    TooLarge(usize),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Server-supplied text made fit for a log line: secrets scrubbed, printable, bounded.
///
/// Scrubbed whole before it is cut: cut first, a secret straddling the cut would no longer match
/// and its prefix would be printed.
pub fn clean(text: &str, max: usize) -> String {
    let printable: String = crate::secret::scrub(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    printable.trim().to_string()
}

/// A successful token response (RFC 6749 5.1), checked field by field. `expires_in` counts from
/// `sent`, when the request was sent: a slow reply must not stretch the token's known life.
pub fn parse_token(
    body: &serde_json::Map<String, Value>,
    sent: SystemTime,
) -> Result<Issued, GrantError> {
    let bad = |m: &str| GrantError::Temporary(format!("the token endpoint's answer {m}"));
    let access_token = match body.get("access_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(_) => return Err(bad("has an access_token that is not a non-empty string")),
        None => return Err(bad("has no access_token")),
    };
    if access_token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad(
            "has an access_token that cannot be sent in an HTTP header",
        ));
    }
    match body.get("token_type").and_then(Value::as_str) {
        Some(t) if !t.eq_ignore_ascii_case("bearer") && !t.eq_ignore_ascii_case("n_a") => {
            return Err(bad(&format!(
                "has token_type {}, but only Bearer tokens are supported",
                clean(t, 32)
            )));
        }
        _ => {}
    }
    let access_token = Secret::new(access_token);
    let expires_in = match body.get("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite() && *n > 0.0)
    .map(|n| Duration::from_secs_f64(n.min(366.0 * 86400.0)));
    let expires_at = match expires_in {
        Some(d) => Some(sent + d),
        // No expires_in: a JWT says when it expires; an opaque token is used until rejected.
        None => jwt_expiry(access_token.expose()),
    };
    let refresh_token = body
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(|s| Secret::new(s.trim()));
    let scope = body
        .get("scope")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Issued {
        access_token,
        expires_at,
        refresh_token,
        scope,
    })
}

/// The `exp` claim of a JWT, read without verifying it: only used to schedule a refresh.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp > 0.0 && exp < 1e11).then(|| UNIX_EPOCH + Duration::from_secs_f64(exp))
}

/// A fresh random value for `state`, PKCE verifiers and JWT ids: 32 bytes, base64url.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // The OS random source failing is not something a sidecar can work around; the same call
    // backs every TLS handshake this process makes.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// PKCE S256 (RFC 7636): the challenge for `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// An RFC 7523 client assertion, signed with the key in `file`.
pub fn sign_assertion(
    file: &SecretFile,
    alg: Option<SigningAlg>,
    kid: Option<&str>,
    client_id: &str,
    audience: &str,
) -> Result<String, GrantError> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = file.read().map_err(|e| GrantError::Config(e.to_string()))?;
    let pem = pem.expose().as_bytes();
    let rsa = || EncodingKey::from_rsa_pem(pem).ok();
    let ec = || {
        EncodingKey::from_ec_pem(pem)
            .ok()
            .or_else(|| sec1_to_pkcs8(pem).map(|der| EncodingKey::from_ec_der(&der)))
    };
    let (algorithm, key) = match alg {
        Some(SigningAlg::Rs256) => (Algorithm::RS256, rsa()),
        Some(SigningAlg::Es256) => (Algorithm::ES256, ec()),
        None => match rsa() {
            Some(key) => (Algorithm::RS256, Some(key)),
            None => (Algorithm::ES256, ec()),
        },
    };
    let key = key.ok_or_else(|| {
        GrantError::Config(format!(
            "CLIENT_ASSERTION_KEY_FILE {} is not a PEM {} private key (PKCS#8; PKCS#1 for RSA, SEC1 for EC)",
            file.path().display(),
            match algorithm {
                Algorithm::ES256 => "P-256 EC",
                _ => "RSA or P-256 EC",
            }
        ))
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": random_token(),
        "iat": now,
        "exp": now + 60,
    });
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| {
        GrantError::Config(format!(
            "cannot sign a client assertion with CLIENT_ASSERTION_KEY_FILE {}: {e}",
            file.path().display()
        ))
    })
}

/// A SEC1 `EC PRIVATE KEY` (what `openssl ecparam -genkey` writes) wrapped as PKCS#8 for P-256,
/// the only form the signing library reads. `None` for anything else.
fn sec1_to_pkcs8(pem: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN EC PRIVATE KEY-----";
    const END: &str = "-----END EC PRIVATE KEY-----";
    let text = std::str::from_utf8(pem).ok()?;
    let body = text.split(BEGIN).nth(1)?.split(END).next()?;
    let body: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let sec1 = STANDARD.decode(body).ok()?;
    // id-ecPublicKey with the prime256v1 curve (RFC 5480).
    const ALGORITHM: [u8; 21] = [
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }
    let mut info = vec![0x02, 0x01, 0x00];
    info.extend_from_slice(&ALGORITHM);
    info.extend(tlv(0x04, &sec1));
    Some(tlv(0x30, &info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("test value is an object")
    }

    fn parse_token_now(body: &serde_json::Map<String, Value>) -> Result<Issued, GrantError> {
        parse_token(body, SystemTime::now())
    }

    #[test]
    fn expiry_counts_from_when_the_request_was_sent() {
        let sent = SystemTime::now() - Duration::from_secs(7);
        let issued = parse_token(
            &object(serde_json::json!({"access_token": "at-canary-sent", "expires_in": 30})),
            sent,
        )
        .expect("valid reply");
        assert_eq!(issued.expires_at, Some(sent + Duration::from_secs(30)));
    }

    #[test]
    fn token_replies_are_checked_field_by_field() {
        let ok = parse_token_now(&object(serde_json::json!({
            "access_token": "at-canary-1", "token_type": "bearer", "expires_in": "120",
            "refresh_token": "rt-canary-1", "scope": "a b"
        })))
        .expect("valid reply");
        assert_eq!(ok.access_token.expose(), "at-canary-1");
        assert!(ok.expires_at.is_some());
        assert_eq!(ok.scope.as_deref(), Some("a b"));

        let missing = parse_token_now(&object(serde_json::json!({"token_type": "Bearer"})));
        assert!(matches!(missing, Err(GrantError::Temporary(m)) if m.contains("no access_token")));

        let dpop = parse_token_now(&object(
            serde_json::json!({"access_token": "x-canary", "token_type": "DPoP"}),
        ));
        assert!(
            matches!(dpop, Err(GrantError::Temporary(m)) if m.contains("DPoP") && !m.contains("x-canary"))
        );

        let no_expiry = parse_token_now(&object(serde_json::json!({"access_token": "opaque"})))
            .expect("expires_in is optional");
        assert!(no_expiry.expires_at.is_none());
    }

    #[test]
    fn jwt_expiry_is_read_without_verification() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":4102444800}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            jwt_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(4_102_444_800))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
    }

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn server_text_is_cleaned_and_bounded() {
        crate::secret::register("canary-in-description");
        let text = clean("bad\r\ncredential canary-in-description", 200);
        assert_eq!(text, "bad  credential <redacted>");
        assert_eq!(clean(&"x".repeat(500), 10).len(), 10);
    }

    #[test]
    fn a_secret_straddling_the_cut_leaves_no_prefix() {
        let secret = format!("straddle+/=&{}", "k7+/=&Qw".repeat(30));
        crate::secret::register(&secret);
        for before in [150, 170, 180] {
            let text = format!("{} client_secret={secret}", "y".repeat(before));
            let cut = clean(&text, 200);
            assert!(!cut.contains("straddle"), "{before}: {cut}");
            assert!(cut.chars().count() <= 200);
        }
        let code = clean(&format!("{} {secret}", "e".repeat(55)), 64);
        assert!(!code.contains("strad"), "{code}");
    }
}
