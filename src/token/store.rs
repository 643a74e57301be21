//! Persisted OAuth state under `STATE_DIR`: the refresh token (rotated on every use by many
//! servers), the current access token and its expiry, and a dynamically registered client.
//!
//! Writes are atomic (a temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a crash at any instant leaves either the old or the new file. Every
//! read-refresh-write runs under an exclusive OS file lock on a sibling `.lock` file, so two
//! sidecars sharing a volume never both spend the same rotating refresh token: the second one
//! finds the first one's result in the file and adopts it.
//!
//! The directory may be shared with others (a volume), so nothing in it is trusted by name: the
//! directory must be this user's and writable by nobody else, temporaries get a random name and
//! are created exclusively (a planted file or symlink is refused, never written through), the
//! lock and state files are opened without following symlinks and must be regular files, and a
//! state file is read only up to a size no real one reaches.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::endpoint::Registered;
use super::on_disk;
use crate::secret::Secret;

/// Far above any real state file (tokens and a client registration: a few kilobytes), far below
/// what would hurt as an `Authorization` header or in memory.
pub const MAX_STATE_BYTES: u64 = 1024 * 1024;

/// Why the state directory or a state file cannot be used. Names the path and the cause, never
/// the content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists but is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    /// Another user could read the tokens or plant files in it.
    #[error(
        "MCP_SIDECAR_STATE_DIR {} {problem} (owner uid {owner}, mode {mode:04o}); tokens would be exposed to other users, so they are not stored there. Fix: {fix}",
        dir.display()
    )]
    Insecure {
        dir: PathBuf,
        problem: &'static str,
        owner: u32,
        mode: u32,
        fix: String,
    },
    /// Anyone may rename entries of the parent: the directory itself could be swapped.
    #[error(
        "MCP_SIDECAR_STATE_DIR {} is inside {}, which anyone may write to and which has no sticky bit (mode {mode:04o}): another user could move the state directory away and put their own in its place, so tokens are not stored there. Fix: chmod +t {} (as /tmp is) or chmod o-w {}, or set MCP_SIDECAR_STATE_DIR to a directory elsewhere",
        dir.display(),
        parent.display(),
        parent.display(),
        parent.display()
    )]
    InsecureParent {
        dir: PathBuf,
        parent: PathBuf,
        mode: u32,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is a symbolic link; it is not followed (remove it)", path.display())]
    Symlink { path: PathBuf },
    #[error("{} is not a regular file (remove it)", path.display())]
    NotRegular { path: PathBuf },
    /// The sidecar creates every file here itself: one of another user's was planted (through
    /// a swapped directory, say) and would hand the sidecar someone else's tokens.
    #[error(
        "{} is owned by uid {owner}, not the sidecar's uid {euid}; it was not written by this sidecar and is not used (remove it)",
        path.display()
    )]
    NotOurs {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "{} is larger than {MAX_STATE_BYTES} bytes, which no state file is; move it away to start over",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No source: the parser's message could quote the file.
    #[error(
        "{} is not a state file of this version (line {line}); move it away to start over",
        path.display()
    )]
    Damaged { path: PathBuf, line: usize },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the task taking the lock on {} failed: {source}", path.display())]
    LockTask {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("cannot encode the state: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub const VERSION: u32 = 1;

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
    /// `expires_at` and when the token was obtained, in Unix milliseconds: a fleet sharing
    /// seconds-long tokens would otherwise see each one a second shorter than it is, and refresh
    /// that much more often. Older files have neither; the seconds then stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained_at_ms: Option<u64>,
    /// How many times the tokens were replaced (a new token, a rotated or dropped refresh
    /// token): of two states of one credential the higher is the newer. Compared when a fleet
    /// store that lost its data is re-seeded (see [`super::fleet`]). Older files have none (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// Set when the entry was written back by a sidecar after the fleet store lost it, in Unix
    /// milliseconds: its refresh token is not spent until the entry has stood for a while, so
    /// that a sidecar holding a newer one can replace it first (see [`super::fleet`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded_at_ms: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn to_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub fn to_unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// [`from_unix`] for milliseconds.
pub fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    from_unix(ms / 1000).map(|t| t + Duration::from_millis(ms % 1000))
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
    /// The effective uid every file here must belong to (`None`: unknown, not checked).
    owner: Option<u32>,
}

/// Holds the exclusive lock until dropped.
pub struct Locked(#[allow(dead_code, reason = "held for its Drop, which releases the lock")] File);

impl Store {
    /// Opens (creating `dir` 0700 if needed) the state file called `name`. Fails when the
    /// directory cannot be created or written, or is not safe to keep tokens in, so the caller
    /// can fall back to memory and say why.
    pub fn open(dir: &Path, name: &str) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        let owner = effective_uid();
        check_dir(dir, owner)?;
        let store = Self {
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
            owner,
        };
        // Probe writability now rather than at the first rotation, when it would lose a token.
        let lock = open_lock(&store.lock_path, owner)?;
        // Temporaries left by a killed writer: removed only while no writer can be at work.
        if lock.try_lock().is_ok() {
            store.remove_temporaries();
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the exclusive lock, waiting for another process to release it.
    pub async fn lock(&self) -> Result<Locked, StoreError> {
        let path = self.lock_path.clone();
        let owner = self.owner;
        tokio::task::spawn_blocking(move || {
            let file = open_lock(&path, owner)?;
            file.lock()
                .map_err(|source| StoreError::Lock { path, source })?;
            Ok(Locked(file))
        })
        .await
        .map_err(|source| StoreError::LockTask {
            path: self.lock_path.clone(),
            source,
        })?
    }

    /// The stored state; `Ok(None)` when there is none yet. A damaged file is reported, not
    /// deleted: it may hold the only copy of a refresh token someone wants to recover.
    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let path = &self.path;
        let file = match OpenOptions::new()
            .read(true)
            // Non-blocking so that a FIFO planted here cannot hang the open; no effect on files.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(open_error(path, e)),
        };
        let meta = file.metadata().map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(StoreError::NotRegular { path: path.clone() });
        }
        // Checked on the open file, so a name swapped after the open cannot slip past it.
        check_owner(path, &meta, self.owner)?;
        if meta.len() > MAX_STATE_BYTES {
            return Err(StoreError::TooLarge { path: path.clone() });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // Bounded again while reading: the file may grow after the check.
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Read {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(StoreError::TooLarge { path: path.clone() });
        }
        let state: Persisted = serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            line: e.line(),
        })?;
        // The tokens read are known to the scrubber: `Secret::new` registered them.
        Ok(Some(state))
    }

    /// Replaces the file atomically. Callers hold [`Store::lock`].
    pub fn save(&self, state: &Persisted) -> Result<(), StoreError> {
        let mut state = state.clone();
        state.version = VERSION;
        state.updated_at = to_unix(SystemTime::now());
        let bytes = serde_json::to_vec_pretty(&state).map_err(StoreError::Encode)?;
        let dir = self.dir();
        self.remove_temporaries();
        // A name nobody can guess, created exclusively: whatever is planted in the directory is
        // never opened, let alone written through. `rename` replaces the state file's name
        // itself, so a symlink planted there is replaced, not followed.
        let tmp = dir.join(format!(
            "{}{}.tmp",
            self.temporary_prefix(),
            random_suffix()
        ));
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(write_error)?;
        let mut write = || -> std::io::Result<()> {
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_error(e)
        })
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("state")
    }

    fn temporary_prefix(&self) -> String {
        format!(".{}.", self.file_name())
    }

    /// Removes temporaries of this state file left by a writer that was killed, and the fixed
    /// name older versions used. Call with the lock held. `remove_file` unlinks a symlink
    /// itself, never its target.
    fn remove_temporaries(&self) {
        let prefix = self.temporary_prefix();
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // `.NAME.tmp` (older versions) and `.NAME.RANDOM.tmp` both start with `.NAME.`.
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Refuses a directory another user could read tokens from or plant files in: not owned by
/// this process's effective user, or writable by group or others. `euid` is `None` where it
/// cannot be learned (no `/proc`); only the mode is checked then.
fn check_dir(dir: &Path, euid: Option<u32>) -> Result<(), StoreError> {
    let meta = std::fs::metadata(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let owner = meta.uid();
    let mode = meta.mode() & 0o7777;
    let insecure = |problem, fix| StoreError::Insecure {
        dir: dir.to_path_buf(),
        problem,
        owner,
        mode,
        fix,
    };
    let shown = dir.display();
    let subdir = "or set MCP_SIDECAR_STATE_DIR to a directory that does not exist yet, which the sidecar creates with mode 0700";
    if let Some(euid) = euid
        && owner != euid
    {
        return Err(insecure(
            "is not owned by the sidecar's user",
            format!(
                "chown {euid} {shown} && chmod 700 {shown} (the sidecar runs as uid {euid}), {subdir}"
            ),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(insecure(
            "is writable by group or others",
            format!("chmod 700 {shown}, {subdir}"),
        ));
    }
    check_parent(dir)
}

/// In a directory that others may write to, without the sticky bit that `/tmp` has, anyone may
/// rename the state directory and plant their own (with a symlink to their files) in its place,
/// between two of the sidecar's writes. Group-writable parents are allowed: user-private groups
/// make them common, and the group is then the user.
fn check_parent(dir: &Path) -> Result<(), StoreError> {
    let Ok(full) = std::fs::canonicalize(dir) else {
        return Ok(()); // just checked by `metadata`; a race here is caught by the next open
    };
    let Some(parent) = full.parent() else {
        return Ok(()); // `/` has no parent to swap it in
    };
    let Ok(meta) = std::fs::metadata(parent) else {
        return Ok(());
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(StoreError::InsecureParent {
            dir: dir.to_path_buf(),
            parent: parent.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// This process's effective uid, from `/proc/self/status` (the `Uid:` line lists real,
/// effective, saved and filesystem ids): std has no call for it and the crate forbids `unsafe`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn random_suffix() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    // The OS random source failing is not something a sidecar can work around; the same call
    // backs every TLS handshake this process makes.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens (creating it 0600) the lock file, refusing a symlink or anything but a regular file.
fn open_lock(path: &Path, owner: Option<u32>) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let meta = file.metadata().map_err(|e| open_error(path, e))?;
    if !meta.is_file() {
        return Err(StoreError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    // Another user's lock file could be held by them forever.
    check_owner(path, &meta, owner)?;
    Ok(file)
}

/// Refuses a file of another user. The directory check at open cannot exclude one for good: a
/// co-tenant who may write the directory's parent can swap the directory for their own later.
fn check_owner(
    path: &Path,
    meta: &std::fs::Metadata,
    owner: Option<u32>,
) -> Result<(), StoreError> {
    match owner {
        Some(euid) if meta.uid() != euid => Err(StoreError::NotOurs {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        }),
        _ => Ok(()),
    }
}

/// `O_NOFOLLOW` on a symlink fails with `ELOOP`: say what it means.
fn open_error(path: &Path, source: std::io::Error) -> StoreError {
    if source.raw_os_error() == Some(libc::ELOOP) {
        StoreError::Symlink {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Open {
            path: path.to_path_buf(),
            source,
        }
    }
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
    use std::os::unix::fs::PermissionsExt;

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
        let err = store.load().err().expect("damaged").to_string();
        assert!(err.contains("not a state file"), "{err}");
        assert!(!err.contains("rt-canary-dmg"), "{err}");
    }

    #[test]
    fn unwritable_directories_are_refused_up_front() {
        let err = Store::open(Path::new("/proc/mcp-sidecar-test"), "x").err();
        assert!(err.is_some());
    }

    fn token_state() -> Persisted {
        Persisted {
            access_token: Some(Secret::new("at-canary-planted")),
            refresh_token: Some(Secret::new("rt-canary-planted")),
            ..Persisted::default()
        }
    }

    /// A victim file outside the state directory and its content, to check nothing reached it.
    fn victim() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("victim");
        std::fs::write(&path, "untouched").expect("written");
        (dir, path)
    }

    fn assert_untouched(victim: &Path) {
        assert_eq!(
            std::fs::read_to_string(victim).expect("still there"),
            "untouched"
        );
        let missing = victim.with_file_name("never-created");
        assert!(!missing.exists(), "a file was created through a link");
    }

    #[test]
    fn a_symlink_at_the_old_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_v, victim) = victim();
        let store = Store::open(dir.path(), "tokens-test").expect("writable");
        // The fixed name older versions wrote to, pointing at an existing and at a missing file.
        std::os::unix::fs::symlink(&victim, dir.path().join(".tokens-test.json.tmp")).unwrap();
        store.save(&token_state()).expect("saved");
        assert_untouched(&victim);
        let meta = std::fs::symlink_metadata(store.path()).expect("state file");
        assert!(
            meta.file_type().is_file(),
            "the state file is a regular file"
        );
        let back = store.load().expect("readable").expect("present");
        assert_eq!(
            back.refresh_token.as_ref().map(Secret::expose),
            Some("rt-canary-planted")
        );
        std::os::unix::fs::symlink(
            victim.with_file_name("never-created"),
            dir.path().join(".tokens-test.json.tmp"),
        )
        .unwrap();
        store.save(&token_state()).expect("saved");
        assert_untouched(&victim);
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_v, victim) = victim();
        std::os::unix::fs::symlink(&victim, dir.path().join("tokens-test.lock")).unwrap();
        let err = Store::open(dir.path(), "tokens-test").expect_err("refused");
        assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("tokens-test.lock"), "{err}");
        assert_untouched(&victim);

        // Planted after the start: taking the lock refuses it too.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "tokens-test").expect("writable");
        std::fs::remove_file(dir.path().join("tokens-test.lock")).unwrap();
        std::os::unix::fs::symlink(
            victim.with_file_name("never-created"),
            dir.path().join("tokens-test.lock"),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let err = runtime.block_on(store.lock()).err().expect("refused");
        assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
        assert_untouched(&victim);
    }

    #[test]
    fn a_symlink_at_the_state_path_is_neither_read_nor_written_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_v, victim) = victim();
        let store = Store::open(dir.path(), "tokens-test").expect("writable");
        std::os::unix::fs::symlink(&victim, store.path()).unwrap();
        let err = store.load().err().expect("refused");
        assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
        store.save(&token_state()).expect("saved");
        assert_untouched(&victim);
        let meta = std::fs::symlink_metadata(store.path()).expect("state file");
        assert!(
            meta.file_type().is_file(),
            "the link was replaced, not followed"
        );
        // Anything but a regular file is refused as well.
        std::fs::remove_file(store.path()).unwrap();
        std::fs::create_dir(store.path()).unwrap();
        let err = store.load().err().expect("refused");
        assert!(matches!(err, StoreError::NotRegular { .. }), "{err}");
    }

    #[test]
    fn an_oversized_state_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "tokens-test").expect("writable");
        let huge = format!(
            "{{\"version\":1,\"access_token\":\"{}\"}}",
            "a".repeat(MAX_STATE_BYTES as usize)
        );
        std::fs::write(store.path(), huge).expect("written");
        let err = store.load().err().expect("refused");
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("tokens-test.json"), "{err}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_the_fix() {
        for mode in [0o770, 0o707, 0o1777] {
            let parent = tempfile::tempdir().expect("temp dir");
            let dir = parent.path().join("state");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Store::open(&dir, "tokens-test").expect_err("refused");
            assert!(
                matches!(err, StoreError::Insecure { .. }),
                "{mode:o}: {err}"
            );
            let text = err.to_string();
            for needed in [
                "MCP_SIDECAR_STATE_DIR",
                dir.to_str().unwrap(),
                "chmod 700",
                "mode",
            ] {
                assert!(text.contains(needed), "{mode:o}: {needed} missing: {text}");
            }
            assert!(
                !dir.join("tokens-test.lock").exists(),
                "nothing created in it"
            );
        }
    }

    #[test]
    fn a_state_dir_inside_a_world_writable_parent_without_sticky_bit_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().expect("temp dir");
        let shared = top.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = shared.join("state");
        let err = Store::open(&dir, "tokens-test").expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::InsecureParent { .. }), "{text}");
        for needed in [
            "MCP_SIDECAR_STATE_DIR",
            "anyone may write",
            "0777",
            "chmod +t",
        ] {
            assert!(text.contains(needed), "{needed} missing: {text}");
        }
        // With the sticky bit (as /tmp has), others cannot rename what is not theirs.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Store::open(&dir, "tokens-test").expect("a sticky parent is safe");
        // Group-writable is allowed (user-private groups).
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
        Store::open(&dir, "tokens-test").expect("a group-writable parent is allowed");
    }

    #[test]
    fn a_directory_of_another_user_is_refused_with_the_fix() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let euid = effective_uid().expect("/proc/self/status is readable here");
        let foreign = if euid == 4242 { 4243 } else { 4242 };
        if euid == 0 {
            std::os::unix::fs::chown(&dir, Some(foreign), None).unwrap();
            let err = Store::open(&dir, "tokens-test").expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, StoreError::Insecure { .. }), "{text}");
            for needed in ["MCP_SIDECAR_STATE_DIR", "not owned", "4242", "chown 0"] {
                assert!(text.contains(needed), "{needed} missing: {text}");
            }
        }
        // Without root the same check runs against a pretended uid.
        let err = check_dir(&dir, Some(foreign + 1)).expect_err("refused");
        assert!(err.to_string().contains("not owned"), "{err}");
    }

    #[test]
    fn a_state_or_lock_file_of_another_user_is_not_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), "tokens-test").expect("writable");
        store.save(&token_state()).expect("saved");
        let euid = store.owner.expect("/proc/self/status is readable here");
        let foreign = if euid == 4242 { 4243 } else { 4242 };
        if euid == 0 {
            // As root: a file really planted by another user.
            std::os::unix::fs::chown(store.path(), Some(foreign), None).unwrap();
        } else {
            // Otherwise the same check against a pretended uid.
            store.owner = Some(foreign);
        }
        let err = store.load().err().expect("refused");
        assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
        assert!(err.to_string().contains("tokens-test.json"), "{err}");
        if euid == 0 {
            std::os::unix::fs::chown(&store.lock_path, Some(foreign), None).unwrap();
        }
        let err = open_lock(&store.lock_path, store.owner).expect_err("refused");
        assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
    }

    #[test]
    fn leftover_temporaries_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "tokens-test").expect("writable");
        std::fs::write(dir.path().join(".tokens-test.json.0123abcd.tmp"), "{}").unwrap();
        std::fs::write(dir.path().join(".other.json.0123abcd.tmp"), "{}").unwrap();
        store.save(&token_state()).expect("saved");
        assert!(!dir.path().join(".tokens-test.json.0123abcd.tmp").exists());
        assert!(
            dir.path().join(".other.json.0123abcd.tmp").exists(),
            "not ours"
        );
    }

    #[test]
    fn state_names_separate_configurations() {
        let a = state_name("device_code", "https://as.example", "client-a");
        let b = state_name("device_code", "https://as.example", "client-b");
        assert_ne!(a, b);
        assert!(a.starts_with("tokens-device_code-"));
    }
}
