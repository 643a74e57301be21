//! mcp-sidecar: holds the credentials an AI agent needs for a remote MCP server, keeps them
//! fresh, proxies MCP to the server with the token injected, and reports readiness only after a
//! real MCP handshake succeeded.
//!
//! Map of the crate (one module per concern):
//! - [`config`]: sources, validation, every problem at once; [`secret`]: unprintable secrets and
//!   re-read secret files.
//! - [`token`]: the `TokenSource` abstraction and one provider per file.
//! - [`net`]: HTTP client construction, trust roots (`CA_FILE`), network error and URL wording
//!   (a leaf); [`headers`]: which headers cross the sidecar in each direction, and `HEADERS`.
//! - [`upstream`]: the connection to the MCP server and the refresh-and-retry rule;
//!   [`challenge`]: `WWW-Authenticate` parsing.
//! - [`forwarder`]: one upstream's pipeline, called by every front with a prepared request;
//!   [`proxy`]: the HTTP front of the MCP endpoint; [`session`]: transparent re-initialization of sessions the
//!   upstream forgot; [`stream`]: GET streams kept open and re-attached through an upstream
//!   outage; [`subscriptions`]: resource subscriptions replayed into a re-made session; [`legacy`]: the 2024-11-05 HTTP+SSE transport; [`guard`]: Host/Origin/client-token checks; [`jsonrpc`]: the
//!   sidecar's own error replies; [`stdio`]: the stdio front (MCP over stdin/stdout) and its
//!   message pump; [`bridge`]: the legacy SSE front at `PATH/sse`, that pump per client stream;
//!   [`sse_upstream`]: Streamable HTTP clients bridged to an HTTP+SSE upstream;
//!   [`terminal_login`]: the stdio front's login when a person runs it in a terminal;
//!   [`browser`]: opening a page in the user's browser.
//! - [`mcp`]: wire constants; [`sse`]: event-stream parsing and boundaries.
//! - [`handshake`] and [`readiness`]: what `/ready` means; [`admin`]: the sidecar's endpoints;
//!   [`metrics`]: counters.
//! - [`app`]: the state handlers share; [`server`]: wiring, the router and graceful shutdown.
//! - [`cli`]: parsing and dispatch; [`commands`]: the binary's commands; [`output`]: their exit
//!   codes and printing; [`demo`]: the built-in demo upstream.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bridge;
pub mod browser;
pub mod challenge;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod failure;
pub mod forwarder;
pub mod guard;
pub mod handshake;
pub mod headers;
pub mod jsonrpc;
pub mod legacy;
pub mod mcp;
pub mod metrics;
pub mod net;
pub mod output;
pub mod proxy;
pub mod readiness;
pub mod scrubber;
pub mod seal;
pub mod secret;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sse;
pub mod sse_upstream;
pub mod stdio;
pub mod stream;
pub mod subscriptions;
pub mod telemetry;
pub mod terminal_login;
pub mod time;
pub mod token;
pub mod tools;
pub mod trace;
pub mod upstream;
