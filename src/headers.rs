//! Which headers cross the sidecar, in both directions, decided in one place.
//!
//! Toward the upstream: the client's headers minus hop-by-hop, client-side and credential ones
//! ([`upstream_request_headers`]), the static `HEADERS` ([`parse_extra_headers`], added by
//! [`add_extra`]) and the sidecar's own `Authorization` ([`bearer`]); a session's replayed
//! `initialize` carries what the client's did ([`replayed`], [`replay_request`]). Back to the
//! client: the upstream's headers minus hop-by-hop ones ([`client_response_headers`]), scrubbed
//! on every answer ([`scrub_values`]), on error answers of short values too
//! ([`scrub_error_values`]). Keeping the lists together means a header cannot be stripped one
//! way and forwarded another by accident.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};

use crate::mcp::MCP_SESSION_ID;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
/// de-facto ones proxies also drop.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Headers that describe the client's side of the sidecar and mean nothing (or the wrong thing)
/// upstream: the sidecar checked the browser Origin itself and is the upstream's real client. A
/// local tool's `Origin: http://localhost:6274` would make a spec-compliant upstream answer 403,
/// and a client's `X-Forwarded-Host` could steer URLs the upstream builds.
const CLIENT_SIDE: &[&str] = &[
    "origin",
    "referer",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "expect",
];

/// The client's headers as the upstream should see them: everything except hop-by-hop headers,
/// the ones the HTTP client sets itself, client-side ones ([`CLIENT_SIDE`]), and the client's own
/// `Authorization` (replaced by the sidecar's credential, or the client token meant only for the
/// sidecar).
pub fn upstream_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.len());
    let listed = connection_listed(client);
    for (name, value) in client {
        if HOP_BY_HOP.contains(name)
            || listed.contains(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::AUTHORIZATION
            // Compressed upstream responses tend to be buffered by the compressor (and cannot be
            // scrubbed); identity is asked for below, which keeps SSE events flowing one by one.
            || name == header::ACCEPT_ENCODING
            || CLIENT_SIDE.contains(&name.as_str())
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // Without the header any coding is acceptable (RFC 9110 12.5.3), and a coded body cannot be
    // scrubbed of secrets as it streams.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// Header names a `Connection` header declares hop-by-hop.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect()
}

/// The upstream's response headers as the client should see them: all but hop-by-hop ones.
pub fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut headers = HeaderMap::with_capacity(upstream.len() + 1);
    for (name, value) in upstream {
        if HOP_BY_HOP.contains(name) || listed.contains(name) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// An error answer's header values with every registered form scrubbed, short ones included
/// (4 bytes and up, like the error body): [`scrub_values`] searches only the forms long enough
/// for bodies.
pub fn scrub_error_values(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        let scrubbed = crate::secret::scrub_bytes(value.as_bytes());
        if scrubbed != value.as_bytes() {
            *value = HeaderValue::from_bytes(&scrubbed)
                .unwrap_or_else(|_| HeaderValue::from_static(crate::secret::REDACTION));
        }
    }
}

/// Scrubs every known secret out of header values (an error answer's `X-Debug-Authorization`, a
/// quoting `Warning`) before they reach the client.
/// Allocates nothing for a value that holds no secret (every response passes here).
pub fn scrub_values(headers: &mut HeaderMap) {
    let (patterns, _) = crate::secret::patterns();
    if patterns.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        let found = patterns.matches(value.as_bytes());
        if found.is_empty() {
            continue;
        }
        let bytes = value.as_bytes();
        let scrubbed = crate::scrubber::redact(Bytes::copy_from_slice(bytes), &found, bytes.len());
        // The redaction is printable ASCII, so this cannot fail; if it did, nothing of the
        // value would be kept.
        *value = HeaderValue::from_bytes(&scrubbed)
            .unwrap_or_else(|_| HeaderValue::from_static(crate::secret::REDACTION));
    }
}

/// Adds the static `HEADERS` to a request going upstream, replacing the client's of the same name.
pub fn add_extra(headers: &mut HeaderMap, extra: &[(HeaderName, HeaderValue)]) {
    for (name, value) in extra {
        headers.insert(name.clone(), value.clone());
    }
}

/// The sidecar's `Authorization: Bearer ...` value, marked sensitive so it never shows in debug
/// output; `None` when the token has characters a header cannot carry.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The headers of a client's `initialize` worth replaying when the session is re-made: all but
/// the session id, which the replay replaces.
pub fn replayed(client: &HeaderMap) -> HeaderMap {
    let mut replay_headers = HeaderMap::new();
    for (name, value) in client {
        if name != MCP_SESSION_ID {
            replay_headers.append(name.clone(), value.clone());
        }
    }
    replay_headers
}

/// The headers a replayed `initialize` is sent with: the saved ones, as JSON, accepting both
/// answer forms unless the client said otherwise.
pub fn replay_request(saved: &HeaderMap) -> HeaderMap {
    let mut headers = saved.clone();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if !headers.contains_key(ACCEPT) {
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
    }
    headers
}

