//! The fleet store: one credential's state in Redis (or Valkey), shared by every sidecar that
//! is configured with the same upstream, issuer and client, and the lock that makes their
//! refreshes single-flight across the fleet.
//!
//! - The lock is `SET lock NX PX ttl` with a random value per acquisition, released by a Lua
//!   compare-and-delete, so a holder whose lock already expired cannot delete the next holder's.
//!   A holder that dies costs the others at most one lock expiry (`STATE_LOCK_TTL`).
//! - Waiters poll for the lock; whoever gets it reads the state again before asking the token
//!   endpoint, so the waiters adopt the holder's result instead of spending the refresh token
//!   it already spent.
//! - Entries are sealed with `STATE_KEY_FILE` (see [`crate::seal`]): Redis is shared
//!   infrastructure and must not hold a refresh token in clear.
//! - Every error is scrubbed of known secrets before it is kept or shown: a Redis error may quote
//!   the URL it was given.
//!
//! - A waiter for a credential whose duplicate request is harmless (client credentials, token
//!   exchange: nothing is rotated) does not sit out a lock expiry when its own token can no
//!   longer be sent: once the same holder has kept the lock for
//!   [`TAKE_OVER_AFTER`](super::state::TAKE_OVER_AFTER) (or half what is left of the waiter's
//!   token, when that is less, but never less than
//!   [`TAKE_OVER_FLOOR`](super::state::TAKE_OVER_FLOOR)), it takes the lock over
//!   (compare-and-set on the holder's value, so one waiter wins and the others keep waiting for
//!   its result). A rotating refresh token never does this: a holder that is only slow would
//!   spend it too; and no refresh token is spent under a lock taken over. The holder it was
//!   taken from, once its token request returns, sees that another sidecar holds the lock
//!   ([`FleetLock::taken_over`]) and neither installs nor writes its result (unless it carries
//!   a new refresh token, the only copy of which must not be lost); and every write of a
//!   result is a compare-and-set on what was read under the lock, so a holder that lost the lock
//!   never overwrites the state written by the one that took it, but reads it.
//!
//! ## Re-seeding a store that lost its data
//!
//! A Redis without persistence that restarts comes back empty, and every sidecar still holds
//! a state in memory. Which of them holds the newest refresh token? No sidecar can prove it on
//! its own: the last one to rotate holds the newest only until the next rotation, which another
//! sidecar may have made after this one last looked. What does hold:
//!
//! - every rotation is written to the store before any other sidecar can spend the token it
//!   produced (they read it from the store, under the lock), and each write carries a
//!   generation one higher than the state it replaced;
//! - every sidecar reads the store every [`STORE_CHECK`](super::state::STORE_CHECK) and adopts a higher generation, never
//!   a lower one.
//!
//! So the highest generation any live sidecar holds is the newest state that survived (held by
//! the last rotator and by everyone who has read its write since); a sidecar that missed a
//! rotation holds a lower one. After a loss each sidecar offers what it holds (`SET NX`, so it
//! never overwrites what another wrote), one holding a higher generation than the stored one
//! replaces it (compare-and-set on the exact bytes it read, never the other way round), and
//! nobody spends the refresh token of a re-seeded entry until it has stood for
//! [`SEED_SETTLE`](super::state::SEED_SETTLE) (three checks) on its own monotonic clock, from
//! when it first saw the entry (the time written in the entry comes from another host's clock,
//! or from an old entry replayed into the store): by then every live sidecar holding a newer
//! state and able to reach the store has put it there. A stale sidecar that happens to seed
//! first therefore costs a short wait, not the grant. A refresh waits for settling four
//! `SEED_SETTLE` at most, then fails as a temporary error: a store re-seeded again and again
//! does not hold it forever. The settling time is short on purpose: the refresh it holds back may be
//! due, and the held token expiring meanwhile costs calls a wait (or, for tokens of a few
//! seconds, a refused call and a retry). What cannot be recovered is a rotation whose only
//! holder died with the store (or between the authorization server's answer and the write): see
//! the README.
//!
//! Generations are ordered by one rule (`older` in the manager): a lower one is older, and an
//! entry from before generations (0) is adopted only by a sidecar that holds generation 0 too,
//! so an old sealed entry written back by anyone who can write to Redis never rolls a sidecar
//! back to a spent refresh token. A generation above 2^48 is refused as damaged.
//!
//! The connection is made on first use and dropped on any error, so a Redis that restarted is
//! reached again at the next call; nothing here retries a command on its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};

