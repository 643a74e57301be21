//! Allocations on the per-request path, counted: the Host/Origin guard, the token read and the
//! `Authorization` value must not allocate per request (issue 11, per-request cost), and
//! without a tool policy a request body is not even parsed.
//!
//! A test binary of its own because it installs a counting global allocator; the count is per
//! thread, so tests running in parallel do not see each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use futures_util::FutureExt;
use mcp_sidecar::guard::Guard;
use mcp_sidecar::secret::{Secret, SecretSource};
use mcp_sidecar::token::{BearerSource, TokenSource};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialized thread local, which needs no allocation to access.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn the_guard_allocates_nothing_for_an_accepted_request() {
    let guard = Guard::new(vec!["MCP-Sidecar".into(), "agent.internal".into()], None);
    let uri: http::Uri = "/mcp".parse().unwrap();
    for (host, origin) in [
        ("LocalHost:4510", None),
        ("mcp-SIDECAR:4510", Some("HTTP://Agent.Internal:3000")),
        ("[::1]:4510", Some("http://localhost:3000")),
        ("10.1.2.3:4510", Some("https://App.LOCALHOST")),
    ] {
        let mut pairs = vec![("host", host)];
        pairs.extend(origin.map(|o| ("origin", o)));
        let headers = header_map(&pairs);
        let (result, count) = allocations(|| guard.check(&uri, &headers));
        assert!(result.is_ok(), "{host} {origin:?}: {result:?}");
        assert_eq!(count, 0, "{host} {origin:?}: allocations");
    }
    let absolute: http::Uri = "http://LOCALHOST:4510/mcp".parse().unwrap();
    let headers = header_map(&[("host", "localhost:4510")]);
    let (result, count) = allocations(|| guard.check(&absolute, &headers));
    assert!(result.is_ok());
    assert_eq!(count, 0, "absolute target: allocations");
}

#[test]
fn reading_the_token_and_its_header_allocates_only_the_boxed_future() {
    let canary = format!("{}+/=&{}", "t".repeat(150), "k".repeat(60));
    let source = BearerSource::new(SecretSource::Inline(Secret::new(canary.clone())));
    let first = source.token().now_or_never().unwrap().unwrap().unwrap();
    let (token, count) = allocations(|| source.token().now_or_never().unwrap().unwrap().unwrap());
    // `TokenSource::token` returns a boxed future: that box is the one allocation left.
    assert_eq!(count, 1, "token read: allocations");
    assert_eq!(token, first);
    let (header, count) = allocations(|| token.authorization().unwrap());
    assert_eq!(count, 0, "Authorization value: allocations");
    assert!(header.is_sensitive());
    assert_eq!(header.as_bytes(), format!("Bearer {canary}").as_bytes());
    assert!(!format!("{token:?} {header:?}").contains(&canary));
}

#[test]
fn without_a_tool_policy_a_request_is_not_parsed() {
    let policy = mcp_sidecar::tools::ToolPolicy::default();
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_repo","arguments":{"x":[1,2,3]}}}"#;
    let (checked, count) = allocations(|| policy.check(body));
    assert!(matches!(checked, mcp_sidecar::tools::Checked::Pass(ref ids) if ids.is_empty()));
    assert_eq!(count, 0, "no policy: allocations");
}
