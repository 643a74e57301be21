//! Credentials for the upstream: one [`TokenSource`] abstraction, one provider per file.
//!
//! The proxy and the readiness checker only ever ask a source for the token to send
//! ([`TokenSource::token`]) and, when the upstream rejects it, for a different one
//! ([`TokenSource::refresh`]). How a token is obtained (a static value, a rotated file, an OAuth
//! grant with its own expiry and single-flight refresh) stays behind this trait, so new sources
//! slot in without touching the proxy.

mod authorization_code;
mod bearer;
mod client_credentials;
mod command;
mod device_code;
pub mod discovery;
pub mod endpoint;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod manager;
mod none;
mod on_disk;
mod refresh;
pub mod state;
pub mod store;
mod token_exchange;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

pub use authorization_code::AuthorizationCode;
pub use bearer::BearerSource;
pub use manager::Manager;
pub use none::NoAuth;

use crate::config::{AuthConfig, GrantKind, UpstreamConfig};
use crate::secret::{Secret, SecretError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A token to send upstream as `Authorization: Bearer ...`, with that header value built once
/// when the token is obtained: every request clones the prebuilt value (a reference count)
/// instead of formatting `Bearer ...` anew. Cloning the token is a reference count too.
///
/// The header value is marked sensitive (HTTP/2 never indexes it; `Debug` of the value prints
/// `Sensitive`) and is held only here, so it is never logged: this type's `Debug` prints neither.
#[derive(Clone)]
pub struct AccessToken(Arc<Held>);

struct Held {
    secret: Secret,
    /// `None` when the token has characters a header cannot carry (a line break in a token file):
    /// reported at use, as [`TokenError::NotAHeaderValue`], not when the token is obtained.
    authorization: Option<http::HeaderValue>,
}

impl AccessToken {
    pub fn new(secret: Secret) -> Self {
        let authorization = bearer_header(&secret);
        Self(Arc::new(Held {
            secret,
            authorization,
        }))
    }

    pub fn secret(&self) -> &Secret {
        &self.0.secret
    }

    /// `Authorization: Bearer <token>`, sensitive, ready to insert into a request.
    pub fn authorization(&self) -> Result<http::HeaderValue, TokenError> {
        self.0
            .authorization
            .clone()
            .ok_or(TokenError::NotAHeaderValue)
    }
}

fn bearer_header(secret: &Secret) -> Option<http::HeaderValue> {
    let value = crate::headers::bearer(secret.expose())?;
    // `Bytes` from a `Vec` moves to a shared allocation on its first clone; clone once here so
    // that the requests' clones only count references (tests/alloc.rs checks this).
    drop(value.clone());
    Some(value)
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.secret == other.0.secret
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Why no token could be had. Messages name the key or file, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The credential is missing or unusable until someone fixes it: reported as `auth_required`.
    #[error(transparent)]
    Unavailable(#[from] SecretError),
    /// The authorization server rejected the credential, or a login is pending: `auth_required`.
    #[error("{0}")]
    AuthRequired(String),
    /// The authorization server (or token command) failed in a way that may pass.
    #[error("{0}")]
    Temporary(String),
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
    /// When the current token expires (RFC 3339), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the next refresh is due (expiry minus `REFRESH_SKEW`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<String>,
    /// When a token was last requested, and how that went (`ok` or `failed: ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    /// Whether a refresh token is held (OAuth sources only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_refresh_token: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The state file, or `memory only`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persisted_in: Option<String>,
    /// The shared store (`STATE_STORE`): its health and the refresh lock's holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<state::StoreStatus>,
}

impl TokenStatus {
    /// A status with only the source's name and counters; sources fill in what they know.
    pub fn basic(source: &'static str) -> Self {
        Self {
            source,
            origin: None,
            last_obtained: None,
            refreshes: 0,
            last_error: None,
            expires_at: None,
            next_refresh: None,
            last_refresh: None,
            last_outcome: None,
            has_refresh_token: None,
            scope: None,
            persisted_in: None,
            store: None,
        }
    }
}

/// A pending interactive login, shown in `/ready` so a person can complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Login {
    pub verification_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl Login {
    /// One line for `/ready`'s detail and logs.
    pub fn describe(&self) -> String {
        match &self.user_code {
            Some(code) => format!("log in at {} with code {code}", self.verification_uri),
            None => format!("log in at {}", self.verification_uri),
        }
    }
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

    /// The upstream accepted `token`, which [`TokenSource::refresh`] returned after a
    /// rejection: it works, so a later rejection of it may force a refresh again.
    fn accepted(&self, _token: &AccessToken) {}

    /// The upstream answered 403 `insufficient_scope` naming `scope`: return a token with those
    /// scopes added, or `None` when the source cannot (or already tried).
    fn step_up<'a>(
        &'a self,
        _rejected: Option<&'a AccessToken>,
        _scope: &'a str,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// A login a person must complete, while one is pending.
    fn login(&self) -> Option<Login> {
        None
    }

    /// Starts background work (refresh ahead of expiry); called once the runtime runs.
    fn start(self: Arc<Self>) {}

    /// Changes whenever a token is obtained or an attempt fails, so readiness can look again at
    /// once instead of at its next interval. `None` for sources that never change on their own.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    fn status(&self) -> TokenStatus;
}

/// What [`build`] produces: the source, plus handles the HTTP routes and `login` need.
pub struct Built {
    pub source: Arc<dyn TokenSource>,
    pub manager: Option<Arc<Manager>>,
    /// Present with `AUTH=authorization_code`: serves `/oauth/login` and `/oauth/callback`.
    pub authorization: Option<Arc<AuthorizationCode>>,
}

/// Why [`build`] could not make the configured source.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `CA_FILE` could not be read or parsed (the message names the file).
    #[error("{0}")]
    TrustRoots(String),
    #[error("cannot build the authorization server's HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// `STATE_STORE` is set but cannot be used (the key, the certificates).
    #[cfg(feature = "fleet")]
    #[error("{0}")]
    Store(#[source] fleet::FleetError),
}

/// The state directory's store, or `None` (memory only) with a warning saying why.
fn open_dir_store(state_dir: &Path, name: &str, interactive: bool) -> Option<state::StateStore> {
    match store::Store::open(state_dir, name) {
        Ok(store) => Some(state::StateStore::Dir(store)),
        Err(e) => {
            tracing::warn!(
                state_dir = %state_dir.display(),
                error = %e,
                "STATE_DIR cannot be used: tokens are kept in memory only, so a restart needs a new token{}",
                if interactive { " and a new login" } else { "" }
            );
            None
        }
    }
}

/// Builds the source the configuration asks for. OAuth sources persist under `state_dir` when it
/// is writable and otherwise keep tokens in memory, which is said once here.
///
/// `name` is the upstream's (`default` in the single-upstream form): a named upstream's fleet
/// key includes it, so two upstreams with the same URL and client (two accounts, say) never
/// share a Redis entry or lock. On disk each has its own `state_dir` already.
pub fn build(
    upstream_name: &str,
    auth: AuthConfig,
    upstream: &UpstreamConfig,
    state_dir: &Path,
    fleet_store: Option<&crate::config::FleetStoreConfig>,
) -> Result<Built, BuildError> {
    let simple = |source: Arc<dyn TokenSource>| Built {
        source,
        manager: None,
        authorization: None,
    };
    let (parts, authorization) = match auth {
        AuthConfig::None => return Ok(simple(Arc::new(NoAuth))),
        AuthConfig::Bearer(source) => return Ok(simple(Arc::new(BearerSource::new(source)))),
        AuthConfig::Command(config) => {
            let skew = config.refresh_skew;
            (
                manager::Parts {
                    name: "command",
                    kind: None,
                    grant: Box::new(command::Command { config }),
                    interactive: None,
                    oauth: None,
                    store: None,
                    seed: None,
                    skew,
                },
                None,
            )
        }
        AuthConfig::OAuth(config) => {
            let config: Arc<crate::config::OAuthConfig> = Arc::from(config);
            // No idle connections are kept for the authorization server. Token requests are rare
            // (one per token lifetime), so a pooled connection has almost always sat idle longer
            // than the server keeps it (Node closes after 5 s, many gateways after 60 s); a
            // refresh sent on one the server is closing fails after it may have reached the
            // server, and cannot be retried safely, because that would spend a rotating refresh
            // token twice. A new connection per request costs a handshake a few times an hour.
            let http = crate::net::http_client_builder(
                &upstream.client_settings(),
                reqwest::redirect::Policy::none(),
            )
            .map_err(BuildError::TrustRoots)?
            .pool_max_idle_per_host(0)
            .build()
            .map_err(BuildError::HttpClient)?;
            let oauth = Arc::new(endpoint::OAuthClient::new(
                http,
                config.clone(),
                upstream.url.clone(),
            ));
            let name = config.grant.name();
            let anchor = config
                .token_url
                .as_ref()
                .or(config.issuer.as_ref())
                .map(|u| u.to_string())
                .unwrap_or_else(|| crate::net::display_url(&upstream.url));
            let client_id = config.client_id.as_deref().unwrap_or("");
            let store = match fleet_store {
                // Keyed by upstream too: unrelated sidecars can share one Redis safely.
                #[cfg(feature = "fleet")]
                Some(fleet_config) => {
                    let upstream_shown = crate::net::display_url(&upstream.url);
                    // `default` keeps the key sidecars used before named upstreams existed.
                    let upstream_shown = if upstream_name == crate::config::DEFAULT_UPSTREAM {
                        upstream_shown
                    } else {
                        format!("{upstream_name}\n{upstream_shown}")
                    };
                    let fleet_name =
                        store::state_name(name, &format!("{upstream_shown}\n{anchor}"), client_id);
                    Some(state::StateStore::Fleet(Arc::new(
                        fleet::FleetStore::open(fleet_config, &fleet_name)
                            .map_err(BuildError::Store)?,
                    )))
                }
                // Without the feature, configuration refuses STATE_STORE (config/store.rs).
                #[cfg(not(feature = "fleet"))]
                Some(_) => {
                    let _ = upstream_name;
                    None
                }
                None => open_dir_store(
                    state_dir,
                    &store::state_name(name, &anchor, client_id),
                    config.grant.is_interactive(),
                ),
            };
            let mut authorization = None;
            let (grant, interactive): (
                Box<dyn manager::Grant>,
                Option<Arc<dyn manager::Interactive>>,
            ) = match config.grant {
                GrantKind::ClientCredentials => (
                    Box::new(client_credentials::ClientCredentials {
                        oauth: oauth.clone(),
                    }),
                    None,
                ),
                GrantKind::TokenExchange => (
                    Box::new(token_exchange::TokenExchange {
                        oauth: oauth.clone(),
                    }),
                    None,
                ),
                GrantKind::RefreshToken => (
                    Box::new(refresh::RefreshOnly {
                        oauth: oauth.clone(),
                    }),
                    None,
                ),
                GrantKind::DeviceCode => (
                    Box::new(refresh::RefreshOnly {
                        oauth: oauth.clone(),
                    }),
                    Some(Arc::new(device_code::DeviceCode {
                        oauth: oauth.clone(),
                    })),
                ),
                GrantKind::AuthorizationCode => {
                    let grant = Arc::new(AuthorizationCode::new(oauth.clone()));
                    authorization = Some(grant.clone());
                    (
                        Box::new(refresh::RefreshOnly {
                            oauth: oauth.clone(),
                        }),
                        Some(grant as Arc<dyn manager::Interactive>),
                    )
                }
            };
            (
                manager::Parts {
                    name,
                    kind: Some(config.grant),
                    grant,
                    interactive,
                    oauth: Some(oauth),
                    store,
                    seed: config.refresh_token.clone(),
                    skew: config.refresh_skew,
                },
                authorization,
            )
        }
    };
    let manager = Manager::new(parts);
    Ok(Built {
        source: manager.clone(),
        manager: Some(manager),
        authorization,
    })
}

#[cfg(test)]
mod access_token_tests {
    use super::*;

    #[test]
    fn the_authorization_holder_is_sensitive_and_redacted() {
        let canary = format!("{}+/=&{}", "s".repeat(150), "q".repeat(60));
        let token = AccessToken::new(Secret::new(canary.clone()));
        let header = token.authorization().unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.as_bytes(), format!("Bearer {canary}").as_bytes());
        for shown in [
            format!("{token:?}"),
            format!("{token:#?}"),
            format!("{header:?}"),
            format!("{:?}", Some(token.clone())),
        ] {
            assert!(!shown.contains(&canary[..20]), "{shown}");
        }
        assert_eq!(token, AccessToken::new(Secret::new(canary)));
        let line_break = AccessToken::new(Secret::new("abc\ndef-canary"));
        assert!(matches!(
            line_break.authorization(),
            Err(TokenError::NotAHeaderValue)
        ));
    }
}
