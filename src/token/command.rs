//! `AUTH=command`: runs `TOKEN_COMMAND` (an argv, no shell unless `TOKEN_COMMAND_SHELL=true`)
//! and uses what it prints: a raw token, or JSON with `access_token` and `expires_in` or
//! `expires_at`. This is how teams reuse the CLIs they already trust (`az account
//! get-access-token`, `gcloud auth print-access-token`, `vault read`). The manager caches the
//! result until its expiry (else `TOKEN_COMMAND_TTL`) and runs the command again after a 401.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::BoxFuture;
use super::endpoint::{GrantError, Issued, clean};
use super::manager::Grant;
use crate::config::CommandConfig;
use crate::secret::Secret;

/// More output than any token; a command printing more is misconfigured.
const MAX_OUTPUT: usize = 64 * 1024;

pub struct Command {
    pub config: CommandConfig,
}

impl Grant for Command {
    fn obtain(&self) -> BoxFuture<'_, Result<Issued, GrantError>> {
        Box::pin(self.run())
    }

    fn origin(&self) -> Option<String> {
        // The program only: arguments may carry secrets (a vault path, a client id).
        self.config.argv.first().map(|p| format!("command {p}"))
    }
}

impl Command {
    async fn run(&self) -> Result<Issued, GrantError> {
        let program = &self.config.argv[0];
        // Lifetimes count from the start: a slow command's token has lived as long as it ran.
        let started = SystemTime::now();
        let mut child = tokio::process::Command::new(program)
            .args(&self.config.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                GrantError::Rejected(format!("TOKEN_COMMAND: cannot run {program}: {e}"))
            })?;
        let mut stdout = child.stdout.take().expect("stdout was piped above");
        let mut stderr = child.stderr.take().expect("stderr was piped above");
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut limited_out = (&mut stdout).take(MAX_OUTPUT as u64 + 1);
            let mut limited_err = (&mut stderr).take(MAX_OUTPUT as u64);
            let (read_out, read_err, status) = tokio::join!(
                limited_out.read_to_end(&mut out),
                limited_err.read_to_end(&mut err),
                child.wait()
            );
            read_out.and(read_err)?;
            Ok::<_, std::io::Error>((status?, out, err))
        };
        let (status, out, err) = match tokio::time::timeout(self.config.timeout, run).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                return Err(GrantError::Temporary(format!(
                    "TOKEN_COMMAND: {program} failed: {e}"
                )));
            }
            // A command that hangs is a credential problem a person must look at (a CLI
            // waiting for a login, a vault that never answers), not the upstream being away:
            // `Config` reports it as `auth_required` with this cause, and retries with backoff.
            Err(_) => {
                return Err(GrantError::Config(format!(
                    "TOKEN_COMMAND: {program} did not finish within {}s (TOKEN_COMMAND_TIMEOUT); it was killed",
                    self.config.timeout.as_secs()
                )));
            }
        };
        if !status.success() {
            let last = String::from_utf8_lossy(&err)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", clean(l, 200)))
                .unwrap_or_default();
            return Err(GrantError::Rejected(format!(
                "TOKEN_COMMAND: {program} exited with {status}{last}"
            )));
        }
        if out.len() > MAX_OUTPUT {
            return Err(GrantError::Rejected(format!(
                "TOKEN_COMMAND: {program} printed more than {MAX_OUTPUT} bytes; expected a token"
            )));
        }
        let text = String::from_utf8(out).map_err(|_| {
            GrantError::Rejected(format!(
                "TOKEN_COMMAND: {program} printed something that is not UTF-8"
            ))
        })?;
        parse_output(&text, self.config.ttl, started)
            .map_err(|m| GrantError::Rejected(format!("TOKEN_COMMAND: {program} {m}")))
    }
}

