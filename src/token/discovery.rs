//! Finding the authorization server and registering with it, as the MCP authorization spec
//! orders it: RFC 9728 protected-resource metadata (the `resource_metadata` of the upstream's 401
//! challenge, then the well-known paths), then RFC 8414 / OpenID Connect metadata in the spec's
//! path-insertion order with the issuer checked; the client id from configuration, else a Client
//! ID Metadata Document URL the server accepts, else Dynamic Client Registration (RFC 7591).
//!
//! Endpoints set in the configuration win over discovered ones, and when every endpoint the grant
//! needs is configured nothing is fetched at all: many enterprise IdPs publish no metadata.

use serde_json::Value;
use url::Url;

use super::endpoint::{GrantError, Registered, Reply, read_reply};
use crate::challenge::BearerChallenge;
use crate::config::{GrantKind, OAuthConfig};

/// Where to send each request, and what the metadata said about scopes and PKCE.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub issuer: String,
    pub token_url: Url,
    pub authorization_url: Option<Url>,
    pub device_authorization_url: Option<Url>,
    pub registration_url: Option<Url>,
    /// From the upstream's challenge, else its `scopes_supported`.
    pub scopes: Vec<String>,
    /// `code_challenge_methods_supported` lists S256 (required before an authorization-code login).
    pub pkce_s256: bool,
    pub client_id_metadata_supported: bool,
    /// The issuer was configured or read from metadata (not guessed from the token URL), so a
    /// callback's `iss` can be checked against it (RFC 9207).
    pub issuer_known: bool,
    /// The server says it always sends `iss` with authorization responses.
    pub iss_required: bool,
}

fn needs_metadata(config: &OAuthConfig) -> bool {
    config.token_url.is_none()
        || (config.grant == GrantKind::DeviceCode && config.device_authorization_url.is_none())
        || (config.grant == GrantKind::AuthorizationCode && config.authorization_url.is_none())
        || (config.client_id.is_none())
}

