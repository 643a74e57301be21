//! Who may use the sidecar's credentials: Host and Origin validation (DNS-rebinding protection)
//! and the optional shared client token.
//!
//! A web page the user visits could make the browser send requests to `127.0.0.1:4510` by
//! rebinding a name it controls; the sidecar would then attach a real token. Checking that the
//! Host is a name this sidecar is meant to be reached by, and that any browser Origin is too,
//! defeats that. Refusals are 403 with a JSON body, never 401 (which would make Claude Code start
//! its own OAuth flow).
//!
//! The same Host and Origin rule covers every endpoint, `/ready` and `/healthz` included: a page
//! that rebinds a name to `127.0.0.1` must not read a pending device-code login from `/ready` and
//! approve it with its own account. The Host itself is parsed strictly (RFC 9112 3.2): one Host
//! header, `host[:port]` and nothing after it, and an absolute-form target (or HTTP/2
//! `:authority`) that names the same host; anything else is a 400.
//!
//! A Host that is an IP literal is always accepted: rebinding needs a DNS name, and in Kubernetes
//! the kubelet and Prometheus address pods by IP. Origins are stricter: only loopback origins and
//! hosts listed in `ALLOWED_HOSTS` by name; the `*` wildcard relaxes Host only, never Origin, so a
//! web page can never use the sidecar's credential.

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::{HeaderMap, StatusCode};

use crate::config::is_loopback_name;
use crate::secret::SecretSource;

pub struct Guard {
    allowed_hosts: Vec<String>,
    allow_any_host: bool,
    client_token: Option<SecretSource>,
    unreadable: UnreadableLog,
}

/// How often a client token that stays unreadable is logged again.
const UNREADABLE_RELOG: std::time::Duration = std::time::Duration::from_secs(60);

/// Logs a client token that cannot be read when that starts, when the cause changes, then at
/// most once per [`UNREADABLE_RELOG`] with the count of clients refused meanwhile, and once when
/// it is readable again. The check runs for every request: a line per request would bury
/// everything else in the log of a busy agent.
#[derive(Default)]
struct UnreadableLog {
    state: std::sync::Mutex<Option<Unreadable>>,
    pending: std::sync::atomic::AtomicBool,
}

struct Unreadable {
    cause: String,
    logged: std::time::Instant,
    refused: u64,
}

impl UnreadableLog {
    fn failed(&self, error: &crate::secret::SecretError) {
        let cause = error.to_string();
        self.pending
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.as_mut() {
            Some(last) if last.cause == cause && last.logged.elapsed() < UNREADABLE_RELOG => {
                last.refused += 1;
            }
            Some(last) if last.cause == cause => {
                tracing::error!(
                    error = %cause,
                    refused_since = last.refused,
                    "the client token is still unreadable; refusing clients"
                );
                last.logged = std::time::Instant::now();
                last.refused = 0;
            }
            _ => {
                tracing::error!(error = %cause, "cannot read the client token; refusing clients");
                *state = Some(Unreadable {
                    cause,
                    logged: std::time::Instant::now(),
                    refused: 0,
                });
            }
        }
    }

    /// Whether a failure was logged and not yet its end: read without the lock, so a readable
    /// token costs requests one atomic load.
    fn pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read(&self) {
        self.pending
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.take().is_some() {
            tracing::info!("the client token is readable again");
        }
    }
}

/// Why a request was refused. The message is shown to the client and names what to configure;
/// callers answer with [`Refusal::status`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request's Host is missing, doubled or not `host[:port]`, or disagrees with its target:
    /// a 400, as RFC 9112 asks.
    #[error("{0}")]
    Malformed(String),
    /// A Host, Origin or client token this sidecar does not accept: a 403 (never a 401, which
    /// would make Claude Code start its own OAuth flow).
    #[error("{0}")]
    NotAllowed(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::NotAllowed(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The reason word the JSON answers carry (`bad_request` or `forbidden`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "bad_request",
            Self::NotAllowed(_) => "forbidden",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Malformed(m) | Self::NotAllowed(m) => m,
        }
    }
}

