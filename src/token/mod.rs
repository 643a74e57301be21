//! Credentials for the upstream: one [`TokenSource`] abstraction, one provider per file.
//!
//! The proxy and the readiness checker only ever ask a source for the token to send
//! ([`TokenSource::token`]) and, when the upstream rejects it, for a different one
//! ([`TokenSource::refresh`]). How a token is obtained (a static value, a rotated file, an OAuth
//! grant with its own expiry and single-flight refresh) stays behind this trait, so new sources
//! slot in without touching the proxy.

mod bearer;
mod none;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

pub use bearer::BearerSource;
pub use none::NoAuth;

use crate::config::AuthConfig;
use crate::secret::{Secret, SecretError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A token to send upstream as `Authorization: Bearer ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessToken(Secret);

impl AccessToken {
    pub fn new(secret: Secret) -> Self {
        Self(secret)
    }

    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

/// Why no token could be had. Messages name the key or file, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The credential is missing or unusable until someone fixes it: reported as `auth_required`.
    #[error(transparent)]
    Unavailable(#[from] SecretError),
    /// The credential has characters (a line break, a control character) that HTTP headers
    /// cannot carry; usually a token file with stray content.
    #[error("the token contains characters that cannot be sent in an HTTP header")]
    NotAHeaderValue,
}

/// What `/status` shows about the credential. Never contains a secret.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    /// `none`, `bearer`, ...
    pub source: &'static str,
    /// Where the value comes from: `inline`, `file /run/secrets/token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When a token was last obtained (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_obtained: Option<String>,
    /// How many times the upstream rejected a token and a fresh one was asked for.
    pub refreshes: u64,
    /// The last failure to obtain a token, if the most recent attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub trait TokenSource: Send + Sync {
    /// The token for the next upstream request, or `None` when the upstream needs no credential.
    /// Called on every request: must be cheap when nothing changed.
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>>;

    /// The upstream rejected `rejected`: return a token obtained anew (re-read, refreshed). When
    /// several requests fail at once, implementations do the work once.
    fn refresh<'a>(
        &'a self,
        rejected: Option<&'a AccessToken>,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>>;

    fn status(&self) -> TokenStatus;
}

/// Builds the source the configuration asks for.
pub fn from_config(auth: AuthConfig) -> Arc<dyn TokenSource> {
    match auth {
        AuthConfig::None => Arc::new(NoAuth),
        AuthConfig::Bearer(source) => Arc::new(BearerSource::new(source)),
    }
}
