//! `AUTH=bearer`: a static token from `TOKEN`, or from `TOKEN_FILE`, re-read whenever the file
//! changes and once more after the upstream rejects it. This is how an external rotator (a
//! Kubernetes secret, vault-agent, a cron job) hands the sidecar fresh tokens without a restart.

use std::sync::Mutex;
use std::time::SystemTime;

use super::{AccessToken, BoxFuture, TokenError, TokenSource, TokenStatus};
use crate::secret::SecretSource;

pub struct BearerSource {
    source: SecretSource,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_obtained: Option<SystemTime>,
    refreshes: u64,
    last_error: Option<String>,
}

impl BearerSource {
    pub fn new(source: SecretSource) -> Self {
        Self {
            source,
            state: Mutex::new(State::default()),
        }
    }

    fn record(
        &self,
        result: Result<crate::secret::Secret, crate::secret::SecretError>,
        refresh: bool,
    ) -> Result<Option<AccessToken>, TokenError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if refresh {
            state.refreshes += 1;
        }
        match result {
            Ok(secret) => {
                state.last_obtained = Some(SystemTime::now());
                state.last_error = None;
                Ok(Some(AccessToken::new(secret)))
            }
            Err(e) => {
                state.last_error = Some(e.to_string());
                Err(e.into())
            }
        }
    }
}

impl TokenSource for BearerSource {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(std::future::ready(self.record(self.source.read(), false)))
    }

    fn refresh<'a>(
        &'a self,
        _rejected: Option<&'a AccessToken>,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
        // Re-reading a file is idempotent and cheap, so concurrent rejections need no
        // coordination here: each one sees the newest file content.
        Box::pin(std::future::ready(self.record(self.source.reread(), true)))
    }

    fn status(&self) -> TokenStatus {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        TokenStatus {
            source: "bearer",
            origin: Some(match &self.source {
                SecretSource::Inline(_) => "inline".into(),
                SecretSource::File(f) => format!("file {}", f.path().display()),
            }),
            last_obtained: state.last_obtained.map(crate::time::rfc3339),
            refreshes: state.refreshes,
            last_error: state.last_error.clone(),
            ..TokenStatus::basic("bearer")
        }
    }
}
