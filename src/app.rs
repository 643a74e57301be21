//! The state every handler shares ([`App`]), in a module of its own so that the handlers
//! (`proxy`, `admin`) and the wiring that builds it (`server`) depend on it, not on each other.
//!
//! One [`App`] per upstream: its own upstream client and credential, sessions, legacy endpoints,
//! readiness and login, so nothing of one upstream can reach another's requests. [`Apps`] holds
//! them all for the endpoints that speak of every upstream (`/ready`, `/status`, `/upstreams`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::upstream::Upstream;

/// Every upstream's [`App`], in configuration (name) order.
pub struct Apps {
    pub all: Vec<Arc<App>>,
    /// Shared by every upstream: one listener, one client rule.
    pub guard: Arc<Guard>,
    pub metrics: Arc<Metrics>,
    pub started_at: SystemTime,
}

impl Apps {
    /// The upstream called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<App>> {
        self.all.iter().find(|app| app.name == name)
    }
}

/// The state of one upstream's handlers.
pub struct App {
    /// `default` for the single-upstream form, else its `[upstreams.NAME]`.
    pub name: String,
    /// Whether `/ready` waits for this upstream (`REQUIRED`).
    pub required: bool,
    pub path: String,
    pub max_body_bytes: usize,
    pub guard: Arc<Guard>,
    pub upstream: Arc<Upstream>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// The pipeline to the upstream (one per upstream once there are several).
    pub forwarder: Arc<crate::forwarder::Forwarder>,
    pub legacy: Arc<crate::legacy::Endpoints>,
    /// The Streamable HTTP clients bridged to this upstream when it speaks HTTP+SSE.
    pub sse_sessions: Arc<crate::sse_upstream::Sessions>,
    /// The legacy SSE clients bridged to this (Streamable HTTP) upstream, at `PATH/sse`.
    pub bridges: Arc<crate::bridge::Bridges>,
    /// How long a bridged client's `initialize` waits for readiness (`STDIO_READY_TIMEOUT`).
    pub bridge_ready_timeout: Duration,
    pub shutdown_grace: Duration,
    pub sse_keepalive: Duration,
    /// Becomes true when shutdown begins (GET streams end at their next event boundary).
    pub shutdown: watch::Receiver<bool>,
    pub started_at: SystemTime,
    /// With `AUTH=authorization_code`: the manager and the grant behind `/oauth/*`.
    pub login: Option<(
        Arc<crate::token::Manager>,
        Arc<crate::token::AuthorizationCode>,
    )>,
}