pub async fn resolve(
    http: &reqwest::Client,
    config: &OAuthConfig,
    upstream: &Url,
) -> Result<Endpoints, GrantError> {
    if !needs_metadata(config)
        && let Some(token_url) = &config.token_url
    {
        return Ok(Endpoints {
            issuer: config
                .issuer
                .as_ref()
                .map(|i| i.as_str().trim_end_matches('/').to_string())
                .unwrap_or_else(|| token_url.origin().ascii_serialization()),
            token_url: token_url.clone(),
            authorization_url: config.authorization_url.clone(),
            device_authorization_url: config.device_authorization_url.clone(),
            registration_url: None,
            scopes: Vec::new(),
            // Configured by hand: the operator vouches for the server; PKCE S256 is still sent.
            pkce_s256: true,
            client_id_metadata_supported: false,
            issuer_known: config.issuer.is_some(),
            iss_required: false,
        });
    }

    let (issuer, scopes) = match &config.issuer {
        Some(issuer) => (issuer.clone(), Vec::new()),
        None => protected_resource(http, upstream, config).await?,
    };
    let metadata = authorization_server(http, &issuer).await?;
    let url = |key: &str| -> Result<Option<Url>, GrantError> {
        match metadata.get(key).and_then(Value::as_str) {
            None => Ok(None),
            Some(text) => match Url::parse(text) {
                // Credentials go to these endpoints: https only, as for configured ones.
                Ok(url) if url.scheme() == "https" || loopback(&url) => Ok(Some(url)),
                Ok(_) => Err(GrantError::Config(format!(
                    "the authorization server metadata of {issuer} names a plain-http {key}; refusing to send credentials there"
                ))),
                Err(_) => Err(GrantError::Config(format!(
                    "the authorization server metadata of {issuer} has an invalid {key}"
                ))),
            },
        }
    };
    let token_url = match config.token_url.clone().or(url("token_endpoint")?) {
        Some(u) => u,
        None => {
            return Err(GrantError::Config(format!(
                "the authorization server metadata of {issuer} names no token_endpoint; set MCP_SIDECAR_TOKEN_URL"
            )));
        }
    };
    let methods: Vec<&str> = metadata
        .get("code_challenge_methods_supported")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Ok(Endpoints {
        issuer: metadata_issuer(&metadata).unwrap_or_default(),
        token_url,
        authorization_url: config
            .authorization_url
            .clone()
            .or(url("authorization_endpoint")?),
        device_authorization_url: config
            .device_authorization_url
            .clone()
            .or(url("device_authorization_endpoint")?),
        registration_url: url("registration_endpoint")?,
        scopes,
        pkce_s256: methods.contains(&"S256"),
        client_id_metadata_supported: metadata
            .get("client_id_metadata_document_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        issuer_known: true,
        iss_required: metadata
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

fn loopback(url: &Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Domain(d)) => crate::config::is_loopback_name(d),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

fn metadata_issuer(metadata: &serde_json::Map<String, Value>) -> Option<String> {
    metadata
        .get("issuer")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// RFC 9728: which authorization server protects the upstream, and the scopes it asks for.
async fn protected_resource(
    http: &reqwest::Client,
    upstream: &Url,
    config: &OAuthConfig,
) -> Result<(Url, Vec<String>), GrantError> {
    // An unauthenticated initialize, as a client would send: the 401 names the metadata.
    let probe = http
        .post(upstream.clone())
        .timeout(config.token_timeout)
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(crate::mcp::initialize_body())
        .send()
        .await;
    let challenge = match &probe {
        Ok(response) => BearerChallenge::from_headers(response.headers()),
        Err(_) => None,
    };
    let mut candidates: Vec<Url> = Vec::new();
    if let Some(url) = challenge
        .as_ref()
        .and_then(|c| c.resource_metadata.as_deref())
        .and_then(|u| upstream.join(u).ok())
    {
        candidates.push(url);
    }
    let path = upstream.path().trim_end_matches('/');
    for suffix in [path, ""] {
        if let Ok(url) = upstream.join(&format!("/.well-known/oauth-protected-resource{suffix}"))
            && !candidates.contains(&url)
        {
            candidates.push(url);
        }
    }
    let mut last = String::new();
    for url in candidates {
        match get_json(http, &url, config).await {
            Ok(metadata) => {
                // RFC 9728 3.3: metadata for another resource must not be used.
                if let Some(resource) = metadata.get("resource").and_then(Value::as_str) {
                    let expected = crate::config::canonical_resource(upstream);
                    if resource.trim_end_matches('/') != expected.trim_end_matches('/') {
                        return Err(GrantError::Config(format!(
                            "the protected resource metadata at {url} is for {}, not {expected}; refusing it (RFC 9728 section 3.3)",
                            super::endpoint::clean(resource, 200)
                        )));
                    }
                }
                let servers: Vec<&str> = metadata
                    .get("authorization_servers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let Some(first) = servers.first() else {
                    return Err(GrantError::Config(format!(
                        "the protected resource metadata at {url} names no authorization_servers; set MCP_SIDECAR_ISSUER or MCP_SIDECAR_TOKEN_URL"
                    )));
                };
                let issuer = Url::parse(first).map_err(|_| {
                    GrantError::Config(format!(
                        "the protected resource metadata at {url} has an invalid authorization server URL"
                    ))
                })?;
                let scopes = match challenge.as_ref().and_then(|c| c.scope.clone()) {
                    Some(scope) => scope.split_whitespace().map(str::to_string).collect(),
                    None => metadata
                        .get("scopes_supported")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                return Ok((issuer, scopes));
            }
            Err(e) => last = e,
        }
    }
    let first = match probe {
        Err(e) => format!(
            "the upstream is unreachable: {}",
            crate::net::describe_reqwest_error(&e)
        ),
        Ok(_) => format!("no protected resource metadata was found ({last})"),
    };
    Err(GrantError::Temporary(format!(
        "cannot discover the authorization server: {first}; set MCP_SIDECAR_ISSUER or MCP_SIDECAR_TOKEN_URL to skip discovery"
    )))
}

/// RFC 8414 / OIDC metadata in the MCP spec's order, with the issuer checked (RFC 8414 3.3).
async fn authorization_server(
    http: &reqwest::Client,
    issuer: &Url,
) -> Result<serde_json::Map<String, Value>, GrantError> {
    let path = issuer.path().trim_end_matches('/');
    let wanted = issuer.as_str().trim_end_matches('/').to_string();
    let candidates: Vec<String> = if path.is_empty() {
        vec![
            "/.well-known/oauth-authorization-server".into(),
            "/.well-known/openid-configuration".into(),
        ]
    } else {
        vec![
            format!("/.well-known/oauth-authorization-server{path}"),
            format!("/.well-known/openid-configuration{path}"),
            format!("{path}/.well-known/openid-configuration"),
        ]
    };
    let mut tried = Vec::new();
    for candidate in candidates {
        let Ok(url) = issuer.join(&candidate) else {
            continue;
        };
        let timeout = std::time::Duration::from_secs(10);
        match get_json_timeout(http, &url, timeout).await {
            Ok(metadata) => {
                let got = metadata_issuer(&metadata).unwrap_or_default();
                if got.trim_end_matches('/') != wanted {
                    return Err(GrantError::Config(format!(
                        "the authorization server metadata at {url} is for issuer {:?}, not {wanted:?}; refusing it (RFC 8414 section 3.3)",
                        super::endpoint::clean(&got, 200)
                    )));
                }
                return Ok(metadata);
            }
            Err(e) => tried.push(e),
        }
    }
    Err(GrantError::Temporary(format!(
        "no authorization server metadata for {wanted}: {}",
        tried.join("; ")
    )))
}

async fn get_json(
    http: &reqwest::Client,
    url: &Url,
    config: &OAuthConfig,
) -> Result<serde_json::Map<String, Value>, String> {
    get_json_timeout(http, url, config.token_timeout).await
}

/// GETs a JSON object; a plain-text 404 (common on `/.well-known/*`) is just "not here".
async fn get_json_timeout(
    http: &reqwest::Client,
    url: &Url,
    timeout: std::time::Duration,
) -> Result<serde_json::Map<String, Value>, String> {
    let response = http
        .get(url.clone())
        .timeout(timeout)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::net::describe_reqwest_error(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status().as_u16()));
    }
    match read_reply(response, "metadata endpoint").await {
        Ok(Reply::Json(object)) => Ok(object),
        Ok(Reply::Error(e)) => Err(format!("{url}: {}", e.code)),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// A client id when none is configured: the Client ID Metadata Document URL when the server
/// supports it, else Dynamic Client Registration.
pub async fn register(
    http: &reqwest::Client,
    config: &OAuthConfig,
    endpoints: &Endpoints,
) -> Result<Registered, GrantError> {
    if let Some(url) = &config.client_id_metadata_url {
        if endpoints.client_id_metadata_supported {
            return Ok(Registered {
                client_id: url.to_string(),
                client_secret: None,
                issuer: endpoints.issuer.clone(),
            });
        }
        tracing::info!(
            issuer = %endpoints.issuer,
            "the authorization server does not announce client_id_metadata_document_supported; trying Dynamic Client Registration"
        );
    }
    let Some(registration) = &endpoints.registration_url else {
        return Err(GrantError::Config(format!(
            "no MCP_SIDECAR_CLIENT_ID is configured and {} offers no client registration; register a client and set MCP_SIDECAR_CLIENT_ID",
            endpoints.issuer
        )));
    };
    let grant_types = match config.grant {
        GrantKind::DeviceCode => vec![
            "urn:ietf:params:oauth:grant-type:device_code",
            "refresh_token",
        ],
        _ => vec!["authorization_code", "refresh_token"],
    };
    let mut body = serde_json::json!({
        "client_name": "mcp-sidecar",
        "grant_types": grant_types,
        "token_endpoint_auth_method": "none",
        "response_types": if config.grant == GrantKind::AuthorizationCode { vec!["code"] } else { vec![] },
        "redirect_uris": [config.redirect_uri.as_str()],
    });
    if !config.scopes.is_empty() {
        body["scope"] = Value::from(config.scopes.join(" "));
    }
    let response = http
        .post(registration.clone())
        .timeout(config.token_timeout)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            GrantError::Temporary(format!(
                "the registration endpoint is unreachable: {}",
                crate::net::describe_reqwest_error(&e)
            ))
        })?;
    match read_reply(response, "registration endpoint").await? {
        Reply::Json(object) => {
            let client_id = object
                .get("client_id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    GrantError::Temporary(
                        "the registration endpoint's answer has no client_id".into(),
                    )
                })?;
            tracing::info!(issuer = %endpoints.issuer, client_id, "registered a client with Dynamic Client Registration");
            Ok(Registered {
                client_id: client_id.to_string(),
                client_secret: object
                    .get("client_secret")
                    .and_then(Value::as_str)
                    .map(crate::secret::Secret::new),
                issuer: endpoints.issuer.clone(),
            })
        }
        Reply::Error(e) => Err(GrantError::Config(format!(
            "the registration endpoint refused to register a client (HTTP {}, {}{})",
            e.status,
            e.code,
            e.description.map(|d| format!(": {d}")).unwrap_or_default()
        ))),
    }
}
