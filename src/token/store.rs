//! Persisted OAuth state under `STATE_DIR`: the refresh token (rotated on every use by many
//! servers), the current access token and its expiry, and a dynamically registered client.
//!
//! Writes are atomic (a temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a crash at any instant leaves either the old or the new file. Every
//! read-refresh-write runs under an exclusive OS file lock on a sibling `.lock` file, so two
//! sidecars sharing a volume never both spend the same rotating refresh token: the second one
//! finds the first one's result in the file and adopts it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::endpoint::Registered;
use super::on_disk;
use crate::secret::Secret;

const VERSION: u32 = 1;

/// The file's content. Deliberately not `Debug`: it holds tokens in plain text.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "on_disk::secret"
    )]
    pub access_token: Option<Secret>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "on_disk::secret"
    )]
    pub refresh_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// SHA-256 of the configured `REFRESH_TOKEN` this state descends from: a new seed from the
    /// operator wins over an older rotated token, an unchanged one does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Registered>,
    /// Unix seconds of the last write.
    #[serde(default)]
    pub updated_at: u64,
}

pub fn to_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// `None` for values no clock reaches (a damaged or hand-edited file must not panic).
pub fn from_unix(secs: u64) -> Option<SystemTime> {
    const YEAR_9999: u64 = 253_402_300_799;
    (secs <= YEAR_9999).then(|| UNIX_EPOCH + Duration::from_secs(secs))
}

/// One state file (and its lock) in `STATE_DIR`.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    lock_path: PathBuf,
}

/// Holds the exclusive lock until dropped.
pub struct Locked(#[allow(dead_code, reason = "held for its Drop, which releases the lock")] File);

impl Store {
    /// Opens (creating `dir` 0700 if needed) the state file called `name`. Fails when the
    /// directory cannot be created or written, so the caller can fall back to memory and say so.
    pub fn open(dir: &Path, name: &str) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let store = Self {
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
        };
        // Probe writability now rather than at the first rotation, when it would lose a token.
        open_lock(&store.lock_path)
            .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the exclusive lock, waiting for another process to release it.
    pub async fn lock(&self) -> Result<Locked, String> {
        let path = self.lock_path.clone();
        tokio::task::spawn_blocking(move || {
            let file =
                open_lock(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            file.lock()
                .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
            Ok(Locked(file))
        })
        .await
        .map_err(|e| format!("lock task failed: {e}"))?
    }

    /// The stored state; `Ok(None)` when there is none yet. A damaged file is reported, not
    /// deleted: it may hold the only copy of a refresh token someone wants to recover.
    pub fn load(&self) -> Result<Option<Persisted>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let state: Persisted = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not a state file of this version (line {}); move it away to start over",
                self.path.display(),
                e.line()
            )
        })?;
        // The tokens read are known to the scrubber: `Secret::new` registered them.
        Ok(Some(state))
    }

    /// Replaces the file atomically. Callers hold [`Store::lock`].
    pub fn save(&self, state: &Persisted) -> Result<(), String> {
        let mut state = state.clone();
        state.version = VERSION;
        state.updated_at = to_unix(SystemTime::now());
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| format!("cannot encode the state: {e}"))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // One fixed name: writers hold the exclusive lock, so they never share it, and a temp
        // file left by a killed writer is simply overwritten by the next one.
        let tmp = dir.join(format!(
            ".{}.tmp",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("state")
        ));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // A pre-existing temp file keeps its old mode; make sure it is private.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.path.display())
        })
    }
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// A short stable name for one configuration's state: which grant, which server, which client.
/// Different configurations sharing a volume then never read each other's tokens.
pub fn state_name(grant: &str, anchor: &str, client: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{grant}\n{anchor}\n{client}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tokens-{grant}-{hex}")
}

pub fn fingerprint(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_privately_and_atomically() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state_dir = dir.path().join("state");
        let store = Store::open(&state_dir, "tokens-test").expect("writable");
        assert!(store.load().expect("readable").is_none());
        let state = Persisted {
            refresh_token: Some(Secret::new("rt-canary")),
            expires_at: Some(42),
            ..Persisted::default()
        };
        store.save(&state).expect("saved");
        let mode = std::fs::metadata(store.path())
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&state_dir)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let back = store.load().expect("readable").expect("present");
        assert_eq!(
            back.refresh_token.as_ref().map(Secret::expose),
            Some("rt-canary")
        );
        assert_eq!(back.expires_at, Some(42));
        let leftovers: Vec<_> = std::fs::read_dir(&state_dir)
            .expect("listable")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_damaged_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "tokens-test").expect("writable");
        std::fs::write(store.path(), "{\"refresh_token\": \"rt-canary-dmg").expect("written");
        let err = store.load().err().expect("damaged");
        assert!(err.contains("not a state file"), "{err}");
        assert!(!err.contains("rt-canary-dmg"), "{err}");
    }

    #[test]
    fn unwritable_directories_are_refused_up_front() {
        let err = Store::open(Path::new("/proc/mcp-sidecar-test"), "x").err();
        assert!(err.is_some());
    }

    #[test]
    fn state_names_separate_configurations() {
        let a = state_name("device_code", "https://as.example", "client-a");
        let b = state_name("device_code", "https://as.example", "client-b");
        assert_ne!(a, b);
        assert!(a.starts_with("tokens-device_code-"));
    }
}
