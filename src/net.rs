//! The network edge shared by every outbound client: HTTP client construction with the
//! sidecar's trust roots (`CA_FILE`) and timeouts, and the words used for network failures and
//! URLs in logs and errors. The MCP upstream gets hyper's client directly
//! ([`upstream_client`]); the authorization server keeps reqwest's ([`http_client`]).
//!
//! It is a leaf (it imports no other module of the crate) so that `config` (which checks
//! `CA_FILE` and shows URLs), `token` (the authorization server's client) and `upstream` (the MCP
//! server's client) can all use it without depending on one another.

use std::path::Path;
use std::time::Duration;

use url::Url;

/// What an HTTP client needs from the configuration, so this module need not know the
/// configuration's types (see `UpstreamConfig::client_settings`).
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings<'a> {
    pub connect_timeout: Duration,
    pub ca_file: Option<&'a Path>,
}

/// An HTTP client with the sidecar's trust roots (`CA_FILE` too) and connect timeout. The
/// authorization server gets its own client that follows no redirects: a token request that is
/// redirected would carry the client's credentials to wherever the redirect points.
pub fn http_client(
    config: &ClientSettings,
    redirect: reqwest::redirect::Policy,
) -> Result<reqwest::Client, String> {
    http_client_builder(config, redirect)?
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// What [`http_client`] builds, for a caller that tunes it further (the token side's pool).
pub fn http_client_builder(
    config: &ClientSettings,
    redirect: reqwest::redirect::Policy,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(redirect)
        .user_agent(concat!("mcp-sidecar/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.ca_file {
        for cert in load_ca_file(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// A readable cause from a reqwest error, without its URL (which may carry a query string).
pub fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("timed out".to_string());
    }
    // Not `e` itself: its text names the URL.
    push_causes(&mut parts, std::error::Error::source(e));
    if parts.is_empty() {
        parts.push(e.without_url_display());
    }
    parts.join(": ")
}

/// Appends the text of `source` and of each cause after it that says something new.
fn push_causes(parts: &mut Vec<String>, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(s) = source {
        let text = s.to_string();
        // hyper-util's wrapper says only "client error (Connect)"; its source says what happened.
        if !text.starts_with("client error (") && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
}

trait WithoutUrlDisplay {
    fn without_url_display(&self) -> String;
}

impl WithoutUrlDisplay for reqwest::Error {
    fn without_url_display(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(url.as_str(), &display_url(url));
        }
        text
    }
}

/// The upstream URL as logs and `/status` show it: no user info, no query, no fragment.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The client for the MCP upstream: hyper's pooled client over rustls, HTTP/2 when the upstream
/// offers it by ALPN (idle GET streams then share one connection), HTTP/1.1 otherwise, plain
/// HTTP for `http://` upstreams. Same trust roots as [`http_client`] (webpki roots and
/// `CA_FILE`), same connect timeout, and it follows no redirect by itself.
pub type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

pub fn upstream_client(config: &ClientSettings) -> Result<UpstreamClient, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.ca_file {
        for cert in load_ca_file_der(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    // The TLS layer takes `https://`; this one connects the socket under it.
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https),
    )
}

/// Whether nothing listened at the address: a refused connect, found anywhere in the chain of
/// causes of `e`.
pub fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// A readable cause from an error and its chain of causes (hyper's errors name no URL).
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    push_causes(&mut parts, Some(e));
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

/// `CA_FILE`'s certificates, as rustls takes them.
fn load_ca_file_der(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads extra trust roots (PEM, one or more certificates).
/// Parsed once by the same PEM reader as the upstream's roots ([`load_ca_file_der`]), so the
/// check at start-up and both clients agree on what the file holds.
pub fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    load_ca_file_der(path)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der).map_err(|e| {
                format!(
                    "{} holds a certificate that cannot be used: {e}",
                    path.display()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_drops_query_and_credentials() {
        let url = Url::parse("https://u:p@mcp.example.com/mcp?api_key=canary#x").unwrap();
        assert_eq!(display_url(&url), "https://mcp.example.com/mcp");
    }
}
