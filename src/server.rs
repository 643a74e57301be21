//! Wiring: builds the shared state and the router, runs the readiness checker beside the HTTP
//! server, and shuts both down on request with a deadline for in-flight requests.
//!
//! It also owns the client connections, served with hyper's connection builder rather than
//! `axum::serve` because a sidecar on a port anyone nearby may reach must not be locked up by slow
//! or idle clients: a request head must arrive within `HEADER_TIMEOUT`, a connection with
//! no request in flight is closed after `CLIENT_IDLE_TIMEOUT`, and at most `MAX_CONNECTIONS` are
//! open at once (further clients wait in the listen backlog, so none is refused outright). The
//! soft open-files limit is raised to the hard one at start, since each proxied stream holds two
//! descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::app::{App, Apps};
use crate::config::{ClientLimits, Config};
use crate::forwarder::Forwarder;
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::session::Sessions;
use crate::upstream::Upstream;

/// Each upstream's routes carry its own [`App`] as state, so a handler can only ever reach its
/// own upstream; the sidecar's own endpoints see every upstream through [`Apps`].
pub fn router(apps: Arc<Apps>) -> Router {
    let mut router = Router::new();
    for app in &apps.all {
        // `default` keeps today's `/oauth/*`; a named upstream logs in at `/oauth/NAME/*`.
        let oauth = if app.name == crate::config::DEFAULT_UPSTREAM {
            "/oauth".to_string()
        } else {
            format!("/oauth/{}", app.name)
        };
        let routes = Router::new()
            .route(&app.path, crate::trace::layer(any(crate::proxy::handle)))
            .route(
                &format!(
                    "{}{}/{{*endpoint}}",
                    app.path,
                    crate::legacy::LEGACY_SEGMENT
                ),
                crate::trace::layer(any(crate::proxy::handle_legacy)),
            )
            .route(
                &format!("{}{}", app.path, crate::bridge::SSE_SEGMENT),
                crate::trace::layer(any(crate::proxy::handle_sse)),
            )
            .route(
                &format!("{}{}", app.path, crate::bridge::MESSAGE_SEGMENT),
                crate::trace::layer(any(crate::proxy::handle_sse_message)),
            )
            .route(&format!("{oauth}/login"), get(crate::admin::oauth_login))
            .route(
                &format!("{oauth}/callback"),
                get(crate::admin::oauth_callback),
            )
            .with_state(app.clone());
        router = router.merge(routes);
    }
    // MCP Inspector's `--transport sse` turns any URL not ending in `/sse` into `/sse` at the
    // root (`http://127.0.0.1:4510/mcp` becomes `http://127.0.0.1:4510/sse`): with one upstream,
    // that is its SSE front. With several the root names none of them, and stays a 404.
    if let [app] = apps.all.as_slice()
        && app.path != crate::bridge::SSE_SEGMENT
    {
        router = router.merge(
            Router::new()
                .route(
                    crate::bridge::SSE_SEGMENT,
                    crate::trace::layer(any(crate::proxy::handle_sse)),
                )
                .with_state(app.clone()),
        );
    }
    router
        .route("/healthz", get(crate::admin::healthz))
        .route("/ready", get(crate::admin::ready))
        .route("/ready/{name}", get(crate::admin::ready_one))
        .route("/upstreams", get(crate::admin::upstreams))
        .route("/status", get(crate::admin::status))
        .route("/metrics", get(crate::admin::metrics))
        .fallback(crate::admin::not_found)
        // Outermost, so it also covers the fallback and the router's own 405s.
        .layer(axum::middleware::from_fn_with_state(
            apps.clone(),
            crate::admin::host_rule,
        ))
        .with_state(apps)
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
    // Before anything opens files: streams need two descriptors each.
    let open_files = raise_open_files_limit();
    // Secrets loaded with the configuration stay known for scrubbing as long as the process runs.
    crate::secret::seal();
    let metrics = Arc::new(Metrics::new());
    let guard = Arc::new(Guard::new(
        config.allowed_hosts.clone(),
        config.client_token,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started_at = SystemTime::now();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // Err means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let local = listener.local_addr()?;
    let mut all = Vec::with_capacity(config.upstreams.len());
    let mut checkers = Vec::with_capacity(config.upstreams.len());
    for settings in config.upstreams {
        // Each upstream is built from its own settings alone (credential, headers, CA, state
        // directory): nothing here is shared between two of them but the client guard.
        let (upstream, built) = Upstream::start(
            &settings.name,
            settings.auth,
            &settings.upstream,
            &settings.state_dir,
            config.state_store.as_ref(),
        )
        .map_err(|e| ServeError::Setup(format!("upstream {}: {e}", settings.name)))?;
        let readiness = Readiness::new(settings.ready);
        // Its own `upstream` label in the one registry.
        let counted = Arc::new(metrics.for_upstream(&settings.name));
        checkers.push(tokio::spawn(readiness.clone().run_checker(
            upstream.clone(),
            counted.clone(),
            stopped(stop_rx.clone()),
        )));
        tracing::info!(
            listen = %local,
            name = %settings.name,
            path = %settings.path,
            upstream = %crate::net::display_url(upstream.url()),
            auth = upstream.tokens().status().source,
            required = settings.required,
            version = env!("CARGO_PKG_VERSION"),
            "mcp-sidecar listening"
        );
        all.push(Arc::new(App {
            name: settings.name,
            required: settings.required,
            path: settings.path,
            max_body_bytes: config.max_body_bytes,
            guard: guard.clone(),
            upstream: upstream.clone(),
            readiness: readiness.clone(),
            metrics: counted,
            forwarder: Arc::new(Forwarder::new(
                upstream.clone(),
                Sessions::new(config.sessions),
                readiness,
                settings.ready.timeout,
            )),
            legacy: crate::legacy::Endpoints::new(),
            bridges: crate::bridge::Bridges::new(),
            sse_sessions: crate::sse_upstream::Sessions::new(
                config.sessions,
                config.max_body_bytes,
                stop_rx.clone(),
            ),
            bridge_ready_timeout: config.stdio_ready_timeout,
            shutdown_grace: config.shutdown_grace,
            sse_keepalive: config.sse_keepalive,
            shutdown: stop_rx.clone(),
            started_at,
            login: built.manager.zip(built.authorization),
        }));
    }
    let apps = Arc::new(Apps {
        all,
        guard,
        metrics,
        started_at,
    });

    let max_connections = match config.clients.max_connections {
        Some(max) => {
            if max as u64 > default_max_connections(open_files) as u64 {
                tracing::warn!(
                    max_connections = max,
                    open_files,
                    "MCP_SIDECAR_MAX_CONNECTIONS allows more connections than the open-files \
                     limit can hold (two descriptors each); clients may be refused by the kernel"
                );
            }
            max
        }
        None => default_max_connections(open_files),
    };
    let server = serve_clients(
        listener,
        router(apps),
        config.clients,
        max_connections,
        stop_rx,
    );
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
            // Dropping the accept loop drops its JoinSet, which aborts every connection task.
            server.abort();
            tracing::warn!("connections still open after the grace period (streams); closed them")
        }
    }
    for checker in checkers {
        let _ = checker.await;
    }
    Ok(())
}

