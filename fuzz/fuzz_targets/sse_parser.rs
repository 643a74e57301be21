//! The SSE parser (`sse::Parser`) and the event-boundary tracker (`sse::Boundary`) the proxy uses
//! to place keepalives and the legacy rewriter uses to find whole events, fed an upstream's bytes
//! in arbitrary chunks. Beyond "no panic":
//! - the events and the final boundary state must not depend on where the chunks were cut;
//! - wherever `Boundary` says the stream is between events, a blank line there must dispatch
//!   nothing (the parser agrees that no event is pending);
//! - wherever `Boundary` allows an insertion, inserting the proxy's keepalive comment there must
//!   leave the events a client parses unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::sse::{Boundary, Event, Parser};
use mcp_sidecar_fuzz::chunks;

/// What the proxy inserts on idle streams (`proxy.rs`).
const KEEPALIVE: &[u8] = b": keepalive\n";

fn events(bytes: &[u8]) -> Vec<Event> {
    Parser::new().push(bytes)
}

fuzz_target!(|data: &[u8]| {
    let pieces = chunks(data);
    let whole: Vec<u8> = pieces.concat();
    let at_once = events(&whole);

    let mut parser = Parser::new();
    let mut boundary = Boundary::default();
    let mut chunked = Vec::new();
    let mut prefix_len = 0;
    for piece in &pieces {
        chunked.extend(parser.push(piece));
        boundary.observe(piece);
        prefix_len += piece.len();
        let prefix = &whole[..prefix_len];
        if boundary.at_boundary() {
            let mut blank = prefix.to_vec();
            blank.push(b'\n');
            assert_eq!(
                events(&blank),
                events(prefix),
                "Boundary says between events, but a blank line dispatches an event"
            );
        }
        if boundary.can_insert() {
            let mut inserted = prefix.to_vec();
            inserted.extend_from_slice(KEEPALIVE);
            inserted.extend_from_slice(&whole[prefix_len..]);
            assert_eq!(
                events(&inserted),
                at_once,
                "a keepalive inserted where Boundary allows it changes the events"
            );
        }
    }
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
