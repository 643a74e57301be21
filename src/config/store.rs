//! `STATE_STORE` and its keys: where a fleet of sidecars shares one credential (Redis or
//! Valkey), how it is reached, and the key its entries are encrypted with.
//!
//! Unset, tokens persist in `STATE_DIR` as before. The URL's password is taken out of the URL at
//! once and held as a [`Secret`], so the URL kept (and shown by `check-config`) carries none.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::Reader;
use crate::secret::{Secret, SecretSource};

/// A shared Redis store (`STATE_STORE=redis://...` or `rediss://...`).
#[derive(Debug, Clone)]
pub struct FleetStoreConfig {
    /// Without its password (see `password`).
    pub url: Url,
    /// From the URL, `STATE_STORE_PASSWORD` or `STATE_STORE_PASSWORD_FILE`.
    pub password: Option<SecretSource>,
    /// `STATE_KEY_FILE`: the AES-256-GCM key entries are sealed with.
    pub key_file: PathBuf,
    /// `STATE_STORE_CLIENT_CERT_FILE` and `STATE_STORE_CLIENT_KEY_FILE` (rediss:// only).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// `STATE_STORE_CA_FILE`: trust roots for rediss:// instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// `STATE_LOCK_TTL`: how long the fleet's refresh lock lives unless released; what a sidecar
    /// that dies holding it costs the others.
    pub lock_ttl: Duration,
    /// Connect and per-command bound for Redis (`CONNECT_TIMEOUT`).
    pub timeout: Duration,
}

pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);

impl FleetStoreConfig {
    /// The URL as shown: never a password (it is not in `url`).
    pub fn display_url(&self) -> String {
        self.url.to_string()
    }

    /// The `check-config` rows besides `STATE_STORE` itself.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into())
        };
        vec![
            (
                "STATE_STORE_PASSWORD",
                self.password
                    .as_ref()
                    .map(SecretSource::describe)
                    .unwrap_or_else(|| "(none)".into()),
            ),
            ("STATE_KEY_FILE", self.key_file.display().to_string()),
            ("STATE_STORE_CLIENT_CERT_FILE", path(&self.client_cert_file)),
            ("STATE_STORE_CLIENT_KEY_FILE", path(&self.client_key_file)),
            ("STATE_STORE_CA_FILE", path(&self.ca_file)),
            (
                "STATE_LOCK_TTL",
                humantime::format_duration(self.lock_ttl).to_string(),
            ),
        ]
    }
}

