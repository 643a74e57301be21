//! Where a credential's state persists: the state directory (one node, a file lock) or the
//! fleet store (Redis, a lock across every sidecar sharing it). The manager sees one interface,
//! so the single-flight rule (lock, read again, refresh, write, unlock) is written once.

#[cfg(feature = "fleet")]
use std::sync::Arc;

use std::time::Duration;

use serde::Serialize;

#[cfg(feature = "fleet")]
use super::fleet::{Acquired, FleetError, FleetLock, FleetStore};
use super::store::{Locked, Persisted, Store, StoreError};

/// How often every sidecar reads a fleet store even when no refresh is due: so that a store
/// that lost its data is noticed (and re-seeded) within this, and so that each sidecar holds the
/// newest state when that happens (see the fleet module). Four small reads a second per sidecar.
pub const STORE_CHECK: Duration = Duration::from_millis(500);

/// How long a re-seeded entry stands before its refresh token is spent: three checks, so every
/// live sidecar holding a newer state has read the entry and replaced it by then.
pub const SEED_SETTLE: Duration = Duration::from_millis(1500);

/// Whether a waiter may take the fleet lock over from a holder that keeps it (see the fleet
/// module), given how long that holder has been seen to keep it: a duplicate token request is
/// harmless and the waiter's own token can no longer be sent.
pub type TakeOver<'a> = &'a (dyn Fn(Duration) -> bool + Sync);

/// How long one holder may keep the lock before a waiter whose token can no longer be sent takes
/// it over, for a grant a duplicate request cannot hurt (at most; half the waiter's token's
/// remaining life when that is shorter, so the new token comes before the old one expires). A
/// live holder's token request takes far less; a dead holder's lock would otherwise stand for the
/// whole `STATE_LOCK_TTL`.
pub const TAKE_OVER_AFTER: Duration = Duration::from_secs(1);

/// The least a holder is seen to keep the lock before it is taken over, however little is left of
/// the waiter's token: a live holder's token request takes some time, and a waiter whose token
/// has already expired (half of nothing left is nothing) would otherwise take every lock over
/// the moment it saw it, live holder or not.
pub const TAKE_OVER_FLOOR: Duration = Duration::from_millis(250);

/// How long a waiter lets the same holder keep the lock before taking it over, with `left` of its
/// own token remaining (see [`TAKE_OVER_AFTER`] and [`TAKE_OVER_FLOOR`]).
pub fn take_over_after(left: Duration) -> Duration {
    TAKE_OVER_AFTER.min(left / 2).max(TAKE_OVER_FLOOR)
}

/// The highest generation a stored state may carry (2^48). Each generation is one token
/// replacement: a credential rotated every second for eight million years stays below it. A
/// higher one is not a count of anything; the entry is refused as damaged rather than adopted,
/// since counting on from it would make every later state look older than it.
pub const MAX_GENERATION: u64 = 1 << 48;

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
    #[error(
        "the stored state at {at} has generation {generation}, more than any real count of token replacements ({MAX_GENERATION}); it is refused as damaged (delete it to start over)"
    )]
    Generation { at: String, generation: u64 },
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
    Fleet(FleetLock),
}

impl StateLock {
    /// Whether this lock was taken over from a holder that kept it (see `FleetStore::lock`):
    /// that holder may still be spending what it read, so no refresh token is spent under it.
    pub fn by_take_over(&self) -> bool {
        match self {
            Self::File(_) => false,
            #[cfg(feature = "fleet")]
            Self::Fleet(lock) => lock.by_take_over(),
        }
    }

    /// Whether another sidecar holds the lock now (it took this one over, or took it after it
    /// expired): its result, not this holder's, is the fleet's. A store that cannot be reached
    /// says no: the write that follows is a compare-and-set anyway.
    pub async fn taken_over(&self) -> bool {
        match self {
            Self::File(_) => false,
            #[cfg(feature = "fleet")]
            Self::Fleet(lock) => lock.taken_over().await.unwrap_or(false),
        }
    }
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

    /// The stored state (the state file is read on the blocking pool). A state whose
    /// generation is beyond [`MAX_GENERATION`] is an error, never a state.
    pub async fn load(&self) -> Result<Option<Persisted>, StateError> {
        let loaded = match self {
            Self::Dir(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.load()).await??
            }
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => fleet.load().await?,
        };
        self.checked(loaded)
    }

    /// `persisted` unless its generation is beyond [`MAX_GENERATION`].
    pub fn checked(&self, persisted: Option<Persisted>) -> Result<Option<Persisted>, StateError> {
        match persisted {
            Some(p) if p.generation > MAX_GENERATION => Err(StateError::Generation {
                at: self.describe(),
                generation: p.generation,
            }),
            other => Ok(other),
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
    /// holder's result); read it again, and ask again only if it does not do. `may_take_over`:
    /// see `FleetStore::lock` (the state directory's lock is the kernel's, released when its
    /// holder dies, so it has no such case).
    pub async fn lock(
        &self,
        #[cfg_attr(not(feature = "fleet"), allow(unused_variables))] may_take_over: TakeOver<'_>,
    ) -> Result<Option<StateLock>, StateError> {
        match self {
            Self::Dir(store) => Ok(Some(StateLock::File(store.lock().await?))),
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Ok(match fleet.lock(may_take_over).await? {
                Acquired::Lock(lock) => Some(StateLock::Fleet(lock)),
                Acquired::Changed => None,
            }),
        }
    }

    /// Writes the state a refresh (or a login) produced; callers hold [`StateStore::lock`]. The
    /// fleet store is written only where it still holds what the last `load` (or this
    /// sidecar's last write) left there: `Ok(false)` when another sidecar wrote meanwhile (one
    /// that took the lock over from this one, or took it after it expired), whose state must
    /// then be read, not overwritten. The state directory's lock cannot be lost this way:
    /// plainly saved.
    pub async fn save_unless_changed(&self, state: Persisted) -> Result<bool, StateError> {
        match self {
            Self::Dir(_) => self.save(state).await.map(|()| true),
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Ok(fleet
                .put_if_unchanged(&state, fleet.last_seen().as_deref())
                .await?),
        }
    }

    /// Puts `state` back into a fleet store that lost it, or over an older state there (see
    /// [`super::fleet`]): only where the store still holds what the last `load` found.
    /// `Ok(false)`: another sidecar wrote first. The state directory is not shared this way:
    /// plainly saved.
    pub async fn reseed(&self, state: Persisted) -> Result<bool, StateError> {
        self.save_unless_changed(state).await
    }

    /// Refreshes what `/status` shows of the lock (fleet store only).
    pub async fn check_lock(&self) -> Result<(), StateError> {
        match self {
            Self::Dir(_) => Ok(()),
            #[cfg(feature = "fleet")]
            Self::Fleet(fleet) => Ok(fleet.check_lock().await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_taken_over_after_a_second_or_half_the_token_left_but_never_under_the_floor() {
        assert_eq!(take_over_after(Duration::from_secs(60)), TAKE_OVER_AFTER);
        assert_eq!(
            take_over_after(Duration::from_millis(1200)),
            Duration::from_millis(600)
        );
        // A waiter whose token has (almost) expired still lets a live holder's request run.
        assert_eq!(take_over_after(Duration::from_millis(300)), TAKE_OVER_FLOOR);
        assert_eq!(take_over_after(Duration::ZERO), TAKE_OVER_FLOOR);
    }
}
