//! `AUTH=none`: the upstream needs no credential; the sidecar still adds readiness, Host/Origin
//! protection and well-behaved errors in front of it.

use super::{AccessToken, BoxFuture, TokenError, TokenSource, TokenStatus};

pub struct NoAuth;

impl TokenSource for NoAuth {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn refresh<'a>(
        &'a self,
        _rejected: Option<&'a AccessToken>,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn status(&self) -> TokenStatus {
        TokenStatus::basic("none")
    }
}
