//! The `AUTH` family of settings: which credential source runs and everything it needs.
//!
//! Kept apart from the transport settings because it is the largest and most interdependent
//! group: `AUTH` may be inferred from which keys are set, each grant needs its own subset of keys,
//! and a key that only one grant reads is a mistake under any other (reported, not ignored, so a
//! typo in `AUTH` cannot silently fall back to sending no credential).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::Reader;
use crate::secret::{SecretFile, SecretSource};

/// Which credential the sidecar injects upstream.
#[derive(Debug)]
pub enum AuthConfig {
    None,
    Bearer(SecretSource),
    Command(CommandConfig),
    OAuth(Box<OAuthConfig>),
}

impl AuthConfig {
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bearer(_) => "bearer",
            Self::Command(_) => "command",
            Self::OAuth(o) => o.grant.name(),
        }
    }
}

/// `AUTH=command`: a program prints the token.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// Program and arguments; `["/bin/sh", "-c", text]` when `TOKEN_COMMAND_SHELL=true`.
    pub argv: Vec<String>,
    /// How long a printed token is used when the output carries no expiry.
    pub ttl: Duration,
    pub timeout: Duration,
    pub refresh_skew: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    ClientCredentials,
    RefreshToken,
    DeviceCode,
    AuthorizationCode,
    TokenExchange,
}

impl GrantKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
            Self::DeviceCode => "device_code",
            Self::AuthorizationCode => "authorization_code",
            Self::TokenExchange => "token_exchange",
        }
    }

    /// Grants that need a person to log in when no refresh token is held.
    pub fn is_interactive(self) -> bool {
        matches!(self, Self::DeviceCode | Self::AuthorizationCode)
    }
}

/// How the client authenticates at the token endpoint (RFC 6749 2.3, RFC 7523).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client: `client_id` in the form, no secret.
    None,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

impl ClientAuth {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Rs256,
    Es256,
}

/// Everything an OAuth grant needs. Endpoints left unset are found by discovery.
#[derive(Debug)]
pub struct OAuthConfig {
    pub grant: GrantKind,
    /// `None`: registered at run time (Client ID Metadata Document or Dynamic Client Registration).
    pub client_id: Option<String>,
    pub client_secret: Option<SecretSource>,
    pub client_auth: ClientAuth,
    pub assertion_key: Option<SecretFile>,
    /// `None`: taken from the key's type.
    pub assertion_alg: Option<SigningAlg>,
    pub assertion_kid: Option<String>,
    pub client_id_metadata_url: Option<Url>,
    /// Empty: from the upstream's challenge, else its `scopes_supported`.
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    /// RFC 8707 resource indicator; `None` when `RESOURCE=off`.
    pub resource: Option<String>,
    pub issuer: Option<Url>,
    pub token_url: Option<Url>,
    pub authorization_url: Option<Url>,
    pub device_authorization_url: Option<Url>,
    pub redirect_uri: Url,
    pub refresh_token: Option<SecretSource>,
    pub subject_token: Option<SecretFile>,
    pub subject_token_type: String,
    pub refresh_skew: Duration,
    pub token_timeout: Duration,
}

/// Keys only some grants read: `(key, grants that read it)`. Setting one for another grant is
/// reported, because it means the configuration does not do what its author thinks.
const GRANT_KEYS: &[(&str, &[&str])] = &[
    ("token", &["bearer", "none"]),
    ("token_file", &["bearer", "none"]),
    ("token_command", &["command"]),
    ("token_command_ttl", &["command"]),
    ("token_command_timeout", &["command"]),
    ("token_command_shell", &["command"]),
    ("subject_token_file", &["token_exchange"]),
    ("subject_token_type", &["token_exchange"]),
    (
        "refresh_token",
        &["refresh_token", "device_code", "authorization_code"],
    ),
    (
        "refresh_token_file",
        &["refresh_token", "device_code", "authorization_code"],
    ),
    ("redirect_uri", &["authorization_code"]),
    ("authorization_url", &["authorization_code"]),
    ("device_authorization_url", &["device_code"]),
];

/// Keys that only OAuth grants read.
const OAUTH_KEYS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_auth",
    "client_assertion_key_file",
    "client_assertion_alg",
    "client_assertion_kid",
    "client_id_metadata_url",
    "scopes",
    "audience",
    "resource",
    "issuer",
    "token_url",
];