/// Descriptors kept free for everything but client connections: the listener, log output, state
/// and token files, the authorization server.
const RESERVED_FILES: u64 = 64;
/// Past this the cap only protects memory, which other limits do better.
const MAX_DEFAULT_CONNECTIONS: u64 = 65_536;

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft limit in force: at the
/// common default of 1,024 only about 500 proxied streams fit (two descriptors each).
fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024);
            tracing::warn!(error = %e, limit, "cannot raise the open-files limit; keeping it");
            limit
        }
    }
}

/// The connection cap when `MAX_CONNECTIONS` is not set: half of the descriptors left after the
/// reserve, since a proxied request holds a client and an upstream connection.
fn default_max_connections(open_files: u64) -> usize {
    let half = open_files.saturating_sub(RESERVED_FILES) / 2;
    half.clamp(16, MAX_DEFAULT_CONNECTIONS) as usize
}

/// A connection's requests in flight (streams included, until their body is done or dropped),
/// and since when it has had none: what "idle" means for `CLIENT_IDLE_TIMEOUT`. A long tool call
/// that sends nothing for minutes is in flight, not idle.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    became_idle: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            became_idle: Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                let deadline = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + timeout;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = self.became_idle.notified() => {}
                }
            } else {
                // notify_one keeps a permit when nobody waits yet, so a request that ends
                // between the load above and this wait is not missed.
                self.became_idle.notified().await;
            }
        }
    }
}

