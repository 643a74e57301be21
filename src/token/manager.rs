//! The token manager: owns the current token of every expiring source (OAuth grants and token
//! commands) and decides when and how to get the next one.
//!
//! - Ahead of expiry (`REFRESH_SKEW`) the next token is fetched in the background (one task at a
//!   time) while the current one keeps serving. A token is never sent in the last
//!   [`EXPIRY_MARGIN`] of its known life: requests then wait, bounded, for the refresh in flight,
//!   and when none arrives before the token expires (the authorization server is down or hangs)
//!   they are sent with it all the same; an expired token is never sent.
//! - Expiry counts from when the token request was sent, not from when the answer arrived.
//! - Single-flight: concurrent callers share one token request. After taking the lock a caller
//!   looks again, because the token it wanted refreshed may have been replaced while it waited.
//! - With a writable `STATE_DIR` every obtain runs under an OS file lock and first adopts what
//!   another process may have written, so two sidecars on one volume never both spend the same
//!   rotating refresh token.
//! - With a fleet store (`STATE_STORE`) the store is also read every `STORE_CHECK`, refresh due
//!   or not: newer states are adopted, a store that lost its data is re-seeded, and a re-seeded
//!   refresh token waits `SEED_SETTLE` before it is spent (the fleet module says why).
//! - A held refresh token is tried first; when the server rejects it (`invalid_grant`) it is
//!   dropped and the source's own grant runs (client credentials, token exchange), or a login
//!   starts (device code, authorization code).
//! - Failures back off with jitter. A temporary failure keeps serving the current token while it
//!   is still valid; a rejection reports `auth_required`.
//! - The state file is read, written and fsynced on the blocking pool, never on a runtime thread
//!   (except the one read at construction, before anything is served).

#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::endpoint::{GrantError, Issued, OAuthClient};
use super::state::{SEED_SETTLE, STORE_CHECK, StateError, StateLock, StateStore, take_over_after};
use super::store::{self, Persisted};
use super::{AccessToken, BoxFuture, Login, TokenError, TokenSource, TokenStatus};
use crate::config::GrantKind;
use crate::secret::{Secret, SecretSource};

/// The source-specific part: how to get a token when no refresh token is held.
pub trait Grant: Send + Sync {
    /// Obtains a token with the configured scopes (and any the upstream asked for since).
    fn obtain(&self) -> BoxFuture<'_, Result<Issued, GrantError>>;

    /// Where the credential comes from, for `/status` (`client cc-client (client_secret_basic)`).
    fn origin(&self) -> Option<String> {
        None
    }
}

/// What a login shows a person; `None` clears the prompt.
pub type Prompt = dyn Fn(Option<Login>) + Send + Sync;
/// Whether tokens arrived some other way meanwhile (another process, `mcp-sidecar login`), so a
/// running login can stop. A future: answering it reads the state file, on the blocking pool.
pub type Satisfied = dyn Fn() -> BoxFuture<'static, bool> + Send + Sync;

/// A login that needs a person; runs in the background until it yields tokens.
pub trait Interactive: Send + Sync {
    /// Runs one login to completion, publishing what the person must do through `prompt`.
    /// `Ok(None)`: no tokens to install (they came through [`Manager::accept`], or `satisfied`
    /// turned true).
    fn login<'a>(
        &'a self,
        prompt: &'a Prompt,
        satisfied: &'a Satisfied,
    ) -> BoxFuture<'a, Result<Option<Issued>, GrantError>>;

    /// What `/ready` shows before the login has produced a prompt of its own.
    fn waiting(&self) -> Option<Login> {
        None
    }
}

#[derive(Clone, Default)]
struct Held {
    access: Option<AccessToken>,
    expires_at: Option<SystemTime>,
    refresh: Option<Secret>,
    scope: Option<String>,
    /// Fingerprint of the configured refresh-token seed this state descends from.
    seed: Option<String>,
    obtained_at: Option<SystemTime>,
    /// Newer than the state file (a write failed): the file must not be adopted over it.
    unpersisted: bool,
    /// See [`Persisted::generation`]: a stored state with a lower one is never adopted.
    generation: u64,
    /// The highest generation seen in the store, adopted or not: the next new token counts on
    /// from it, so the fleet's generations only grow.
    seen_generation: u64,
    /// The held state was put back into a fleet store that had lost it (by this sidecar or
    /// another): its re-seed mark as stored ([`Persisted::seeded_at_ms`], another host's clock,
    /// kept only to tell one re-seed from the next) and when this sidecar first saw it or wrote
    /// it, on its own monotonic clock. Its refresh token is not spent before [`SEED_SETTLE`] has
    /// passed on that clock: a mark from a skewed clock, or an old one replayed into the store,
    /// would otherwise settle at once or never.
    seeded: Option<(u64, Instant)>,
}

impl Held {
    /// Counts one replacement of the tokens.
    fn next_generation(&mut self) {
        // Saturating: a stored generation is checked against `MAX_GENERATION` before it counts
        // here, but no value read from outside may panic or wrap the count back to the oldest.
        self.generation = self.generation.max(self.seen_generation).saturating_add(1);
        self.seen_generation = self.generation;
        self.seeded = None;
    }
}

/// What reading the store found, compared with the state held.
#[derive(Debug, PartialEq)]
enum Stored {
    Nothing,
    /// Adopted, or the same as held.
    Current,
    /// A state older than the one held (a sidecar that missed a rotation re-seeded the store):
    /// not adopted.
    Older,
}

#[derive(Default)]
struct Stats {
    refreshes: u64,
    last_attempt: Option<SystemTime>,
    last_outcome: Option<String>,
    /// The last failure: whether it was temporary, and its message.
    last_error: Option<(bool, String)>,
    failures: u32,
    retry_at: Option<Instant>,
    /// When the last attempt failed (see [`STARVED_RETRY`]).
    failed_at: Option<Instant>,
    /// A token obtained because the upstream rejected the one before, not yet seen to work;
    /// when it was obtained, and whether its rejection was already logged.
    unconfirmed: Option<(AccessToken, Instant, bool)>,
}

pub struct Manager {
    name: &'static str,
    /// `None` for a token command.
    kind: Option<GrantKind>,
    grant: Box<dyn Grant>,
    interactive: Option<Arc<dyn Interactive>>,
    oauth: Option<Arc<OAuthClient>>,
    store: Option<StateStore>,
    seed: Option<SecretSource>,
    skew: Duration,
    held: Mutex<Held>,
    flight: tokio::sync::Mutex<()>,
    /// Step-ups decide one at a time: a request refused together with the one that asks for
    /// the wider token must wait for that token, not find the old one and give up (the
    /// requesting one takes `flight` only once its token request task runs).
    step_ups: tokio::sync::Mutex<()>,
    /// See [`REFRESH_WAIT`].
    refresh_wait: Duration,
    /// A refresh ahead of expiry was spawned and has not finished: requests spawn no other.
    background: AtomicBool,
    #[cfg(test)]
    background_spawned: AtomicUsize,
    stats: Mutex<Stats>,
    login: Mutex<Option<Login>>,
    login_running: AtomicBool,
    changed: tokio::sync::Notify,
    /// Bumped on every new token and every failed attempt (see [`TokenSource::changes`]).
    generation: tokio::sync::watch::Sender<u64>,
    me: Weak<Manager>,
}

/// Longest pause between attempts after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest pause after a temporary failure while calls are waiting and no unexpired token
/// is held: every such call fails until a token comes, so once the authorization server heals
/// the next call should find out within this, not after the rest of a backoff grown during a
/// long outage (up to a minute). Only asked-for attempts come this often, one at a time.
const STARVED_RETRY: Duration = Duration::from_secs(3);
/// How many scopes step-up requests may add in total: a server that keeps asking for more is
/// not answered forever.
const MAX_EXTRA_SCOPES: usize = 8;
/// A token is used at least this long before it counts as due, so a token that arrives expired
/// (clock skew, a command printing `expires_in: 0`) costs one request a second, not a loop.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// Tokens living less than this are worth a warning: each costs a request.
const SHORT_LIFETIME: Duration = Duration::from_secs(10);
/// When a token obtained because the upstream rejected the previous one is rejected too,
/// without ever having worked, no further token is forced for this long: the upstream refuses
/// every token (a wrong audience or resource), and asking again would only churn the server.
const UNCONFIRMED_WINDOW: Duration = Duration::from_secs(30);
/// A token is not sent in the last this-much of its known life (a quarter of the life, for
/// tokens living less than 20 s). A request takes time to reach the server that checks the
/// token (a slow network, a queue in a gateway), and the server's clock may run a little
/// ahead of ours: a token sent just before expiry is refused on arrival, which costs the
/// agent's call a 401, a refresh and a retry. Five seconds covers common clock skew and
/// latency without shortening the useful life of ordinary tokens (minutes to hours).
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// How long a request waits for the token request in flight when the held token may no longer
/// be sent. The token request itself is bounded (`TOKEN_TIMEOUT`, `TOKEN_COMMAND_TIMEOUT`); this
/// also bounds a wait behind another process holding the state file's lock, and answers the
/// agent's call before its client gives up on it (60 s for Claude Code).
const REFRESH_WAIT: Duration = Duration::from_secs(30);
/// A request inside the margin stops waiting for the refresh this long before the held token
/// expires, and is sent with it: a token that may be refused on arrival is still better than a
/// call failed for certain (a refusal costs a refresh and one retry).
const LAST_RESORT: Duration = Duration::from_millis(250);
/// The longest a refresh waits for re-seeded entries to settle, in all: four settling times, so a
/// store re-seeded once or twice meanwhile still settles, and one re-seeded again and again
/// fails the refresh (a temporary error, retried) instead of holding it.
const SETTLE_WAIT: Duration = Duration::from_millis(4 * SEED_SETTLE.as_millis() as u64);

