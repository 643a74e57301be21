//! `AUTH=client_credentials` (RFC 6749 section 4.4): a confidential client gets tokens for
//! itself, authenticating with a client secret (basic or post) or a signed JWT assertion
//! (`private_key_jwt`, RFC 7523). Nothing is persisted but the token: a new one costs one request.

use std::sync::Arc;

use super::BoxFuture;
use super::endpoint::{GrantError, Issued, OAuthClient};
use super::manager::Grant;

pub struct ClientCredentials {
    pub oauth: Arc<OAuthClient>,
}

impl Grant for ClientCredentials {
    fn obtain(&self) -> BoxFuture<'_, Result<Issued, GrantError>> {
        Box::pin(async move {
            let endpoints = self.oauth.endpoints().await?;
            let mut params = vec![("grant_type", "client_credentials".to_string())];
            if let Some(scope) = self.oauth.scope(&endpoints) {
                params.push(("scope", scope));
            }
            self.oauth.token_request(&endpoints, params).await
        })
    }

    fn origin(&self) -> Option<String> {
        let config = &self.oauth.config;
        config
            .client_id
            .as_ref()
            .map(|id| format!("client {id} ({})", config.client_auth.name()))
    }
}