/// Headers the sidecar must own: the connection's framing, the target, and the credential.
const RESERVED_HEADERS: &[&str] = &[
    // MCP's own headers and content negotiation belong to the client's request.
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "content-type",
    "accept",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Parses `HEADERS`: one `Name: value` per line, blank lines and `#` comments ignored. Values are
/// marked sensitive so they never show in debug output. Errors name the line, never the value.
pub fn parse_extra_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = index + 1;
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("line {n}: expected 'Name: value'"));
        };
        // The name is not quoted back: a mistyped line may have its value on the left.
        let name = HeaderName::try_from(name.trim())
            .map_err(|_| format!("line {n}: the header name is not valid"))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "line {n}: header {name} is managed by the sidecar and cannot be set"
            ));
        }
        // `, Name: value` (a colon and a space after a token) is a second header pasted onto the
        // line; `read, repo:write` is an ordinary list value.
        let joined = value.split(',').skip(1).any(|part| {
            part.split_once(": ").is_some_and(|(n, _)| {
                let n = n.trim();
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        });
        if joined {
            return Err(format!(
                "line {n}: the value looks like several headers joined by commas; put each on its own line"
            ));
        }
        let value = value.trim();
        // A valid name may still be a credential typed on the wrong side of the colon, so from
        // here on messages give the line only.
        let mut header = HeaderValue::try_from(value)
            .map_err(|_| format!("line {n}: the value has characters not allowed in a header"))?;
        header.set_sensitive(true);
        // For scrubbing upstream text that quotes it: the value, and an Authorization value's
        // credential without its scheme.
        crate::secret::register(value);
        if let Some((scheme, credential)) = value.split_once(' ') {
            let credential = credential.trim();
            crate::secret::register(credential);
            if scheme.eq_ignore_ascii_case("basic") {
                register_basic(credential);
            }
        }
        out.push((name, header));
    }
    Ok(out)
}

/// A Basic credential is base64 of `user:password`: a server that names the user it refused,
/// or quotes the password it compared, shows them decoded.
fn register_basic(credential: &str) {
    use base64::Engine;
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credential) else {
        return;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return;
    };
    crate::secret::register(&decoded);
    if let Some((_user, password)) = decoded.split_once(':') {
        crate::secret::register(password);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_drop_hop_by_hop_auth_and_connection_listed() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, "Bearer client".parse().unwrap());
        client.insert(header::CONNECTION, "keep-alive, X-Private".parse().unwrap());
        client.insert("x-private", "1".parse().unwrap());
        client.insert(header::HOST, "localhost:4510".parse().unwrap());
        client.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        client.insert("mcp-session-id", "s1".parse().unwrap());
        client.insert("last-event-id", "e5".parse().unwrap());
        client.insert("mcp-param-region", "eu".parse().unwrap());
        client.insert(
            header::ACCEPT,
            "application/json, text/event-stream".parse().unwrap(),
        );
        let out = upstream_request_headers(&client);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert!(!names.contains(&"authorization"));
        assert!(!names.contains(&"connection"));
        assert!(!names.contains(&"x-private"));
        assert!(!names.contains(&"host"));
        assert_eq!(
            out[header::ACCEPT_ENCODING],
            "identity",
            "the client's gzip is not asked for"
        );
        for kept in [
            "mcp-session-id",
            "last-event-id",
            "mcp-param-region",
            "accept",
        ] {
            assert!(names.contains(&kept), "{kept} must be forwarded");
        }
    }

    #[test]
    fn extra_headers_parse_and_are_sensitive() {
        let parsed = parse_extra_headers("# comment\nX-Api-Key: abc\n\nX-Tenant:  t1 \n").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, "x-api-key");
        assert!(parsed[0].1.is_sensitive());
        assert_eq!(parsed[1].1, "t1");
    }

    #[test]
    fn extra_header_errors_name_the_line_not_the_value() {
        let err = parse_extra_headers("X-Ok: 1\nno colon canary").unwrap_err();
        assert_eq!(err, "line 2: expected 'Name: value'");
        let err = parse_extra_headers("Host: evil").unwrap_err();
        assert!(err.contains("managed by the sidecar"));
        let err = parse_extra_headers("X-Key: canary\u{7}").unwrap_err();
        assert!(!err.contains("canary"));
        let err = parse_extra_headers("X-Auth=user-canary:pass").unwrap_err();
        assert!(!err.contains("canary"), "{err}");
        let err = parse_extra_headers("X-Api-Key: k1, X-Tenant: t1").unwrap_err();
        assert!(err.contains("own line"), "{err}");
        assert!(parse_extra_headers("X-List: a, b, c").is_ok());
        assert!(parse_extra_headers("X-Scopes: read, repo:write").is_ok());
        let err = parse_extra_headers("abc123canary: x\u{7}").unwrap_err();
        assert!(
            !err.contains("canary"),
            "a credential left of the colon is not quoted: {err}"
        );
    }

    #[test]
    fn header_values_are_registered_for_scrubbing() {
        parse_extra_headers("X-Api-Key: sk-live-canary-31\nAuthorization: Basic dXNlcjpjYW5hcnk=")
            .unwrap();
        assert_eq!(
            crate::secret::scrub("invalid key sk-live-canary-31, bad dXNlcjpjYW5hcnk="),
            "invalid key <redacted>, bad <redacted>"
        );
    }

    #[test]
    fn a_basic_credential_is_registered_decoded_too() {
        use base64::Engine;
        let password = format!("pw+/=&{}", "Qx7+/=&k".repeat(30));
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("svc-hdr-basic:{password}"));
        parse_extra_headers(&format!("Authorization: basic {basic}")).unwrap();
        assert_eq!(
            crate::secret::scrub(&format!("user svc-hdr-basic:{password} refused")),
            "user <redacted> refused"
        );
        assert_eq!(
            crate::secret::scrub(&format!("password {password} does not match")),
            "password <redacted> does not match"
        );
    }
}
