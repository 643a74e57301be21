//! Where a credential's state persists: the state directory (one node, a file lock) or the
//! fleet store (Redis, a lock across every sidecar sharing it). The manager sees one interface,
//! so the single-flight rule (lock, read again, refresh, write, unlock) is written once.

use std::sync::Arc;

use super::fleet::{FleetError, FleetLock, FleetStore, StoreStatus};
use super::store::{Locked, Persisted, Store, StoreError};

/// Why the state could not be read or written. The store's own error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
    #[error("the state file task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
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
        matches!(self, Self::Fleet(e) if e.is_outage())
    }
}

#[derive(Debug, Clone)]
pub enum StateStore {
    Dir(Store),
    Fleet(Arc<FleetStore>),
}

/// Held while a refresh runs; dropping it releases the lock.
pub enum StateLock {
    #[allow(dead_code, reason = "held for its Drop, which releases the lock")]
    File(Locked),
    #[allow(dead_code, reason = "held for its Drop, which releases the lock")]
    Fleet(FleetLock),
}

impl StateStore {
    /// Shared by sidecars that do not share a volume: its outage stops refreshes.
    pub fn is_fleet(&self) -> bool {
        matches!(self, Self::Fleet(_))
    }

    /// The state file's path, or the Redis URL and key.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(store) => store.path().display().to_string(),
            Self::Fleet(fleet) => fleet.describe(),
        }
    }

    pub fn status(&self) -> Option<StoreStatus> {
        match self {
            Self::Dir(_) => None,
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
            Self::Fleet(fleet) => Ok(fleet.save(&state).await?),
        }
    }

    pub async fn lock(&self) -> Result<StateLock, StateError> {
        match self {
            Self::Dir(store) => Ok(StateLock::File(store.lock().await?)),
            Self::Fleet(fleet) => Ok(StateLock::Fleet(fleet.lock().await?)),
        }
    }
}
