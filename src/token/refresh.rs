//! The refresh-token grant (RFC 6749 section 6), shared by every OAuth source that holds one,
//! and `AUTH=refresh_token`: a source seeded with a refresh token (`REFRESH_TOKEN(_FILE)`, or the
//! one persisted in `STATE_DIR`) that has no other way to get tokens.

use std::sync::Arc;

use super::BoxFuture;
use super::endpoint::{GrantError, Issued, OAuthClient};
use super::manager::Grant;
use crate::secret::Secret;

/// Spends `refresh_token` for a new access token. No `scope` is sent: the refresh keeps the
/// scopes granted (RFC 6749 section 6 allows no widening, and servers refuse it).
pub async fn refresh(oauth: &OAuthClient, refresh_token: &Secret) -> Result<Issued, GrantError> {
    let endpoints = oauth.endpoints().await?;
    let params = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh_token.expose().to_string()),
    ];
    oauth.token_request(&endpoints, params).await
}

/// `AUTH=refresh_token`: everything happens in the manager's refresh path; when that token is
/// gone there is nothing else to try.
pub struct RefreshOnly {
    pub oauth: Arc<OAuthClient>,
}

impl Grant for RefreshOnly {
    fn obtain(&self) -> BoxFuture<'_, Result<Issued, GrantError>> {
        Box::pin(std::future::ready(Err(GrantError::Rejected(
            "no refresh token is held; seed one with REFRESH_TOKEN_FILE or `mcp-sidecar login`"
                .into(),
        ))))
    }

    fn origin(&self) -> Option<String> {
        self.oauth
            .config
            .client_id
            .as_ref()
            .map(|id| format!("client {id}"))
    }
}
