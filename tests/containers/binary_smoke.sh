#!/usr/bin/env bash
# binary_smoke.sh BIN: a release binary answers on this machine, whatever its architecture: one
# for another one runs under Debian's qemu-user-static (installed on first use).
#   --version     prints the Cargo.toml version
#   check-config  validates a configuration (exit 0) and rejects a bad one (exit 64, naming the key)
#   demo          the demo upstream and the sidecar in front of it: /ready 200, a tools/call answered
# tests/containers/run.sh runs it on the aarch64 binary (scenario A); so does the release workflow.
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fail() { echo "binary_smoke: FAIL: $*" >&2; exit 1; }

what=$(file -L "$bin")
[[ $what == *"statically linked"* || $what == *"static-pie linked"* ]] || fail "not static: $what"
case $what in
  *x86-64*) arch=x86_64 ;;
  *aarch64*) arch=aarch64 ;;
  *) fail "unknown architecture: $what" ;;
esac
run=("$bin")
if [[ $arch != "$(uname -m)" ]]; then
  if ! command -v "qemu-$arch-static" >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
      apt-get -o DPkg::Lock::Timeout=600 update -qq
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends qemu-user-static >/dev/null
    else
      sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends qemu-user-static >/dev/null
    fi
  fi
  run=("qemu-$arch-static" "$bin")
fi
echo "binary_smoke: $arch binary, run as: ${run[*]}"

# The sidecar rejects unknown MCP_SIDECAR_* variables: start from none.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(MCP_SIDECAR_|MCP_DEMO_)' || true)

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
out=$("${run[@]}" --version)
[[ $out == "mcp-sidecar $version" ]] || fail "--version: $out"
echo "binary_smoke: --version: $out"

out=$(MCP_SIDECAR_UPSTREAM_URL=https://mcp.example.com/mcp MCP_SIDECAR_TOKEN=smoke-token \
  "${run[@]}" check-config 2>&1) || fail "check-config: $out"
[[ $out == *mcp.example.com* && $out != *smoke-token* ]] || fail "check-config output: $out"
rc=0
out=$(MCP_SIDECAR_UPSTREAM_URL=not-a-url MCP_SIDECAR_TOKEN=smoke-token "${run[@]}" check-config 2>&1) || rc=$?
if ((rc != 64)) || [[ $out != *UPSTREAM_URL* ]]; then fail "check-config of a bad URL: exit $rc: $out"; fi
echo "binary_smoke: check-config: exit 0 on a good configuration, 64 naming UPSTREAM_URL on a bad one"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port)
sc_port=$(free_port)
log=$(mktemp)
MCP_SIDECAR_LISTEN=127.0.0.1:$sc_port "${run[@]}" demo --listen "127.0.0.1:$up_port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
deadline=$((SECONDS + 60))
until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$sc_port/ready" || true) == 200 ]]; do
  kill -0 "$pid" 2>/dev/null || fail "demo exited: $(tail -n 5 "$log")"
  ((SECONDS < deadline)) || fail "/ready not 200 within 60 s: $(tail -n 5 "$log")"
  sleep 0.2
done
out=$(curl -s --max-time 10 "http://127.0.0.1:$sc_port/mcp" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"smoke-through"}}}')
[[ $out == *smoke-through* ]] || fail "tools/call through the demo: $out"
echo "binary_smoke: demo: /ready 200 and a tools/call answered through the sidecar"