impl Guard {
    pub fn new(allowed_hosts: Vec<String>, client_token: Option<SecretSource>) -> Self {
        let allow_any_host = allowed_hosts.iter().any(|h| h == "*");
        Self {
            allowed_hosts,
            allow_any_host,
            client_token,
            unreadable: UnreadableLog::default(),
        }
    }

    /// Checks one request to the MCP endpoint: Host, Origin and the client token.
    pub fn check(&self, uri: &http::Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_host_and_origin(uri, headers)?;
        self.check_client_token(headers)
    }

    /// Host and Origin only: the rule every endpoint applies, also those that use no
    /// credential (`/healthz`, `/ready`, `/status`, `/metrics`, 404s).
    pub fn check_host_and_origin(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let host = request_host(uri, headers)?;
        if !self.host_allowed(host, true) {
            return Err(Refusal::NotAllowed(format!(
                "Host {host:?} is not allowed; add it to MCP_SIDECAR_ALLOWED_HOSTS"
            )));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            match origin.to_str().ok().and_then(origin_host) {
                Some(h) if self.host_allowed(h, false) => {}
                _ => {
                    let shown = origin.to_str().unwrap_or("(not text)");
                    return Err(Refusal::NotAllowed(format!(
                        "Origin {shown:?} is not allowed; add its host to MCP_SIDECAR_ALLOWED_HOSTS"
                    )));
                }
            }
        }
        Ok(())
    }

    /// True when no client token is configured or `headers` carry the right one: what decides
    /// whether `/ready` may show its detail and a pending login.
    pub fn client_token_ok(&self, headers: &HeaderMap) -> bool {
        self.check_client_token(headers).is_ok()
    }

    /// The client token alone (Host and Origin are checked for every endpoint before).
    pub fn check_client_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(expected) = &self.client_token {
            let presented = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_credential);
            let read = expected.read();
            match &read {
                Ok(_) if self.unreadable.pending() => self.unreadable.read(),
                Ok(_) => {}
                Err(e) => self.unreadable.failed(e),
            }
            let ok = match (presented, read) {
                (Some(presented), Ok(secret)) => secret.matches(presented.as_bytes()),
                _ => false,
            };
            if !ok {
                return Err(Refusal::NotAllowed(
                    "this sidecar requires its client token: send Authorization: Bearer <MCP_SIDECAR_CLIENT_TOKEN>"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The client token for `/oauth/login`, which a person opens in a browser: as a Bearer token
    /// or as the password of HTTP Basic (what a browser prompts for), any user name.
    pub fn login_token_ok(&self, headers: &HeaderMap) -> bool {
        use base64::Engine;
        let Some(expected) = &self.client_token else {
            return true;
        };
        if self.client_token_ok(headers) {
            return true;
        }
        let password = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, encoded)| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
            })
            .and_then(|pair| {
                let colon = pair.iter().position(|&b| b == b':')?;
                Some(pair[colon + 1..].to_vec())
            });
        match (password, expected.read()) {
            (Some(password), Ok(secret)) => secret.matches(&password),
            _ => false,
        }
    }

    /// `is_host`: checking the Host header (IP literals and `*` apply), or an Origin's host.
    /// Names compare case-insensitively in place: this runs on every request, so it allocates
    /// nothing.
    fn host_allowed(&self, host: &str, is_host: bool) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.');
        if is_loopback_name(host)
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            return true;
        }
        is_host && (self.allow_any_host || host.parse::<std::net::IpAddr>().is_ok())
    }
}