use super::state::StoreStatus;
use super::store::Persisted;
use crate::config::FleetStoreConfig;
use crate::seal::{SealError, Sealer};
use crate::secret::SecretSource;

/// Deletes the lock only if it still holds this acquisition's value.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Writes the entry only if it still holds the bytes read before (a newer state replacing an
/// older one, never a state another sidecar wrote meanwhile).
const REPLACE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2]) return 1 else return 0 end";

/// Takes the lock over from the holder whose value it still has.
const TAKE_OVER: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end";

/// How often a waiter asks for the lock again (with jitter, so waiters spread out).
const POLL: Duration = Duration::from_millis(100);

/// Why the fleet store could not be used. Never holds a secret: messages are scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the shared state store (Redis at {url}) is unreachable or failing: {message}")]
    Unavailable { url: String, message: String },
    #[error(
        "the fleet's refresh lock in Redis at {url} is still held by {holder} after {waited_secs} s"
    )]
    LockBusy {
        url: String,
        holder: String,
        waited_secs: u64,
    },
    #[error("the shared state entry {key} cannot be opened: {source}")]
    Sealed {
        key: String,
        #[source]
        source: SealError,
    },
    /// No source: the parser's message could quote the content.
    #[error("the shared state entry {key} is not state of this version; delete it to start over")]
    Damaged { key: String },
    #[error("cannot encode the state: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("STATE_STORE cannot be used: {0}")]
    Config(String),
}

impl FleetError {
    /// Redis could not be reached or answered with an error: the outage case of the README.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

#[derive(Default)]
struct Health {
    healthy: Option<bool>,
    last_error: Option<String>,
    lock_holder: Option<String>,
}

pub struct FleetStore {
    url: redis::ConnectionInfo,
    password: Option<SecretSource>,
    tls: Option<redis::TlsCertificates>,
    connection: AsyncConnectionConfig,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    state_key: String,
    lock_key: String,
    sealer: Sealer,
    lock_ttl: Duration,
    shown: String,
    identity: String,
    health: Mutex<Health>,
    /// The entry as last read, sealed: a waiter for the lock that sees it change adopts the new
    /// state instead of waiting its turn for a lock it no longer needs.
    last_seen: Mutex<Option<Vec<u8>>>,
}

/// What waiting for the lock ended with.
pub enum Acquired {
    Lock(FleetLock),
    /// Another sidecar stored a new state meanwhile: read it before asking for the lock again.
    Changed,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("url", &self.shown)
            .field("state_key", &self.state_key)
            .finish()
    }
}

/// Holds the fleet lock until dropped; the drop releases it (compare-and-delete) in the
/// background, and if that fails the lock expires on its own.
pub struct FleetLock {
    store: Arc<FleetStore>,
    value: String,
    /// Taken over from a holder that kept it (see [`FleetStore::lock`]).
    by_take_over: bool,
}

impl FleetLock {
    /// Whether this lock was taken over from another holder, which may still be at work.
    pub fn by_take_over(&self) -> bool {
        self.by_take_over
    }

    /// Whether another sidecar holds the lock now: it took this one over, or took it after it
    /// expired. Then that sidecar's result is the fleet's, and this holder's must not replace
    /// it. An expired lock that nobody took is not taken over.
    pub async fn taken_over(&self) -> Result<bool, FleetError> {
        let mut get = redis::cmd("GET");
        get.arg(&self.store.lock_key);
        let holder: Option<String> = self.store.query(&get).await?;
        Ok(holder.is_some_and(|h| h != self.value))
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        let store = self.store.clone();
        let value = std::mem::take(&mut self.value);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { store.release(&value).await });
        }
    }
}

