//! Counters for `/metrics` (Prometheus text format) and the totals `/status` shows.
//!
//! Label values come from small fixed sets (HTTP method, status class, failure reason), never from
//! request data, so the series count stays bounded whatever clients send.

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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: HandshakeResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum HandshakeResult {
    success,
    failure,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    ready: Gauge,
    open_streams: Gauge,
}

/// Totals for `/status`.
#[derive(Debug, Serialize)]
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
        let ready = Gauge::default();
        let open_streams = Gauge::default();
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
            registry,
            requests,
            handshakes,
            ready,
            open_streams,
        }
    }

    pub fn record_request(&self, method: &http::Method, outcome: Outcome) {
        crate::trace::outcome(&outcome);
        self.requests
            .get_or_create(&RequestLabels {
                method: HttpMethod::of(method),
                outcome,
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
            .get_or_create(&HandshakeLabels { result })
            .inc();
        self.ready.set(i64::from(ok));
    }

    /// Counts a streaming response while the returned guard lives.
    pub fn stream_guard(&self) -> StreamGuard {
        self.open_streams.inc();
        StreamGuard(self.open_streams.clone())
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the Result is fmt::Write's signature.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn totals(&self) -> Totals {
        let count = |outcome: Outcome| -> u64 {
            METHODS
                .iter()
                .map(|m| {
                    self.requests
                        .get_or_create(&RequestLabels {
                            method: m.clone(),
                            outcome,
                        })
                        .get()
                })
                .sum()
        };
        let all: u64 = OUTCOMES.iter().map(|o| count(*o)).sum();
        let handshakes = |result| {
            self.handshakes
                .get_or_create(&HandshakeLabels { result })
                .get()
        };
        Totals {
            requests: all,
            requests_failed: all - count(Outcome::forwarded),
            handshakes_ok: handshakes(HandshakeResult::success),
            handshakes_failed: handshakes(HandshakeResult::failure),
            open_streams: self.open_streams.get(),
        }
    }
}

pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
