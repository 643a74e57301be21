#!/usr/bin/env bash
# python-sdk-venv.sh LOG: makes tests/interop/.venv hold the pinned MCP Python SDK client
# (tests/interop/requirements.txt), rebuilding it when the pins changed; pip's output goes to
# LOG, printed on failure. Used by interop scenario G-PY and chaos scenario A.
set -euo pipefail
INTEROP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY_VENV=$INTEROP/.venv
LOG=${1:?usage: python-sdk-venv.sh LOG}
cmp -s "$INTEROP/requirements.txt" "$PY_VENV/.installed-requirements" 2>/dev/null && exit 0
echo "installing tests/interop/requirements.txt (the MCP Python SDK) into $PY_VENV"
{
  rm -rf "$PY_VENV"
  if ! python3 -m venv "$PY_VENV"; then
    # Debian's own python3 keeps venv in a separate package
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
    python3 -m venv "$PY_VENV"
  fi
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: -r "$INTEROP/requirements.txt"
  cp "$INTEROP/requirements.txt" "$PY_VENV/.installed-requirements"
} >"$LOG" 2>&1 || {
  cat "$LOG"
  exit 1
}