/// One request in flight; dropped with its response body (or with the handler, when the client
/// went away first).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            self.0.became_idle.notify_one();
        }
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The accept loop: one task per client connection, at most `max_connections` at once, until
/// `stop` turns true; then every connection is shut down gracefully (an HTTP/1.1 connection
/// after its current response, HTTP/2 with GOAWAY) and this returns once all have closed.
async fn serve_clients(
    listener: TcpListener,
    router: Router,
    limits: ClientLimits,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper starts the header timer as soon as an HTTP/1.1 connection waits for its next
    // request, so it also bounds how long a kept-alive connection may sit silent.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Pings find HTTP/2 peers that vanished without closing (a suspended laptop, a cut route).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    let mut at_capacity = false;
    tracing::debug!(
        max_connections,
        header_timeout_secs = limits.header_timeout.as_secs_f32(),
        idle_timeout_secs = limits.idle_timeout.as_secs_f32(),
        "serving client connections"
    );
    loop {
        // Finished connections are reaped as they go, so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        if at_capacity && permits.available_permits() >= recovered_at(max_connections) {
            at_capacity = false;
            tracing::info!(
                max_connections,
                "client connections are below the limit again"
            );
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Once per episode: a flood at the limit would otherwise log a line per client.
                if !at_capacity {
                    at_capacity = true;
                    tracing::warn!(
                        max_connections,
                        "client connection limit reached: new clients wait until one closes \
                         (MCP_SIDECAR_MAX_CONNECTIONS; slow and idle clients are closed after \
                         MCP_SIDECAR_HEADER_TIMEOUT and MCP_SIDECAR_CLIENT_IDLE_TIMEOUT)"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before it was accepted: do
                // not spin on it.
                tracing::warn!(error = %e, "cannot accept a client connection");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // TCP_NODELAY: without it, Nagle's algorithm holds a small write (an SSE event, a reply
        // body sent after its head) until the previous one is acknowledged, which the client
        // may delay by up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
        }
        connections.spawn(serve_connection(
            tcp,
            router.clone(),
            builder.clone(),
            limits.idle_timeout,
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// How long an idle connection asked to close may take to do so before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Free permits at which the limit counts as left behind: a tenth of the cap, so that a flood
/// hovering at the limit logs once, not at every connection that closes.
fn recovered_at(max_connections: usize) -> usize {
    (max_connections / 10).max(1)
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    router: Router,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let activity = Activity::new();
    let tracked = activity.clone();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let in_flight = tracked.begin();
            let mut router = router.clone();
            async move {
                let response =
                    tower_service::Service::call(&mut router, request.map(Body::new)).await?;
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
    let connection = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(connection);
    let mut closing = false;
    // Set when an idle connection was asked to close: an HTTP/2 peer may never complete the
    // graceful close (it leaves the GOAWAY's ping unanswered, or sits in a half-sent HEADERS),
    // and with nothing in flight there is nothing to wait for.
    let mut idle_close_by: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    // Timeouts and clients that vanish end up here; nothing to act on.
                    tracing::debug!(error = %e, "client connection ended");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(idle_timeout), if !closing => {
                tracing::debug!(idle_secs = idle_timeout.as_secs_f32(), "closing an idle client connection");
                closing = true;
                connection.as_mut().graceful_shutdown();
                idle_close_by = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(idle_close_by.unwrap_or_else(tokio::time::Instant::now)), if idle_close_by.is_some() => {
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    tracing::debug!("an idle client connection did not close when asked; dropped it");
                    return;
                }
                // A request arrived before the close took effect: the graceful close ends after it.
                idle_close_by = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_upstream_connections() {
        assert_eq!(default_max_connections(256), 96);
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(10), 16);
        assert_eq!(default_max_connections(u64::MAX), 65_536);
    }
}
