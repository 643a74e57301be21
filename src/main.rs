//! The `mcp-sidecar` binary: everything lives in the library; see `mcp_sidecar::cli`.

fn main() -> std::process::ExitCode {
    mcp_sidecar::cli::main()
}