/// What is wrong with a command's output. Never quotes it: it is, or holds, a token.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("printed nothing")]
    Empty,
    #[error("printed more than one word; expected a token or a JSON object")]
    NotAToken,
    /// Only the line: the parser's own message may quote the output.
    #[error("printed JSON that does not parse (line {line})")]
    BadJson { line: usize },
    #[error("printed JSON without access_token")]
    NoAccessToken,
    #[error("printed an access_token that cannot be sent in an HTTP header")]
    NotAHeaderValue,
}

/// A raw token (one line), or a JSON object; relative lifetimes count from `started`.
pub fn parse_output(text: &str, ttl: Duration, started: SystemTime) -> Result<Issued, OutputError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(OutputError::Empty);
    }
    let default_expiry = started + ttl;
    if !text.starts_with('{') {
        if text.lines().count() > 1 || text.chars().any(|c| c.is_control() || c == ' ') {
            return Err(OutputError::NotAToken);
        }
        return Ok(Issued {
            access_token: Secret::new(text),
            expires_at: Some(default_expiry),
            refresh_token: None,
            scope: None,
        });
    }
    let object: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| OutputError::BadJson { line: e.line() })?;
    // Field names of the common CLIs: OAuth's own, az's camelCase, gcloud's `token`.
    let token = ["access_token", "accessToken", "token"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str))
        .filter(|t| !t.trim().is_empty())
        .ok_or(OutputError::NoAccessToken)?;
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(OutputError::NotAHeaderValue);
    }
    let number = |v: &Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    let expires_at = if let Some(secs) = object.get("expires_in").and_then(number) {
        Some(started + Duration::from_secs_f64(secs.clamp(0.0, 366.0 * 86400.0)))
    } else {
        // Not az's `expiresOn`: it is local time without a zone, so reading it as UTC would be
        // off by the machine's offset; az also prints `expires_on` in Unix seconds.
        ["expires_at", "expires_on", "expiry"]
            .iter()
            .filter_map(|k| object.get(*k))
            .find_map(|v| {
                number(v)
                    .filter(|n| *n > 0.0 && *n < 1e11)
                    .map(|n| UNIX_EPOCH + Duration::from_secs_f64(n))
                    .or_else(|| {
                        v.as_str()
                            .map(str::trim)
                            .filter(|s| s.ends_with('Z'))
                            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
                    })
            })
    };
    Ok(Issued {
        access_token: Secret::new(token.trim()),
        expires_at: Some(expires_at.unwrap_or(default_expiry)),
        refresh_token: None,
        scope: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_tokens_and_json_of_common_clis() {
        let ttl = Duration::from_secs(300);
        let raw = parse_output("ya29.canary\n", ttl, SystemTime::now()).expect("raw token");
        assert_eq!(raw.access_token.expose(), "ya29.canary");

        // Relative lifetimes count from when the command started, not from when it finished.
        let started = SystemTime::now() - Duration::from_secs(20);
        let oauth = parse_output(
            r#"{"access_token":"at-canary","expires_in":60}"#,
            ttl,
            started,
        )
        .expect("oauth json");
        assert_eq!(oauth.expires_at, Some(started + Duration::from_secs(60)));
        let raw = parse_output("raw-canary", ttl, started).expect("raw token");
        assert_eq!(raw.expires_at, Some(started + ttl));

        let az = parse_output(
            r#"{"accessToken":"az-canary","expires_on":4102444800,"tokenType":"Bearer"}"#,
            ttl,
            SystemTime::now(),
        )
        .expect("az json");
        assert_eq!(
            az.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(4_102_444_800))
        );
    }

    #[test]
    fn bad_output_is_described_without_quoting_it() {
        let ttl = Duration::from_secs(300);
        for bad in [
            "",
            "two words-canary",
            "{\"token_canary\": 1}",
            "{not json canary",
        ] {
            let err = parse_output(bad, ttl, SystemTime::now())
                .err()
                .expect("refused")
                .to_string();
            assert!(!err.contains("canary"), "{err}");
        }
    }
}