pub struct Parts {
    pub name: &'static str,
    /// The OAuth grant; `None` for a token command.
    pub kind: Option<GrantKind>,
    pub grant: Box<dyn Grant>,
    pub interactive: Option<Arc<dyn Interactive>>,
    pub oauth: Option<Arc<OAuthClient>>,
    pub store: Option<StateStore>,
    pub seed: Option<SecretSource>,
    pub skew: Duration,
}

impl Manager {
    pub fn new(parts: Parts) -> Arc<Self> {
        Self::with_wait(parts, REFRESH_WAIT)
    }

    /// [`Manager::new`] with another bound on waiting for a refresh (tests).
    fn with_wait(parts: Parts, refresh_wait: Duration) -> Arc<Self> {
        let manager = Arc::new_cyclic(|me| Self {
            refresh_wait,
            name: parts.name,
            kind: parts.kind,
            grant: parts.grant,
            interactive: parts.interactive,
            oauth: parts.oauth,
            store: parts.store,
            seed: parts.seed,
            skew: parts.skew,
            held: Mutex::new(Held::default()),
            flight: tokio::sync::Mutex::new(()),
            step_ups: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
            #[cfg(test)]
            background_spawned: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
            login: Mutex::new(None),
            login_running: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            generation: tokio::sync::watch::Sender::new(0),
            me: me.clone(),
        });
        // Read once here, synchronously: the manager is built before anything is served. The
        // fleet store is read at the first token request instead, under its lock: Redis may be
        // down at start, and what it holds may change before then anyway.
        let persisted = match &manager.store {
            Some(state @ StateStore::Dir(store)) => store
                .load()
                .map_err(StateError::from)
                .and_then(|p| state.checked(p)),
            _ => Ok(None),
        };
        match persisted {
            Ok(persisted) => {
                manager.apply_persisted(persisted);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the persisted token state; starting without it")
            }
        }
        manager
    }

