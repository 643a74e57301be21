//! Helpers shared by the fuzz targets: how one fuzz input is cut into the several pieces of
//! outside input a parser sees (header values, chunks of a stream, bodies).
//!
//! Inputs are cut at NUL bytes rather than decoded with `arbitrary`, so that the committed seeds
//! stay readable text files a person can write and check (`seeds/TARGET/*`).

/// The first `n` NUL-separated pieces of `data` (missing pieces are empty; the last one holds
/// the rest, NULs included).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    out.resize(n, &[]);
    out
}

/// Cuts a byte stream into chunks at NUL bytes, the way a network delivers it in pieces: the
/// parsers under test must not depend on where chunk boundaries fall.
pub fn chunks(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == 0).collect()
}

/// A single-threaded runtime for the async parsers (built per input: cheap, and no state leaks
/// from one input to the next).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds: it needs no OS resources beyond a timer")
}

/// A small file that exists for the life of the fuzzing process. Inputs name files (`TOKEN_FILE`,
/// `STATE_DIR`, `CA_FILE`...); the targets point every such key here instead of at whatever path
/// the input spells, so that fuzzing never reads `/dev/zero` or writes outside its own directory.
pub fn fixed_file() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        let file = dir.join("token");
        std::fs::write(&file, "fixed-token\n").expect("the temp dir is writable");
        file.to_string_lossy().into_owned()
    })
}

/// Whether a configuration key names a path the sidecar opens.
pub fn is_path_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("_file") || key.ends_with("state_dir") || key.ends_with("config")
}
