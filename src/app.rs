//! The state every handler shares ([`App`]), in a module of its own so that the handlers
//! (`proxy`, `admin`) and the wiring that builds it (`server`) depend on it, not on each other.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::upstream::Upstream;

/// State shared by every handler.
pub struct App {
    pub path: String,
    pub max_body_bytes: usize,
    pub guard: Guard,
    pub upstream: Arc<Upstream>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// The pipeline to the upstream (one per upstream once there are several).
    pub forwarder: crate::forwarder::Forwarder,
    pub legacy: Arc<crate::legacy::Endpoints>,
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