impl FleetStore {
    /// Prepares the store for the state called `name` (nothing is connected yet: a Redis that
    /// is down at start must not stop the sidecar from serving). Fails on settings that can
    /// never work: the key, the certificates.
    pub fn open(config: &FleetStoreConfig, name: &str) -> Result<Self, FleetError> {
        let key_bytes = std::fs::read(&config.key_file).map_err(|e| {
            FleetError::Config(format!("STATE_KEY_FILE {}: {e}", config.key_file.display()))
        })?;
        let sealer = Sealer::from_file_bytes(&key_bytes).map_err(|source| FleetError::Sealed {
            key: config.key_file.display().to_string(),
            source,
        })?;
        let shown = config.display_url();
        let url = config
            .url
            .clone()
            .into_connection_info()
            .map_err(|e| FleetError::Config(format!("STATE_STORE {shown}: {}", clean(&e))))?;
        let read = |path: &Option<std::path::PathBuf>, key: &str| -> Result<_, FleetError> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .map_err(|e| FleetError::Config(format!("{key} {}: {e}", p.display())))
                })
                .transpose()
        };
        let tls = (config.url.scheme() == "rediss").then_some(()).map(|()| {
            Ok::<_, FleetError>(redis::TlsCertificates {
                client_tls: match (
                    read(&config.client_cert_file, "STATE_STORE_CLIENT_CERT_FILE")?,
                    read(&config.client_key_file, "STATE_STORE_CLIENT_KEY_FILE")?,
                ) {
                    (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                    _ => None,
                },
                root_cert: read(&config.ca_file, "STATE_STORE_CA_FILE")?,
            })
        });
        let tls = tls.transpose()?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        Ok(Self {
            url,
            password: config.password.clone(),
            tls,
            connection,
            conn: tokio::sync::Mutex::new(None),
            state_key: format!("mcp-sidecar:{name}:state"),
            lock_key: format!("mcp-sidecar:{name}:lock"),
            sealer,
            lock_ttl: config.lock_ttl,
            shown,
            identity: identity(),
            health: Mutex::new(Health::default()),
            last_seen: Mutex::new(None),
        })
    }

    pub fn describe(&self) -> String {
        format!("redis {} key {}", self.shown, self.state_key)
    }

    pub fn status(&self) -> StoreStatus {
        let health = self.health();
        StoreStatus {
            kind: "redis",
            url: self.shown.clone(),
            healthy: health.healthy,
            last_error: health.last_error.clone(),
            lock_holder: health.lock_holder.clone(),
            identity: self.identity.clone(),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connection(&self) -> Result<MultiplexedConnection, FleetError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let mut info = self.url.clone();
        if let Some(password) = &self.password {
            // Read at each connect: a mounted password file may have been rotated.
            let password = password.read().map_err(|e| self.outage(&e.to_string()))?;
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &self.tls {
            Some(tls) => redis::Client::build_with_tls(info, tls.clone()),
            None => redis::Client::open(info),
        }
        .map_err(|e| self.outage(&clean(&e)))?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await
            .map_err(|e| self.outage(&clean(&e)))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one command, keeping the health up to date and dropping the connection on failure.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, FleetError> {
        let mut conn = self.connection().await?;
        match cmd.query_async::<T>(&mut conn).await {
            Ok(value) => {
                let mut health = self.health();
                health.healthy = Some(true);
                health.last_error = None;
                Ok(value)
            }
            Err(e) => {
                *self.conn.lock().await = None;
                Err(self.outage(&clean(&e)))
            }
        }
    }

    fn outage(&self, message: &str) -> FleetError {
        let mut health = self.health();
        health.healthy = Some(false);
        health.last_error = Some(message.to_string());
        FleetError::Unavailable {
            url: self.shown.clone(),
            message: message.to_string(),
        }
    }

    /// The stored state; `Ok(None)` when there is none (a new fleet, or a Redis that restarted
    /// empty).
    pub async fn load(&self) -> Result<Option<Persisted>, FleetError> {
        let mut get = redis::cmd("GET");
        get.arg(&self.state_key);
        let sealed: Option<Vec<u8>> = self.query(&get).await?;
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&sealed);
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(&self.state_key, &sealed)
            .map_err(|source| FleetError::Sealed {
                key: self.state_key.clone(),
                source,
            })?;
        let state = serde_json::from_slice(&plain).map_err(|_| FleetError::Damaged {
            key: self.state_key.clone(),
        })?;
        Ok(Some(state))
    }

    /// Replaces the stored state. Callers hold the lock.
    pub async fn save(&self, state: &Persisted) -> Result<(), FleetError> {
        let sealed = self.seal(state)?;
        let mut set = redis::cmd("SET");
        set.arg(&self.state_key).arg(&sealed);
        self.query::<()>(&set).await?;
        self.remember(sealed.into_bytes());
        Ok(())
    }

    /// What this sidecar last read or wrote: the next compare-and-set expects it.
    fn remember(&self, sealed: Vec<u8>) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(sealed);
    }

    /// Writes `state` only where the store still holds `expected` (the sealed bytes of the last
    /// [`FleetStore::load`]; `None`: only where it holds nothing). `Ok(false)`: another sidecar
    /// wrote meanwhile, and its state stands.
    pub async fn put_if_unchanged(
        &self,
        state: &Persisted,
        expected: Option<&[u8]>,
    ) -> Result<bool, FleetError> {
        let sealed = self.seal(state)?;
        let written = match expected {
            None => {
                let mut set = redis::cmd("SET");
                set.arg(&self.state_key).arg(&sealed).arg("NX");
                let written: Option<String> = self.query(&set).await?;
                written.is_some()
            }
            Some(expected) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(REPLACE)
                    .arg(1)
                    .arg(&self.state_key)
                    .arg(expected)
                    .arg(&sealed);
                self.query::<i64>(&eval).await? == 1
            }
        };
        // The next compare-and-set of this sidecar expects what it wrote, not what it read
        // before (that would fail against its own write).
        if written {
            self.remember(sealed.into_bytes());
        }
        Ok(written)
    }

    /// The sealed bytes the last [`FleetStore::load`] found.
    pub fn last_seen(&self) -> Option<Vec<u8>> {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads who holds the lock now, for `/status`.
    pub async fn check_lock(&self) -> Result<(), FleetError> {
        let mut get = redis::cmd("GET");
        get.arg(&self.lock_key);
        let holder: Option<String> = self.query(&get).await?;
        let mine = format!("{} ", self.identity);
        self.health().lock_holder = holder.map(|h| {
            if h.starts_with(&mine) {
                "this sidecar".into()
            } else {
                shown_holder(&h)
            }
        });
        Ok(())
    }

    fn seal(&self, state: &Persisted) -> Result<String, FleetError> {
        let mut state = state.clone();
        state.version = super::store::VERSION;
        state.updated_at = super::store::to_unix(std::time::SystemTime::now());
        let plain = serde_json::to_vec(&state).map_err(FleetError::Encode)?;
        self.sealer
            .seal(&self.state_key, &plain)
            .map_err(|source| FleetError::Sealed {
                key: self.state_key.clone(),
                source,
            })
    }

    /// Takes the fleet lock, waiting while another sidecar holds it, at most one lock expiry
    /// and a little more (a holder that died has lost it by then). Ends early with
    /// [`Acquired::Changed`] when the stored state changes meanwhile (the holder's result).
    /// `may_take_over` is asked, with how long the current holder has been seen to keep the
    /// lock, whether to replace it (see [`TAKE_OVER_AFTER`](super::state::TAKE_OVER_AFTER)).
    pub async fn lock(
        self: &Arc<Self>,
        may_take_over: &(dyn Fn(Duration) -> bool + Sync),
    ) -> Result<Acquired, FleetError> {
        let value = format!("{} {}", self.identity, random_hex(12));
        let started = Instant::now();
        let deadline = started + self.lock_ttl + Duration::from_secs(2);
        let ttl_ms = u64::try_from(self.lock_ttl.as_millis()).unwrap_or(u64::MAX);
        // The holder's value and when this waiter first saw it.
        let mut seen: Option<(String, Instant)> = None;
        loop {
            let mut set = redis::cmd("SET");
            set.arg(&self.lock_key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms);
            let taken: Option<String> = self.query(&set).await?;
            if taken.is_some() {
                self.health().lock_holder = Some("this sidecar".into());
                return Ok(Acquired::Lock(FleetLock {
                    store: self.clone(),
                    value,
                    by_take_over: false,
                }));
            }
            let mut state = redis::cmd("GET");
            state.arg(&self.state_key);
            let stored: Option<Vec<u8>> = self.query(&state).await?;
            if stored != *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) {
                return Ok(Acquired::Changed);
            }
            let mut get = redis::cmd("GET");
            get.arg(&self.lock_key);
            let raw: Option<String> = self.query(&get).await?;
            if let Some(raw) = &raw {
                if seen.as_ref().is_none_or(|(v, _)| v != raw) {
                    seen = Some((raw.clone(), Instant::now()));
                }
                if let Some((_, since)) = &seen
                    && may_take_over(since.elapsed())
                {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(TAKE_OVER)
                        .arg(1)
                        .arg(&self.lock_key)
                        .arg(raw)
                        .arg(&value)
                        .arg(ttl_ms);
                    if self.query::<i64>(&eval).await? == 1 {
                        tracing::warn!(
                            holder = %shown_holder(raw),
                            held_ms = since.elapsed().as_millis() as u64,
                            "took the fleet lock over from a holder that kept it while this sidecar's token expired (a duplicate request is harmless for this grant)"
                        );
                        self.health().lock_holder = Some("this sidecar".into());
                        return Ok(Acquired::Lock(FleetLock {
                            store: self.clone(),
                            value,
                            by_take_over: true,
                        }));
                    }
                    // Another waiter took it over first, or the holder let go: a poll interval
                    // before asking again, as for any busy lock, never a loop against Redis.
                }
            }
            let holder = raw.map(|h| shown_holder(&h));
            if let Some(holder) = &holder {
                self.health().lock_holder = Some(holder.clone());
            }
            if Instant::now() >= deadline {
                return Err(FleetError::LockBusy {
                    url: self.shown.clone(),
                    holder: holder.unwrap_or_else(|| "nobody (just released)".into()),
                    waited_secs: started.elapsed().as_secs(),
                });
            }
            tokio::time::sleep(jitter(POLL)).await;
        }
    }

    async fn release(&self, value: &str) {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE).arg(1).arg(&self.lock_key).arg(value);
        match self.query::<i64>(&eval).await {
            Ok(_) => {
                let mut health = self.health();
                if health.lock_holder.as_deref() == Some("this sidecar") {
                    health.lock_holder = None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the fleet lock; it expires on its own")
            }
        }
    }
}

/// This sidecar's name in the lock: the host (the pod's name in Kubernetes) and the process.
fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    format!("{host}/pid-{}", std::process::id())
}

/// The holder without its random part, and only printable characters (another program could
/// have written anything there).
fn shown_holder(value: &str) -> String {
    value
        .split(' ')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(80)
        .collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `base` ± 50 %.
fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    base.mul_f64(0.5 + f64::from(byte[0]) / 255.0)
}

/// A Redis error's text with every known secret removed (it may quote the URL it was given).
fn clean(e: &redis::RedisError) -> String {
    crate::secret::scrub(&e.to_string())
}
