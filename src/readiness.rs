//! Readiness: what `/ready` reports and the background checker that decides it.
//!
//! The checker performs a real MCP handshake ([`crate::handshake`]) at start, then on an interval
//! while healthy, with a short backoff while not, and at once when the proxy reports an upstream
//! failure or, while not ready, a call that succeeded (so `/ready` follows a recovery at once). While
//! nothing listens at the upstream's address it looks again every 100 ms: a refused connection
//! costs the upstream nothing, and an agent waiting on `/ready` starts right after the upstream
//! comes up. Triggered checks are full handshakes, so they are spaced a second apart among
//! themselves. Probes only read the last result: a flood of `/ready` requests never reaches the
//! upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::config::ReadyConfig;
use crate::handshake::{self, HandshakeError, Mode, ServerInfo};
use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamError};

pub use crate::failure::Reason;
pub use crate::token::Login;

/// The body of `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ready: bool,
    pub reason: Reason,
    pub detail: String,
    /// When the current reason began (RFC 3339).
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
}

/// What the checker knows; `/ready` and `/status` read it.
#[derive(Debug, Clone)]
pub struct State {
    pub reason: Reason,
    pub detail: String,
    pub since: SystemTime,
    pub login: Option<Login>,
    pub last_success: Option<Instant>,
    pub last_success_at: Option<SystemTime>,
    pub last_attempt_at: Option<SystemTime>,
    pub server: Option<ServerInfo>,
}

/// Shared readiness handle.
pub struct Readiness {
    state: watch::Sender<State>,
    wake: Notify,
    config: ReadyConfig,
    /// Set when the proxy asked for a check; cleared when the checker starts one, so a burst of
    /// failures wakes the checker once.
    requested: AtomicBool,
    /// Set when a proxied call succeeded while not ready (cleared like `requested`).
    recovery: AtomicBool,
}

/// Why a check runs; logged at debug, and what decides the spacing of triggered checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Start,
    Interval,
    Retry,
    /// The last attempt found nothing listening (connection refused).
    RefusedRetry,
    TokenChanged,
    ProxyFailure,
    ProxyRecovered,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Interval => "interval",
            Self::Retry => "retry",
            Self::RefusedRetry => "refused_retry",
            Self::TokenChanged => "token_changed",
            Self::ProxyFailure => "proxy_failure",
            Self::ProxyRecovered => "proxy_recovered",
        }
    }

    fn triggered(self) -> bool {
        matches!(
            self,
            Self::TokenChanged | Self::ProxyFailure | Self::ProxyRecovered
        )
    }
}

/// How soon after one triggered check another may run, so a burst of failing requests causes one
/// handshake, not one per request. A trigger after a scheduled check runs at once.
const MIN_TRIGGERED_SPACING: Duration = Duration::from_secs(1);
/// Tells the token source that its current token was just accepted by the upstream.
async fn confirm_current_token(upstream: &crate::upstream::Upstream) {
    if let Ok(Some(token)) = upstream.tokens().token().await {
        upstream.tokens().accepted(&token);
    }
}

/// Retry interval while the upstream refuses connections.
const REFUSED_RETRY: Duration = Duration::from_millis(100);
/// Retry schedule while not ready: fast at first, never slower than this.
const UNREADY_BACKOFF_START: Duration = Duration::from_millis(250);
const UNREADY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// While not ready, repeat the reason in the log this often so a long wait shows progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

impl Readiness {
    pub fn new(config: ReadyConfig) -> Arc<Self> {
        let (state, _) = watch::channel(State {
            reason: Reason::Starting,
            detail: "the first handshake with the upstream has not completed yet".into(),
            since: SystemTime::now(),
            login: None,
            last_success: None,
            last_success_at: None,
            last_attempt_at: None,
            server: None,
        });
        Arc::new(Self {
            state,
            wake: Notify::new(),
            config,
            requested: AtomicBool::new(false),
            recovery: AtomicBool::new(false),
        })
    }

    /// The proxy saw a call succeed: while not ready, that is news (a credential accepted again,
    /// the upstream back), so check at once instead of at the next retry.
    pub fn recovered(&self) {
        if self.state.borrow().reason != Reason::Ready
            && !self.recovery.swap(true, Ordering::AcqRel)
        {
            self.wake.notify_one();
        }
    }