const MODES: &str = "none, bearer, command, client_credentials, refresh_token, device_code, authorization_code, token_exchange";

pub(super) const DEFAULT_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

impl Reader {
    pub(super) fn auth(
        &mut self,
        upstream: Option<&Url>,
        listen: Option<SocketAddr>,
    ) -> Option<AuthConfig> {
        // Read first so its problems are reported even when AUTH itself is wrong.
        let token = self.secret("token", "token_file", "TOKEN_FILE");
        let mode = match self.text("auth").map(|s| s.to_ascii_lowercase()) {
            Some(mode) => {
                if !MODES.split(", ").any(|m| m == mode) {
                    // Echo the value only when it looks like a mistyped mode name: a credential
                    // pasted into the wrong variable must not end up in the error.
                    let shown = if mode.len() <= 24
                        && mode.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        format!(" {mode:?}")
                    } else {
                        String::new()
                    };
                    self.problem("auth", format!("unknown value{shown}; supported: {MODES}"));
                    return None;
                }
                mode
            }
            None => self.infer_mode()?,
        };
        self.unused_keys(&mode);

        match mode.as_str() {
            "none" => {
                if token.is_some() {
                    self.problem(
                        "auth",
                        "is none, but a token is configured; remove the token or set AUTH=bearer",
                    );
                    return None;
                }
                Some(AuthConfig::None)
            }
            "bearer" => match token {
                Some(token) => Some(AuthConfig::Bearer(token)),
                None => {
                    if !self.raw.contains_key("token") && !self.raw.contains_key("token_file") {
                        self.problem("auth", "is bearer, but neither TOKEN nor TOKEN_FILE is set");
                    }
                    None
                }
            },
            "command" => self.command().map(AuthConfig::Command),
            grant => {
                let grant = match grant {
                    "client_credentials" => GrantKind::ClientCredentials,
                    "refresh_token" => GrantKind::RefreshToken,
                    "device_code" => GrantKind::DeviceCode,
                    "authorization_code" => GrantKind::AuthorizationCode,
                    _ => GrantKind::TokenExchange,
                };
                self.oauth(grant, upstream, listen)
                    .map(|o| AuthConfig::OAuth(Box::new(o)))
            }
        }
    }

    /// `AUTH` left unset: the one mode the other keys point at, or a problem if they point at
    /// several.
    fn infer_mode(&mut self) -> Option<String> {
        let has = |r: &Self, k: &str| r.raw.contains_key(k);
        let mut candidates = Vec::new();
        if has(self, "token") || has(self, "token_file") {
            candidates.push("bearer");
        }
        if has(self, "token_command") {
            candidates.push("command");
        }
        if has(self, "subject_token_file") {
            candidates.push("token_exchange");
        } else if has(self, "refresh_token") || has(self, "refresh_token_file") {
            candidates.push("refresh_token");
        } else if has(self, "client_secret")
            || has(self, "client_secret_file")
            || has(self, "client_assertion_key_file")
        {
            candidates.push("client_credentials");
        }
        match candidates.as_slice() {
            [] if OAUTH_KEYS.iter().any(|k| has(self, k)) => {
                self.problem(
                    "auth",
                    format!(
                        "OAuth settings are present but AUTH is not set; choose one of: {MODES}"
                    ),
                );
                None
            }
            [] => Some("none".into()),
            [one] => Some((*one).into()),
            several => {
                self.problem(
                    "auth",
                    format!(
                        "is not set and the credentials given fit several modes ({}); set AUTH to one of them",
                        several.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn unused_keys(&mut self, mode: &str) {
        let oauth = !matches!(mode, "none" | "bearer" | "command");
        let mut unused: Vec<&str> = GRANT_KEYS
            .iter()
            .filter(|(key, modes)| self.raw.contains_key(*key) && !modes.contains(&mode))
            .map(|(key, _)| *key)
            .collect();
        if !oauth {
            unused.extend(OAUTH_KEYS.iter().filter(|k| self.raw.contains_key(**k)));
        }
        for key in unused {
            let auth = self.label_like(key, "auth".into());
            self.problem(key, format!("is not used with {auth}={mode}; remove it"));
        }
    }

    fn command(&mut self) -> Option<CommandConfig> {
        let shell = self.boolean("token_command_shell", false);
        let ttl = self.duration("token_command_ttl", Duration::from_secs(300));
        let timeout = self.duration("token_command_timeout", Duration::from_secs(30));
        let refresh_skew = self.skew();
        let argv = match self.raw.get("token_command").cloned() {
            None => {
                self.problem(
                    "auth",
                    "is command, but TOKEN_COMMAND is not set (e.g. az account get-access-token --query accessToken -o tsv)",
                );
                return None;
            }
            Some(figment::value::Value::Array(_, items)) if !shell => {
                let argv: Option<Vec<String>> = items
                    .into_iter()
                    .map(|v| v.into_string().filter(|s| !s.is_empty()))
                    .collect();
                match argv {
                    Some(argv) if !argv.is_empty() => argv,
                    _ => {
                        self.problem("token_command", "expected a non-empty list of strings");
                        return None;
                    }
                }
            }
            Some(_) => {
                let text = self.text("token_command")?;
                if shell {
                    vec!["/bin/sh".into(), "-c".into(), text]
                } else {
                    match shlex::split(&text) {
                        Some(argv) if !argv.is_empty() => argv,
                        _ => {
                            self.problem(
                                "token_command",
                                "has unbalanced quotes; write it as you would in a shell, or set TOKEN_COMMAND_SHELL=true",
                            );
                            return None;
                        }
                    }
                }
            }
        };
        Some(CommandConfig {
            argv,
            ttl,
            timeout,
            refresh_skew,
        })
    }

    /// A file holding a secret (a key, a subject token), checked for readability now.
    fn secret_file(&mut self, key: &str, env_name: &'static str) -> Option<SecretFile> {
        let env_name = self.scoped_env_name(env_name);
        let path = self.text(key)?;
        let file = SecretFile::new(env_name, PathBuf::from(path));
        if let Err(e) = file.read() {
            self.problem(key, super::strip_key_prefix(&e.to_string(), env_name));
        }
        Some(file)
    }

    fn skew(&mut self) -> Duration {
        let skew = self.duration("refresh_skew", Duration::from_secs(60));
        if skew > Duration::from_secs(3600) {
            self.problem("refresh_skew", "must be at most 1h");
        }
        skew
    }

    fn endpoint(&mut self, key: &str) -> Option<Url> {
        let text = self.text(key)?;
        match Url::parse(&text) {
            Ok(url) if url.scheme() == "https" => Some(url),
            Ok(url) if url.scheme() == "http" && super::host_is_loopback(&url) => Some(url),
            Ok(url) if url.scheme() == "http" => {
                self.problem(
                    key,
                    "plain http to a non-loopback host would send credentials in clear text; use https",
                );
                None
            }
            Ok(_) => {
                self.problem(key, "expected an https:// URL");
                None
            }
            Err(e) => {
                self.problem(key, format!("not a valid URL: {e}"));
                None
            }
        }
    }

    fn oauth(
        &mut self,
        grant: GrantKind,
        upstream: Option<&Url>,
        listen: Option<SocketAddr>,
    ) -> Option<OAuthConfig> {
        let client_id = self.text("client_id");
        let client_secret =
            self.secret("client_secret", "client_secret_file", "CLIENT_SECRET_FILE");
        let assertion_key =
            self.secret_file("client_assertion_key_file", "CLIENT_ASSERTION_KEY_FILE");
        let assertion_alg = match self
            .text("client_assertion_alg")
            .map(|s| s.to_ascii_uppercase())
        {
            None => None,
            Some(a) if a == "RS256" => Some(SigningAlg::Rs256),
            Some(a) if a == "ES256" => Some(SigningAlg::Es256),
            Some(_) => {
                self.problem("client_assertion_alg", "expected RS256 or ES256");
                None
            }
        };
        let assertion_kid = self.text("client_assertion_kid");

        let client_auth = match self.text("client_auth").map(|s| s.to_ascii_lowercase()) {
            Some(m) if m == "client_secret_basic" => ClientAuth::ClientSecretBasic,
            Some(m) if m == "client_secret_post" => ClientAuth::ClientSecretPost,
            Some(m) if m == "private_key_jwt" => ClientAuth::PrivateKeyJwt,
            Some(m) if m == "none" => ClientAuth::None,
            Some(_) => {
                self.problem(
                    "client_auth",
                    "expected client_secret_basic, client_secret_post, private_key_jwt or none",
                );
                ClientAuth::None
            }
            None if assertion_key.is_some() => ClientAuth::PrivateKeyJwt,
            None if client_secret.is_some() => ClientAuth::ClientSecretBasic,
            None => ClientAuth::None,
        };
        match client_auth {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost
                if client_secret.is_none() =>
            {
                let key = self.label_like("client_auth", "client_secret".into());
                self.problem(
                    "client_auth",
                    format!("{} needs {key} (or its _FILE form)", client_auth.name()),
                );
            }
            ClientAuth::PrivateKeyJwt if assertion_key.is_none() => {
                let key = self.label_like("client_auth", "client_assertion_key_file".into());
                self.problem("client_auth", format!("private_key_jwt needs {key}"));
            }
            _ => {}
        }
        if client_id.is_none()
            && matches!(
                grant,
                GrantKind::ClientCredentials | GrantKind::TokenExchange
            )
        {
            self.problem(
                "client_id",
                format!(
                    "is required with AUTH={} (a confidential client registered with the authorization server)",
                    grant.name()
                ),
            );
        } else if client_id.is_none() && client_auth != ClientAuth::None {
            self.problem(
                "client_id",
                format!("is required with {}", client_auth.name()),
            );
        }
        if grant == GrantKind::ClientCredentials && client_auth == ClientAuth::None {
            self.problem(
                "auth",
                "client_credentials needs a client credential: CLIENT_SECRET(_FILE) or CLIENT_ASSERTION_KEY_FILE",
            );
        }

        let client_id_metadata_url = self.endpoint("client_id_metadata_url");
        let scopes: Vec<String> = self
            .list("scopes")
            .iter()
            .flat_map(|s| s.split_whitespace())
            .map(str::to_string)
            .collect();
        let audience = self.text("audience");
        let resource = match self.text("resource") {
            Some(r) if r.eq_ignore_ascii_case("off") => None,
            Some(r) => match Url::parse(&r) {
                Ok(url) if url.fragment().is_none() => Some(r),
                _ => {
                    self.problem(
                        "resource",
                        "expected an absolute URI without a fragment (RFC 8707), or off",
                    );
                    None
                }
            },
            None => upstream.map(canonical_resource),
        };
        let issuer = self.endpoint("issuer");
        let token_url = self.endpoint("token_url");
        let authorization_url = self.endpoint("authorization_url");
        let device_authorization_url = self.endpoint("device_authorization_url");
        let redirect_uri = match self.text("redirect_uri") {
            Some(text) => match Url::parse(&text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
                _ => {
                    self.problem(
                        "redirect_uri",
                        "expected an http(s) URL ending in /oauth/callback",
                    );
                    None
                }
            },
            None => {
                let port = listen.map_or(4510, |l| l.port());
                // Each named upstream logs in on its own callback (`/oauth/NAME/callback`).
                let login = match &self.scope {
                    Some(scope) if scope.name != super::DEFAULT_UPSTREAM => {
                        format!("/oauth/{}", scope.name)
                    }
                    _ => "/oauth".to_string(),
                };
                Url::parse(&format!("http://localhost:{port}{login}/callback")).ok()
            }
        };
        // Keys of other grants are reported by `unused_keys`; their files need not be read.
        let reads = |key: &str| {
            GRANT_KEYS
                .iter()
                .any(|(k, modes)| *k == key && modes.contains(&grant.name()))
        };
        let refresh_token = if reads("refresh_token") {
            self.secret("refresh_token", "refresh_token_file", "REFRESH_TOKEN_FILE")
        } else {
            None
        };
        if grant == GrantKind::RefreshToken && refresh_token.is_none() {
            self.problem(
                "auth",
                "is refresh_token, but neither REFRESH_TOKEN nor REFRESH_TOKEN_FILE is set (a token persisted in STATE_DIR by `mcp-sidecar login` also works with AUTH=device_code or authorization_code)",
            );
        }
        let subject_token = if reads("subject_token_file") {
            self.secret_file("subject_token_file", "SUBJECT_TOKEN_FILE")
        } else {
            None
        };
        if grant == GrantKind::TokenExchange && subject_token.is_none() {
            self.problem(
                "auth",
                "is token_exchange, but SUBJECT_TOKEN_FILE is not set (e.g. a projected service-account token)",
            );
        }
        let subject_token_type = self
            .text("subject_token_type")
            .unwrap_or_else(|| DEFAULT_SUBJECT_TOKEN_TYPE.into());
        let refresh_skew = self.skew();
        let token_timeout = self.duration("token_timeout", Duration::from_secs(10));

        Some(OAuthConfig {
            grant,
            client_id,
            client_secret,
            client_auth,
            assertion_key,
            assertion_alg,
            assertion_kid,
            client_id_metadata_url,
            scopes,
            audience,
            resource,
            issuer,
            token_url,
            authorization_url,
            device_authorization_url,
            redirect_uri: redirect_uri?,
            refresh_token,
            subject_token,
            subject_token_type,
            refresh_skew,
            token_timeout,
        })
    }
}

/// The upstream URL as an RFC 8707 resource: no fragment, no query, and no lone trailing slash
/// (the MCP authorization spec's canonical form).
pub fn canonical_resource(url: &Url) -> String {
    let mut url = url.clone();
    url.set_fragment(None);
    url.set_query(None);
    let text = url.to_string();
    if url.path() == "/" {
        text.trim_end_matches('/').to_string()
    } else {
        text
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn or_discovered(url: &Option<Url>) -> String {
    url.as_ref()
        .map(crate::net::display_url)
        .unwrap_or_else(|| "(discovered)".into())
}

impl CommandConfig {
    /// `check-config` rows. The program only: its arguments may carry secrets.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "TOKEN_COMMAND",
                format!(
                    "{} (+{} argument(s), not shown)",
                    self.argv[0],
                    self.argv.len() - 1
                ),
            ),
            ("TOKEN_COMMAND_TTL", duration(self.ttl)),
            ("TOKEN_COMMAND_TIMEOUT", duration(self.timeout)),
            ("REFRESH_SKEW", duration(self.refresh_skew)),
        ]
    }
}

impl OAuthConfig {
    /// `check-config` rows: secrets redacted, files by path, endpoints without query strings.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            (
                "CLIENT_ID",
                self.client_id
                    .clone()
                    .unwrap_or_else(|| "(registered at run time)".into()),
            ),
            ("CLIENT_AUTH", self.client_auth.name().into()),
        ];
        if let Some(secret) = &self.client_secret {
            rows.push(("CLIENT_SECRET", secret.describe()));
        }
        if let Some(key) = &self.assertion_key {
            rows.push((
                "CLIENT_ASSERTION_KEY_FILE",
                format!("file {}", key.path().display()),
            ));
        }
        rows.extend([
            (
                "SCOPES",
                if self.scopes.is_empty() {
                    "(from the upstream's challenge or metadata)".into()
                } else {
                    self.scopes.join(" ")
                },
            ),
            (
                "RESOURCE",
                self.resource.clone().unwrap_or_else(|| "off".into()),
            ),
            ("ISSUER", or_discovered(&self.issuer)),
            ("TOKEN_URL", or_discovered(&self.token_url)),
        ]);
        match self.grant {
            GrantKind::DeviceCode => rows.push((
                "DEVICE_AUTHORIZATION_URL",
                or_discovered(&self.device_authorization_url),
            )),
            GrantKind::AuthorizationCode => {
                rows.push(("AUTHORIZATION_URL", or_discovered(&self.authorization_url)));
                rows.push(("REDIRECT_URI", self.redirect_uri.to_string()));
            }
            GrantKind::TokenExchange => {
                if let Some(file) = &self.subject_token {
                    rows.push((
                        "SUBJECT_TOKEN_FILE",
                        format!("file {}", file.path().display()),
                    ));
                }
                rows.push(("SUBJECT_TOKEN_TYPE", self.subject_token_type.clone()));
            }
            _ => {}
        }
        if let Some(seed) = &self.refresh_token {
            rows.push(("REFRESH_TOKEN", seed.describe()));
        }
        if let Some(audience) = &self.audience {
            rows.push(("AUDIENCE", audience.clone()));
        }
        rows.extend([
            ("REFRESH_SKEW", duration(self.refresh_skew)),
            ("TOKEN_TIMEOUT", duration(self.token_timeout)),
        ]);
        rows
    }
}
