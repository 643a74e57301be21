#!/usr/bin/env bash
# SC2015: `check && check || fail` is meant (fail when either is false).
# shellcheck disable=SC2015
# The agent gate (entrypoint/mcp-sidecar-gate) with the three real agent CLIs pinned in
# ../package.json: it registers every upstream the sidecar lists, and each agent connects to each.
# One real sidecar serving two upstreams, each an `mcp-sidecar demo` demanding its own bearer
# token: `default` at /mcp (registered as `sidecar`) and `second` at /mcp/second. Every scenario
# runs the gate against the sidecar's own /upstreams (both names registered and connected), runs
# it twice (idempotent), and, with a stand-in list (../lib/upstreams-list.py through
# MCP_GATE_UPSTREAMS_URL) for what the real list cannot do, shrinks the list (the gate removes what
# it registered and nothing else); GATE-CODEX also takes the stand-in's 404 (a sidecar without
# /upstreams: the one server of old) and a malformed list.
#
#   GATE-GEMINI  Gemini CLI: `gemini mcp list` shows `✓ NAME: URL (http) - Connected` for each
#                (it exits 0 also when disconnected, so the line is what counts); the working
#                directory becomes trusted, other trust choices and a hand-added server stay
#   GATE-CODEX   Codex CLI: `[mcp_servers.NAME]` tables in $CODEX_HOME/config.toml, the rest of the
#                file byte for byte; `codex app-server` `mcpServerStatus/list` (../codex-status.mjs)
#                lists each server's tools; a malformed list is refused with exit 70
#   GATE-CLAUDE  Claude Code: `claude mcp list` shows `✔ Connected` for both names; a hand-added
#                server stays
#   GATE-SETTINGS  a stand-in Claude Code that reads its stdin still gets every upstream; a 404
#                list means the one server of old; bad settings exit 64, a missing named CLI 69, a
#                name taken twice 70
#
# Called by ../run.sh with MCP_SIDECAR_BIN set (after its `npm ci`); runs alone too (`bash run.sh`,
# which builds the sidecar with cargo when MCP_SIDECAR_BIN is unset). ONLY=GATE-CODEX runs a subset;
# KEEP_LOGS=1 keeps the logs. Without the gate change this branch adds, GATE-GEMINI and GATE-CODEX
# fail at their first check (the old gate registers with Claude Code only).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INTEROP=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$INTEROP/../.." && pwd)
GATE=$ROOT/entrypoint/mcp-sidecar-gate
BIN_DIR=$INTEROP/node_modules/.bin
SIDECAR_BIN=${MCP_SIDECAR_BIN:-}
[[ -n $SIDECAR_BIN && $SIDECAR_BIN != /* ]] && SIDECAR_BIN=$PWD/$SIDECAR_BIN
cd "$HERE"

# The sidecar rejects MCP_SIDECAR_* names it does not know; the gate reads MCP_GATE_*.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(MCP_SIDECAR_|MCP_GATE_)' || true)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcp-sidecar-gate.XXXXXX")
PASSED=0
FAILED=0
FAILED_NAMES=()

kill_groups() { # kill_groups PGID...: TERM, then KILL what is left after ~5 s
  local pgid
  (($# == 0)) && return 0
  for pgid in "$@"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  for _ in {1..50}; do
    local alive=0
    for pgid in "$@"; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pgid in "$@"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
}

on_exit() {
  local rc=$? pids=() f
  [[ -f $WORK/pids ]] && mapfile -t pids <"$WORK/pids"
  kill_groups "${pids[@]}"
  if ((rc != 0 || FAILED > 0)); then
    echo "gate interop: logs in $WORK"
    for f in "$WORK"/*.log "$WORK"/*.out; do
      [[ -f $f ]] || continue
      echo "----- tail $f"
      tail -n 30 "$f"
    done
  elif [[ ${KEEP_LOGS:-} == 1 ]]; then
    echo "gate interop: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

SCENARIO_PGIDS=()
start() { # start NAME CMD...: in its own process group, output to $WORK/NAME.log
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  SCENARIO_PGIDS+=("$!")
  echo "$!" >>"$WORK/pids"
}
fail() {
  echo "  FAIL: $*" >&2
  exit 1
}
note() { echo "  $*"; }
free_port() { node "$INTEROP/lib/free-port.cjs"; }
canary() { echo "canary-$1-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"; }
wait_http() { # wait_http URL SECONDS
  local deadline=$((SECONDS + $2))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) != 000 ]]; do
    ((SECONDS < deadline)) || fail "$1 did not answer within $2 s"
    sleep 0.2
  done
}

run_scenario() { # run_scenario ID DESCRIPTION FUNCTION
  local id=$1 desc=$2 fn=$3 rc
  if [[ -n ${ONLY:-} && ",$ONLY," != *",$id,"* ]]; then return 0; fi
  echo "--- scenario $id: $desc"
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

# setup_sidecar ID: two demo upstreams, each demanding its own token, one sidecar serving both
# (ready), and the stand-in list (the same two); sets TOKEN and TOKEN2, SC (the sidecar's base URL),
# LIST (the list's file), LIST_URL.
setup_sidecar() {
  local id=$1 up_port up2_port sc_port list_port
  TOKEN=$(canary "gate-$id")
  TOKEN2=$(canary "gate-$id-second")
  up_port=$(free_port)
  up2_port=$(free_port)
  sc_port=$(free_port)
  list_port=$(free_port)
  start "demo-$id" "$SIDECAR_BIN" demo --upstream-only --listen "127.0.0.1:$up_port" --token "$TOKEN"
  start "demo2-$id" "$SIDECAR_BIN" demo --upstream-only --listen "127.0.0.1:$up2_port" --token "$TOKEN2"
  start "sidecar-$id" env "MCP_SIDECAR_LISTEN=127.0.0.1:$sc_port" MCP_SIDECAR_LOG=debug \
    "MCP_SIDECAR_UPSTREAMS__DEFAULT__UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" \
    MCP_SIDECAR_UPSTREAMS__DEFAULT__AUTH=bearer "MCP_SIDECAR_UPSTREAMS__DEFAULT__TOKEN=$TOKEN" \
    "MCP_SIDECAR_UPSTREAMS__SECOND__UPSTREAM_URL=http://127.0.0.1:$up2_port/mcp" \
    MCP_SIDECAR_UPSTREAMS__SECOND__AUTH=bearer "MCP_SIDECAR_UPSTREAMS__SECOND__TOKEN=$TOKEN2" \
    "$SIDECAR_BIN" serve
  SC=http://127.0.0.1:$sc_port
  "$SIDECAR_BIN" wait --url "$SC/ready" --timeout 60s >"$WORK/wait-$id.out" 2>&1 ||
    fail "the sidecar was not ready: $(cat "$WORK/wait-$id.out")"
  [[ $(curl -s --max-time 5 "$SC/upstreams") == $'default /mcp required\nsecond /mcp/second required' ]] ||
    fail "the sidecar's /upstreams: $(curl -s --max-time 5 "$SC/upstreams")"
  LIST=$WORK/upstreams-$id
  printf 'default /mcp required\nsecond /mcp/second required\n' >"$LIST"
  start "list-$id" python3 "$INTEROP/lib/upstreams-list.py" "$list_port" "$LIST"
  LIST_URL=http://127.0.0.1:$list_port/upstreams
  wait_http "$LIST_URL" 30
}

# gate OUT VAR=VALUE...: the gate (curl for /ready) with these settings, the agent CLIs on PATH,
# from the agent's working directory $CWD with the throwaway $AGENT_HOME as HOME
gate() {
  local out=$1
  shift
  (cd "$CWD" && env HOME="$AGENT_HOME" PATH="$BIN_DIR:$PATH" MCP_GATE_SIDECAR_URL="$SC" MCP_GATE_CLIENT=curl \
    MCP_GATE_TIMEOUT=30s "$@" timeout 120 "$GATE") >"$WORK/$out.out" 2>&1 ||
    fail "the gate ($*): $(cat "$WORK/$out.out")"
  sed "s/^/  $out: /" "$WORK/$out.out"
}

# ---------------------------------------------------------------------------------------------
gemini_list() { # gemini_list OUT: `gemini mcp list` from $CWD
  (cd "$CWD" && HOME="$AGENT_HOME" timeout 120 "$BIN_DIR/gemini" mcp list) >"$WORK/$1.out" 2>&1 ||
    fail "gemini mcp list: $(cat "$WORK/$1.out")"
  sed "s/^/  $1: /" "$WORK/$1.out"
}
scenario_gemini() {
  setup_sidecar gemini
  AGENT_HOME=$WORK/gemini-home
  CWD=$WORK/gemini-project
  mkdir -p "$AGENT_HOME/.gemini" "$CWD"
  local dir
  dir=$(cd "$CWD" && pwd -P)
  # there before the gate: a server added by hand, and a trust choice for another folder
  (cd "$CWD" && HOME="$AGENT_HOME" "$BIN_DIR/gemini" mcp add --scope user --transport http mine http://127.0.0.1:9/mine) >/dev/null
  printf '{\n  "/elsewhere": "DO_NOT_TRUST"\n}\n' >"$AGENT_HOME/.gemini/trustedFolders.json"

  # the real sidecar's own /upstreams: two upstreams
  gate gemini-1 MCP_GATE_AGENT=gemini
  gemini_list gemini-list-1
  grep -qxF "✓ sidecar: $SC/mcp (http) - Connected" "$WORK/gemini-list-1.out" || fail "sidecar not Connected"
  grep -qxF "✓ second: $SC/mcp/second (http) - Connected" "$WORK/gemini-list-1.out" || fail "second not Connected"
  grep -q '^✗ mine: http://127.0.0.1:9/mine (http) - Disconnected' "$WORK/gemini-list-1.out" ||
    fail "the hand-added server changed"
  jq -e --arg d "$dir" '.[$d] == "TRUST_FOLDER" and .["/elsewhere"] == "DO_NOT_TRUST"' \
    "$AGENT_HOME/.gemini/trustedFolders.json" >/dev/null ||
    fail "trustedFolders.json: $(cat "$AGENT_HOME/.gemini/trustedFolders.json")"
  note "the sidecar's two upstreams: ✓ sidecar and ✓ second Connected; mine untouched; $dir trusted, the other folder's choice kept"

  # again, and from the stand-in list with the same two: nothing changes
  gate gemini-2 MCP_GATE_AGENT=gemini
  [[ $(grep -c 'already has' "$WORK/gemini-2.out") == 2 ]] || fail "the second run did not find both entries"
  gate gemini-3 MCP_GATE_AGENT=gemini MCP_GATE_UPSTREAMS_URL="$LIST_URL"
  [[ $(grep -c 'already has' "$WORK/gemini-3.out") == 2 ]] || fail "the second run did not find both entries"
  [[ $(jq '.mcpServers | length' "$AGENT_HOME/.gemini/settings.json") == 3 ]] ||
    fail "settings.json: $(jq -c .mcpServers "$AGENT_HOME/.gemini/settings.json")"

  # the list shrinks: what the gate registered goes, the hand-added server stays
  printf 'default /mcp required\n' >"$LIST"
  gate gemini-4 MCP_GATE_AGENT=gemini MCP_GATE_UPSTREAMS_URL="$LIST_URL"
  grep -q 'removed second' "$WORK/gemini-4.out" || fail "second was not removed"
  jq -e '.mcpServers | keys == ["mine", "sidecar"]' "$AGENT_HOME/.gemini/settings.json" >/dev/null ||
    fail "settings.json after the list shrank: $(jq -c .mcpServers "$AGENT_HOME/.gemini/settings.json")"
  [[ $(stat -c %a "$AGENT_HOME/.gemini/mcp-sidecar-gate.user") == 600 ]] || fail "the record is not 0600"
  note "list without second: second removed, mine and sidecar kept; the record is 0600"
  ! grep -rqF -e "$TOKEN" -e "$TOKEN2" "$WORK"/gemini-*.out "$AGENT_HOME" || fail "a token reached the agent's side"
}

# ---------------------------------------------------------------------------------------------
codex_status() { # codex_status OUT
  (cd "$CWD" && HOME="$AGENT_HOME" CODEX_HOME="$AGENT_HOME/.codex" \
    node "$INTEROP/codex-status.mjs" "$BIN_DIR/codex" 90000) >"$WORK/$1.out" 2>"$WORK/$1.log" ||
    fail "codex-status.mjs: $(tail -n 5 "$WORK/$1.log")"
  cut -c1-200 "$WORK/$1.out" | sed "s/^/  $1: /"
}
scenario_codex() {
  setup_sidecar codex
  AGENT_HOME=$WORK/codex-home
  CWD=$WORK/codex-project
  mkdir -p "$AGENT_HOME/.codex" "$CWD"
  local config=$AGENT_HOME/.codex/config.toml
  # there before the gate, kept byte for byte: settings, a hand-added stdio server with a
  # subtable, a profile
  cat >"$config" <<'TOML'
# my settings
model = "gpt-5"

[mcp_servers.mine]
command = "mine-mcp" # not installed
args = ["--flag"]

[mcp_servers.mine.env]
A = "1"

[profiles.quick]
model = "gpt-5-mini"
TOML
  cp "$config" "$WORK/codex-config.before"

  gate codex-1 MCP_GATE_AGENT=codex
  codex_status codex-status-1
  local server
  for server in sidecar second; do
    grep -qE "^$server [a-z]+ ([a-z_-]+,)*echo(,|$)" "$WORK/codex-status-1.out" ||
      fail "Codex lists no tools (echo) for $server: $(grep "^$server " "$WORK/codex-status-1.out")"
  done
  grep -qxF 'url = "'"$SC"'/mcp/second"' "$config" || fail "config.toml has no second at /mcp/second: $(cat "$config")"
  note "the sidecar's /upstreams: mcpServerStatus/list: sidecar and second each list their demo's tools"

  gate codex-2 MCP_GATE_AGENT=codex
  cp "$config" "$WORK/codex-config.2"
  gate codex-3 MCP_GATE_AGENT=codex MCP_GATE_UPSTREAMS_URL="$LIST_URL"
  cmp -s "$config" "$WORK/codex-config.2" || fail "a repeated run changed config.toml"
  [[ $(grep -c '^\[mcp_servers\.sidecar\]$' "$config") == 1 ]] || fail "config.toml: $(cat "$config")"

  # the stand-in list shrinks, then goes (a 404: a sidecar without /upstreams): one server, at the old URL
  printf 'default /mcp required\n' >"$LIST"
  gate codex-4 MCP_GATE_AGENT=codex MCP_GATE_UPSTREAMS_URL="$LIST_URL"
  grep -q 'removed second' "$WORK/codex-4.out" || fail "second was not removed"
  { cat "$WORK/codex-config.before" && printf '\n[mcp_servers.sidecar]\nurl = "%s/mcp"\n' "$SC"; } >"$WORK/codex-config.expected"
  diff "$WORK/codex-config.expected" "$config" >"$WORK/codex-config.diff" ||
    fail "config.toml is not the user's file plus [mcp_servers.sidecar]: $(cat "$WORK/codex-config.diff")"
  rm "$LIST"
  gate codex-5 MCP_GATE_AGENT=codex MCP_GATE_UPSTREAMS_URL="$LIST_URL"
  diff "$WORK/codex-config.expected" "$config" >"$WORK/codex-config.diff" ||
    fail "a 404 list changed config.toml: $(cat "$WORK/codex-config.diff")"
  [[ $(stat -c %a "$config") == 600 ]] || fail "config.toml is not 0600"
  note "second removed; config.toml is the user's file byte for byte plus [mcp_servers.sidecar]"

  # a list the gate cannot read: exit 70 naming the line, nothing changed
  printf 'default /mcp required\nBad Name\n' >"$LIST"
  local rc=0
  (cd "$CWD" && env HOME="$AGENT_HOME" PATH="$BIN_DIR:$PATH" MCP_GATE_SIDECAR_URL="$SC" MCP_GATE_CLIENT=curl \
    MCP_GATE_AGENT=codex MCP_GATE_UPSTREAMS_URL="$LIST_URL" "$GATE" true) >"$WORK/codex-bad.out" 2>&1 || rc=$?
  ((rc == 70)) && grep -q 'line 2 is not "NAME /PATH required|optional": Bad Name' "$WORK/codex-bad.out" ||
    fail "a malformed list: expected exit 70 naming line 2, got $rc: $(cat "$WORK/codex-bad.out")"
  diff -q "$WORK/codex-config.expected" "$config" >/dev/null || fail "a malformed list changed config.toml"
  note "a malformed list: $(tail -n 1 "$WORK/codex-bad.out")"
  ! grep -rqF -e "$TOKEN" -e "$TOKEN2" "$WORK"/codex-*.out "$AGENT_HOME" || fail "a token reached the agent's side"
}

# ---------------------------------------------------------------------------------------------
claude_list() { # claude_list OUT ARG...: `claude mcp ARG...` from $CWD
  local out=$1
  shift
  (cd "$CWD" && env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN HOME="$AGENT_HOME" \
    XDG_CONFIG_HOME="$AGENT_HOME/.config" XDG_CACHE_HOME="$AGENT_HOME/.cache" DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 \
    timeout 120 "$BIN_DIR/claude" mcp "$@") >"$WORK/$out.out" 2>&1
}
scenario_claude() {
  setup_sidecar claude
  AGENT_HOME=$WORK/claude-home
  CWD=$WORK/claude-project
  mkdir -p "$AGENT_HOME" "$CWD"
  (cd "$CWD" && HOME="$AGENT_HOME" DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    "$BIN_DIR/claude" mcp add --transport http mine http://127.0.0.1:9/mine -s user) >/dev/null
  local quiet=(DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1)
  gate claude-1 "${quiet[@]}"
  claude_list claude-list-1 list || fail "claude mcp list: $(cat "$WORK/claude-list-1.out")"
  sed 's/^/  claude-list-1: /' "$WORK/claude-list-1.out"
  grep -q "^sidecar: $SC/mcp .*✔ Connected" "$WORK/claude-list-1.out" || fail "sidecar not ✔ Connected"
  grep -q "^second: $SC/mcp/second .*✔ Connected" "$WORK/claude-list-1.out" || fail "second not ✔ Connected"
  note "the sidecar's two upstreams: sidecar and second ✔ Connected"

  printf 'default /mcp required\n' >"$LIST"
  gate claude-2 "${quiet[@]}" MCP_GATE_UPSTREAMS_URL="$LIST_URL"
  grep -q 'removed second' "$WORK/claude-2.out" || fail "second was not removed"
  jq -e '.mcpServers | keys == ["mine", "sidecar"]' "$AGENT_HOME/.claude.json" >/dev/null ||
    fail "\$HOME/.claude.json: $(jq -c .mcpServers "$AGENT_HOME/.claude.json")"
  note "list without second: second removed, mine kept"
  ! grep -rqF -e "$TOKEN" -e "$TOKEN2" "$WORK"/claude-*.out "$AGENT_HOME" || fail "a token reached the agent's side"
}

# ---------------------------------------------------------------------------------------------
# The gate's own decisions, with a stand-in Claude Code (MCP_GATE_CLAUDE) that logs its arguments
# and, as a node CLI may, reads its stdin to the end: no sidecar, the stand-in list answers /ready.
scenario_settings() {
  local list_port fake=$WORK/fake-claude rc
  LIST=$WORK/upstreams-settings
  printf 'default /mcp required\nalpha /mcp/alpha required\nbeta /mcp/beta optional\n' >"$LIST"
  list_port=$(free_port)
  start list-settings python3 "$INTEROP/lib/upstreams-list.py" "$list_port" "$LIST"
  SC=http://127.0.0.1:$list_port
  wait_http "$SC/ready" 30
  AGENT_HOME=$WORK/settings-home
  CWD=$WORK/settings-project
  mkdir -p "$AGENT_HOME" "$CWD"
  cat >"$fake" <<'SH'
#!/bin/sh
echo "$*" >>"$FAKE_LOG"
cat >/dev/null
case $2 in get) exit 1 ;; esac
SH
  chmod +x "$fake"
  gate settings-1 MCP_GATE_CLAUDE="$fake" FAKE_LOG="$WORK/fake-claude.log" MCP_GATE_NAME=main
  grep -qx "mcp add --transport http main $SC/mcp -s user" "$WORK/fake-claude.log" &&
    grep -qx "mcp add --transport http alpha $SC/mcp/alpha -s user" "$WORK/fake-claude.log" &&
    grep -qx "mcp add --transport http beta $SC/mcp/beta -s user" "$WORK/fake-claude.log" ||
    fail "not every upstream was registered (a CLI reading stdin ate the list?): $(cat "$WORK/fake-claude.log")"
  note "three upstreams, the CLI reading its stdin: main (default), alpha, beta each registered"

  # an agent image with the sidecar's binary (for `wait`) and neither curl nor wget: the list
  # comes from `mcp-sidecar probe --list`
  local nocurl=$WORK/bin-without-curl f
  mkdir -p "$nocurl"
  for f in /usr/local/bin/* /usr/bin/* /bin/*; do
    case ${f##*/} in curl | wget | mcp-sidecar) continue ;; esac
    [[ -e $nocurl/${f##*/} ]] || ln -s "$f" "$nocurl/${f##*/}"
  done
  ln -s "$SIDECAR_BIN" "$nocurl/mcp-sidecar"
  : >"$WORK/fake-claude.log"
  gate settings-nocurl PATH="$nocurl" MCP_GATE_CLIENT=wait MCP_GATE_CLAUDE="$fake" \
    FAKE_LOG="$WORK/fake-claude.log" MCP_GATE_NAME=main
  grep -qx "mcp add --transport http alpha $SC/mcp/alpha -s user" "$WORK/fake-claude.log" &&
    grep -qx "mcp add --transport http beta $SC/mcp/beta -s user" "$WORK/fake-claude.log" ||
    fail "without curl and wget the list was not read through mcp-sidecar: $(cat "$WORK/fake-claude.log")"
  note "no curl, no wget: the list read with mcp-sidecar probe --list, every upstream registered"

  # a sidecar without /upstreams: MCP_GATE_NAME at MCP_GATE_MCP_URL, as before
  rm "$LIST"
  : >"$WORK/fake-claude.log"
  gate settings-2 MCP_GATE_CLAUDE="$fake" FAKE_LOG="$WORK/fake-claude.log" MCP_GATE_MCP_URL=http://127.0.0.1:9/old
  grep -qx "mcp add --transport http sidecar http://127.0.0.1:9/old -s user" "$WORK/fake-claude.log" ||
    fail "404: not the one server of old: $(cat "$WORK/fake-claude.log")"
  note "404 from /upstreams: sidecar -> MCP_GATE_MCP_URL only"

  # settings the gate refuses: 64; the agent named but missing: 69; a name taken twice: 70
  local cases=("64 MCP_GATE_AGENT=cursor" "64 MCP_GATE_AGENT=codex MCP_GATE_REGISTER=gemini"
    "64 MCP_GATE_GEMINI_TRUST=yes" "69 MCP_GATE_REGISTER=gemini MCP_GATE_GEMINI=no-such-gemini"
    "70 MCP_GATE_NAME=alpha MCP_GATE_CLAUDE=$fake FAKE_LOG=/dev/null")
  printf 'default /mcp required\nalpha /mcp/alpha required\n' >"$LIST"
  local c want
  for c in "${cases[@]}"; do
    want=${c%% *}
    rc=0
    # shellcheck disable=SC2086 # the case's settings are words
    (cd "$CWD" && env HOME="$AGENT_HOME" MCP_GATE_SIDECAR_URL="$SC" MCP_GATE_CLIENT=curl ${c#* } "$GATE" true) \
      >"$WORK/settings-bad.out" 2>&1 || rc=$?
    ((rc == want)) || fail "${c#* }: expected exit $want, got $rc: $(cat "$WORK/settings-bad.out")"
    note "${c#* }: exit $rc: $(tail -n 1 "$WORK/settings-bad.out" | cut -c1-150)"
  done
  # the last case: the message names the clash, on one line
  grep -q 'the upstream list at .*: two upstreams would be registered as alpha (MCP_GATE_NAME names the default one)$' \
    "$WORK/settings-bad.out" || fail "the clash of names is not explained: $(cat "$WORK/settings-bad.out")"
}

# ---------------------------------------------------------------------------------------------
for cli in gemini codex claude; do
  [[ -x $BIN_DIR/$cli ]] || (cd "$INTEROP" && npm ci --quiet --no-audit --no-fund --loglevel=error) >"$WORK/npm-ci.log" 2>&1
done
echo "gate interop: $("$BIN_DIR/gemini" --version | sed 's/^/Gemini CLI /'), $("$BIN_DIR/codex" --version), Claude Code $("$BIN_DIR/claude" --version)"
if [[ -z $SIDECAR_BIN ]]; then
  (cd "$ROOT" && cargo build --quiet)
  SIDECAR_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/mcp-sidecar
fi

run_scenario GATE-SETTINGS "gate: every listed upstream registered, the old single server on 404, bad settings refused" scenario_settings
run_scenario GATE-GEMINI "gate + real Gemini CLI: each upstream ✓ Connected, removed when no longer listed" scenario_gemini
run_scenario GATE-CODEX "gate + real Codex CLI: config.toml tables, mcpServerStatus/list lists each one's tools" scenario_codex
run_scenario GATE-CLAUDE "gate + real Claude Code: two upstreams ✔ Connected, removed when no longer listed" scenario_claude

echo "gate interop: $PASSED passed, $FAILED failed"
((FAILED == 0)) || echo "gate interop: failed: ${FAILED_NAMES[*]}"
((FAILED == 0))