    /// The proxy saw the upstream fail: check again soon, instead of at the next interval.
    pub fn trigger(&self) {
        if !self.requested.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Changes of [`Readiness::state`], for a front that waits for the upstream (`stdio`).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Whether the last successful handshake found the 2024-11-05 HTTP+SSE transport.
    pub fn speaks_sse_transport(&self) -> bool {
        self.state
            .borrow()
            .server
            .as_ref()
            .is_some_and(|s| s.mode == Mode::SseTransport)
    }

    /// The `/ready` body. A success older than one interval (plus the check's own timeout) no
    /// longer counts: a stuck checker must not keep reporting ready.
    pub fn report(&self) -> Report {
        let state = self.state.borrow();
        let stale_after = self.config.interval + self.config.timeout + Duration::from_secs(1);
        if state.reason == Reason::Ready
            && state
                .last_success
                .is_none_or(|at| at.elapsed() > stale_after)
        {
            return Report {
                ready: false,
                reason: Reason::HandshakeFailed,
                detail: format!(
                    "no successful handshake in the last {}s",
                    stale_after.as_secs()
                ),
                since: crate::time::rfc3339(state.since),
                login: None,
            };
        }
        Report {
            ready: state.reason == Reason::Ready,
            reason: state.reason,
            detail: state.detail.clone(),
            since: crate::time::rfc3339(state.since),
            login: state.login.clone(),
        }
    }

    /// Runs checks until `shutdown` resolves.
    pub async fn run_checker(
        self: Arc<Self>,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut token_changes = upstream.tokens().changes();
        let mut mode = Mode::Unknown;
        let mut backoff = UNREADY_BACKOFF_START;
        let mut last_progress = Instant::now();
        let mut cause = Cause::Start;
        loop {
            self.requested.store(false, Ordering::Release);
            self.recovery.store(false, Ordering::Release);
            tracing::debug!(cause = cause.as_str(), "readiness check");
            let started = Instant::now();
            let outcome = tokio::time::timeout(
                self.config.timeout,
                crate::trace::handshake(handshake::run(&upstream, &mut mode), |r| {
                    if r.is_ok() { "ready" } else { "failed" }
                }),
            )
            .await;
            let refused = matches!(
                outcome,
                Ok(Err(HandshakeError::Upstream(
                    UpstreamError::ConnectionRefused(_)
                )))
            );
            let (reason, detail, server) = classify(outcome, self.config.timeout);
            metrics.record_handshake(reason == Reason::Ready);
            if reason == Reason::Ready {
                // The token works: a token obtained after a rejection is confirmed, so a later
                // 401 may force a refresh again. The proxy no longer resends a token the source
                // could not replace, which is where it used to be confirmed.
                confirm_current_token(&upstream).await;
            }
            let login = (reason == Reason::AuthRequired)
                .then(|| upstream.tokens().login())
                .flatten();
            self.update(reason, detail, server, login, &mut last_progress);

            let (wait, scheduled) = if reason == Reason::Ready {
                backoff = UNREADY_BACKOFF_START;
                (self.config.interval, Cause::Interval)
            } else if refused {
                // Nothing listens yet: no handshake reached the upstream, so no backoff.
                backoff = UNREADY_BACKOFF_START;
                (REFUSED_RETRY.min(self.config.interval), Cause::RefusedRetry)
            } else {
                let wait = backoff.min(self.config.interval);
                backoff = (backoff * 2).min(UNREADY_BACKOFF_MAX);
                (wait, Cause::Retry)
            };
            let previous = cause;
            cause = tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => scheduled,
                // A new token (a login completed) or a failed refresh.
                _ = token_changed(&mut token_changes) => Cause::TokenChanged,
                _ = self.wake.notified() => {
                    if self.recovery.load(Ordering::Acquire) {
                        Cause::ProxyRecovered
                    } else {
                        Cause::ProxyFailure
                    }
                }
            };
            // Triggered checks are spaced among themselves (a recovery only after a recovery:
            // it must not wait behind the failure that came just before it).
            let spaced = match cause {
                Cause::ProxyRecovered => previous == Cause::ProxyRecovered,
                other => other.triggered() && previous.triggered(),
            };
            let since = started.elapsed();
            if spaced && since < MIN_TRIGGERED_SPACING {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(MIN_TRIGGERED_SPACING - since) => {}
                }
            }
        }
    }

    fn update(
        &self,
        reason: Reason,
        detail: String,
        server: Option<ServerInfo>,
        login: Option<Login>,
        last_progress: &mut Instant,
    ) {
        let now = SystemTime::now();
        // Details quote the upstream (error messages, server names), which may echo a secret.
        let detail = crate::secret::scrub(&detail);
        self.state.send_modify(|state| {
            let changed = state.reason != reason;
            if changed {
                state.since = now;
                match reason {
                    Reason::Ready => tracing::info!(
                        reason = reason.as_str(),
                        detail = %detail,
                        "upstream ready"
                    ),
                    _ => tracing::warn!(
                        reason = reason.as_str(),
                        detail = %detail,
                        "upstream not ready"
                    ),
                }
                *last_progress = Instant::now();
            } else if reason != Reason::Ready && last_progress.elapsed() >= PROGRESS_EVERY {
                let waited = now
                    .duration_since(state.since)
                    .unwrap_or_default()
                    .as_secs();
                tracing::info!(
                    reason = reason.as_str(),
                    detail = %detail,
                    waited_secs = waited,
                    "upstream still not ready"
                );
                *last_progress = Instant::now();
            }
            state.reason = reason;
            state.detail = detail;
            state.login = login;
            state.last_attempt_at = Some(now);
            if let Some(server) = server {
                state.last_success = Some(Instant::now());
                state.last_success_at = Some(now);
                state.server = Some(server);
            }
        });
    }
}

/// Resolves when the token source reports a change; never, for sources without changes.
async fn token_changed(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The source is gone (shutdown); stop listening.
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

fn classify(
    outcome: Result<Result<ServerInfo, HandshakeError>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> (Reason, String, Option<ServerInfo>) {
    match outcome {
        Err(_) => (
            crate::failure::Failure::HandshakeTimeout.ready_reason(),
            format!(
                "the handshake did not complete within {}s",
                timeout.as_secs_f32()
            ),
            None,
        ),
        Ok(Ok(server)) => {
            let detail = format!(
                "handshake with {}{} succeeded (protocol {})",
                server.server_name,
                server
                    .server_version
                    .as_deref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                server.protocol_version
            );
            (Reason::Ready, detail, Some(server))
        }
        Ok(Err(e)) => {
            let reason = e.failure().ready_reason();
            let detail = match e {
                // The reason already says "unreachable"; the detail says why.
                HandshakeError::Upstream(
                    UpstreamError::Unreachable(cause) | UpstreamError::ConnectionRefused(cause),
                ) => cause,
                other => other.to_string(),
            };
            (reason, detail, None)
        }
    }
}