    pub fn store(&self) -> Option<&StateStore> {
        self.store.as_ref()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The held token if it is not yet due for renewal and is not the one that was rejected.
    fn fresh(&self, rejected: Option<&AccessToken>) -> Option<AccessToken> {
        let held = self.held();
        let token = held.access.as_ref()?;
        if rejected.is_some_and(|r| r == token) {
            return None;
        }
        match self.refresh_due(&held) {
            Some(due) if SystemTime::now() >= due => None,
            _ => Some(token.clone()),
        }
    }

    /// When the held token should be replaced: `REFRESH_SKEW` before expiry, but never earlier
    /// than halfway through its life (60 s tokens with a 60 s skew must not cause a refresh
    /// storm), never later than the start of its [`EXPIRY_MARGIN`] (so the refresh runs before
    /// requests must wait for it), and never sooner than [`MIN_REFRESH_GAP`] after it was
    /// obtained.
    fn refresh_due(&self, held: &Held) -> Option<SystemTime> {
        let expires = held.expires_at?;
        let obtained = held.obtained_at.unwrap_or(expires);
        let lifetime = expires.duration_since(obtained).unwrap_or_default();
        let ahead = self.skew.min(lifetime / 2).max(margin(lifetime));
        let due = expires.checked_sub(ahead).unwrap_or(expires);
        Some(due.max(obtained + MIN_REFRESH_GAP))
    }

    /// The held token if it may still be sent (possibly inside the skew window): its known
    /// expiry is more than [`margin`] away. A token obtained less than [`MIN_REFRESH_GAP`] ago
    /// is sent whatever it says: it is the newest the server gives (its clock disagrees with
    /// ours), and asking again at once for every request would only loop.
    fn valid(&self) -> Option<AccessToken> {
        let held = self.held();
        let token = held.access.as_ref()?;
        sendable(&held, SystemTime::now()).then(|| token.clone())
    }

    /// The held token if its known expiry has not passed, inside the margin or not: what is sent
    /// when no newer one can be had (the authorization server is down, slow or hanging).
    fn unexpired(&self) -> Option<AccessToken> {
        let held = self.held();
        let token = held.access.as_ref()?;
        (remaining(&held, SystemTime::now()) > Duration::ZERO).then(|| token.clone())
    }

    /// How long a request inside the margin waits for the refresh before it is sent with the
    /// held token all the same: as long as that token lasts, less [`LAST_RESORT`], and never
    /// more than the configured wait. `None` once it has expired.
    fn margin_wait(&self) -> Option<Duration> {
        let left = remaining(&self.held(), SystemTime::now());
        (left > Duration::ZERO).then(|| left.saturating_sub(LAST_RESORT).min(self.refresh_wait))
    }

    /// Reads the stored state (the state file on the blocking pool) and adopts it; see
    /// [`Manager::apply_persisted`].
    async fn adopt_persisted(&self) -> Result<Stored, StateError> {
        let Some(store) = &self.store else {
            self.apply_persisted(None);
            return Ok(Stored::Nothing);
        };
        let persisted = store.load().await?;
        let found = persisted.is_some();
        Ok(match (found, self.apply_persisted(persisted)) {
            (false, _) => Stored::Nothing,
            (true, true) => Stored::Older,
            (true, false) => Stored::Current,
        })
    }

    /// Adopts the state file's content when it is another process's newer result, or ours
    /// from before a restart. A configured refresh-token seed that changed wins over the file;
    /// state this process could not write wins over the (older) file, and so does a state of a
    /// higher generation (the store holds an older one: returns `true`).
    fn apply_persisted(&self, persisted: Option<Persisted>) -> bool {
        let seed = match &self.seed {
            Some(source) => match source.read() {
                Ok(seed) => Some(seed),
                Err(e) => {
                    // Mid-rotation or gone: not a reason to ignore what the file says.
                    tracing::warn!(error = %e, "cannot read the refresh-token seed; using the persisted state");
                    None
                }
            },
            None => None,
        };
        let seed_print = seed
            .as_ref()
            .map(|s| store::fingerprint(s.expose()))
            .or_else(|| self.held().seed.clone());
        if let (Some(oauth), Some(client)) = (
            &self.oauth,
            persisted.as_ref().and_then(|p| p.client.clone()),
        ) && oauth.registered().is_none()
        {
            oauth.set_registered(Some(client));
        }
        let mut held = self.held();
        if let Some(p) = &persisted {
            held.seen_generation = held.seen_generation.max(p.generation);
        }
        if held.unpersisted {
            return false;
        }
        match persisted {
            Some(p) if seed_print.is_none() || p.seed == seed_print => {
                // A state file written by a version without generations (a process of the
                // older version sharing STATE_DIR during an upgrade) is that process's rotation:
                // adopted, as before. Files are not sealed: whoever can write them can write any
                // generation, so the ordering guards nothing there. A sealed fleet entry can only
                // be replayed, never forged, and there a legacy entry never beats a counted state.
                let legacy_file = matches!(self.store, Some(StateStore::Dir(_)))
                    && p.generation == 0
                    && p.seeded_at_ms.is_none();
                if !legacy_file && older(p.generation, held.generation) {
                    return true;
                }
                held.generation = p.generation;
                held.seeded = match (p.seeded_at_ms, held.seeded) {
                    // The same re-seed as before: it settles from when it was first seen.
                    (Some(mark), Some((seen, since))) if mark == seen => Some((seen, since)),
                    (Some(mark), _) => Some((mark, Instant::now())),
                    (None, _) => None,
                };
                let access = p.access_token.map(AccessToken::new);
                if access != held.access || held.refresh != p.refresh_token {
                    held.access = access;
                    held.expires_at = p
                        .expires_at_ms
                        .and_then(store::from_unix_ms)
                        .or_else(|| p.expires_at.and_then(store::from_unix));
                    held.refresh = p.refresh_token;
                    held.scope = p.scope;
                    held.seed = p.seed;
                    held.obtained_at = p
                        .obtained_at_ms
                        .and_then(store::from_unix_ms)
                        .or_else(|| store::from_unix(p.updated_at));
                }
            }
            _ => {
                if let Some(seed) = seed
                    && held.seed != seed_print
                {
                    // A new seed from the operator (or the first start): use it.
                    *held = Held {
                        refresh: Some(seed),
                        seed: seed_print,
                        generation: held.generation,
                        seen_generation: held.seen_generation,
                        ..Held::default()
                    };
                }
            }
        }
        false
    }

    /// Writes the held state (the state file on the blocking pool). On failure the state is
    /// marked newer than the file, so the file is not adopted over it (that would bring back a
    /// spent refresh token), and the write is tried again at the next token request. A fleet
    /// store is written only where it still holds what this sidecar last read there: when another
    /// sidecar wrote meanwhile (it took the lock over from this one, or took it after it expired),
    /// its state is read and adopted unless it is older than the one held (see [`older`]), never
    /// overwritten blindly.
    async fn persist(&self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let result = store.save_unless_changed(self.to_persist()).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "cannot persist the token state; it is kept in memory and written again at the next request");
        }
        self.held().unpersisted = result.is_err();
        if let Ok(false) = result {
            tracing::info!(
                source = self.name,
                "another sidecar stored a state for this credential since this one read it; reading it instead of overwriting it"
            );
            match self.adopt_persisted().await {
                Ok(Stored::Nothing | Stored::Older) => self.reseed().await,
                Ok(Stored::Current) => {}
                Err(e) => {
                    // Not written, and not known to be stored: written at the next look.
                    self.held().unpersisted = true;
                    tracing::warn!(source = self.name, error = %e, "cannot read the shared state store");
                }
            }
        }
    }

    /// The held state as it is stored.
    fn to_persist(&self) -> Persisted {
        let held = self.held().clone();
        Persisted {
            access_token: held.access.map(|a| a.secret().clone()),
            expires_at: held.expires_at.map(store::to_unix),
            expires_at_ms: held.expires_at.map(store::to_unix_ms),
            obtained_at_ms: held.obtained_at.map(store::to_unix_ms),
            refresh_token: held.refresh,
            scope: held.scope,
            seed: held.seed,
            client: self.oauth.as_ref().and_then(|o| o.registered()),
            generation: held.generation,
            seeded_at_ms: held.seeded.map(|(mark, _)| mark),
            ..Persisted::default()
        }
    }

    /// Puts the held state back into a fleet store that holds none or an older one (see the
    /// fleet module for why that is safe): without overwriting what another sidecar wrote since
    /// the store was read, and marked as re-seeded, so its refresh token is spent only after
    /// [`SEED_SETTLE`], when a sidecar holding a newer state has had the time to replace it.
    async fn reseed(&self) {
        let Some(store) = &self.store else {
            return;
        };
        if self.held().refresh.is_none() && self.valid().is_none() {
            return;
        }
        let mark = store::to_unix_ms(SystemTime::now());
        let mut state = self.to_persist();
        state.seeded_at_ms = Some(mark);
        let generation = state.generation;
        match store.reseed(state).await {
            Ok(true) => {
                tracing::info!(
                    source = self.name,
                    generation,
                    "the shared state store holds no state for this credential, or an older one; put back the one held here"
                );
                let mut held = self.held();
                held.seeded = Some((mark, Instant::now()));
                held.unpersisted = false;
            }
            // Another sidecar wrote first: its state is read at the next look.
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(source = self.name, error = %e, "cannot put the held state back into the shared state store")
            }
        }
    }

    /// How long the held refresh token must still wait before it may be spent, after a
    /// re-seed (see [`SEED_SETTLE`]).
    fn unsettled(&self) -> Option<Duration> {
        self.oauth.as_ref()?;
        let held = self.held();
        held.refresh.as_ref()?;
        settle_left(&held, Instant::now())
    }

    /// A second token request for this credential costs nothing but the request: nothing is
    /// rotated (client credentials, token exchange without a refresh token).
    fn duplicate_safe(&self) -> bool {
        self.interactive.is_none()
            && matches!(
                self.kind,
                Some(GrantKind::ClientCredentials | GrantKind::TokenExchange)
            )
            && self.held().refresh.is_none()
    }

    /// The periodic look at a fleet store (every [`STORE_CHECK`]): adopts a newer state another
    /// sidecar stored, re-seeds a store that lost this credential's state (or holds an older
    /// one), writes back a state a failed write left unstored, and refreshes the lock holder
    /// `/status` shows. Skipped while a refresh runs: it reads the store itself.
    async fn check_store(&self) {
        let Some(store) = self.store.as_ref().filter(|s| s.is_fleet()) else {
            return;
        };
        let Ok(_flight) = self.flight.try_lock() else {
            return;
        };
        if self.held().unpersisted {
            self.persist().await;
        }
        match self.adopt_persisted().await {
            Ok(Stored::Nothing | Stored::Older) => self.reseed().await,
            Ok(Stored::Current) => {}
            // Kept in the store's health (`/status`); the next token request reports it.
            Err(e) => {
                tracing::debug!(source = self.name, error = %e, "cannot read the shared state store")
            }
        }
        if let Err(e) = store.check_lock().await {
            tracing::debug!(source = self.name, error = %e, "cannot read the fleet lock");
        }
    }

    /// Takes a new token into use and persists it. Called with the flight lock (and the file
    /// lock, when there is a store) held.
    async fn install(&self, issued: Issued) {
        let now = SystemTime::now();
        if let Some(lifetime) = issued
            .expires_at
            .map(|at| at.duration_since(now).unwrap_or_default())
            && lifetime < SHORT_LIFETIME
        {
            tracing::warn!(
                source = self.name,
                lifetime_secs = lifetime.as_secs_f32(),
                "the new token expires almost at once; each one costs a token request (check the server's clock and token lifetime)"
            );
        }
        {
            let mut held = self.held();
            held.access = Some(AccessToken::new(issued.access_token));
            held.expires_at = issued.expires_at;
            // Servers that do not rotate refresh tokens omit them from refresh replies; a reply
            // without `scope` means the scopes did not change (RFC 6749 5.1).
            if issued.refresh_token.is_some() {
                held.refresh = issued.refresh_token;
            }
            if issued.scope.is_some() {
                held.scope = issued.scope;
            }
            held.obtained_at = Some(now);
            held.next_generation();
        }
        self.persist().await;
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut stats = self.stats();
        stats.failures = 0;
        stats.retry_at = None;
        stats.last_error = None;
        stats.last_attempt = Some(now);
        stats.last_outcome = Some("ok".into());
        drop(stats);
        self.changed.notify_waiters();
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Gets a token other than `rejected` (a new one even if the held one is fresh, when
    /// `force`). The work runs in a task of its own: a caller that gives up (a client that
    /// disconnects, a readiness check that times out) must not cancel a token request whose
    /// answer may already have rotated the refresh token at the server.
    async fn acquire(
        &self,
        rejected: Option<&AccessToken>,
        force: bool,
    ) -> Result<AccessToken, TokenError> {
        let Some(me) = self.me.upgrade() else {
            return Err(TokenError::Temporary(
                "the token source is shutting down".into(),
            ));
        };
        let rejected = rejected.cloned();
        match tokio::spawn(async move { me.acquire_now(rejected.as_ref(), force).await }).await {
            Ok(result) => result,
            Err(e) => Err(TokenError::Temporary(format!(
                "the token request failed: {e}"
            ))),
        }
    }

    /// The single-flight path behind every refresh; see [`Manager::acquire`].
    async fn acquire_now(
        &self,
        rejected: Option<&AccessToken>,
        force: bool,
    ) -> Result<AccessToken, TokenError> {
        let _flight = self.flight.lock().await;
        if !force && let Some(token) = self.fresh(rejected) {
            return Ok(token);
        }
        if let Some(rejected) = rejected
            && self.rejected_again(rejected)
        {
            return Ok(rejected.clone());
        }
        let usable = self.unexpired().filter(|t| Some(t) != rejected);
        if let Some(error) = self.backing_off(usable.is_none()) {
            return usable.ok_or(error);
        }
        let fleet = self.store.as_ref().is_some_and(StateStore::is_fleet);
        // A waiter whose token can no longer be sent may take the fleet lock over from a holder
        // that keeps it, when a duplicate request is harmless (see `FleetStore::lock`).
        // Half the token's remaining life at most: the new token must come before the old one
        // expires (4 s tokens enter their last second when the refresh starts).
        let may_take_over = |held_for: Duration| {
            let left = remaining(&self.held(), SystemTime::now());
            held_for >= take_over_after(left)
                && self.duplicate_safe()
                && self.valid().filter(|t| Some(t) != rejected).is_none()
        };
        // When this refresh first waited for a re-seeded entry to settle (see `settle_wait`).
        let mut settling: Option<Instant> = None;
        let lock = loop {
            let lock = match &self.store {
                Some(store) => loop {
                    match store.lock(&may_take_over).await {
                        Ok(Some(lock)) => break Some(lock),
                        // Another sidecar of the fleet stored its result while this one waited:
                        // adopted at once, rather than after a turn with the lock.
                        Ok(None) => {
                            if self.adopt_persisted().await.is_ok()
                                && !force
                                && let Some(token) = self.fresh(rejected)
                            {
                                return Ok(token);
                            }
                        }
                        Err(e) => return Err(self.unlocked(&e, rejected)),
                    }
                },
                None => None,
            };
            if self.held().unpersisted {
                self.persist().await;
            }
            match self.adopt_persisted().await {
                // A fleet store that restarted empty (or a new fleet), or that a sidecar which
                // missed a rotation re-seeded: the state held here goes back (see `reseed`).
                Ok(Stored::Nothing | Stored::Older) if fleet => self.reseed().await,
                Ok(_) => {}
                // Without the fleet's stored state a refresh could spend a refresh token another
                // sidecar already spent: none is sent.
                Err(e) if fleet => return Err(self.unlocked(&e, rejected)),
                Err(e) => tracing::warn!(error = %e, "cannot read the persisted token state"),
            }
            if !force && let Some(token) = self.fresh(rejected) {
                return Ok(token);
            }
            // A re-seeded refresh token may be one another sidecar already spent: it waits until
            // a newer state had the time to replace it, without holding the lock meanwhile.
            if let Some(left) = self.unsettled() {
                drop(lock);
                let since = *settling.get_or_insert_with(Instant::now);
                let Some(wait) = settle_wait(since.elapsed(), left) else {
                    return Err(self.unsettled_too_long(since.elapsed()));
                };
                tracing::info!(
                    source = self.name,
                    wait_ms = wait.as_millis() as u64,
                    "the shared state store was re-seeded just now; waiting for a newer state from the fleet before spending the refresh token"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            break lock;
        };
        // Under a lock taken over, the holder it was taken from may still be spending what it
        // read: no refresh token is spent (a take-over is only for grants that can run afresh).
        let took_over = lock.as_ref().is_some_and(StateLock::by_take_over);
        match self.obtain(!took_over).await {
            Ok(issued) => {
                // This sidecar's request was slow and another one took the lock over: that
                // one's result is the fleet's. This one's token is good for the call that waited
                // (a duplicate request is harmless for this grant), but it is neither installed
                // nor written over the other's. A new refresh token is kept all the same: it
                // may be the only copy of a rotation (the write is then a compare-and-set).
                if issued.refresh_token.is_none()
                    && let Some(held_lock) = &lock
                    && held_lock.taken_over().await
                {
                    tracing::info!(
                        source = self.name,
                        "another sidecar took the fleet lock over while this one's token request was slow; its result stands, this one's serves only the call that waited"
                    );
                    drop(lock);
                    if let Err(e) = self.adopt_persisted().await {
                        tracing::debug!(source = self.name, error = %e, "cannot read the shared state store");
                    }
                    return Ok(AccessToken::new(issued.access_token));
                }
                let token = AccessToken::new(issued.access_token.clone());
                let expires = issued.expires_at.map(crate::time::rfc3339);
                self.install(issued).await;
                if rejected.is_some() {
                    self.stats().unconfirmed = Some((token.clone(), Instant::now(), false));
                }
                tracing::info!(
                    source = self.name,
                    expires_at = expires.as_deref().unwrap_or("unknown"),
                    "obtained a new access token"
                );
                Ok(token)
            }
            Err(e) => {
                let error = self.failed(&e);
                // A temporary failure keeps the current token in service until it expires,
                // margin or not: a call it can still make must not fail because the
                // authorization server is down.
                match (&e, self.unexpired()) {
                    (GrantError::Temporary(_), Some(token)) if Some(&token) != rejected => {
                        Ok(token)
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// The answer when the store's lock or state cannot be had: the held token while it has not
    /// expired, else `auth_required` naming the cause once the fleet store's outage outlives it
    /// (a refresh without the fleet lock could spend a rotating refresh token twice).
    fn unlocked(&self, e: &StateError, rejected: Option<&AccessToken>) -> TokenError {
        let message = e.to_string();
        let expired = self.unexpired().filter(|t| Some(t) != rejected).is_none();
        let error = if e.is_outage() && expired {
            TokenError::AuthRequired(format!(
                "the token expired while the shared state store is unavailable, and no token is requested without the fleet's lock (a rotating refresh token must never be spent twice): {message}"
            ))
        } else {
            TokenError::Temporary(message.clone())
        };
        let mut stats = self.stats();
        let changed = stats.last_error.as_ref().map(|(_, m)| m) != Some(&message);
        stats.last_attempt = Some(SystemTime::now());
        stats.last_outcome = Some(format!("failed: {message}"));
        stats.last_error = Some((matches!(error, TokenError::Temporary(_)), message));
        drop(stats);
        if changed {
            tracing::warn!(source = self.name, error = %e, "cannot take the state store's lock or read it; no token request is sent");
            self.generation.send_modify(|g| *g = g.wrapping_add(1));
        }
        error
    }

    /// The answer when re-seeded entries kept replacing each other for [`SETTLE_WAIT`]: a
    /// temporary error naming the cause (the refresh is tried again later; the held token serves
    /// while it has not expired).
    fn unsettled_too_long(&self, waited: Duration) -> TokenError {
        let message = format!(
            "the shared state store was re-seeded again and again for {:.1} s (sidecars holding different states, or old entries written back into it), so no refresh token was spent; the refresh is tried again later",
            waited.as_secs_f32()
        );
        let mut stats = self.stats();
        stats.last_attempt = Some(SystemTime::now());
        stats.last_outcome = Some(format!("failed: {message}"));
        stats.last_error = Some((true, message.clone()));
        drop(stats);
        tracing::warn!(
            source = self.name,
            waited_ms = waited.as_millis() as u64,
            "the shared state store keeps being re-seeded; not spending the refresh token"
        );
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        TokenError::Temporary(message)
    }

    /// Whether `rejected` is a token obtained because the upstream rejected the previous one,
    /// and rejected in turn without ever having worked (see [`UNCONFIRMED_WINDOW`]).
    fn rejected_again(&self, rejected: &AccessToken) -> bool {
        let mut stats = self.stats();
        match &mut stats.unconfirmed {
            Some((token, at, warned)) if token == rejected && at.elapsed() < UNCONFIRMED_WINDOW => {
                if !*warned {
                    *warned = true;
                    tracing::warn!(
                        source = self.name,
                        retry_in_secs = (UNCONFIRMED_WINDOW - at.elapsed()).as_secs(),
                        "the upstream rejected a token obtained just after it rejected the one before; not asking for another yet (check the token's audience or resource)"
                    );
                }
                true
            }
            _ => false,
        }
    }

    /// Refresh token first (unless `refresh` is false: see [`StateLock::by_take_over`]), then
    /// the source's own grant, then a login.
    async fn obtain(&self, refresh: bool) -> Result<Issued, GrantError> {
        let refresh = self.held().refresh.clone().filter(|_| refresh);
        if let (Some(oauth), Some(refresh)) = (&self.oauth, refresh) {
            match super::refresh::refresh(oauth, &refresh).await {
                Ok(issued) => return Ok(issued),
                // Only the token endpoint saying the grant is dead drops it; configuration,
                // discovery and server trouble keep it for the next attempt.
                Err(GrantError::Rejected(reason)) => {
                    tracing::warn!(source = self.name, %reason, "the refresh token was rejected; dropping it");
                    {
                        let mut held = self.held();
                        held.refresh = None;
                        held.access = None;
                        held.expires_at = None;
                        held.next_generation();
                    }
                    self.persist().await;
                    if self.interactive.is_none() && self.kind == Some(GrantKind::RefreshToken) {
                        return Err(GrantError::Rejected(format!(
                            "{reason}; seed a new refresh token (REFRESH_TOKEN_FILE) or log in with `mcp-sidecar login`"
                        )));
                    }
                }
                Err(other) => return Err(other),
            }
        }
        if let Some(interactive) = &self.interactive {
            self.start_login(interactive.clone());
            let prompt = self.login().map(|l| l.describe());
            return Err(GrantError::LoginRequired(prompt.unwrap_or_else(|| {
                "waiting for a login (see `mcp-sidecar login`)".into()
            })));
        }
        self.grant.obtain().await
    }

    fn failed(&self, e: &GrantError) -> TokenError {
        let message = e.to_string();
        let error = match e {
            GrantError::Temporary(_) => TokenError::Temporary(message.clone()),
            GrantError::Rejected(_) | GrantError::LoginRequired(_) | GrantError::Config(_) => {
                TokenError::AuthRequired(message.clone())
            }
        };
        let mut stats = self.stats();
        stats.last_attempt = Some(SystemTime::now());
        stats.last_outcome = Some(format!("failed: {message}"));
        stats.last_error = Some((matches!(error, TokenError::Temporary(_)), message.clone()));
        if !matches!(e, GrantError::LoginRequired(_)) {
            stats.failures = stats.failures.saturating_add(1);
            let delay = backoff(stats.failures);
            stats.retry_at = Some(Instant::now() + delay);
            stats.failed_at = Some(Instant::now());
            tracing::warn!(
                source = self.name,
                error = %message,
                retry_in_ms = delay.as_millis() as u64,
                "cannot obtain a token"
            );
        }
        drop(stats);
        // A pending login fails every attempt until someone logs in; its prompt changing is
        // what readiness needs to see (see `set_login`), not each attempt.
        if !matches!(e, GrantError::LoginRequired(_)) {
            self.generation.send_modify(|g| *g = g.wrapping_add(1));
        }
        error
    }

    /// The last error while a backoff is running. `starved`: a call is waiting and no usable
    /// token is held, which cuts a temporary failure's backoff to [`STARVED_RETRY`].
    fn backing_off(&self, starved: bool) -> Option<TokenError> {
        let stats = self.stats();
        if starved
            && matches!(stats.last_error, Some((true, _)))
            && stats
                .failed_at
                .is_some_and(|at| at.elapsed() >= STARVED_RETRY)
        {
            return None;
        }
        match (stats.retry_at, &stats.last_error) {
            (Some(at), Some((true, message))) if Instant::now() < at => {
                Some(TokenError::Temporary(message.clone()))
            }
            (Some(at), Some((false, message))) if Instant::now() < at => {
                Some(TokenError::AuthRequired(message.clone()))
            }
            _ => None,
        }
    }

    fn start_login(&self, interactive: Arc<dyn Interactive>) {
        if self.login_running.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(waiting) = interactive.waiting() {
            self.set_login(Some(waiting));
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let weak = Arc::downgrade(&me);
                let prompt = move |login: Option<Login>| {
                    if let Some(m) = weak.upgrade() {
                        m.set_login(login);
                    }
                };
                let weak = Arc::downgrade(&me);
                let satisfied = move || -> BoxFuture<'static, bool> {
                    let weak = weak.clone();
                    Box::pin(async move {
                        match weak.upgrade() {
                            Some(m) => m.has_credential().await,
                            None => false,
                        }
                    })
                };
                match interactive.login(&prompt, &satisfied).await {
                    Ok(None) => {
                        me.set_login(None);
                        break;
                    }
                    Ok(Some(issued)) => {
                        let _flight = me.flight.lock().await;
                        let _lock = me.lock_to_install().await;
                        me.install(issued).await;
                        tracing::info!(source = me.name, "login complete; tokens obtained");
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        me.failed(&e);
                        me.set_login(interactive.waiting());
                        tokio::time::sleep(backoff(failures)).await;
                    }
                }
            }
            me.login_running.store(false, Ordering::Release);
        });
    }

    /// Whether a usable credential is held, including one another process wrote meanwhile.
    async fn has_credential(&self) -> bool {
        if let Err(e) = self.adopt_persisted().await {
            tracing::debug!(error = %e, "cannot read the persisted token state");
        }
        self.valid().is_some() || self.held().refresh.is_some()
    }

    fn set_login(&self, login: Option<Login>) {
        let mut current = self.login.lock().unwrap_or_else(|p| p.into_inner());
        if *current != login {
            *current = login;
            drop(current);
            self.generation.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Takes tokens obtained outside the manager (an authorization-code callback) into use.
    pub async fn accept(&self, issued: Issued) {
        let _flight = self.flight.lock().await;
        let _lock = self.lock_to_install().await;
        self.install(issued).await;
    }

    /// The store's lock for installing tokens a login produced: they are new whatever the store
    /// holds, so a change seen while waiting is no reason to stop. `None` when the lock cannot
    /// be had (the tokens are installed all the same: a person just logged in).
    async fn lock_to_install(&self) -> Option<super::state::StateLock> {
        let store = self.store.as_ref()?;
        let lock = loop {
            match store.lock(&|_| false).await {
                Ok(Some(lock)) => break lock,
                Ok(None) => continue,
                Err(_) => return None,
            }
        };
        // The new tokens count on from the stored generation, so the fleet adopts them.
        if let Ok(Some(stored)) = store.load().await {
            let mut held = self.held();
            held.seen_generation = held.seen_generation.max(stored.generation);
        }
        Some(lock)
    }

    /// Whether a login is waiting for a person (`/oauth/login` serves only then).
    pub fn login_pending(&self) -> bool {
        self.login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Starts a refresh ahead of expiry unless one started this way is still running: every
    /// request in the skew window asks, and one task at a time is enough (it is single-flight
    /// behind the lock anyway; more tasks would only queue up to find the token fresh).
    fn refresh_in_background(&self) {
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        #[cfg(test)]
        self.background_spawned.fetch_add(1, Ordering::Relaxed);
        let me = self.me.clone();
        // Not awaited: `acquire` runs the request in a task of its own.
        tokio::spawn(async move {
            if let Some(me) = me.upgrade() {
                let _ = me.acquire(None, false).await;
                me.background.store(false, Ordering::Release);
            }
        });
    }

    /// Runs until the process ends: refreshes ahead of expiry even when no request comes.
    async fn refresher(self: Arc<Self>) {
        let fleet = self.store.as_ref().is_some_and(StateStore::is_fleet);
        let mut checked = Instant::now();
        loop {
            let due = self.refresh_due(&self.held());
            let wait = match due {
                Some(due) => due
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                None => Duration::from_secs(3600),
            };
            let wait = wait.max(MIN_REFRESH_GAP);
            // A fleet store is looked at every STORE_CHECK, refresh due or not.
            let wait = if fleet { wait.min(STORE_CHECK) } else { wait };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => continue,
            }
            if fleet && checked.elapsed() >= STORE_CHECK {
                checked = Instant::now();
                self.check_store().await;
            }
            let due = self
                .refresh_due(&self.held())
                .is_some_and(|due| SystemTime::now() >= due);
            if due {
                let _ = self.acquire(None, false).await;
            }
        }
    }
}

/// Whether a stored state of generation `stored` is older than the held one of generation `held`:
/// it is then not adopted, and the held one goes back over it (see [`Manager::reseed`]). The one
/// ordering rule of the fleet's states. An entry written before generations existed carries 0,
/// like a new one: it is adopted only while the held generation is 0 too. Adopting it over a
/// counted state would let anyone able to write to the shared store (without the key, but with
/// an old sealed entry seen earlier) roll the fleet back to a spent refresh token, which a server
/// with reuse detection answers by revoking the grant. So a fleet is upgraded all at once
/// (README): an older version's writes, all generation 0, are not taken for rotations. (A state
/// file in `STATE_DIR` is the exception, see [`Manager::apply_persisted`].)
fn older(stored: u64, held: u64) -> bool {
    stored < held
}

/// How long the held state's re-seed still has to stand at `now` before its refresh token may be
/// spent: [`SEED_SETTLE`] from when this sidecar first saw it (see [`Held::seeded`]).
fn settle_left(held: &Held, now: Instant) -> Option<Duration> {
    let (_, since) = held.seeded?;
    (since + SEED_SETTLE)
        .checked_duration_since(now)
        .filter(|left| !left.is_zero())
}

/// How long a refresh sleeps for a re-seeded entry to settle, with `left` of its settling to go
/// and `waited` already spent waiting for settling: at most [`SETTLE_WAIT`] in all. `None` once
/// that is spent: a store that keeps being re-seeded (sidecars holding different states, or
/// writes replaying old entries) must not hold the refresh forever.
fn settle_wait(waited: Duration, left: Duration) -> Option<Duration> {
    let budget = SETTLE_WAIT.checked_sub(waited).filter(|b| !b.is_zero())?;
    Some(left.min(budget))
}

/// The part of a token's life in which it is no longer sent (see [`EXPIRY_MARGIN`]).
fn margin(lifetime: Duration) -> Duration {
    EXPIRY_MARGIN.min(lifetime / 4)
}

/// How much of the held token's known life is left at `now`: unbounded without a known expiry,
/// and as long as [`MIN_REFRESH_GAP`] lasts for a token just obtained (see [`sendable`]).
fn remaining(held: &Held, now: SystemTime) -> Duration {
    let Some(expires) = held.expires_at else {
        return Duration::MAX;
    };
    let obtained = held.obtained_at.unwrap_or(expires);
    let left = expires.duration_since(now).unwrap_or_default();
    left.max(
        (obtained + MIN_REFRESH_GAP)
            .duration_since(now)
            .unwrap_or_default(),
    )
}

/// Whether the held token may be sent at `now` (see [`Manager::valid`]).
fn sendable(held: &Held, now: SystemTime) -> bool {
    let Some(expires) = held.expires_at else {
        return true;
    };
    let obtained = held.obtained_at.unwrap_or(expires);
    let lifetime = expires.duration_since(obtained).unwrap_or_default();
    now + margin(lifetime) < expires || now < obtained + MIN_REFRESH_GAP
}

/// Exponential backoff with ±50 % jitter, so sidecars that failed together retry apart.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(6))
        .min(MAX_BACKOFF);
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    base.mul_f64(0.5 + f64::from(byte[0]) / 255.0)
}

impl TokenSource for Manager {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(async move {
            if let Some(token) = self.fresh(None) {
                return Ok(Some(token));
            }
            // Inside the skew window: serve the current token and refresh in the background.
            if let Some(token) = self.valid() {
                self.refresh_in_background();
                return Ok(Some(token));
            }
            // Too close to expiry to send, or expired: wait for the refresh (the one in flight,
            // or a new one), but not forever. While the held token has not expired, the wait
            // ends before it does, and the call is sent with it: an authorization server that
            // is down or hangs must not fail calls a valid token can still make.
            let wait = self.margin_wait();
            let acquired =
                tokio::time::timeout(wait.unwrap_or(self.refresh_wait), self.acquire(None, false))
                    .await;
            match acquired {
                Ok(Ok(token)) => Ok(Some(token)),
                Ok(Err(e)) => self.unexpired().map(Some).ok_or(e),
                Err(_) => self.unexpired().map(Some).ok_or_else(|| {
                    TokenError::Temporary(format!(
                        "the token expired and no new one arrived within {} s",
                        wait.unwrap_or(self.refresh_wait).as_secs()
                    ))
                }),
            }
        })
    }

    fn refresh<'a>(
        &'a self,
        rejected: Option<&'a AccessToken>,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
        Box::pin(async move {
            self.stats().refreshes += 1;
            self.acquire(rejected, false).await.map(Some)
        })
    }

    fn accepted(&self, token: &AccessToken) {
        let mut stats = self.stats();
        if stats
            .unconfirmed
            .as_ref()
            .is_some_and(|(t, _, _)| t == token)
        {
            stats.unconfirmed = None;
        }
    }

    fn step_up<'a>(
        &'a self,
        rejected: Option<&'a AccessToken>,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
        Box::pin(async move {
            let Some(oauth) = &self.oauth else {
                return Ok(None);
            };
            let _deciding = self.step_ups.lock().await;
            let granted = self.held().scope.clone();
            if !oauth.add_scopes(scope, granted.as_deref(), MAX_EXTRA_SCOPES) {
                // Requests refused together share one step-up: the first adds the scopes and
                // asks for a token, the others find nothing to add and take that token (waiting
                // while it is in flight). Without one, the scopes were asked for and not granted,
                // and asking again would be refused the same way.
                if oauth.has_requested(scope, granted.as_deref()) {
                    if let Some(token) = self.fresh(rejected) {
                        return Ok(Some(token));
                    }
                    let _flight = self.flight.lock().await;
                    return Ok(self.fresh(rejected));
                }
                return Ok(None);
            }
            if self.held().refresh.is_some() || self.interactive.is_some() {
                // A refresh cannot widen the scopes (RFC 6749 section 6): the next login asks
                // for them.
                tracing::warn!(
                    source = self.name,
                    scope,
                    "the upstream asks for scopes this login did not grant; they are requested at the next login (`mcp-sidecar login`, or add them to MCP_SIDECAR_SCOPES)"
                );
                return Ok(None);
            }
            tracing::info!(
                source = self.name,
                scope,
                "the upstream asked for more scopes; requesting them"
            );
            self.acquire(rejected, true).await.map(Some)
        })
    }

    fn login(&self) -> Option<Login> {
        self.login.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn start(self: Arc<Self>) {
        tokio::spawn(self.refresher());
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.generation.subscribe())
    }

    fn status(&self) -> TokenStatus {
        let held = self.held().clone();
        let stats = self.stats();
        let next_refresh = self.refresh_due(&held).map(crate::time::rfc3339);
        TokenStatus {
            source: self.name,
            origin: self.grant.origin(),
            last_obtained: held.obtained_at.map(crate::time::rfc3339),
            refreshes: stats.refreshes,
            last_error: stats.last_error.as_ref().map(|(_, m)| m.clone()),
            expires_at: held.expires_at.map(crate::time::rfc3339),
            next_refresh,
            last_refresh: stats.last_attempt.map(crate::time::rfc3339),
            last_outcome: stats.last_outcome.clone(),
            has_refresh_token: self.oauth.as_ref().map(|_| held.refresh.is_some()),
            scope: held.scope.clone(),
            persisted_in: Some(
                self.store
                    .as_ref()
                    .map(StateStore::describe)
                    .unwrap_or_else(|| "memory only".into()),
            ),
            store: self.store.as_ref().and_then(StateStore::status),
        }
    }
}

/// `mcp-sidecar login`: runs the interactive flow in the foreground and persists the result.
pub async fn login_foreground(manager: &Manager, prompt: &Prompt) -> Result<(), GrantError> {
    let interactive = manager.interactive.clone().ok_or_else(|| {
        GrantError::Config(format!(
            "AUTH={} needs no interactive login; `mcp-sidecar login` is for device_code and authorization_code",
            manager.name
        ))
    })?;
    let never = || -> BoxFuture<'static, bool> { Box::pin(std::future::ready(false)) };
    if let Some(issued) = interactive.login(prompt, &never).await? {
        manager.accept(issued).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant whose first token comes at once and every later one waits for the test to open
    /// `gate`; tokens are `canary-manager-<n>` and live `lifetime`.
    struct Gated {
        obtains: AtomicUsize,
        gate: tokio::sync::Semaphore,
        lifetime: Duration,
        /// Every token request after the first fails at once, as an authorization server
        /// answering 500 does.
        failing: AtomicBool,
    }

    struct Shared(Arc<Gated>);

    impl Grant for Shared {
        fn obtain(&self) -> BoxFuture<'_, Result<Issued, GrantError>> {
            Box::pin(async move {
                let n = self.0.obtains.fetch_add(1, Ordering::SeqCst) + 1;
                if n > 1 && self.0.failing.load(Ordering::SeqCst) {
                    return Err(GrantError::Temporary("HTTP 500".into()));
                }
                if n > 1 {
                    self.0.gate.acquire().await.expect("never closed").forget();
                }
                Ok(Issued {
                    access_token: Secret::new(format!("canary-manager-{n}")),
                    expires_at: Some(SystemTime::now() + self.0.lifetime),
                    refresh_token: None,
                    scope: None,
                })
            })
        }
    }

    fn gated(lifetime: Duration) -> (Arc<Gated>, Arc<Manager>) {
        gated_waiting(lifetime, REFRESH_WAIT)
    }

    fn gated_waiting(lifetime: Duration, wait: Duration) -> (Arc<Gated>, Arc<Manager>) {
        gated_in(None, lifetime, wait)
    }

    /// [`gated`] with a state store.
    fn gated_in(
        store: Option<StateStore>,
        lifetime: Duration,
        wait: Duration,
    ) -> (Arc<Gated>, Arc<Manager>) {
        let grant = Arc::new(Gated {
            obtains: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
            lifetime,
            failing: AtomicBool::new(false),
        });
        let manager = Manager::with_wait(
            Parts {
                name: "command",
                kind: None,
                grant: Box::new(Shared(grant.clone())),
                interactive: None,
                oauth: None,
                store,
                seed: None,
                skew: Duration::from_secs(60),
            },
            wait,
        );
        (grant, manager)
    }

    /// [`gated`] with the OAuth client of a client-credentials configuration, for step-ups.
    fn gated_oauth(lifetime: Duration) -> (Arc<Gated>, Arc<Manager>) {
        let env = [
            ("MCP_SIDECAR_UPSTREAM_URL", "http://127.0.0.1:9/mcp"),
            ("MCP_SIDECAR_AUTH", "client_credentials"),
            ("MCP_SIDECAR_CLIENT_ID", "step-up-client"),
            ("MCP_SIDECAR_CLIENT_SECRET", "canary-step-up-secret+/=&"),
            ("MCP_SIDECAR_TOKEN_URL", "http://127.0.0.1:9/token"),
        ];
        let mut config = crate::config::load(&crate::config::Sources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .expect("a valid client-credentials configuration");
        let crate::config::AuthConfig::OAuth(oauth) = config.upstreams.remove(0).auth else {
            panic!("AUTH=client_credentials is an OAuth configuration");
        };
        let oauth = Arc::new(OAuthClient::new(
            reqwest::Client::new(),
            Arc::new(*oauth),
            url::Url::parse("http://127.0.0.1:9/mcp").expect("a URL"),
        ));
        let grant = Arc::new(Gated {
            obtains: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
            lifetime,
            failing: AtomicBool::new(false),
        });
        let manager = Manager::new(Parts {
            name: "client_credentials",
            kind: None,
            grant: Box::new(Shared(grant.clone())),
            interactive: None,
            oauth: Some(oauth),
            store: None,
            seed: None,
            skew: Duration::from_secs(60),
        });
        (grant, manager)
    }

    /// Two requests refused with `insufficient_scope` at once: the second must get the token
    /// the first asks for, however the two are scheduled. On one thread the first spawns its
    /// token request and yields before that task takes `flight`; without `step_ups` the second
    /// took `flight` first, found the old token and gave up.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_refused_together_share_one_step_up_however_they_are_scheduled() {
        let (grant, manager) = gated_oauth(Duration::from_secs(3600));
        let rejected = manager.token().await.expect("a token").expect("not none");
        grant.gate.add_permits(1);
        let (first, second) = tokio::join!(
            manager.step_up(Some(&rejected), "admin"),
            manager.step_up(Some(&rejected), "admin"),
        );
        let first = first.expect("no error").expect("the first steps up");
        let second = second
            .expect("no error")
            .expect("the second takes the first's token");
        assert_ne!(first, rejected);
        assert_eq!(first, second);
        assert_eq!(grant.obtains.load(Ordering::SeqCst), 2, "one step-up");
    }

    /// Moves the held token's life so that `left` of it remains out of `lifetime`.
    fn age(manager: &Manager, lifetime: Duration, left: Duration) {
        let now = SystemTime::now();
        let mut held = manager.held();
        held.expires_at = Some(now + left);
        held.obtained_at = Some(now + left - lifetime);
    }

    async fn token(manager: &Manager) -> String {
        let token = manager.token().await.expect("a token").expect("not none");
        token.secret().expose().to_string()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_token_about_to_expire_is_not_sent_the_request_waits_for_the_refresh() {
        let lifetime = Duration::from_secs(100);
        let (grant, manager) = gated(lifetime);
        assert_eq!(token(&manager).await, "canary-manager-1");
        // Not expired yet, but inside the margin: a request sent with it could arrive late.
        age(&manager, lifetime, EXPIRY_MARGIN / 2);
        let waiting = tokio::spawn({
            let manager = manager.clone();
            async move { token(&manager).await }
        });
        wait_for("the refresh to start", || {
            grant.obtains.load(Ordering::SeqCst) == 2
        })
        .await;
        grant.gate.add_permits(1);
        assert_eq!(waiting.await.expect("no panic"), "canary-manager-2");
    }

    #[tokio::test]
    async fn inside_the_margin_a_failing_authorization_server_does_not_fail_the_call() {
        let lifetime = Duration::from_secs(100);
        let (grant, manager) = gated(lifetime);
        assert_eq!(token(&manager).await, "canary-manager-1");
        grant.failing.store(true, Ordering::SeqCst);
        age(&manager, lifetime, EXPIRY_MARGIN / 2);
        // The refresh fails, and the held token has not expired: it is sent (DESIGN: transient
        // errors keep the current token while it is valid).
        assert_eq!(token(&manager).await, "canary-manager-1");
        assert!(
            grant.obtains.load(Ordering::SeqCst) >= 2,
            "a refresh was tried"
        );
    }

    /// After a long outage the backoff has grown to a minute; once the token has expired every
    /// call fails until a new one comes, so a call asks again after STARVED_RETRY at most.
    #[tokio::test]
    async fn an_expired_token_cuts_a_long_backoff_short_once_the_server_heals() {
        let lifetime = Duration::from_secs(100);
        let (grant, manager) = gated(lifetime);
        assert_eq!(token(&manager).await, "canary-manager-1");
        age(&manager, lifetime, Duration::ZERO);
        {
            // As after six failed attempts: the next one not due for most of a minute.
            let mut stats = manager.stats();
            stats.failures = 6;
            stats.last_error = Some((true, "HTTP 500".into()));
            stats.retry_at = Some(Instant::now() + Duration::from_secs(50));
            stats.failed_at = Some(Instant::now() - STARVED_RETRY);
        }
        grant.gate.add_permits(1);
        assert_eq!(token(&manager).await, "canary-manager-2");

        // A failure just now keeps the backoff: one attempt per STARVED_RETRY, not per call.
        age(&manager, lifetime, Duration::ZERO);
        {
            let mut stats = manager.stats();
            stats.last_error = Some((true, "HTTP 500".into()));
            stats.retry_at = Some(Instant::now() + Duration::from_secs(50));
            stats.failed_at = Some(Instant::now());
        }
        let before = grant.obtains.load(Ordering::SeqCst);
        assert!(manager.token().await.is_err(), "still backing off");
        assert_eq!(grant.obtains.load(Ordering::SeqCst), before, "no attempt");
    }

    #[tokio::test]
    async fn inside_the_margin_a_hanging_refresh_is_waited_for_only_while_the_token_lasts() {
        let lifetime = Duration::from_secs(100);
        let (grant, manager) = gated(lifetime);
        assert_eq!(token(&manager).await, "canary-manager-1");
        // The refresh hangs (the gate stays closed); the held token lasts one more second.
        age(&manager, lifetime, Duration::from_secs(1));
        let answer = tokio::time::timeout(Duration::from_secs(10), manager.token()).await;
        let sent = answer.expect("the wait ends before the token expires");
        assert_eq!(
            sent.expect("a token").expect("not none").secret().expose(),
            "canary-manager-1"
        );
        assert_eq!(
            grant.obtains.load(Ordering::SeqCst),
            2,
            "the refresh is in flight"
        );
    }

    #[tokio::test]
    async fn the_wait_for_a_refresh_is_bounded_and_the_refresh_goes_on() {
        let lifetime = Duration::from_secs(100);
        let (grant, manager) = gated_waiting(lifetime, Duration::from_millis(50));
        assert_eq!(token(&manager).await, "canary-manager-1");
        age(&manager, lifetime, Duration::ZERO);
        let answer = tokio::time::timeout(Duration::from_secs(10), manager.token()).await;
        match answer.expect("the wait for a refresh is bounded") {
            Err(TokenError::Temporary(message)) => {
                assert!(message.contains("no new one arrived"), "{message}")
            }
            other => panic!("expected a temporary error, got {other:?}"),
        }
        // The token request was not cancelled with the wait: its answer is taken into use.
        grant.gate.add_permits(1);
        wait_for("the new token", || {
            manager
                .valid()
                .is_some_and(|t| t.secret().expose() == "canary-manager-2")
        })
        .await;
        assert_eq!(grant.obtains.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn requests_in_the_skew_window_spawn_one_background_refresh() {
        let lifetime = Duration::from_secs(200);
        let (grant, manager) = gated(lifetime);
        assert_eq!(token(&manager).await, "canary-manager-1");
        // Due for renewal (skew 60 s) and still well valid.
        age(&manager, lifetime, Duration::from_secs(30));
        for _ in 0..200 {
            assert_eq!(token(&manager).await, "canary-manager-1");
        }
        let concurrent: Vec<_> = (0..200)
            .map(|_| {
                let manager = manager.clone();
                tokio::spawn(async move { token(&manager).await })
            })
            .collect();
        for task in concurrent {
            assert_eq!(task.await.expect("no panic"), "canary-manager-1");
        }
        assert_eq!(manager.background_spawned.load(Ordering::SeqCst), 1);
        grant.gate.add_permits(1);
        wait_for("the new token", || {
            manager
                .valid()
                .is_some_and(|t| t.secret().expose() == "canary-manager-2")
        })
        .await;
        assert_eq!(grant.obtains.load(Ordering::SeqCst), 2);
        wait_for("the background flag to clear", || {
            !manager.background.load(Ordering::SeqCst)
        })
        .await;
    }

    #[test]
    fn the_margin_is_five_seconds_or_a_quarter_of_short_lives() {
        assert_eq!(margin(Duration::from_secs(3600)), EXPIRY_MARGIN);
        assert_eq!(margin(Duration::from_secs(8)), Duration::from_secs(2));
        let now = SystemTime::now();
        let held = |left: u64, life: u64| Held {
            access: None,
            expires_at: Some(now + Duration::from_secs(left)),
            obtained_at: Some(now + Duration::from_secs(left) - Duration::from_secs(life)),
            ..Held::default()
        };
        assert!(sendable(&held(6, 3600), now));
        assert!(!sendable(&held(4, 3600), now));
        assert!(sendable(&held(3, 8), now));
        assert!(!sendable(&held(1, 8), now));
    }

    #[test]
    fn a_lower_generation_is_older_and_a_legacy_zero_only_ties_with_zero() {
        assert!(older(2, 3));
        assert!(!older(3, 3));
        assert!(!older(4, 3));
        // An entry from before generations (0) is as new as a held state of a new fleet, and
        // older than any counted one.
        assert!(!older(0, 0));
        assert!(older(0, 1));
    }

    /// A co-tenant of the shared store replays a sealed entry written before generations
    /// existed (generation 0, no re-seed mark): a sidecar holding a counted state keeps it (and
    /// puts it back), rather than rolling back to the entry's spent refresh token.
    #[tokio::test]
    async fn a_replayed_legacy_entry_does_not_roll_back_a_counted_state() {
        let (_grant, manager) = gated(Duration::from_secs(100));
        {
            let mut held = manager.held();
            held.refresh = Some(Secret::new("canary-manager-rt+/=&new"));
            held.generation = 5;
            held.seen_generation = 5;
        }
        let replayed = || Persisted {
            refresh_token: Some(Secret::new("canary-manager-rt+/=&spent")),
            access_token: Some(Secret::new("canary-manager-at+/=&old")),
            generation: 0,
            seeded_at_ms: None,
            ..Persisted::default()
        };
        assert!(
            manager.apply_persisted(Some(replayed())),
            "reported as older, so the held state goes back"
        );
        {
            let held = manager.held();
            assert_eq!(
                held.refresh.as_ref().map(|r| r.expose().to_string()),
                Some("canary-manager-rt+/=&new".into())
            );
            assert_eq!(held.generation, 5);
            assert!(held.access.is_none(), "nothing of the entry was taken");
        }
        // A sidecar that holds no counted state yet (an older fleet's entry, first read) takes
        // it.
        let (_grant, fresh) = gated(Duration::from_secs(100));
        assert!(!fresh.apply_persisted(Some(replayed())));
        assert_eq!(
            fresh
                .held()
                .refresh
                .as_ref()
                .map(|r| r.expose().to_string()),
            Some("canary-manager-rt+/=&spent".into())
        );
    }

    /// The re-seed mark in the entry comes from another host's clock (or from an old entry
    /// replayed into the store): settling is timed from when this sidecar first saw it.
    #[tokio::test]
    async fn seed_settling_counts_on_this_sidecars_clock_not_the_marks() {
        let (_grant, manager) = gated(Duration::from_secs(100));
        let hour = 3_600_000;
        let now_ms = store::to_unix_ms(SystemTime::now());
        let seeded = |mark: u64| Persisted {
            refresh_token: Some(Secret::new("canary-manager-rt+/=&seeded")),
            generation: 3,
            seeded_at_ms: Some(mark),
            ..Persisted::default()
        };
        // A mark an hour old (a slow clock, or a replay) does not settle at once, and one an
        // hour ahead does not hold the refresh for an hour.
        for mark in [now_ms - hour, now_ms + hour] {
            manager.held().seeded = None;
            assert!(!manager.apply_persisted(Some(seeded(mark))));
            let left = settle_left(&manager.held(), Instant::now()).expect("not settled yet");
            assert!(
                left > SEED_SETTLE - Duration::from_millis(500) && left <= SEED_SETTLE,
                "{left:?} to go for a mark {} s off",
                (i128::from(mark) - i128::from(now_ms)) / 1000
            );
            // The mark stays in the entry as it was (older versions read it).
            assert_eq!(manager.to_persist().seeded_at_ms, Some(mark));
        }
        // The same re-seed read again keeps settling from when it was first seen; it is done
        // after SEED_SETTLE on this clock.
        let first = manager.held().seeded.expect("seeded").1;
        assert!(!manager.apply_persisted(Some(seeded(now_ms + hour))));
        assert_eq!(manager.held().seeded.expect("seeded").1, first);
        assert_eq!(settle_left(&manager.held(), first + SEED_SETTLE), None);
        // Another re-seed starts over.
        assert!(!manager.apply_persisted(Some(seeded(now_ms + hour + 1))));
        assert!(manager.held().seeded.expect("seeded").1 > first);
    }

    #[test]
    fn the_wait_for_settling_is_bounded_to_four_settling_times_in_all() {
        assert_eq!(settle_wait(Duration::ZERO, SEED_SETTLE), Some(SEED_SETTLE));
        assert_eq!(
            settle_wait(SETTLE_WAIT - Duration::from_millis(100), SEED_SETTLE),
            Some(Duration::from_millis(100))
        );
        assert_eq!(settle_wait(SETTLE_WAIT, SEED_SETTLE), None);
        assert_eq!(SETTLE_WAIT, SEED_SETTLE * 4);
        // A store re-seeded before each entry settles: the waits add up to SETTLE_WAIT, then
        // the refresh ends.
        let mut waited = Duration::ZERO;
        let mut rounds = 0;
        while let Some(wait) = settle_wait(waited, SEED_SETTLE) {
            waited += wait;
            rounds += 1;
            assert!(rounds < 100, "the wait never ends");
        }
        assert_eq!(waited, SETTLE_WAIT);
    }

    #[test]
    fn the_generation_count_saturates_instead_of_overflowing() {
        let mut held = Held {
            generation: 3,
            seen_generation: u64::MAX,
            ..Held::default()
        };
        held.next_generation();
        assert_eq!(held.generation, u64::MAX);
        assert_eq!(held.seen_generation, u64::MAX);
    }

    /// A state file without a generation (a process of an older version sharing STATE_DIR) is
    /// its rotation and adopted over a counted state: files are not sealed, so refusing it would
    /// guard nothing and cost the grant in an upgrade. (A fleet entry is not: the test above.)
    #[test]
    fn a_legacy_state_file_is_adopted_over_a_counted_state() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = store::Store::open(dir.path(), "tokens-test").expect("writable");
        let (_grant, manager) = gated_in(
            Some(StateStore::Dir(store)),
            Duration::from_secs(100),
            REFRESH_WAIT,
        );
        {
            let mut held = manager.held();
            held.refresh = Some(Secret::new("canary-manager-rt+/=&ours"));
            held.generation = 5;
            held.seen_generation = 5;
        }
        let rotated = Persisted {
            refresh_token: Some(Secret::new("canary-manager-rt+/=&rotated")),
            generation: 0,
            seeded_at_ms: None,
            ..Persisted::default()
        };
        assert!(!manager.apply_persisted(Some(rotated)), "adopted");
        assert_eq!(
            manager
                .held()
                .refresh
                .as_ref()
                .map(|r| r.expose().to_string()),
            Some("canary-manager-rt+/=&rotated".into())
        );
    }

    /// A stored generation beyond `MAX_GENERATION` is refused as damaged, with a message
    /// saying so, and never adopted (nor counted on from).
    #[tokio::test]
    async fn a_stored_generation_beyond_the_maximum_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = store::Store::open(dir.path(), "tokens-test").expect("writable");
        let state = StateStore::Dir(store.clone());
        for generation in [super::super::state::MAX_GENERATION + 1, u64::MAX] {
            store
                .save(&Persisted {
                    access_token: Some(Secret::new("canary-manager-at+/=&far")),
                    generation,
                    ..Persisted::default()
                })
                .expect("saved");
            let error = match state.load().await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("generation {generation} was taken for a state"),
            };
            assert!(error.contains("refused as damaged"), "{error}");
            assert!(error.contains(&generation.to_string()), "{error}");
            assert!(!error.contains("canary"), "{error}");
        }
        // The maximum itself is a state.
        store
            .save(&Persisted {
                generation: super::super::state::MAX_GENERATION,
                ..Persisted::default()
            })
            .expect("saved");
        assert!(state.load().await.expect("a state").is_some());
    }

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        for failures in 1..20 {
            let d = backoff(failures);
            assert!(d >= Duration::from_millis(500), "{d:?}");
            assert!(d <= MAX_BACKOFF.mul_f64(1.5), "{d:?}");
        }
        assert!(backoff(10) >= Duration::from_secs(30));
    }
}
