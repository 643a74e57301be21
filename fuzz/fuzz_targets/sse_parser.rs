//! The SSE parser (`sse::Parser`) and the event-boundary tracker (`sse::Boundary`) the proxy uses
//! to place keepalives, fed an upstream's bytes in arbitrary chunks. Beyond "no panic": the events
//! and the final boundary state must not depend on where the chunks were cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::sse::{Boundary, Parser};
use mcp_sidecar_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let pieces = chunks(data);
    let whole: Vec<u8> = pieces.concat();

    let mut parser = Parser::new();
    let mut boundary = Boundary::default();
    let mut chunked = Vec::new();
    for piece in &pieces {
        chunked.extend(parser.push(piece));
        boundary.observe(piece);
    }

    let mut one = Parser::new();
    let at_once = one.push(&whole);
    assert_eq!(chunked, at_once, "events depend on chunk boundaries");

    let mut whole_boundary = Boundary::default();
    whole_boundary.observe(&whole);
    assert_eq!(
        boundary.at_boundary(),
        whole_boundary.at_boundary(),
        "the boundary state depends on chunk boundaries"
    );
    assert_eq!(boundary.can_insert(), whole_boundary.can_insert());
});
