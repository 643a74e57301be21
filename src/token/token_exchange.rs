//! `AUTH=token_exchange` (RFC 8693): trades a subject token read from a file, typically a
//! Kubernetes projected service-account token, for an access token. The file is read anew for
//! every exchange because the kubelet rotates it, so pods need no long-lived secret at all.

use std::sync::Arc;

use super::BoxFuture;
use super::endpoint::{GrantError, Issued, OAuthClient};
use super::manager::Grant;

pub struct TokenExchange {
    pub oauth: Arc<OAuthClient>,
}

impl Grant for TokenExchange {
    fn obtain(&self) -> BoxFuture<'_, Result<Issued, GrantError>> {
        Box::pin(async move {
            let config = &self.oauth.config;
            let file = config.subject_token.as_ref().ok_or_else(|| {
                GrantError::Config("token_exchange needs SUBJECT_TOKEN_FILE".into())
            })?;
            let subject = file
                .reread()
                .map_err(|e| GrantError::Config(e.to_string()))?;
            let endpoints = self.oauth.endpoints().await?;
            let mut params = vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange".to_string(),
                ),
                ("subject_token", subject.expose().to_string()),
                ("subject_token_type", config.subject_token_type.clone()),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:access_token".to_string(),
                ),
            ];
            if let Some(scope) = self.oauth.scope(&endpoints) {
                params.push(("scope", scope));
            }
            self.oauth.token_request(&endpoints, params).await
        })
    }

    fn origin(&self) -> Option<String> {
        self.oauth
            .config
            .subject_token
            .as_ref()
            .map(|f| format!("subject token file {}", f.path().display()))
    }
}
