//! Counters for `/metrics` (Prometheus text format) and the totals `/status` shows.
//!
//! Label values come from small fixed sets (HTTP method, status class, failure reason) and the
//! configured upstream names, never from request data, so the series count stays bounded whatever
//! clients send. Every series has an `upstream` label (`default` in the single-upstream form):
//! one registry for the sidecar, one [`Metrics`] handle per upstream ([`Metrics::for_upstream`]).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HttpMethod {
    POST,
    GET,
    DELETE,
    OTHER,
}

impl HttpMethod {
    pub fn of(method: &http::Method) -> Self {
        match *method {
            http::Method::POST => Self::POST,
            http::Method::GET => Self::GET,
            http::Method::DELETE => Self::DELETE,
            _ => Self::OTHER,
        }
    }
}

/// How a proxied request ended, as the client saw it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// The upstream's answer was passed on (any status).
    forwarded,
    /// The sidecar answered itself because the upstream could not be used.
    upstream_unreachable,
    upstream_auth_rejected,
    auth_required,
    /// The upstream answered, but not like a working MCP endpoint (a redirect).
    handshake_failed,
    /// The upstream refused the request itself (403 without a Bearer challenge); its answer was
    /// passed on as a JSON-RPC error.
    upstream_forbidden,
    /// The sidecar refused the request (Host, Origin, client token, body size, method).
    refused,
    /// The tool policy (`TOOLS_ALLOW` / `TOOLS_DENY`) refused a `tools/call`; it was not sent.
    tool_refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: HttpMethod,
    outcome: Outcome,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: HandshakeResult,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum HandshakeResult {
    success,
    failure,
}

/// One upstream's view of the sidecar's metrics: it counts under its own `upstream` label, and
/// [`Metrics::encode`] writes every upstream's series.
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    ready: Family<UpstreamLabels, Gauge>,
    open_streams: Family<UpstreamLabels, Gauge>,
    upstream: String,
}

/// Totals for `/status`.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub requests_failed: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub open_streams: i64,
}

const OUTCOMES: [Outcome; 8] = [
    Outcome::forwarded,
    Outcome::upstream_unreachable,
    Outcome::upstream_auth_rejected,
    Outcome::auth_required,
    Outcome::handshake_failed,
    Outcome::upstream_forbidden,
    Outcome::refused,
    Outcome::tool_refused,
];
const METHODS: [HttpMethod; 4] = [
    HttpMethod::POST,
    HttpMethod::GET,
    HttpMethod::DELETE,
    HttpMethod::OTHER,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcp_sidecar");
        let requests = Family::<RequestLabels, Counter>::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let ready = Family::<UpstreamLabels, Gauge>::default();
        let open_streams = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "requests",
            "Requests to the MCP endpoint, by method and how they ended",
            requests.clone(),
        );
        registry.register(
            "handshakes",
            "Readiness handshakes with the upstream, by result",
            handshakes.clone(),
        );
        registry.register(
            "ready",
            "1 while the last handshake with the upstream succeeded",
            ready.clone(),
        );
        registry.register(
            "open_streams",
            "Responses currently streaming from the upstream to a client",
            open_streams.clone(),
        );
        Self {
            registry: std::sync::Arc::new(registry),
            requests,
            handshakes,
            ready,
            open_streams,
            upstream: crate::config::DEFAULT_UPSTREAM.to_string(),
        }
    }

    /// The same registry, counting for upstream `name`.
    pub fn for_upstream(&self, name: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            requests: self.requests.clone(),
            handshakes: self.handshakes.clone(),
            ready: self.ready.clone(),
            open_streams: self.open_streams.clone(),
            upstream: name.to_string(),
        }
    }

    fn labels(&self) -> UpstreamLabels {
        UpstreamLabels {
            upstream: self.upstream.clone(),
        }
    }

    fn streams(&self) -> Gauge {
        self.open_streams.get_or_create(&self.labels()).clone()
    }

    pub fn record_request(&self, method: &http::Method, outcome: Outcome) {
        crate::trace::outcome(&outcome);
        self.requests
            .get_or_create(&RequestLabels {
                method: HttpMethod::of(method),
                outcome,
                upstream: self.upstream.clone(),
            })
            .inc();
    }

    pub fn record_handshake(&self, ok: bool) {
        let result = if ok {
            HandshakeResult::success
        } else {
            HandshakeResult::failure
        };
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result,
                upstream: self.upstream.clone(),
            })
            .inc();
        self.ready.get_or_create(&self.labels()).set(i64::from(ok));
    }

    /// Counts a streaming response while the returned guard lives.
    pub fn stream_guard(&self) -> StreamGuard {
        let gauge = self.streams();
        gauge.inc();
        StreamGuard(gauge)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the Result is fmt::Write's signature.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// This upstream's totals.
    pub fn totals(&self) -> Totals {
        let count = |outcome: Outcome| -> u64 {
            METHODS
                .iter()
                .map(|m| {
                    self.requests
                        .get_or_create(&RequestLabels {
                            method: m.clone(),
                            outcome,
                            upstream: self.upstream.clone(),
                        })
                        .get()
                })
                .sum()
        };
        let all: u64 = OUTCOMES.iter().map(|o| count(*o)).sum();
        let handshakes = |result| {
            self.handshakes
                .get_or_create(&HandshakeLabels {
                    result,
                    upstream: self.upstream.clone(),
                })
                .get()
        };
        Totals {
            requests: all,
            requests_failed: all - count(Outcome::forwarded),
            handshakes_ok: handshakes(HandshakeResult::success),
            handshakes_failed: handshakes(HandshakeResult::failure),
            open_streams: self.streams().get(),
        }
    }
}

impl Totals {
    /// Several upstreams' totals together (the sidecar's).
    pub fn sum(all: impl IntoIterator<Item = Totals>) -> Self {
        all.into_iter().fold(Self::default(), |a, b| Self {
            requests: a.requests + b.requests,
            requests_failed: a.requests_failed + b.requests_failed,
            handshakes_ok: a.handshakes_ok + b.handshakes_ok,
            handshakes_failed: a.handshakes_failed + b.handshakes_failed,
            open_streams: a.open_streams + b.open_streams,
        })
    }
}

pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
