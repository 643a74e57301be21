//! Who may use the sidecar's credentials: Host and Origin validation (DNS-rebinding protection)
//! and the optional shared client token.
//!
//! A web page the user visits could make the browser send requests to `127.0.0.1:4510` by
//! rebinding a name it controls; the sidecar would then attach a real token. Checking that the
//! Host is a name this sidecar is meant to be reached by, and that any browser Origin is too,
//! defeats that. Refusals are 403 with a JSON body, never 401 (which would make Claude Code start
//! its own OAuth flow).
//!
//! A Host that is an IP literal is always accepted: rebinding needs a DNS name, and in Kubernetes
//! the kubelet and Prometheus address pods by IP. Origins are stricter: only loopback origins and
//! hosts listed in `ALLOWED_HOSTS` by name; the `*` wildcard relaxes Host only, never Origin, so a
//! web page can never use the sidecar's credential.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HOST, ORIGIN};

use crate::config::is_loopback_name;
use crate::secret::SecretSource;

pub struct Guard {
    allowed_hosts: Vec<String>,
    allow_any_host: bool,
    client_token: Option<SecretSource>,
}

/// Why a request was refused. The message is shown to the client and names what to configure.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Guard {
    pub fn new(allowed_hosts: Vec<String>, client_token: Option<SecretSource>) -> Self {
        let allow_any_host = allowed_hosts.iter().any(|h| h == "*");
        Self {
            allowed_hosts,
            allow_any_host,
            client_token,
        }
    }

    /// Checks one request to the MCP endpoint: Host, Origin and the client token.
    pub fn check(&self, uri: &http::Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_host_and_origin(uri, headers)?;
        self.check_client_token(headers)
    }

    /// Host and Origin only: also for the read-only endpoints that describe the sidecar
    /// (`/status`, `/metrics`), which use no credential but which a web page should not read.
    pub fn check_host_and_origin(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        // HTTP/2 carries the host in :authority, which hyper exposes on the URI.
        let host = uri.authority().map(|a| a.host().to_string()).or_else(|| {
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| strip_port(h).to_string())
        });
        match host {
            None => return Err(Refusal("the request has no Host header".into())),
            Some(host) if !self.host_allowed(&host, true) => {
                return Err(Refusal(format!(
                    "Host {host:?} is not allowed; add it to MCP_SIDECAR_ALLOWED_HOSTS"
                )));
            }
            Some(_) => {}
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| url::Url::parse(o).ok())
                .and_then(|u| u.host_str().map(str::to_string));
            match origin_host {
                Some(h) if self.host_allowed(&h, false) => {}
                _ => {
                    let shown = origin.to_str().unwrap_or("(not text)");
                    return Err(Refusal(format!(
                        "Origin {shown:?} is not allowed; add its host to MCP_SIDECAR_ALLOWED_HOSTS"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_client_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(expected) = &self.client_token {
            let presented = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            let ok = match (presented, expected.read()) {
                (Some(presented), Ok(secret)) => secret.matches(presented.as_bytes()),
                (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot read the client token; refusing clients");
                    false
                }
                (None, _) => false,
            };
            if !ok {
                return Err(Refusal(
                    "this sidecar requires its client token: send Authorization: Bearer <MCP_SIDECAR_CLIENT_TOKEN>"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// `is_host`: checking the Host header (IP literals and `*` apply), or an Origin's host.
    fn host_allowed(&self, host: &str, is_host: bool) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if is_loopback_name(&host) || self.allowed_hosts.contains(&host) {
            return true;
        }
        is_host && (self.allow_any_host || host.parse::<std::net::IpAddr>().is_ok())
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:4510
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
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
        assert!(refusal.0.contains("evil.example"));
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
        assert!(!refusal.0.contains("shared-canary"));
        assert!(
            guard
                .check(
                    &uri(),
                    &headers(&[host, ("authorization", "Bearer shared-canary")])
                )
                .is_ok()
        );
    }
}