/// The credential of an `Authorization: Bearer <credential>` value. Auth schemes are
/// case-insensitive (RFC 9110 section 11.1): `BEARER x` and `bearer x` are the same, and any run
/// of spaces may separate scheme and credential.
pub fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// The host a request is addressed to: its one Host header, or the authority of an absolute-form
/// target (HTTP/2's `:authority`, which hyper puts on the URI). When both are present they must
/// name the same host: a proxy-style `GET http://evil.example/ HTTP/1.1` with `Host: localhost`
/// is refused rather than judged by either half. The host comes back as the client wrote it (any
/// case); callers compare it case-insensitively.
fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Result<&'a str, Refusal> {
    let mut values = headers.get_all(HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(Refusal::Malformed(
            "the request has more than one Host header".into(),
        ));
    }
    let header = header
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(parse_authority)
                .ok_or_else(|| {
                    Refusal::Malformed("the Host header is not a valid host[:port]".into())
                })
        })
        .transpose()?;
    let target = uri
        .authority()
        .map(|a| {
            parse_authority(a.as_str()).ok_or_else(|| {
                Refusal::Malformed(
                    "the request target's authority is not a valid host[:port]".into(),
                )
            })
        })
        .transpose()?;
    match (target, header) {
        (Some((target, target_port)), Some((host, port))) => {
            let ports_agree = match (target_port, port) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if !target.eq_ignore_ascii_case(host) || !ports_agree {
                return Err(Refusal::Malformed(format!(
                    "the request target names {target:?} but its Host header {host:?}"
                )));
            }
            Ok(target)
        }
        (Some((host, _)), None) | (None, Some((host, _))) => Ok(host),
        (None, None) => Err(Refusal::Malformed("the request has no Host header".into())),
    }
}

/// `host[:port]` as RFC 9110 allows it in Host: a bracketed IPv6 literal or a name (or IPv4
/// literal) of the characters DNS names use, then at most a numeric port, and nothing else. The
/// host comes back as written (a slice of `text`, any case) and without brackets. Lenient parsing
/// here is what a rebinding page would use: `[::1]evil.com` must not pass as `::1`.
fn parse_authority(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if let Some(inner) = text.strip_prefix('[') {
        let (literal, rest) = inner.split_once(']')?;
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        (literal, rest)
    } else {
        match text.split_once(':') {
            Some((name, _)) => (name, &text[name.len()..]),
            None => (text, ""),
        }
    };
    let port = match rest {
        "" => None,
        _ => {
            let digits = rest.strip_prefix(':')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse::<u16>().ok()?)
        }
    };
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || (!text.starts_with('[') && !host.chars().all(is_name_char)) {
        return None;
    }
    Some((host, port))
}

