//! What the binary's commands share for talking to the terminal: exit codes and printing
//! macros that never panic on a closed pipe. Apart from `cli` (which only parses and dispatches)
//! so that `commands` can use them without importing `cli`.

/// Exit codes (sysexits.h where one fits, so scripts can tell "fix your config" from "try later").
pub mod exit {
    pub const OK: u8 = 0;
    /// Not ready, timed out, or the server stopped with an error.
    pub const FAILURE: u8 = 1;
    /// Invalid configuration or command line (EX_USAGE).
    pub const CONFIG: u8 = 64;
    /// A required service is unavailable, e.g. the listen address is taken (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// The command given to `wait` could not be executed.
    pub const CANNOT_EXEC: u8 = 126;
    pub const NOT_FOUND: u8 = 127;
}

/// `println!` that never panics: when the reader has gone (`check-config | head -3`) the line is
/// dropped and the macro evaluates to `false`, so a command can stop printing and exit as it
/// would have. Rust ignores SIGPIPE, so without this every closed pipe is a panic (exit 101).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::output::written(writeln!(std::io::stdout().lock(), $($arg)*))
    }};
}
/// `eprintln!` that never panics (`wait ... 2>&1 | head -1`): a line nobody reads is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use {errln, outln};

/// Whether a line reached its reader; a plain `bool`, so callers that print and move on need not
/// look at it.
pub fn written(result: std::io::Result<()>) -> bool {
    result.is_ok()
}
