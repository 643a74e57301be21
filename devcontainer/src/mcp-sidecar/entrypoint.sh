#!/bin/sh
# The feature's entrypoint: the dev container runs it at every start with the container's command
# as arguments. It starts mcp-sidecar in the background and then runs that command.
#
# Settings come from /usr/local/etc/mcp-sidecar/config.toml (MCP_SIDECAR_CONFIG, written from the
# feature's options) and MCP_SIDECAR_* variables (containerEnv), e.g. MCP_SIDECAR_TOKEN_FILE.
# In the container, `mcp-sidecar wait -- claude` holds Claude Code until the sidecar is ready.
#
# It says "started" only for a sidecar that is alive and answers /healthz. One that exits (a bad
# setting, a port in use) or never answers is reported with the last lines of its log, and the
# container's command runs all the same: a dev container that does not start is worse to debug.
log=/tmp/mcp-sidecar.log
config=${MCP_SIDECAR_CONFIG:-/usr/local/etc/mcp-sidecar/config.toml}
# how long a sidecar that is alive may take to answer /healthz (it listens within milliseconds)
healthz_deadline_s=10

# log_tail FIRST_LINE: the last lines this start wrote to the log (the log is appended to)
log_tail() {
  tail -n "+$1" "$log" 2>/dev/null | tail -n 10 | sed 's/^/  | /' >&2
}

start_sidecar() {
  first_line=$(($(wc -l 2>/dev/null <"$log" || echo 0) + 1))
  # The subshell stays the sidecar's parent and writes its exit status when it ends: kill -0
  # cannot tell an exited child (a zombie until waited for) from a live one, and /proc may be
  # missing. Ignoring SIGHUP (as nohup would, which minimal images lack) is inherited.
  exited=$log.exit
  rm -f "$exited"
  (
    trap '' HUP
    rc=0
    mcp-sidecar serve || rc=$?
    echo "$rc" >"$exited"
  ) >>"$log" 2>&1 </dev/null &
  started=$(date +%s)
  while :; do
    if [ -s "$exited" ]; then
      echo "mcp-sidecar: not started: it exited with status $(cat "$exited"); the end of $log:" >&2
      log_tail "$first_line"
      return 0
    fi
    if mcp-sidecar probe --live --timeout 1s >/dev/null 2>&1; then
      echo "mcp-sidecar: started in the background (log: $log)" >&2
      return 0
    fi
    if [ $(($(date +%s) - started)) -ge "$healthz_deadline_s" ]; then
      echo "mcp-sidecar: running, but /healthz did not answer within ${healthz_deadline_s}s; the end of $log:" >&2
      log_tail "$first_line"
      return 0
    fi
    sleep 0.1 2>/dev/null || sleep 1
  done
}

# has_upstream: one is configured, in either form (several upstreams are named blocks:
# MCP_SIDECAR_UPSTREAMS__<NAME>__UPSTREAM_URL in containerEnv, or [upstreams.NAME] in the file)
has_upstream() {
  [ -n "${MCP_SIDECAR_UPSTREAM_URL:-}" ] && return 0
  env | grep -q '^MCP_SIDECAR_UPSTREAMS__[A-Z0-9_]*__UPSTREAM_URL=' && return 0
  grep -q -e '^upstream_url' -e '^\[upstreams\.' "$config" 2>/dev/null
}

if ! has_upstream; then
  echo "mcp-sidecar: not started: no upstream (the feature's upstreamUrl option, MCP_SIDECAR_UPSTREAM_URL, or MCP_SIDECAR_UPSTREAMS__<NAME>__UPSTREAM_URL)" >&2
elif mcp-sidecar probe --live --timeout 1s >/dev/null 2>&1; then
  : # already serving (the entrypoint ran before in this container)
else
  start_sidecar
fi
exec "$@"
