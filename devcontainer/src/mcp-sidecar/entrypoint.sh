#!/bin/sh
# The feature's entrypoint: the dev container runs it at every start with the container's command
# as arguments. It starts mcp-sidecar in the background and then runs that command.
#
# Settings come from /usr/local/etc/mcp-sidecar/config.toml (MCP_SIDECAR_CONFIG, written from the
# feature's options) and MCP_SIDECAR_* variables (containerEnv), e.g. MCP_SIDECAR_TOKEN_FILE.
# In the container, `mcp-sidecar wait -- claude` holds Claude Code until the sidecar is ready.
log=/tmp/mcp-sidecar.log
config=${MCP_SIDECAR_CONFIG:-/usr/local/etc/mcp-sidecar/config.toml}

if [ -z "${MCP_SIDECAR_UPSTREAM_URL:-}" ] && ! grep -q '^upstream_url' "$config" 2>/dev/null; then
  echo "mcp-sidecar: not started: no upstream (the feature's upstreamUrl option, or MCP_SIDECAR_UPSTREAM_URL)" >&2
elif mcp-sidecar probe --live --timeout 1s >/dev/null 2>&1; then
  : # already serving (the entrypoint ran before in this container)
else
  # A configuration problem must not keep the container from starting: it is in the log, and
  # `mcp-sidecar wait` or /ready say so.
  # Ignoring SIGHUP (as nohup would, which minimal images lack) survives the exec.
  (
    trap '' HUP
    exec mcp-sidecar serve
  ) >>"$log" 2>&1 </dev/null &
  echo "mcp-sidecar: started in the background (log: $log)" >&2
fi
exec "$@"
