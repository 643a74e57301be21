//! Where a credential's state persists: the state directory (one node, a file lock) or the
//! fleet store (Redis, a lock across every sidecar sharing it). The manager sees one interface,
//! so the single-flight rule (lock, read again, refresh, write, unlock) is written once.

#[cfg(feature = "fleet")]
use std::sync::Arc;

use serde::Serialize;

#[cfg(feature = "fleet")]
use super::fleet::{Acquired, FleetError, FleetLock, FleetStore};
use super::store::{Locked, Persisted, Store, StoreError};

/// What `/status` shows of the store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub kind: &'static str,
    /// Without a password.
    pub url: String,
    /// `None` until the first command.
    pub healthy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Who holds the refresh lock, when last seen (`host/pid N`), or `this sidecar`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<String>,
    /// This sidecar's name in the lock.
    pub identity: String,
}

/// Why the state could not be read or written. The store's own error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
    #[error("the state file task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[cfg(feature = "fleet")]
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.into())
    }
}

impl StateError {
    /// The shared store is unreachable: no refresh may run (it would not be single-flight).
    pub fn is_outage(&self) -> bool {
        #[cfg(feature = "fleet")]
        if let Self::Fleet(e) = self {
            return e.is_outage();
        }
        false
    }
}

#[derive(Debug, Clone)]
pub enum StateStore {
    Dir(Store),
    #[cfg(feature = "fleet")]
    Fleet(Arc<FleetStore>),
}

/// Held while a refresh runs; dropping it releases the lock.
pub enum StateLock {
    #[allow(dead_code, reason = "held for its Drop, which releases the lock")]
    File(Locked),
    #[cfg(feature = "fleet")]
    #[allow(dead_code, reason = "held for its Drop, which releases the lock")]
    Fleet(FleetLock),
}

impl StateStore {
    /// Shared by sidecars that do not share a volume: its outage stops refreshes.
    pub fn is_fleet(&self) -> bool {
        !matches!(self, Self::Dir(_))
    }

    /// The state file's path, or the Redis URL and key.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(store) => store.path().display().to_string(),
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => fleet.describe(),
        }
    }

    pub fn status(&self) -> Option<StoreStatus> {
        match self {
            Self::Dir(_) => None,
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Some(fleet.status()),
        }
    }

    /// The stored state (the state file is read on the blocking pool).
    pub async fn load(&self) -> Result<Option<Persisted>, StateError> {
        match self {
            Self::Dir(store) => {
                let store = store.clone();
                Ok(tokio::task::spawn_blocking(move || store.load()).await??)
            }
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Ok(fleet.load().await?),
        }
    }

    /// Replaces the stored state; callers hold [`StateStore::lock`].
    pub async fn save(&self, state: Persisted) -> Result<(), StateError> {
        match self {
            Self::Dir(store) => {
                let store = store.clone();
                Ok(tokio::task::spawn_blocking(move || store.save(&state)).await??)
            }
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Ok(fleet.save(&state).await?),
        }
    }

    /// Takes the lock. `Ok(None)`: while waiting for it, the fleet store's state changed (the
    /// holder's result); read it again, and ask again only if it does not do.
    pub async fn lock(&self) -> Result<Option<StateLock>, StateError> {
        match self {
            Self::Dir(store) => Ok(Some(StateLock::File(store.lock().await?))),
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Ok(match fleet.lock().await? {
                Acquired::Lock(lock) => Some(StateLock::Fleet(lock)),
                Acquired::Changed => None,
            }),
        }
    }
}
