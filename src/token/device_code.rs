//! `AUTH=device_code` (RFC 8628): for headless containers. When no valid credential is held the
//! manager starts this login by itself; the verification URI and user code appear in `/ready`'s
//! `login` object, in one structured log event, and in `mcp-sidecar wait`. Polling honours
//! `interval` and `slow_down`; an expired code starts a new login; the resulting refresh token is
//! persisted, so the person logs in once, not once per restart.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::endpoint::{GrantError, Issued, OAuthClient, Reply, clean, parse_token};
use super::manager::{Interactive, Prompt, Satisfied};
use super::{BoxFuture, Login};

pub struct DeviceCode {
    pub oauth: Arc<OAuthClient>,
}

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 3.5: the default polling interval, and the increase on `slow_down`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

impl Interactive for DeviceCode {
    fn login<'a>(
        &'a self,
        prompt: &'a Prompt,
        satisfied: &'a Satisfied,
    ) -> BoxFuture<'a, Result<Option<Issued>, GrantError>> {
        Box::pin(async move {
            loop {
                if satisfied().await {
                    prompt(None);
                    return Ok(None);
                }
                match self.attempt(prompt, satisfied).await? {
                    Attempt::Issued(issued) => {
                        prompt(None);
                        return Ok(Some(issued));
                    }
                    Attempt::Satisfied => {
                        tracing::info!("tokens arrived another way; the device login stops");
                        prompt(None);
                        return Ok(None);
                    }
                    Attempt::Expired => {}
                }
                tracing::info!(
                    "the device code expired before anyone logged in; starting a new login"
                );
            }
        })
    }
}

/// How one device code ended.
enum Attempt {
    Issued(Issued),
    /// It expired before anyone approved it.
    Expired,
    /// Tokens arrived another way (another sidecar on the volume, `mcp-sidecar login`).
    Satisfied,
}

impl DeviceCode {
    async fn attempt(&self, prompt: &Prompt, satisfied: &Satisfied) -> Result<Attempt, GrantError> {
        let endpoints = self.oauth.endpoints().await?;
        let url = endpoints.device_authorization_url.clone().ok_or_else(|| {
            GrantError::Config(format!(
                "{} announces no device_authorization_endpoint; set MCP_SIDECAR_DEVICE_AUTHORIZATION_URL",
                endpoints.issuer
            ))
        })?;
        let mut params = Vec::new();
        if let Some(scope) = self.oauth.scope(&endpoints) {
            params.push(("scope", scope));
        }
        if let Some(resource) = &self.oauth.config.resource {
            params.push(("resource", resource.clone()));
        }
        let body = match self.oauth.post(&endpoints, &url, params).await? {
            Reply::Json(body) => body,
            Reply::Error(e) => {
                let description = e.description.map(|d| format!(": {d}")).unwrap_or_default();
                let message = format!(
                    "the device authorization endpoint refused to start a login (HTTP {}, {}{description})",
                    e.status, e.code
                );
                return Err(if e.status >= 500 {
                    GrantError::Temporary(message)
                } else {
                    GrantError::Config(message)
                });
            }
        };
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(device_code), Some(user_code), Some(verification_uri)) = (
            text("device_code"),
            text("user_code"),
            // Google's endpoint still says verification_url.
            text("verification_uri").or_else(|| text("verification_url")),
        ) else {
            return Err(GrantError::Temporary(
                "the device authorization answer lacks device_code, user_code or verification_uri"
                    .into(),
            ));
        };
        crate::secret::register(&device_code);
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(600))
            .min(Duration::from_secs(3600));
        let mut interval = body
            .get("interval")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let deadline = Instant::now() + lifetime;
        let login = Login {
            verification_uri: clean(&verification_uri, 500),
            verification_uri_complete: text("verification_uri_complete").map(|u| clean(&u, 500)),
            user_code: Some(clean(&user_code, 64)),
            expires_at: Some(crate::time::rfc3339(SystemTime::now() + lifetime)),
        };
        tracing::warn!(
            verification_uri = %login.verification_uri,
            verification_uri_complete = login.verification_uri_complete.as_deref().unwrap_or(""),
            user_code = login.user_code.as_deref().unwrap_or(""),
            expires_at = login.expires_at.as_deref().unwrap_or(""),
            "login required: open the verification URI and enter the code"
        );
        prompt(Some(login));

        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() >= deadline {
                return Ok(Attempt::Expired);
            }
            if satisfied().await {
                return Ok(Attempt::Satisfied);
            }
            let params = vec![
                ("grant_type", GRANT_TYPE.to_string()),
                ("device_code", device_code.clone()),
            ];
            let token_url = endpoints.token_url.clone();
            let mut params = params;
            if let Some(resource) = &self.oauth.config.resource {
                params.push(("resource", resource.clone()));
            }
            let sent = SystemTime::now();
            match self.oauth.post(&endpoints, &token_url, params).await {
                Ok(Reply::Json(body)) => return parse_token(&body, sent).map(Attempt::Issued),
                Ok(Reply::Error(e)) => match e.code.as_str() {
                    "authorization_pending" => {}
                    "slow_down" => interval += SLOW_DOWN_STEP,
                    "expired_token" => return Ok(Attempt::Expired),
                    "access_denied" => {
                        return Err(GrantError::Rejected(
                            "the login was denied at the authorization server; a new one starts shortly".into(),
                        ));
                    }
                    _ if e.is_fatal() => {
                        return Err(GrantError::Rejected(format!(
                            "the token endpoint refused the device code (HTTP {}, {})",
                            e.status, e.code
                        )));
                    }
                    // Server trouble: keep polling this code until it expires.
                    _ => interval = (interval + SLOW_DOWN_STEP).min(Duration::from_secs(60)),
                },
                Err(GrantError::Temporary(reason)) => {
                    // RFC 8628 3.5: back off on connection trouble too.
                    interval = (interval * 2).min(Duration::from_secs(60));
                    tracing::debug!(%reason, "device code poll failed; polling on, slower");
                }
                Err(other) => return Err(other),
            }
        }
    }
}
