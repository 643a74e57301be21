#!/usr/bin/env bash
# Interop tests: mcp-sidecar between real third-party MCP peers (pinned in package.json).
#
#   A  the official TypeScript SDK client -> sidecar (auth none) -> @modelcontextprotocol/server-everything
#   B  the real Claude Code CLI -> sidecar (static bearer) -> `mcp-sidecar demo` upstream that demands
#      the token; negative controls: Claude Code straight at that upstream (no token), and a
#      sidecar holding a wrong token (must fail plainly, not look like an OAuth server)
#   C  readiness gate: /ready is 503 while the upstream is down and 200 once it answers
#   D  session resilience: server-everything is killed and restarted mid-session; the SDK client's
#      next call on its old session succeeds because the sidecar re-initialized upstream (restart.mjs)
#   E  legacy HTTP+SSE (2024-11-05): the SDK's SSE client through the sidecar to server-everything's
#      `sse` transport; the endpoint event is rewritten so every POST goes through the sidecar.
#      Streamable HTTP clients at the same URL are bridged to it: the SDK's client (client.mjs)
#      and Claude Code with --transport http (✔ Connected)
#   E2 the legacy SSE front bridged to Streamable HTTP: the SDK's SSE client at the sidecar's
#      PATH/sse in front of server-everything `streamableHttp` (tools, progress, roots/list
#      answered by the client; bridge-sse.mjs), the upstream session ended when it closes; MCP
#      Inspector's CLI with `--transport sse` at the sidecar's URL lists the tools (and with
#      `--transport http`)
#   F  traces: the SDK client -> sidecar (OTLP) -> server-everything under the OpenTelemetry Node
#      SDK; one trace holds both spans, parent-linked (receiver: lib/otlp-receiver.py, decoding
#      with PyPI's opentelemetry-proto, pinned in requirements-otel.txt, venv .venv-otel)
#   G  stdio front: the SDK's StdioClientTransport spawns `mcp-sidecar stdio` in front of
#      server-everything: tools, progress, a resource subscription and its update, sampling,
#      elicitation and roots/list sent by the server and answered by the client, and the
#      upstream session ended when the client closes (stdio.mjs)
#   G-PY  the MCP Python SDK's stdio_client spawns `mcp-sidecar stdio` in front of
#      server-everything: tools, progress, a resource subscription and its update notification,
#      sampling, elicitation and roots/list sent by the server and answered by the client
#      (stdio_py.py; the SDK pinned in requirements.txt, venv .venv)
#   G-CC  the real Claude Code spawns `mcp-sidecar stdio`, added with `claude mcp add NAME -e ...
#      -- mcp-sidecar stdio`, in front of the demo upstream that demands a token (from a file):
#      ✔ Connected; with a wrong token ✘ Failed to connect, its log naming upstream_auth_rejected;
#      the token nowhere in Claude Code's home or output
#   GATE-*  gate/run.sh: the agent gate with the real Claude Code, Gemini CLI and Codex CLI: every
#      upstream a sidecar serving two lists at /upstreams registered, connected, and removed when no
#      longer listed
#   oauth/run.sh M: one sidecar in front of server-everything and an oidc-provider-protected server
#
# CI calls this script and nothing else. It needs node/npm, curl and jq. It installs the pinned
# npm packages with `npm ci`, uses $MCP_SIDECAR_BIN if set (else `cargo build` from the repo root),
# prints PASS/FAIL per scenario and a closing "N passed, N failed" line, and exits non-zero if any
# scenario failed. ONLY="B G-CC" runs just those scenarios of this file, and oauth/run.sh or
# gate/run.sh only when ONLY names "oauth" or "gate" (each has its own ONLY for its scenarios). Logs go to a temp dir that is printed (and tailed) on failure; KEEP_LOGS=1 keeps
# it after a green run too.
#
# Pins (package.json, exact, with package-lock.json): the OpenTelemetry JS packages stay at
# 0.223.0, the last release train declaring Node 20 support (0.300 on needs Node >= 22.15);
# @anthropic-ai/claude-code stays at 2.1.197, the last release whose package declares Node >= 18 (from 2.1.198 on it declares >= 22, and these
# machines have Node 20); it is also the version PROTOCOL.md's observations were made with.
# @modelcontextprotocol/inspector-cli 0.15.0 is MCP Inspector's CLI (scenario E2): the last release
# that declares no Node >= 22 engine (0.16 on do); run as build/index.js, what `inspector --cli` runs.
# @google/gemini-cli 0.61.0 (declares Node >= 20) and @openai/codex 0.171.0 (a native binary) are
# the gate's other two agents (gate/run.sh); neither needs a login for what is checked there.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIDECAR_BIN=${MCP_SIDECAR_BIN:-}
# a relative override means relative to where the caller stood
[[ -n $SIDECAR_BIN && $SIDECAR_BIN != /* ]] && SIDECAR_BIN=$PWD/$SIDECAR_BIN
cd "$HERE"

# The sidecar reads every MCP_SIDECAR_* variable as configuration and rejects names it does not
# know, so neither our own override (MCP_SIDECAR_BIN) nor settings left in the caller's environment
# may leak into the processes started here: each scenario passes exactly the settings it means.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^MCP_SIDECAR_' || true)

STARTED_AT=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcp-sidecar-interop.XXXXXX")
PASSED=0
FAILED=0
FAILED_NAMES=()

# ---------------------------------------------------------------------------------------------
# Process handling. Every server runs in its own process group (setsid) so that killing the
# group also takes any children with it; each scenario kills its own groups when it ends, and
# the EXIT trap below kills whatever a crashed or interrupted scenario left (pids in $WORK/pids).

any_alive() { # any_alive PGID...: true while any of these process groups has a member
  local pgid
  for pgid in "$@"; do kill -0 -- "-$pgid" 2>/dev/null && return 0; done
  return 1
}

kill_groups() { # kill_groups PGID...: TERM (graceful shutdown), then KILL what is left after ~5 s
  local pgid
  (($# == 0)) && return 0
  for pgid in "$@"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  for _ in {1..50}; do
    any_alive "$@" || return 0
    sleep 0.1
  done
  for pgid in "$@"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
}

on_exit() {
  local rc=$?
  local pids=()
  [[ -f $WORK/pids ]] && mapfile -t pids <"$WORK/pids"
  kill_groups "${pids[@]}"
  if ((rc != 0 || FAILED > 0)); then
    echo
    echo "interop: logs in $WORK"
    local f
    for f in "$WORK"/*.log "$WORK"/*.out; do
      [[ -f $f ]] || continue
      echo "----- tail $f"
      tail -n 40 "$f"
      echo
    done
    # Claude Code's own account of each connection attempt (scenario B)
    for f in "$WORK"/claude-home-*/.cache/claude-cli-nodejs/*/mcp-logs-*/*.jsonl; do
      [[ -f $f ]] || continue
      echo "----- tail $f"
      tail -n 15 "$f" | cut -c1-400
    done
  elif [[ ${KEEP_LOGS:-} == 1 ]]; then
    echo "interop: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Scenario-local list of process groups and their names; each scenario runs in a subshell with
# its own copy.
SCENARIO_PGIDS=()
declare -A NAME_OF=()

start() { # start NAME CMD...: run CMD in the background, output to $WORK/NAME.log; sets STARTED_PID
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  STARTED_PID=$!
  SCENARIO_PGIDS+=("$STARTED_PID")
  NAME_OF[$STARTED_PID]=$name
  echo "$STARTED_PID" >>"$WORK/pids"
}

fail() {
  echo "  FAIL: $*" >&2
  exit 1
}
note() { echo "  $*"; }

free_port() { node "$HERE/lib/free-port.cjs"; }

canary() { echo "canary-$1-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"; }

# wait_http URL PID SECONDS: poll until anything answers HTTP at URL (for servers without /ready),
# failing early if the process that should answer has exited.
wait_http() {
  local url=$1 pid=$2 deadline=$((SECONDS + $3)) code log
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    [[ $code != 000 ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      log=$WORK/${NAME_OF[$pid]:-?}.log
      fail "${NAME_OF[$pid]:-process $pid} exited before $url answered; last lines of $log:
$(tail -n 5 "$log" 2>/dev/null)"
    fi
    ((SECONDS < deadline)) || fail "$url did not answer within $3 s"
    sleep 0.2
  done
}

# http GET URL OUTFILE: prints the status, body to OUTFILE, headers to OUTFILE.headers
http_get() {
  # curl prints 000 itself when nothing answers
  curl -s --max-time 10 -D "$2.headers" -o "$2" -w '%{http_code}' "$1" || true
}

# start_sidecar NAME LISTEN_PORT VAR=VALUE...: `mcp-sidecar serve` with exactly these settings,
# debug logging (the widest net for the token canary), waits for /healthz; sets SIDECAR_PID.
start_sidecar() {
  local name=$1 port=$2
  shift 2
  start "$name" env "MCP_SIDECAR_LISTEN=127.0.0.1:$port" MCP_SIDECAR_LOG=debug "$@" "$SIDECAR_BIN" serve
  SIDECAR_PID=$STARTED_PID
  wait_http "http://127.0.0.1:$port/healthz" "$SIDECAR_PID" 30
  local code
  code=$(http_get "http://127.0.0.1:$port/healthz" "$WORK/$name-healthz.out")
  [[ $code == 200 ]] || fail "GET /healthz: expected 200, got $code"
}

# wait_ready NAME PORT: the sidecar's own `wait` command, which is what users gate on
wait_ready() {
  local name=$1 port=$2 code
  if ! "$SIDECAR_BIN" wait --url "http://127.0.0.1:$port/ready" --timeout 60s >"$WORK/$name-wait.out" 2>&1; then
    kill -0 "$SIDECAR_PID" 2>/dev/null || fail "the sidecar exited before it became ready"
    fail "mcp-sidecar wait: not ready within 60 s"
  fi
  code=$(http_get "http://127.0.0.1:$port/ready" "$WORK/$name-ready.out")
  [[ $code == 200 ]] || fail "GET /ready after wait succeeded: expected 200, got $code"
  assert_json "$WORK/$name-ready.out" "/ready"
  note "/ready 200: $(head -c 300 "$WORK/$name-ready.out")"
}

assert_json() { # assert_json FILE WHAT: the body is JSON and says so in its Content-Type
  jq -e . "$1" >/dev/null 2>&1 || fail "$2: body is not JSON: $(head -c 300 "$1")"
  grep -qi '^content-type: *application/json' "$1.headers" || fail "$2: Content-Type is not application/json: $(cat "$1.headers")"
}

# assert_no_canary SECRET FILE...: TESTING.md: secrets are canaries, grep every log and response
assert_no_canary() {
  local secret=$1 hits
  shift
  hits=$(grep -rlF -- "$secret" "$@" 2>/dev/null || true)
  [[ -z $hits ]] || fail "the token appears in: $hits"
}

run_scenario() { # run_scenario ID DESCRIPTION FUNCTION
  local id=$1 desc=$2 fn=$3 rc
  [[ -z ${ONLY:-} || " $ONLY " == *" $id "* ]] || return 0
  echo "--- scenario $id: $desc"
  # A subshell with errexit of its own (errexit is ignored in functions called from a condition),
  # and a trap that kills the scenario's servers however it ends.
  set +e
  (
    set -e
    trap 'kill_groups "${SCENARIO_PGIDS[@]}"' EXIT
    "$fn"
  )
  rc=$?
  set -e
  if ((rc == 0)); then
    echo "PASS $id: $desc"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $id: $desc"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$id")
  fi
}

# ---------------------------------------------------------------------------------------------
# Claude Code runs with a throwaway HOME (its config, caches and the needs-auth cache live there)
# and from a throwaway directory, so neither the user's ~/.claude nor a .mcp.json in this repo
# can change what `claude mcp list` shows. The DISABLE_* variables keep it from phoning home
# (telemetry, error reports, auto-update): these machines reach only package registries.
claude() {
  (
    cd "$CLAUDE_CWD"
    timeout 90 env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN \
      HOME="$CLAUDE_HOME" CLAUDE_CONFIG_DIR="$CLAUDE_HOME/.claude" \
      XDG_CONFIG_HOME="$CLAUDE_HOME/.config" XDG_CACHE_HOME="$CLAUDE_HOME/.cache" \
      DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
      DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 \
      "$HERE/node_modules/.bin/claude" "$@"
  )
}

# ---------------------------------------------------------------------------------------------
scenario_a() {
  local se_port sc_port session
  se_port=$(free_port)
  # server-everything listens on all interfaces and has no host option; the preload pins it to
  # 127.0.0.1. PORT picks the port; `streamableHttp` serves Streamable HTTP at /mcp.
  start everything env PORT="$se_port" node --require "$HERE/lib/loopback.cjs" \
    "$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
  wait_http "http://127.0.0.1:$se_port/mcp" "$STARTED_PID" 30

  sc_port=$(free_port)
  start_sidecar sidecar-a "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$se_port/mcp" MCP_SIDECAR_AUTH=none
  wait_ready sidecar-a "$sc_port"

  if ! node "$HERE/client.mjs" "http://127.0.0.1:$sc_port/mcp" >"$WORK/client-a.out" 2>"$WORK/client-a.log"; then
    sed 's/^/  /' "$WORK/client-a.out"
    fail "client.mjs through the sidecar (HTTP exchanges in client-a.log)"
  fi
  sed 's/^/  /' "$WORK/client-a.out"

  # The SDK accepts a 405 for GET and DELETE, so a proxy that answered those itself would pass the
  # client; the upstream's own log shows whether they reached it for this client's session.
  session=$(sed -n 's/^session //p' "$WORK/client-a.out")
  [[ -n $session ]] || fail "client.mjs printed no session id"
  grep -q "Establishing new SSE stream for session $session" "$WORK/everything.log" ||
    fail "the client's GET stream never reached server-everything"
  grep -q "termination request for session $session" "$WORK/everything.log" ||
    fail "the client's DELETE never reached server-everything"
  note "GET stream and DELETE for session $session reached server-everything"
}

scenario_b() {
  local token up_port sc_port line
  token=$(canary b)
  up_port=$(free_port)
  start demo-b "$SIDECAR_BIN" demo --upstream-only --listen "127.0.0.1:$up_port" --token "$token"
  wait_http "http://127.0.0.1:$up_port/mcp" "$STARTED_PID" 30
  # The negative control only means something if the upstream really refuses a tokenless client.
  local code
  code=$(curl -s --max-time 10 -D "$WORK/demo-b-401.headers" -o /dev/null -w '%{http_code}' \
    -X POST -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    --data '{"jsonrpc":"2.0","id":1,"method":"ping"}' "http://127.0.0.1:$up_port/mcp" || true)
  [[ $code == 401 ]] || fail "demo upstream without a token: expected 401, got $code"
  grep -qi '^www-authenticate: *bearer' "$WORK/demo-b-401.headers" ||
    fail "demo upstream's 401 has no WWW-Authenticate: Bearer"

  sc_port=$(free_port)
  start_sidecar sidecar-b "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" MCP_SIDECAR_AUTH=bearer "MCP_SIDECAR_TOKEN=$token"
  wait_ready sidecar-b "$sc_port"

  # Claude Code starts OAuth discovery on anything but a JSON 404 at these paths (PROTOCOL.md).
  local path
  for path in /.well-known/oauth-protected-resource/mcp /.well-known/oauth-protected-resource \
    /.well-known/oauth-authorization-server /.well-known/openid-configuration; do
    code=$(http_get "http://127.0.0.1:$sc_port$path" "$WORK/sidecar-b-wellknown.out")
    [[ $code == 404 ]] || fail "GET $path: expected 404, got $code"
    assert_json "$WORK/sidecar-b-wellknown.out" "GET $path"
  done
  note "/.well-known/* answer 404 JSON: $(head -c 100 "$WORK/sidecar-b-wellknown.out")"

  # Second negative control: a sidecar holding a wrong token. The upstream's 401 must reach Claude
  # Code as a plain failure that names the cause, never as a 401, which would send Claude Code into
  # its own OAuth ("Needs authentication") instead of telling the user what is wrong.
  local wrong wrong_port
  wrong=$(canary b-wrong)
  wrong_port=$(free_port)
  start_sidecar sidecar-b-wrong "$wrong_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" MCP_SIDECAR_AUTH=bearer "MCP_SIDECAR_TOKEN=$wrong"

  CLAUDE_HOME=$WORK/claude-home-b
  CLAUDE_CWD=$WORK/claude-cwd-b
  mkdir -p "$CLAUDE_HOME" "$CLAUDE_CWD"
  claude mcp add --transport http sidecar "http://127.0.0.1:$sc_port/mcp" >>"$WORK/claude-b.out" 2>&1 ||
    fail "claude mcp add sidecar"
  claude mcp add --transport http direct "http://127.0.0.1:$up_port/mcp" >>"$WORK/claude-b.out" 2>&1 ||
    fail "claude mcp add direct"
  claude mcp add --transport http wrongtoken "http://127.0.0.1:$wrong_port/mcp" >>"$WORK/claude-b.out" 2>&1 ||
    fail "claude mcp add wrongtoken"
  # `mcp list` connects to every server (initialize, tools/list) and prints one status line each.
  claude mcp list >"$WORK/claude-b-list.out" 2>&1 || fail "claude mcp list exited non-zero: $(cat "$WORK/claude-b-list.out")"
  sed 's/^/  claude: /' "$WORK/claude-b-list.out"

  line=$(grep '^sidecar:' "$WORK/claude-b-list.out" || true)
  [[ $line == *"✔ Connected"* ]] || fail "Claude Code does not show the sidecar as Connected: ${line:-no line for sidecar}"
  line=$(grep '^direct:' "$WORK/claude-b-list.out" || true)
  [[ -n $line ]] || fail "no line for the negative control 'direct'"
  [[ $line != *Connected* ]] || fail "negative control: Claude Code connected to the upstream without a token: $line"
  note "negative control without the sidecar: ${line##* - }"
  line=$(grep '^wrongtoken:' "$WORK/claude-b-list.out" || true)
  [[ $line == *"Failed to connect"* ]] ||
    fail "sidecar with a wrong token: expected Failed to connect, got: ${line:-no line for wrongtoken}"
  grep -rqs upstream_auth_rejected "$CLAUDE_HOME"/.cache/claude-cli-nodejs/*/mcp-logs-wrongtoken/ ||
    fail "sidecar with a wrong token: Claude Code's MCP log does not name upstream_auth_rejected"
  note "sidecar with a wrong token: ${line##* - }, and Claude Code's log names upstream_auth_rejected"

  # Claude Code's own MCP logs sit in its throwaway home; none of what it saw may hold the token.
  assert_no_canary "$token" "$WORK/sidecar-b.log" "$WORK"/sidecar-b-*.out "$WORK"/claude-b*.out "$CLAUDE_HOME"
  assert_no_canary "$wrong" "$WORK/sidecar-b-wrong.log" "$WORK"/sidecar-b-wrong-*.out "$WORK"/claude-b*.out "$CLAUDE_HOME"
  note "token canaries absent from the sidecars' logs, their responses and everything Claude Code saw"
}

scenario_c() {
  local token up_port sc_port code
  token=$(canary c)
  printf '%s\n' "$token" >"$WORK/token-c"
  up_port=$(free_port) # nothing listens here until the demo upstream starts below
  sc_port=$(free_port)
  start_sidecar sidecar-c "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" MCP_SIDECAR_AUTH=bearer \
    "MCP_SIDECAR_TOKEN_FILE=$WORK/token-c"

  # Until its first handshake fails the sidecar says `starting`; after that an operator must be
  # told why it is not ready (DESIGN.md: reason upstream_unreachable).
  local reason deadline=$((SECONDS + 20))
  while :; do
    code=$(http_get "http://127.0.0.1:$sc_port/ready" "$WORK/sidecar-c-ready-down.out")
    [[ $code == 503 ]] || fail "GET /ready with the upstream down: expected 503, got $code: $(head -c 300 "$WORK/sidecar-c-ready-down.out")"
    assert_json "$WORK/sidecar-c-ready-down.out" "/ready (upstream down)"
    reason=$(jq -r .reason "$WORK/sidecar-c-ready-down.out")
    [[ $reason != starting ]] && break
    ((SECONDS < deadline)) || fail "/ready still says starting after 20 s"
    sleep 0.2
  done
  [[ $reason == upstream_unreachable ]] ||
    fail "/ready with nothing listening upstream: expected reason upstream_unreachable: $(head -c 300 "$WORK/sidecar-c-ready-down.out")"
  note "/ready 503 while the upstream is down: $(head -c 300 "$WORK/sidecar-c-ready-down.out")"

  if "$SIDECAR_BIN" wait --url "http://127.0.0.1:$sc_port/ready" --timeout 1s >"$WORK/sidecar-c-wait-down.out" 2>&1; then
    fail "mcp-sidecar wait exited 0 while the upstream is down"
  fi
  grep -q upstream_unreachable "$WORK/sidecar-c-wait-down.out" ||
    fail "mcp-sidecar wait timed out without naming the reason: $(cat "$WORK/sidecar-c-wait-down.out")"
  note "mcp-sidecar wait --timeout 1s exits non-zero naming the reason: $(tail -n 1 "$WORK/sidecar-c-wait-down.out")"

  start demo-c "$SIDECAR_BIN" demo --upstream-only --listen "127.0.0.1:$up_port" --token "$token"
  wait_ready sidecar-c "$sc_port"
  assert_no_canary "$token" "$WORK/sidecar-c.log" "$WORK"/sidecar-c-*.out
  note "token canary (from MCP_SIDECAR_TOKEN_FILE) absent from the sidecar's log and responses"
}

# ---------------------------------------------------------------------------------------------
echo "interop: installing pinned npm packages"
npm ci --quiet --no-audit --no-fund --loglevel=error >"$WORK/npm-ci.log" 2>&1 || {
  cat "$WORK/npm-ci.log"
  exit 1
}
# npm may skip install scripts (ignore-scripts, or npm's allow-list for scripts); without its
# postinstall, Claude Code's bin is a placeholder until install.cjs links the native binary.
if ! "$HERE/node_modules/.bin/claude" --version >/dev/null 2>&1; then
  node "$HERE/node_modules/@anthropic-ai/claude-code/install.cjs" >"$WORK/claude-install.log" 2>&1
fi
echo "interop: Claude Code $("$HERE/node_modules/.bin/claude" --version)"

if [[ -z $SIDECAR_BIN ]]; then
  echo "interop: building mcp-sidecar (MCP_SIDECAR_BIN not set)"
  (cd "$ROOT" && cargo build --quiet)
  SIDECAR_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/mcp-sidecar
fi
[[ -x $SIDECAR_BIN ]] || {
  echo "interop: no sidecar binary at $SIDECAR_BIN"
  exit 1
}
echo "interop: sidecar binary $SIDECAR_BIN"

# The OTLP receiver's Python (scenario F), made again when requirements-otel.txt changed.
if ! cmp -s "$HERE/requirements-otel.txt" "$HERE/.venv-otel/requirements-otel.txt" 2>/dev/null; then
  echo "interop: installing the OTLP receiver's Python packages (requirements-otel.txt)"
  python3 -m venv --clear "$HERE/.venv-otel"
  "$HERE/.venv-otel/bin/pip" install --quiet -r "$HERE/requirements-otel.txt" >"$WORK/pip-otel.log" 2>&1 || {
    cat "$WORK/pip-otel.log"
    exit 1
  }
  cp "$HERE/requirements-otel.txt" "$HERE/.venv-otel/requirements-otel.txt"
fi

scenario_d() {
  local se_port sc_port
  se_port=$(free_port)
  sc_port=$(free_port)
  # The sidecar first: restart.mjs starts (and restarts) server-everything on se_port itself.
  start_sidecar sidecar-d "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$se_port/mcp" MCP_SIDECAR_AUTH=none
  if ! node "$HERE/restart.mjs" "http://127.0.0.1:$sc_port/mcp" "$se_port" >"$WORK/client-d.out" 2>"$WORK/client-d.log"; then
    sed 's/^/  /' "$WORK/client-d.out"
    fail "restart.mjs through the sidecar"
  fi
  sed 's/^/  /' "$WORK/client-d.out"
  grep -q "re-initialized it transparently" "$WORK/sidecar-d.log" ||
    fail "the sidecar's log does not show the transparent re-initialization"
  note "the sidecar's log shows the transparent re-initialization"
  # The same with server-everything's sse transport, the session bridged: the crash ends the
  # upstream stream, and the next call opens another and replays the client's initialize.
  se_port=$(free_port)
  sc_port=$(free_port)
  start_sidecar sidecar-d-sse "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$se_port/sse" MCP_SIDECAR_AUTH=none
  if ! node "$HERE/restart.mjs" "http://127.0.0.1:$sc_port/mcp" "$se_port" sse >"$WORK/client-d-sse.out" 2>"$WORK/client-d-sse.log"; then
    sed 's/^/  /' "$WORK/client-d-sse.out"
    fail "restart.mjs through the sidecar to server-everything's sse transport"
  fi
  sed 's/^/  sse: /' "$WORK/client-d-sse.out"
  grep -q "opened another and replayed the client's initialize" "$WORK/sidecar-d-sse.log" ||
    fail "the sidecar's log does not show the bridged session's stream opened again"
  note "a session bridged to server-everything's sse transport survives its crash and restart"
}

scenario_e() {
  local se_port sc_port
  se_port=$(free_port)
  # `sse` serves the 2024-11-05 transport: GET /sse announces POST /message?sessionId=...
  start everything-sse env PORT="$se_port" node --require "$HERE/lib/loopback.cjs" \
    "$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js" sse
  wait_http "http://127.0.0.1:$se_port/message" "$STARTED_PID" 30
  sc_port=$(free_port)
  start_sidecar sidecar-e "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$se_port/sse" MCP_SIDECAR_AUTH=none
  wait_ready sidecar-e "$sc_port"
  if ! node "$HERE/legacy-sse.mjs" "http://127.0.0.1:$sc_port/mcp" >"$WORK/client-e.out" 2>"$WORK/client-e.log"; then
    sed 's/^/  /' "$WORK/client-e.out"
    fail "legacy-sse.mjs through the sidecar"
  fi
  sed 's/^/  /' "$WORK/client-e.out"
  # A Streamable HTTP client at the same URL is bridged to the HTTP+SSE transport: the SDK's
  # client (tools, progress on its GET stream, DELETE) and Claude Code with --transport http.
  if ! node "$HERE/client.mjs" "http://127.0.0.1:$sc_port/mcp" >"$WORK/client-e-http.out" 2>"$WORK/client-e-http.log"; then
    sed 's/^/  /' "$WORK/client-e-http.out"
    fail "client.mjs (Streamable HTTP) through the sidecar to server-everything's sse transport"
  fi
  sed 's/^/  http: /' "$WORK/client-e-http.out"
  CLAUDE_HOME=$WORK/claude-home-e
  CLAUDE_CWD=$WORK/claude-cwd-e
  mkdir -p "$CLAUDE_HOME" "$CLAUDE_CWD"
  claude mcp add --transport http legacy "http://127.0.0.1:$sc_port/mcp" >>"$WORK/claude-e.out" 2>&1 ||
    fail "claude mcp add legacy: $(cat "$WORK/claude-e.out")"
  claude mcp list >"$WORK/claude-e-list.out" 2>&1 || fail "claude mcp list exited non-zero: $(cat "$WORK/claude-e-list.out")"
  sed 's/^/  claude: /' "$WORK/claude-e-list.out"
  local line
  line=$(grep '^legacy:' "$WORK/claude-e-list.out" || true)
  [[ $line == *"✔ Connected"* ]] ||
    fail "Claude Code --transport http in front of server-everything sse: ${line:-no line for legacy}"
  grep -q "bridged to the upstream's HTTP+SSE transport" "$WORK/sidecar-e.log" ||
    fail "the sidecar log does not show the Streamable HTTP clients bridged"
  note "Claude Code --transport http and the SDK's Streamable HTTP client, bridged to server-everything's sse transport"
  # The stdio front bridges its session the same way: the SDK's StdioClientTransport with the
  # full feature set (progress, subscribe, sampling, elicitation, roots) against the sse server.
  mkdir -p "$WORK/state-e-stdio"
  if ! node "$HERE/stdio.mjs" "$SIDECAR_BIN" "http://127.0.0.1:$se_port/sse" "$WORK/state-e-stdio/tokens" \
    >"$WORK/client-e-stdio.out" 2>"$WORK/client-e-stdio.log"; then
    sed 's/^/  /' "$WORK/client-e-stdio.out"
    fail "stdio.mjs spawning mcp-sidecar stdio in front of server-everything's sse transport (its log in client-e-stdio.log)"
  fi
  sed 's/^/  stdio: /' "$WORK/client-e-stdio.out"
  grep -q "bridged to the upstream's HTTP+SSE transport" "$WORK/client-e-stdio.log" ||
    fail "mcp-sidecar stdio's log does not show its session bridged"
  note "mcp-sidecar stdio with the SDK's StdioClientTransport, bridged to server-everything's sse transport"
}

# E2: the client speaks HTTP+SSE, the upstream Streamable HTTP; the sidecar bridges the two.
scenario_e2() {
  local se_port sc_port session out
  se_port=$(free_port)
  start everything-e2 env PORT="$se_port" node --require "$HERE/lib/loopback.cjs" \
    "$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
  wait_http "http://127.0.0.1:$se_port/mcp" "$STARTED_PID" 30
  sc_port=$(free_port)
  start_sidecar sidecar-e2 "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$se_port/mcp" MCP_SIDECAR_AUTH=none
  wait_ready sidecar-e2 "$sc_port"
  if ! node "$HERE/bridge-sse.mjs" "http://127.0.0.1:$sc_port/mcp/sse" >"$WORK/client-e2.out" 2>"$WORK/client-e2.log"; then
    sed 's/^/  /' "$WORK/client-e2.out"
    fail "bridge-sse.mjs through the sidecar's SSE front"
  fi
  sed 's/^/  /' "$WORK/client-e2.out"
  # The bridged session is the sidecar's own with server-everything; its DELETE follows the
  # client's close.
  local deleted=''
  for _ in $(seq 1 50); do
    grep -q 'ended the upstream session' "$WORK/sidecar-e2.log" && deleted=1 && break
    sleep 0.2
  done
  [[ -n $deleted ]] || fail "the sidecar did not end the bridged upstream session when the client closed"
  session=$(grep -o 'termination request for session [0-9a-f-]*' "$WORK/everything-e2.log" | tail -n 1)
  [[ -n $session ]] || fail "no DELETE reached server-everything"
  note "the client closed; the sidecar ended the upstream session (server-everything: $session)"

  # MCP Inspector's CLI: --transport sse turns the URL into /sse at the root, which the sidecar
  # serves for its one upstream.
  out=$WORK/inspector-e2.out
  if ! timeout 60 node "$HERE/node_modules/@modelcontextprotocol/inspector-cli/build/index.js" \
    "http://127.0.0.1:$sc_port/mcp" --transport sse --method tools/list >"$out" 2>"$WORK/inspector-e2.log"; then
    tail -n 5 "$WORK/inspector-e2.log" | sed 's/^/  /'
    fail "MCP Inspector --transport sse --method tools/list"
  fi
  jq -e '.tools | map(.name) | index("echo")' "$out" >/dev/null ||
    fail "MCP Inspector listed no echo tool: $(head -c 300 "$out")"
  note "MCP Inspector CLI --transport sse at http://127.0.0.1:$sc_port/mcp (it asks /sse): $(jq '.tools | length' "$out") tools"
  # and its Streamable HTTP transport at PATH, which needs no bridge
  if ! timeout 60 node "$HERE/node_modules/@modelcontextprotocol/inspector-cli/build/index.js" \
    "http://127.0.0.1:$sc_port/mcp" --transport http --method tools/list >"$out.http" 2>>"$WORK/inspector-e2.log"; then
    tail -n 5 "$WORK/inspector-e2.log" | sed 's/^/  /'
    fail "MCP Inspector --transport http --method tools/list"
  fi
  jq -e '.tools | map(.name) | index("echo")' "$out.http" >/dev/null ||
    fail "MCP Inspector (http) listed no echo tool: $(head -c 300 "$out.http")"
  note "MCP Inspector CLI --transport http at http://127.0.0.1:$sc_port/mcp: $(jq '.tools | length' "$out.http") tools"
}

# F: traces. The sidecar exports OTLP/HTTP protobuf to a receiver decoding it with the official
# opentelemetry-proto definitions; server-everything runs under the OpenTelemetry Node SDK with
# HTTP auto-instrumentation, exporting to the same receiver. One SDK client call must yield one
# trace holding the sidecar's span and server-everything's server span, parented by it.
scenario_f() {
  local rc_port se_port sc_port token key spans sidecar upstream deadline
  token=$(canary f-token)
  key=$(canary f-otlp-key)
  spans=$WORK/otlp-spans.jsonl
  rc_port=$(free_port)
  start otlp-receiver "$HERE/.venv-otel/bin/python" "$HERE/lib/otlp-receiver.py" "$rc_port" "$spans"
  wait_http "http://127.0.0.1:$rc_port/" "$STARTED_PID" 30
  se_port=$(free_port)
  start everything-f env PORT="$se_port" \
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$rc_port/v1/traces" \
    OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    node --require "$HERE/lib/loopback.cjs" --require "$HERE/lib/otel-node.cjs" \
    "$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
  wait_http "http://127.0.0.1:$se_port/mcp" "$STARTED_PID" 30
  sc_port=$(free_port)
  # A static token server-everything ignores: a canary to grep every export for.
  start_sidecar sidecar-f "$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$se_port/mcp" "MCP_SIDECAR_TOKEN=$token" \
    "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$rc_port" "OTEL_EXPORTER_OTLP_HEADERS=x-api-key=$key" \
    OTEL_BSP_SCHEDULE_DELAY=200
  wait_ready sidecar-f "$sc_port"
  if ! node "$HERE/client.mjs" "http://127.0.0.1:$sc_port/mcp" >"$WORK/client-f.out" 2>"$WORK/client-f.log"; then
    sed 's/^/  /' "$WORK/client-f.out"
    fail "client.mjs through the traced sidecar"
  fi
  deadline=$((SECONDS + 30))
  while :; do
    sidecar=$(jq -c 'select(.service == "mcp-sidecar" and .name == "tools/call echo")' "$spans" 2>/dev/null | head -n 1)
    if [[ -n $sidecar ]]; then
      upstream=$(jq -c --argjson s "$sidecar" \
        'select(.service == "server-everything" and .trace_id == $s.trace_id and .parent_span_id == $s.span_id)' \
        "$spans" | head -n 1)
      [[ -n $upstream ]] && break
    fi
    ((SECONDS < deadline)) || fail "no sidecar span with a server-everything child in 30 s: $(tail -c 2000 "$spans" 2>/dev/null)"
    sleep 0.2
  done
  [[ $(jq -r .kind <<<"$upstream") == 2 ]] || fail "server-everything's span is not a server span: $upstream"
  note "sidecar span: $sidecar"
  note "server-everything span in the same trace, its parent the sidecar's: $upstream"
  assert_no_canary "$token" "$spans" "$spans.raw" "$WORK/sidecar-f.log"
  assert_no_canary "$key" "$spans" "$spans.raw" "$WORK/sidecar-f.log"
  note "token and OTLP header canaries absent from every export and the sidecar's log"
}

scenario_g() {
  local se_port
  se_port=$(free_port)
  start everything-g env PORT="$se_port" node --require "$HERE/lib/loopback.cjs" \
    "$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
  wait_http "http://127.0.0.1:$se_port/mcp" "$STARTED_PID" 30
  mkdir -p "$WORK/state-g"
  if ! node "$HERE/stdio.mjs" "$SIDECAR_BIN" "http://127.0.0.1:$se_port/mcp" "$WORK/state-g/tokens" \
    >"$WORK/client-g.out" 2>"$WORK/client-g.log"; then
    sed 's/^/  /' "$WORK/client-g.out"
    fail "stdio.mjs spawning mcp-sidecar stdio (its log in client-g.log)"
  fi
  sed 's/^/  /' "$WORK/client-g.out"
  grep -q "ended the upstream session" "$WORK/client-g.log" ||
    fail "mcp-sidecar stdio did not end the upstream session when the client closed"
  note "the stdio process ended the upstream session (DELETE) when the client closed"
}

scenario_g_py() {
  local se_port
  bash "$HERE/lib/python-sdk-venv.sh" "$WORK/pip-sdk.log"
  se_port=$(free_port)
  start everything-gpy env PORT="$se_port" node --require "$HERE/lib/loopback.cjs" \
    "$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
  wait_http "http://127.0.0.1:$se_port/mcp" "$STARTED_PID" 30
  mkdir -p "$WORK/state-gpy"
  if ! "$HERE/.venv/bin/python" "$HERE/stdio_py.py" "$SIDECAR_BIN" "http://127.0.0.1:$se_port/mcp" \
    "$WORK/state-gpy" >"$WORK/client-gpy.out" 2>"$WORK/client-gpy.log"; then
    sed 's/^/  /' "$WORK/client-gpy.out"
    fail "stdio_py.py spawning mcp-sidecar stdio (its stderr in client-gpy.log)"
  fi
  sed 's/^/  /' "$WORK/client-gpy.out"
  grep -q "ended the upstream session" "$WORK/client-gpy.log" ||
    fail "mcp-sidecar stdio did not end the upstream session when the Python client closed"
  note "the stdio process ended the upstream session (DELETE) when the client closed"
}

# G-CC: Claude Code's stdio servers get the variables `claude mcp add -e` stored and a few of its
# own environment (HOME, PATH, ...), so the sidecar's settings are exactly the -e list. The token
# is in a file the entry names, never in Claude Code's configuration.
scenario_g_cc() {
  local token wrong up_port line
  # a canary with + / = & in it, longer than any cut a log or error makes
  token="$(canary gcc)+/=&$(head -c 150 /dev/urandom | base64 -w0)"
  wrong="$(canary gcc-wrong)+/=&$(head -c 150 /dev/urandom | base64 -w0)"
  up_port=$(free_port)
  start demo-gcc "$SIDECAR_BIN" demo --upstream-only --listen "127.0.0.1:$up_port" --token "$token"
  wait_http "http://127.0.0.1:$up_port/mcp" "$STARTED_PID" 30
  (umask 077 && printf '%s' "$token" >"$WORK/gcc-token" && printf '%s' "$wrong" >"$WORK/gcc-wrong")

  CLAUDE_HOME=$WORK/claude-home-gcc
  CLAUDE_CWD=$WORK/claude-cwd-gcc
  mkdir -p "$CLAUDE_HOME" "$CLAUDE_CWD"
  local name file
  for name in sidecar wrongtoken; do
    file=$WORK/gcc-token
    [[ $name == sidecar ]] || file=$WORK/gcc-wrong
    claude mcp add "$name" -e "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" \
      -e MCP_SIDECAR_AUTH=bearer -e "MCP_SIDECAR_TOKEN_FILE=$file" -e MCP_SIDECAR_LOG=debug \
      -- "$SIDECAR_BIN" stdio >>"$WORK/claude-gcc.out" 2>&1 ||
      fail "claude mcp add $name: $(cat "$WORK/claude-gcc.out")"
  done
  # `mcp list` spawns every stdio server, initializes it, lists its tools and stops it.
  claude mcp list >"$WORK/claude-gcc-list.out" 2>&1 ||
    fail "claude mcp list exited non-zero: $(cat "$WORK/claude-gcc-list.out")"
  sed 's/^/  claude: /' "$WORK/claude-gcc-list.out"
  line=$(grep '^sidecar:' "$WORK/claude-gcc-list.out" || true)
  [[ $line == *"$SIDECAR_BIN stdio"* ]] || fail "Claude Code does not run the sidecar as a stdio server: ${line:-no line for sidecar}"
  [[ $line == *"✔ Connected"* ]] || fail "Claude Code does not show mcp-sidecar stdio as Connected: ${line:-no line for sidecar}"
  line=$(grep '^wrongtoken:' "$WORK/claude-gcc-list.out" || true)
  [[ $line == *"Failed to connect"* ]] ||
    fail "mcp-sidecar stdio with a wrong token: expected Failed to connect, got: ${line:-no line for wrongtoken}"
  grep -rqs upstream_auth_rejected "$CLAUDE_HOME"/.cache/claude-cli-nodejs/*/mcp-logs-wrongtoken/ ||
    fail "mcp-sidecar stdio with a wrong token: Claude Code's MCP log does not name upstream_auth_rejected"
  note "with a wrong token: ${line##* - }, and Claude Code's log names upstream_auth_rejected"
  # Claude Code keeps the entries and each server's stderr (the sidecar's debug log) in its home.
  assert_no_canary "$token" "$WORK"/claude-gcc*.out "$CLAUDE_HOME"
  assert_no_canary "$wrong" "$WORK"/claude-gcc*.out "$CLAUDE_HOME"
  note "token canaries absent from Claude Code's configuration, its MCP logs and its output"
}

run_scenario A "SDK client -> sidecar (auth none) -> server-everything" scenario_a
run_scenario B "Claude Code -> sidecar (bearer) -> demo upstream; without the token it is refused" scenario_b
run_scenario C "readiness gate: /ready 503 until the upstream answers, then 200" scenario_c
run_scenario D "a client session survives a crash and restart of server-everything (streamableHttp, and sse bridged)" scenario_d
run_scenario E "HTTP+SSE upstream: SDK SSE client passed through; SDK Streamable HTTP client, Claude Code --transport http and mcp-sidecar stdio bridged -> server-everything sse" scenario_e
run_scenario E2 "legacy SSE front, bridged: SDK SSE client and MCP Inspector -> sidecar PATH/sse -> server-everything streamableHttp" scenario_e2
run_scenario F "traces: SDK client -> sidecar -> server-everything (OTel Node SDK), one trace" scenario_f
run_scenario G "stdio front: SDK StdioClientTransport -> mcp-sidecar stdio -> server-everything" scenario_g
run_scenario G-PY "stdio front: Python SDK stdio_client -> mcp-sidecar stdio -> server-everything (tools, progress, subscribe, sampling, elicitation, roots)" scenario_g_py
run_scenario G-CC "stdio front: Claude Code (claude mcp add ... -- mcp-sidecar stdio) -> demo upstream (bearer)" scenario_g_cc
if [[ -z ${ONLY:-} || " $ONLY " == *" oauth "* ]]; then
  env -u ONLY MCP_SIDECAR_BIN="$SIDECAR_BIN" bash "$HERE/oauth/run.sh" ||
    { FAILED=$((FAILED + 1)); FAILED_NAMES+=("oauth (oauth/run.sh)"); }
fi
if [[ -z ${ONLY:-} || " $ONLY " == *" gate "* ]]; then
  env -u ONLY MCP_SIDECAR_BIN="$SIDECAR_BIN" bash "$HERE/gate/run.sh" ||
    { FAILED=$((FAILED + 1)); FAILED_NAMES+=("gate (gate/run.sh)"); }
fi

echo
echo "interop: $((SECONDS - STARTED_AT)) s"
((FAILED == 0)) || echo "interop: failed: ${FAILED_NAMES[*]}"
echo "interop: $PASSED passed, $FAILED failed"
((FAILED == 0))
