//! The one vocabulary for why the sidecar could not use the upstream.
//!
//! Every failure of a proxied request or a readiness handshake is first classified as a
//! [`Failure`] (`UpstreamError::failure`, `HandshakeError::failure`); the client's HTTP status
//! and JSON-RPC code, the `/ready` reason, the metrics outcome label and the reason in log lines
//! are all derived here. Deriving them from one value means a failure cannot be "unreachable" to
//! the metrics and "handshake failed" to `/ready`, as a redirect once was.
//!
//! The sidecar's refusals of a client request (Host, Origin, client token, size, method) are not
//! failures of the upstream and have their own vocabulary ([`crate::guard::Refusal`]).

use http::StatusCode;
use serde::Serialize;

use crate::jsonrpc::Code;
use crate::metrics::Outcome;

/// The `/ready` reasons (README, DESIGN.md), plus `ready`. It lives here, not in `readiness`, so
/// that [`Failure::ready_reason`] can name it without this module depending on the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Ready,
    Starting,
    AuthRequired,
    UpstreamUnreachable,
    UpstreamAuthRejected,
    HandshakeFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Starting => "starting",
            Self::AuthRequired => "auth_required",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamAuthRejected => "upstream_auth_rejected",
            Self::HandshakeFailed => "handshake_failed",
        }
    }
}

/// Why a request to the upstream (proxied, or the readiness handshake) did not get a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No credential to send: token missing, login pending, a broken `HEADERS_FILE` (which
    /// usually holds a credential too).
    AuthRequired,
    /// The authorization server cannot deliver a token and the held one has expired: nobody
    /// needs to log in, the request must wait.
    TokenEndpointUnavailable,
    /// DNS, connect, TLS or a reset: the upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream sent nothing for `READ_TIMEOUT`.
    UpstreamTimeout,
    /// A gateway in front of the upstream answered the handshake 502/503/504.
    GatewayUnavailable,
    /// The handshake did not complete within `READY_TIMEOUT`.
    HandshakeTimeout,
    /// The upstream redirected somewhere the sidecar does not follow: `UPSTREAM_URL` is not the
    /// MCP endpoint. The upstream answered, so this is not "unreachable".
    UpstreamRedirected,
    /// The upstream answered, but not like a working MCP server.
    HandshakeFailed,
    /// The upstream refused the sidecar's credential, also after a fresh one.
    UpstreamAuthRejected,
    /// The upstream answered 403 without a Bearer challenge (`invalid_token`,
    /// `insufficient_scope`): a tool denied, a policy, an Origin rule. Not about the sidecar's
    /// credential, so it is neither marked rejected nor does it make `/ready` look again; the
    /// client gets the upstream's answer, never a bare 403.
    UpstreamForbidden,
}

impl Failure {
    /// Every variant, for the agreement test and for pre-registering metric series.
    pub const ALL: [Failure; 10] = [
        Failure::AuthRequired,
        Failure::TokenEndpointUnavailable,
        Failure::UpstreamUnreachable,
        Failure::UpstreamTimeout,
        Failure::GatewayUnavailable,
        Failure::HandshakeTimeout,
        Failure::UpstreamRedirected,
        Failure::HandshakeFailed,
        Failure::UpstreamAuthRejected,
        Failure::UpstreamForbidden,
    ];

