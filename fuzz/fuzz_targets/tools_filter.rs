//! The tool policy's SSE filter (`tools::EventFilter`), fed an upstream's `tools/list` answer in
//! arbitrary chunks. Beyond "no panic":
//! - the output (with what `finish` lets through at the end) must not depend on where the
//!   chunks were cut;
//! - a stream in which no JSON text can name `tools` (no `tools`, no `\u` escape) has nothing
//!   to filter, so it must come out byte for byte as it went in.
//!
//! Input: the stream, cut into chunks at NUL bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::tools::{EventFilter, PatternList, ToolPolicy, parse_list};
use mcp_sidecar_fuzz::chunks;
use serde_json::json;

fn filter() -> EventFilter {
    let deny = PatternList {
        key: "MCP_SIDECAR_TOOLS_DENY".into(),
        patterns: parse_list("delete_* admin/?").expect("the fuzz patterns are valid"),
    };
    EventFilter::new(ToolPolicy::new(None, Some(deny)), vec![json!(1), json!("a")])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let pieces = chunks(data);
    let whole: Vec<u8> = pieces.concat();
    let mut at_once_filter = filter();
    let mut at_once = at_once_filter.push(&whole).expect("fuzz inputs are far below the limit");
    at_once.extend(at_once_filter.finish());

    let mut chunked_filter = filter();
    let mut chunked = Vec::new();
    for piece in &pieces {
        chunked.extend(chunked_filter.push(piece).expect("below the limit"));
    }
    chunked.extend(chunked_filter.finish());
    assert_eq!(chunked, at_once, "the output depends on the chunk boundaries");

    if !contains(&whole, b"tools") && !contains(&whole, b"\\u") {
        assert_eq!(at_once, whole, "nothing to filter, yet the bytes changed");
    }
});
