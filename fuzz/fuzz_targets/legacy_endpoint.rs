//! The legacy HTTP+SSE `endpoint` rewriting (`legacy::rewrite_endpoint`): a hostile or broken
//! upstream's GET stream, in arbitrary chunks. Beyond "no panic": a stream without an `endpoint`
//! event must come out byte for byte as it went in.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::config::{self, Sources};
use mcp_sidecar::legacy::{self, Endpoints};
use mcp_sidecar::token::{AccessToken, BoxFuture, TokenError, TokenSource, TokenStatus};
use mcp_sidecar::upstream::Upstream;
use mcp_sidecar_fuzz::{chunks, runtime};

struct NoToken;

impl TokenSource for NoToken {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    fn refresh<'a>(
        &'a self,
        _rejected: Option<&'a AccessToken>,
    ) -> BoxFuture<'a, Result<Option<AccessToken>, TokenError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    fn status(&self) -> TokenStatus {
        TokenStatus::basic("none")
    }
}

fn upstream() -> Arc<Upstream> {
    static UPSTREAM: OnceLock<Arc<Upstream>> = OnceLock::new();
    UPSTREAM
        .get_or_init(|| {
            // Never contacted: the rewriter only resolves the announced endpoint against it.
            let env = [
                ("MCP_SIDECAR_UPSTREAM_URL", "http://127.0.0.1:9/sse"),
                ("MCP_SIDECAR_AUTH", "none"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let config = config::load(&Sources { file: None, env })
                .expect("the fuzz target's own configuration is valid");
            Arc::new(
                Upstream::new(&config.upstreams[0].upstream, Arc::new(NoToken))
                    .expect("an upstream without a CA file builds"),
            )
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let pieces: Vec<Result<Bytes, ()>> = chunks(data)
        .into_iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let input: Vec<u8> = chunks(data).concat();
    let out = runtime().block_on(async {
        let stream = legacy::rewrite_endpoint(
            futures_util::stream::iter(pieces),
            upstream(),
            Endpoints::new(),
            "/mcp/legacy".to_string(),
        );
        let mut out = Vec::new();
        let mut stream = Box::pin(stream);
        while let Some(item) = stream.next().await {
            out.extend_from_slice(&item.expect("the input stream has no errors"));
        }
        out
    });
    if !input.windows(8).any(|w| w == b"endpoint") {
        assert_eq!(out, input, "a stream without an endpoint event was changed");
    }
});