impl Reader {
    /// Reads the store keys; `None` with no problem recorded when `STATE_STORE` is unset.
    pub(super) fn state_store(&mut self, timeout: Duration) -> Option<FleetStoreConfig> {
        let related = [
            "state_store_password",
            "state_store_password_file",
            "state_key_file",
            "state_store_client_cert_file",
            "state_store_client_key_file",
            "state_store_ca_file",
            "state_lock_ttl",
        ];
        let Some(text) = self.text("state_store") else {
            for key in related {
                if self.raw.contains_key(key) {
                    self.problem(
                        key,
                        "is set but STATE_STORE is not (it applies to a redis:// store only)",
                    );
                }
            }
            return None;
        };
        if !cfg!(feature = "fleet") {
            self.problem(
                "state_store",
                "this build of mcp-sidecar has no Redis support (built without the `fleet` feature); unset it to keep tokens in STATE_DIR",
            );
            return None;
        }
        let mut url = match Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "redis" | "rediss") && url.host().is_some() => url,
            // The value may hold a password: never echoed.
            _ => {
                self.problem(
                    "state_store",
                    "expected a redis:// or rediss:// URL with a host (redis://[:PASSWORD@]HOST[:PORT][/DB]); unset it to keep tokens in STATE_DIR",
                );
                return None;
            }
        };
        let in_url = url.password().map(percent_decode).filter(|p| !p.is_empty());
        // Out of the URL at once: the URL kept is shown, the password never.
        let _ = url.set_password(None);
        let configured = self.secret(
            "state_store_password",
            "state_store_password_file",
            "STATE_STORE_PASSWORD_FILE",
        );
        let password = match (in_url, configured) {
            (Some(_), Some(_)) => {
                self.problem(
                    "state_store_password",
                    "is set and STATE_STORE's URL has a password too; use one",
                );
                None
            }
            (Some(p), None) => Some(SecretSource::Inline(Secret::new(p))),
            (None, configured) => configured,
        };
        let key_file = match self.text("state_key_file") {
            Some(path) => {
                let path = PathBuf::from(path);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        if let Err(e) = crate::seal::Sealer::from_file_bytes(&bytes) {
                            self.problem("state_key_file", format!("{}: {e}", path.display()));
                        }
                    }
                    Err(e) => self.problem(
                        "state_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    ),
                }
                Some(path)
            }
            None => {
                self.problem(
                    "state_key_file",
                    "is required with STATE_STORE: entries in a shared Redis are encrypted with it (a file with 32 random bytes, or `openssl rand -hex 32`)",
                );
                None
            }
        };
        let file = |reader: &mut Self, key: &str| {
            let path = PathBuf::from(reader.text(key)?);
            if let Err(e) = std::fs::metadata(&path) {
                reader.problem(key, format!("cannot read {}: {e}", path.display()));
            }
            Some(path)
        };
        let client_cert_file = file(self, "state_store_client_cert_file");
        let client_key_file = file(self, "state_store_client_key_file");
        let ca_file = file(self, "state_store_ca_file");
        if client_cert_file.is_some() != client_key_file.is_some() {
            self.problem(
                "state_store_client_cert_file",
                "and STATE_STORE_CLIENT_KEY_FILE go together: set both or neither",
            );
        }
        if url.scheme() == "redis" && (client_cert_file.is_some() || ca_file.is_some()) {
            self.problem(
                "state_store",
                "is redis:// (plain TCP), but TLS settings are given (STATE_STORE_CLIENT_CERT_FILE, STATE_STORE_CA_FILE); use rediss://",
            );
        }
        let lock_ttl = self.duration("state_lock_ttl", DEFAULT_LOCK_TTL);
        if lock_ttl < Duration::from_secs(2) {
            self.problem(
                "state_lock_ttl",
                "must be at least 2s (longer than a token request takes)",
            );
        }
        Some(FleetStoreConfig {
            url,
            password,
            key_file: key_file?,
            client_cert_file,
            client_key_file,
            ca_file,
            lock_ttl,
            timeout,
        })
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(all(test, feature = "fleet"))]
mod tests {
    use crate::config::{ENV_PREFIX, Sources, load};

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_string()))
                .collect(),
        }
    }

    fn key_file() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "ab".repeat(32)).expect("written");
        let path = path.to_str().expect("UTF-8").to_string();
        (dir, path)
    }

    #[test]
    fn the_url_password_is_a_secret_and_never_shown() {
        let password = format!("canary-redis-pw+/=&{}", "p".repeat(200));
        let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
        let (_dir, key) = key_file();
        let url = format!("rediss://:{encoded}@redis.example:6380/2");
        let config = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("STATE_STORE", &url),
            ("STATE_KEY_FILE", &key),
        ]))
        .expect("valid");
        let store = config.state_store.as_ref().expect("a fleet store");
        let shown = format!("{:?} {:?}", config.summary(), config);
        assert!(!shown.contains("canary-redis-pw"), "{shown}");
        assert!(shown.contains("rediss://redis.example:6380/2"), "{shown}");
        let held = store.password.as_ref().expect("a password").read().unwrap();
        assert_eq!(held.expose(), password);
    }

    #[test]
    fn bad_store_settings_name_their_keys_without_echoing_values() {
        let secret = format!("canary-bad-url+/=&{}", "u".repeat(200));
        let problems = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("STATE_STORE", &format!("http://:{secret}@x")),
        ]))
        .expect_err("invalid")
        .problems;
        let text = format!("{problems:?}");
        assert!(text.contains("MCP_SIDECAR_STATE_STORE"), "{text}");
        assert!(!text.contains("canary-bad-url"), "{text}");

        let problems = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("STATE_STORE", "redis://127.0.0.1:6379"),
        ]))
        .expect_err("no key")
        .problems;
        assert!(
            problems
                .iter()
                .any(|p| p.key == "MCP_SIDECAR_STATE_KEY_FILE" && p.message.contains("required")),
            "{problems:?}"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let short = dir.path().join("short");
        std::fs::write(&short, "0123").expect("written");
        let problems = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("STATE_STORE", "redis://127.0.0.1:6379"),
            ("STATE_KEY_FILE", short.to_str().expect("UTF-8")),
            ("STATE_LOCK_TTL", "1s"),
        ]))
        .expect_err("bad key and ttl")
        .problems;
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"MCP_SIDECAR_STATE_KEY_FILE"), "{problems:?}");
        assert!(keys.contains(&"MCP_SIDECAR_STATE_LOCK_TTL"), "{problems:?}");

        let problems = load(&env(&[
            ("UPSTREAM_URL", "https://x.example/mcp"),
            ("STATE_LOCK_TTL", "10s"),
        ]))
        .expect_err("a store key without a store")
        .problems;
        assert!(
            problems
                .iter()
                .any(|p| p.key == "MCP_SIDECAR_STATE_LOCK_TTL"),
            "{problems:?}"
        );
    }
}
