//! Hermetic integration tests: real sockets on 127.0.0.1 port 0, a mock upstream that fails on
//! command, the sidecar in process (and as a binary where exit codes and logs matter).

mod common;

mod bridge;
mod cli;
mod defects;
#[cfg(feature = "fleet")]
mod fleet;
mod multi;
mod oauth;
mod proxy;
mod readiness;
mod stdio;
mod streams;
mod tools;
mod traces;
