//! Wiring: builds the shared state and the router, runs the readiness checker beside the HTTP
//! server, and shuts both down on request with a deadline for in-flight requests.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::session::Sessions;
use crate::upstream::Upstream;

/// State shared by every handler.
pub struct App {
    pub path: String,
    pub max_body_bytes: usize,
    pub guard: Guard,
    pub upstream: Arc<Upstream>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub sessions: Sessions,
    pub legacy: Arc<crate::legacy::Endpoints>,
    pub sse_keepalive: Duration,
    /// Bound on replaying a forgotten session's initialize (other requests of it wait meanwhile).
    pub reinit_timeout: Duration,
    /// Becomes true when shutdown begins (GET streams end at their next event boundary).
    pub shutdown: watch::Receiver<bool>,
    pub started_at: SystemTime,
    /// With `AUTH=authorization_code`: the manager and the grant behind `/oauth/*`.
    pub login: Option<(
        Arc<crate::token::Manager>,
        Arc<crate::token::AuthorizationCode>,
    )>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(&app.path, any(crate::proxy::handle))
        .route(
            &format!(
                "{}{}/{{*endpoint}}",
                app.path,
                crate::legacy::LEGACY_SEGMENT
            ),
            any(crate::proxy::handle_legacy),
        )
        .route("/healthz", get(crate::admin::healthz))
        .route("/ready", get(crate::admin::ready))
        .route("/status", get(crate::admin::status))
        .route("/metrics", get(crate::admin::metrics))
        .route("/oauth/login", get(crate::admin::oauth_login))
        .route("/oauth/callback", get(crate::admin::oauth_callback))
        .fallback(crate::admin::not_found)
        .with_state(app)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Setup(String),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting connections and gives
/// in-flight requests `config.shutdown_grace` to finish. Open SSE streams would otherwise hold
/// the process forever, so the deadline is firm.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Secrets loaded with the configuration stay known for scrubbing as long as the process runs.
    crate::secret::seal();
    let built = crate::token::build(config.auth, &config.upstream, &config.state_dir)
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    built.source.clone().start();
    let upstream =
        Arc::new(Upstream::new(&config.upstream, built.source).map_err(ServeError::Setup)?);
    let readiness = Readiness::new(config.ready);
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        path: config.path.clone(),
        max_body_bytes: config.max_body_bytes,
        guard: Guard::new(config.allowed_hosts.clone(), config.client_token),
        upstream: upstream.clone(),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        sessions: Sessions::new(),
        legacy: crate::legacy::Endpoints::new(),
        sse_keepalive: config.sse_keepalive,
        reinit_timeout: config.ready.timeout,
        shutdown: stop_rx.clone(),
        started_at: SystemTime::now(),
        login: built.manager.zip(built.authorization),
    });

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // Err means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let checker =
        tokio::spawn(readiness.run_checker(upstream.clone(), metrics, stopped(stop_rx.clone())));

    let local = listener.local_addr()?;
    tracing::info!(
        listen = %local,
        path = %config.path,
        upstream = %crate::upstream::display_url(upstream.url()),
        auth = upstream.tokens().status().source,
        version = env!("CARGO_PKG_VERSION"),
        "mcp-sidecar listening"
    );

    // TCP_NODELAY on every client connection: without it, Nagle's algorithm holds a small write
    // (an SSE event, a reply body sent after its head) until the previous one is acknowledged,
    // which the client may delay by up to 40 ms. axum leaves the option off by default.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
        }
    });
    let server = axum::serve(listener, router(app))
        .with_graceful_shutdown(stopped(stop_rx))
        .into_future();
    let mut server = tokio::spawn(server);

    tokio::select! {
        result = &mut server => {
            // The server ended on its own: a listener error.
            let _ = stop_tx.send(true);
            return result.map_err(|e| ServeError::Setup(format!("server task failed: {e}")))?.map_err(ServeError::Io);
        }
        () = shutdown => {}
    }
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs_f32(),
        "shutting down: no new connections, waiting for in-flight requests"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(_) => tracing::info!("all connections closed; stopped"),
        Err(_) => {
            server.abort();
            tracing::warn!("connections still open after the grace period (streams); closed them")
        }
    }
    let _ = checker.await;
    Ok(())
}
