//! `AUTH=authorization_code` with PKCE S256, usable from a container: the sidecar serves
//! `/oauth/login` (a redirect to the authorization endpoint) and `/oauth/callback` on its own
//! port, so a port-forwarded browser completes the login; `mcp-sidecar login` prints the URL and
//! takes the redirected URL pasted back when no browser can reach the callback.
//!
//! Each login has its own `state` and verifier, kept for ten minutes. The callback checks the
//! state, the RFC 9207 `iss` when present, and exchanges the code with the verifier and the same
//! redirect URI and resource.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use url::Url;

use super::endpoint::{GrantError, Issued, OAuthClient, clean, pkce_challenge, random_token};
use super::manager::{Interactive, Prompt, Satisfied};
use super::{BoxFuture, Login};
use crate::secret::Secret;

const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
/// More pending logins than a person starts; bounds memory if someone hammers `/oauth/login`.
const MAX_PENDING: usize = 32;

pub struct AuthorizationCode {
    pub oauth: Arc<OAuthClient>,
    /// `state` -> the PKCE verifier of that login, and when it started.
    pending: Mutex<HashMap<String, (Secret, Instant)>>,
    /// Where a person starts the login: `<redirect origin>/oauth/login`.
    login_url: String,
    /// Wakes the manager's waiting login once a callback delivered tokens.
    done: tokio::sync::Notify,
}

impl AuthorizationCode {
    pub fn new(oauth: Arc<OAuthClient>) -> Self {
        let login_url = oauth
            .config
            .redirect_uri
            .join("/oauth/login")
            .map(|u| u.to_string())
            .unwrap_or_else(|_| "/oauth/login".into());
        Self {
            oauth,
            pending: Mutex::new(HashMap::new()),
            login_url,
            done: tokio::sync::Notify::new(),
        }
    }

    /// A new login: the authorization URL to send the person to.
    pub async fn begin(&self) -> Result<Url, GrantError> {
        let endpoints = self.oauth.endpoints().await?;
        if !endpoints.pkce_s256 {
            return Err(GrantError::Config(format!(
                "{} does not announce PKCE S256 (code_challenge_methods_supported); refusing an authorization-code login without it",
                endpoints.issuer
            )));
        }
        let mut url = endpoints.authorization_url.clone().ok_or_else(|| {
            GrantError::Config(format!(
                "{} announces no authorization_endpoint; set MCP_SIDECAR_AUTHORIZATION_URL",
                endpoints.issuer
            ))
        })?;
        let client_id = self.oauth.client_id(&endpoints).await?;
        let state = random_token();
        let verifier = Secret::new(random_token());
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|_, (_, at)| at.elapsed() < LOGIN_LIFETIME);
            if pending.len() >= MAX_PENDING {
                return Err(GrantError::Temporary(
                    "too many logins are in progress; finish one or wait ten minutes".into(),
                ));
            }
            pending.insert(state.clone(), (verifier.clone(), Instant::now()));
        }
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &client_id)
                .append_pair("redirect_uri", self.oauth.config.redirect_uri.as_str())
                .append_pair("state", &state)
                .append_pair("code_challenge", &pkce_challenge(verifier.expose()))
                .append_pair("code_challenge_method", "S256");
            if let Some(scope) = self.oauth.scope(&endpoints) {
                query.append_pair("scope", &scope);
            }
            if let Some(resource) = &self.oauth.config.resource {
                query.append_pair("resource", resource);
            }
        }
        Ok(url)
    }

    /// Handles the redirect back (`query` is the callback's query string). The caller hands the
    /// tokens to [`super::manager::Manager::accept`].
    pub async fn complete(&self, query: &str) -> Result<Issued, GrantError> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if let Some(error) = params.get("error") {
            let description = params
                .get("error_description")
                .map(|d| format!(": {}", clean(d, 200)))
                .unwrap_or_default();
            return Err(GrantError::Rejected(format!(
                "the authorization server ended the login with {}{description}",
                clean(error, 64)
            )));
        }
        let (Some(code), Some(state)) = (params.get("code"), params.get("state")) else {
            return Err(GrantError::Rejected(
                "the callback has no code and state; start again at /oauth/login".into(),
            ));
        };
        let verifier = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.remove(state) {
                Some((verifier, at)) if at.elapsed() < LOGIN_LIFETIME => verifier,
                _ => {
                    return Err(GrantError::Rejected(
                        "this login is unknown or older than ten minutes; start again at /oauth/login".into(),
                    ));
                }
            }
        };
        let endpoints = self.oauth.endpoints().await?;
        match params.get("iss") {
            // RFC 9207: a response from another server is a mix-up attack or a
            // misconfiguration. Checked only against an issuer that is known, not guessed.
            Some(iss)
                if endpoints.issuer_known
                    && iss.trim_end_matches('/') != endpoints.issuer.trim_end_matches('/') =>
            {
                return Err(GrantError::Rejected(format!(
                    "the callback names issuer {}, not {}; refusing it (RFC 9207)",
                    clean(iss, 200),
                    endpoints.issuer
                )));
            }
            None if endpoints.iss_required => {
                return Err(GrantError::Rejected(
                    "the callback lacks the iss parameter its server promises (RFC 9207); refusing it"
                        .into(),
                ));
            }
            _ => {}
        }
        crate::secret::register(code);
        // With the code, the verifier redeems the login; a server echoing the exchange quotes it.
        crate::secret::register_ephemeral(verifier.expose());
        let params = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.clone()),
            ("redirect_uri", self.oauth.config.redirect_uri.to_string()),
            ("code_verifier", verifier.expose().to_string()),
        ];
        let issued = self.oauth.token_request(&endpoints, params).await?;
        self.done.notify_waiters();
        Ok(issued)
    }
}

impl Interactive for AuthorizationCode {
    fn login<'a>(
        &'a self,
        prompt: &'a Prompt,
        _satisfied: &'a Satisfied,
    ) -> BoxFuture<'a, Result<Option<Issued>, GrantError>> {
        Box::pin(async move {
            prompt(self.waiting());
            // The callback delivers the tokens itself; this only waits for it.
            self.done.notified().await;
            Ok(None)
        })
    }

    fn waiting(&self) -> Option<Login> {
        Some(Login {
            verification_uri: self.login_url.clone(),
            verification_uri_complete: None,
            user_code: None,
            expires_at: None,
        })
    }
}