/// The host of a browser `Origin` (`scheme://host[:port]`, RFC 6454), parsed as strictly as a
/// Host: anything else (`null`, user info, a host with characters DNS names do not use) has no
/// host and is refused. A path, which browsers never send, is tolerated as a URL parser would.
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
    if scheme.is_empty() || !scheme.bytes().all(scheme_char) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    parse_authority(authority).map(|(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(http::HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
        }
        map
    }

    fn uri() -> http::Uri {
        "/mcp".parse().unwrap()
    }

    #[test]
    fn loopback_hosts_pass_and_others_need_configuration() {
        let guard = Guard::new(vec!["mcp-sidecar".into()], None);
        for host in [
            "localhost:4510",
            "127.0.0.1:4510",
            "[::1]:4510",
            "mcp-sidecar:4510",
            "LOCALHOST",
        ] {
            assert!(
                guard.check(&uri(), &headers(&[("host", host)])).is_ok(),
                "{host}"
            );
        }
        let refusal = guard
            .check(&uri(), &headers(&[("host", "evil.example:4510")]))
            .unwrap_err();
        assert!(refusal.message().contains("evil.example"));
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        assert!(guard.check(&uri(), &headers(&[])).is_err());
    }

    #[test]
    fn browser_origins_are_checked() {
        let guard = Guard::new(vec![], None);
        let ok = headers(&[
            ("host", "localhost:4510"),
            ("origin", "http://localhost:3000"),
        ]);
        assert!(guard.check(&uri(), &ok).is_ok());
        let evil = headers(&[
            ("host", "localhost:4510"),
            ("origin", "https://evil.example"),
        ]);
        assert!(guard.check(&uri(), &evil).is_err());
        let null = headers(&[("host", "localhost:4510"), ("origin", "null")]);
        assert!(guard.check(&uri(), &null).is_err());
    }

    #[test]
    fn wildcard_allows_any_host_but_never_a_foreign_origin() {
        let guard = Guard::new(vec!["*".into()], None);
        assert!(
            guard
                .check(&uri(), &headers(&[("host", "anything.example:4510")]))
                .is_ok()
        );
        let rebinding = headers(&[
            ("host", "evil.example:4510"),
            ("origin", "http://evil.example:4510"),
        ]);
        assert!(guard.check(&uri(), &rebinding).is_err());
    }

    #[test]
    fn ip_literal_hosts_pass_ip_literal_origins_do_not() {
        let guard = Guard::new(vec![], None);
        assert!(
            guard
                .check(&uri(), &headers(&[("host", "10.1.2.3:4510")]))
                .is_ok()
        );
        assert!(
            guard
                .check(&uri(), &headers(&[("host", "[fd00::7]:4510")]))
                .is_ok()
        );
        let page = headers(&[("host", "10.1.2.3:4510"), ("origin", "http://10.9.9.9")]);
        assert!(guard.check(&uri(), &page).is_err());
    }

    #[test]
    fn an_unreadable_client_token_is_logged_once_not_per_request() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-token");
        let guard = Guard::new(
            vec![],
            Some(SecretSource::File(crate::secret::SecretFile::new(
                "CLIENT_TOKEN_FILE",
                &path,
            ))),
        );
        let host = ("host", "localhost");
        let token = ("authorization", "Bearer client-canary+/=&");
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                assert!(guard.check(&uri(), &headers(&[host, token])).is_err());
            }
            std::fs::write(&path, "client-canary+/=&").unwrap();
            assert!(guard.check(&uri(), &headers(&[host, token])).is_ok());
            assert!(guard.check(&uri(), &headers(&[host, token])).is_ok());
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("cannot read the client token").count(),
            1,
            "{text}"
        );
        assert!(text.contains("CLIENT_TOKEN_FILE"), "{text}");
        assert_eq!(text.matches("readable again").count(), 1, "{text}");
        assert!(!text.contains("client-canary"), "{text}");
    }

    #[test]
    fn client_token_is_required_when_configured() {
        let guard = Guard::new(
            vec![],
            Some(SecretSource::Inline(Secret::new("shared-canary"))),
        );
        let host = ("host", "localhost");
        assert!(guard.check(&uri(), &headers(&[host])).is_err());
        assert!(
            guard
                .check(&uri(), &headers(&[host, ("authorization", "Bearer wrong")]))
                .is_err()
        );
        let refusal = guard
            .check(&uri(), &headers(&[host, ("authorization", "Bearer nope")]))
            .unwrap_err();
        assert!(!refusal.message().contains("shared-canary"));
        assert!(
            guard
                .check(
                    &uri(),
                    &headers(&[host, ("authorization", "Bearer shared-canary")])
                )
                .is_ok()
        );
    }

    #[test]
    fn the_client_tokens_scheme_is_matched_in_any_case() {
        let token = format!("ct+/=&{}", "k".repeat(220));
        let guard = Guard::new(vec![], Some(SecretSource::Inline(Secret::new(&token))));
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme} {token}");
            assert!(
                guard
                    .check(
                        &uri(),
                        &headers(&[("host", "localhost"), ("authorization", &value)])
                    )
                    .is_ok(),
                "scheme {scheme}"
            );
        }
        for value in [
            format!("Basic {token}"),
            format!("Bearer{token}"),
            "Bearer ".into(),
        ] {
            assert!(
                guard
                    .check(
                        &uri(),
                        &headers(&[("host", "localhost"), ("authorization", &value)])
                    )
                    .is_err()
            );
        }
    }

    fn malformed(guard: &Guard, uri: &http::Uri, headers: &HeaderMap) -> bool {
        matches!(guard.check(uri, headers), Err(Refusal::Malformed(_)))
    }

    #[test]
    fn two_host_headers_are_a_400() {
        let guard = Guard::new(vec![], None);
        let mut two = headers(&[("host", "localhost:4510")]);
        two.append(HOST, "localhost:4510".parse().unwrap());
        assert!(malformed(&guard, &uri(), &two));
        let mut mixed = headers(&[("host", "localhost")]);
        mixed.append(HOST, "evil.example".parse().unwrap());
        let refusal = guard.check(&uri(), &mixed).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn hosts_with_text_after_the_address_are_refused() {
        let guard = Guard::new(vec![], None);
        for host in [
            "[::1]evil.com",
            "[::1]evil.com:4510",
            "[::1]:4510evil",
            "[evil.com]",
            "127.0.0.1:4510:80",
            "localhost:",
            "localhost:port",
            "localhost evil.com",
            "user@localhost",
            "localhost/evil",
            "localhost:99999",
            "",
        ] {
            assert!(
                malformed(&guard, &uri(), &headers(&[("host", host)])),
                "{host:?} must be a 400"
            );
        }
        assert!(guard.check(&uri(), &headers(&[("host", "[::1]")])).is_ok());
        assert_eq!(parse_authority("[::1]:4510"), Some(("::1", Some(4510))));
        assert_eq!(parse_authority("LocalHost."), Some(("LocalHost.", None)));
    }

    #[test]
    fn names_compare_case_insensitively_everywhere() {
        let guard = Guard::new(vec!["MCP-Sidecar".into(), "agent.internal".into()], None);
        for host in [
            "mcp-SIDECAR:4510",
            "Agent.Internal",
            "LocalHost:4510",
            "Tools.LOCALHOST",
            "localhost.",
            "[::1]:4510",
        ] {
            assert!(
                guard.check(&uri(), &headers(&[("host", host)])).is_ok(),
                "{host}"
            );
        }
        for origin in [
            "HTTP://LocalHost:3000",
            "https://AGENT.internal",
            "http://mcp-sidecar",
            "http://localhost:3000/",
            "http://[::1]:3000",
            "http://App.Localhost",
        ] {
            let h = headers(&[("host", "localhost"), ("origin", origin)]);
            assert!(guard.check(&uri(), &h).is_ok(), "{origin}");
        }
        for origin in [
            "http://EVIL.example",
            "http://localhost@evil.example",
            "http://localhost.evil.example",
            "http://evil.example/localhost",
            "localhost",
            "://localhost",
            "http://",
            "null",
            "http://loc%61lhost",
            "http://[::1]evil.example",
        ] {
            let h = headers(&[("host", "localhost"), ("origin", origin)]);
            assert!(guard.check(&uri(), &h).is_err(), "{origin} must be refused");
        }
        assert!(
            guard
                .check(&uri(), &headers(&[("host", "Evil.Example")]))
                .is_err()
        );
        // The target and the Host header may differ in case only.
        let target: http::Uri = "http://LocalHost:4510/mcp".parse().unwrap();
        assert!(
            guard
                .check(&target, &headers(&[("host", "localhost:4510")]))
                .is_ok()
        );
        let refusal = guard
            .check(&uri(), &headers(&[("host", "Evil.Example:4510")]))
            .unwrap_err();
        assert!(refusal.message().contains("Evil.Example"), "shown as sent");
    }

    #[test]
    fn an_absolute_target_must_agree_with_the_host_header() {
        let guard = Guard::new(vec![], None);
        let evil: http::Uri = "http://evil.example/mcp".parse().unwrap();
        let host = headers(&[("host", "localhost:4510")]);
        assert!(malformed(&guard, &evil, &host));
        let other_port: http::Uri = "http://localhost:9999/mcp".parse().unwrap();
        assert!(malformed(&guard, &other_port, &host));
        let same: http::Uri = "http://LOCALHOST:4510/mcp".parse().unwrap();
        assert!(guard.check(&same, &host).is_ok());
        // HTTP/2: the authority alone.
        assert!(guard.check(&same, &headers(&[])).is_ok());
        let rebinding: http::Uri = "http://evil.example:4510/mcp".parse().unwrap();
        assert_eq!(
            guard.check(&rebinding, &headers(&[])).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
    }
}