    /// The specific reason: `data.reason` of the sidecar's JSON-RPC error, and `reason` in the
    /// proxy's log line.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AuthRequired => "auth_required",
            Self::TokenEndpointUnavailable => "token_endpoint_unavailable",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::GatewayUnavailable => "gateway_unavailable",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::UpstreamRedirected => "upstream_redirected",
            Self::HandshakeFailed => "handshake_failed",
            Self::UpstreamAuthRejected => "upstream_auth_rejected",
            Self::UpstreamForbidden => "upstream_forbidden",
        }
    }

    /// Whether a proxied request failing this way says something about the upstream's health or
    /// the credential, so `/ready` should look again at once. A refusal of one request does not.
    pub fn affects_readiness(self) -> bool {
        !matches!(self, Self::UpstreamForbidden)
    }

    /// What `/ready` says while the handshake fails this way.
    pub fn ready_reason(self) -> Reason {
        match self {
            Self::AuthRequired => Reason::AuthRequired,
            Self::TokenEndpointUnavailable
            | Self::UpstreamUnreachable
            | Self::UpstreamTimeout
            | Self::GatewayUnavailable
            | Self::HandshakeTimeout => Reason::UpstreamUnreachable,
            // Only when the handshake itself is refused: the server will not serve the sidecar.
            Self::UpstreamRedirected | Self::HandshakeFailed | Self::UpstreamForbidden => {
                Reason::HandshakeFailed
            }
            Self::UpstreamAuthRejected => Reason::UpstreamAuthRejected,
        }
    }

    /// The metrics `outcome` label of a proxied request that failed this way: the `/ready`
    /// reason's name, so a dashboard and `/ready` tell the same story.
    pub fn outcome(self) -> Outcome {
        if self == Self::UpstreamForbidden {
            return Outcome::upstream_forbidden;
        }
        match self.ready_reason() {
            Reason::AuthRequired => Outcome::auth_required,
            Reason::UpstreamUnreachable => Outcome::upstream_unreachable,
            Reason::UpstreamAuthRejected => Outcome::upstream_auth_rejected,
            // Ready and Starting are not failures; no variant maps there (see the test).
            Reason::HandshakeFailed | Reason::Ready | Reason::Starting => Outcome::handshake_failed,
        }
    }

    /// The JSON-RPC error code of the sidecar's reply: one per `/ready` reason, and one for a
    /// refusal whose body was not a JSON-RPC error (one that was is passed on with its own code).
    pub fn code(self) -> Code {
        if self == Self::UpstreamForbidden {
            return Code::UpstreamForbidden;
        }
        match self.ready_reason() {
            Reason::AuthRequired => Code::AuthRequired,
            Reason::UpstreamUnreachable => Code::UpstreamUnreachable,
            Reason::UpstreamAuthRejected => Code::UpstreamAuthRejected,
            Reason::HandshakeFailed | Reason::Ready | Reason::Starting => Code::UpstreamFailed,
        }
    }

    /// The HTTP status of the sidecar's reply: never 401 nor 403 (Claude Code would start its
    /// own OAuth, or mark the server as needing authentication), never 404 (it would give the
    /// server up, PROTOCOL.md). 503 when waiting helps (a credential to come), 504 for silence,
    /// 502 for everything else about the upstream.
    ///
    /// A refusal of one request ([`Failure::UpstreamForbidden`]) is answered as an MCP server
    /// answers a tool-level refusal: 200 with the JSON-RPC error when the request carried an id
    /// (`has_id`); without one (a notification, GET, DELETE) 400, the status the transport
    /// prescribes for input a server cannot accept. A 5xx would read as a broken server and make
    /// clients reconnect.
    pub fn status(self, has_id: bool) -> StatusCode {
        match self {
            Self::UpstreamForbidden if has_id => StatusCode::OK,
            Self::UpstreamForbidden => StatusCode::BAD_REQUEST,
            Self::AuthRequired | Self::TokenEndpointUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout | Self::HandshakeTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnreachable
            | Self::GatewayUnavailable
            | Self::UpstreamRedirected
            | Self::HandshakeFailed
            | Self::UpstreamAuthRejected => StatusCode::BAD_GATEWAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived values agree for every variant: the metrics label and the JSON-RPC code are
    /// those of the `/ready` reason (for failures that affect it), no failure reports `ready`, no
    /// status makes a client start its own OAuth or give the server up, and each reason names
    /// one failure.
    #[test]
    fn derived_values_agree_for_every_variant() {
        let mut reasons = std::collections::HashSet::new();
        for failure in Failure::ALL {
            assert!(
                reasons.insert(failure.reason()),
                "{failure:?}: reason reused"
            );
            let ready = failure.ready_reason();
            assert!(
                !matches!(ready, Reason::Ready | Reason::Starting),
                "{failure:?} is a failure"
            );
            for has_id in [true, false] {
                let status = failure.status(has_id).as_u16();
                assert!(
                    ![401, 403, 404].contains(&status),
                    "{failure:?}: {status} would make a client start OAuth or give up"
                );
            }
            if !failure.affects_readiness() {
                // Its own outcome and code, not those of a /ready reason it does not cause.
                assert_eq!(format!("{:?}", failure.outcome()), failure.reason());
                assert_eq!(failure.code() as i32, -32006);
                assert_eq!(failure.status(true), StatusCode::OK);
                assert!(failure.status(false).is_client_error());
                continue;
            }
            assert_eq!(
                format!("{:?}", failure.outcome()),
                ready.as_str(),
                "{failure:?}: metrics outcome and /ready reason"
            );
            let code = match ready {
                Reason::AuthRequired => -32003,
                Reason::UpstreamUnreachable => -32001,
                Reason::UpstreamAuthRejected => -32002,
                _ => -32005,
            };
            assert_eq!(failure.code() as i32, code, "{failure:?}: JSON-RPC code");
            let status = failure.status(true);
            assert!(
                status.is_server_error() && status == failure.status(false),
                "{failure:?}: {status} is the upstream's fault, not the client's"
            );
        }
        // The wire names the README documents stay as they were.
        assert_eq!(
            Failure::TokenEndpointUnavailable.reason(),
            "token_endpoint_unavailable"
        );
        assert_eq!(
            Failure::UpstreamTimeout.status(true),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            Failure::UpstreamRedirected.ready_reason(),
            Reason::HandshakeFailed
        );
    }
}
