#!/bin/sh
# Dev container feature installer for mcp-sidecar. The devcontainer CLI runs it as root while it
# builds the image, from this folder, with the options in the environment: UPSTREAMURL, PORT,
# VERSION, BINARYPATH (and _CONTAINER_USER, the user the container runs as).
#
# It installs the binary to /usr/local/bin/mcp-sidecar (BINARYPATH, else the release VERSION from
# RELEASE_BASE_URL, checked against its .sha256), writes /usr/local/etc/mcp-sidecar/config.toml
# (listen on 127.0.0.1:PORT, the upstream URL), creates the state dir /var/lib/mcp-sidecar for
# the container user, and installs the entrypoint that starts the sidecar at container start.
#
# DESTDIR installs into another root instead of / (packaging, and this repository's tests).
set -eu

say() { printf 'mcp-sidecar feature: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

UPSTREAMURL=${UPSTREAMURL:-}
PORT=${PORT:-4510}
VERSION=${VERSION:-0.1.0}
BINARYPATH=${BINARYPATH:-}
RELEASE_BASE_URL=${RELEASE_BASE_URL:-https://github.com/mcp-sidecar/mcp-sidecar/releases/download}
DESTDIR=${DESTDIR:-}
here=$(cd "$(dirname "$0")" && pwd)

case $PORT in '' | *[!0-9]*) die "option port: expected a number, got '$PORT'" ;; esac
if [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then die "option port: $PORT is not between 1 and 65535"; fi
# The URL goes into a TOML string: no quotes, backslashes or spaces (a URL has none).
case $UPSTREAMURL in
  *'"'* | *\\* | *' '* | *'	'*) die "option upstreamUrl: not a URL (it contains quotes, backslashes or spaces)" ;;
  '' | http://* | https://*) ;;
  *) die "option upstreamUrl: expected an https:// URL" ;;
esac

bin=$DESTDIR/usr/local/bin/mcp-sidecar
# mkdir/cp/chmod rather than install(1): minimal images (busybox) may lack it
put() { # put SRC DEST: copy SRC to DEST, mode 0755
  cp "$1" "$2.tmp" && chmod 0755 "$2.tmp" && mv -f "$2.tmp" "$2"
}
mkdir -p "$DESTDIR/usr/local/bin" "$DESTDIR/usr/local/etc/mcp-sidecar" "$DESTDIR/usr/local/share/mcp-sidecar"

if [ -n "$BINARYPATH" ]; then
  case $BINARYPATH in /*) src=$BINARYPATH ;; *) src=$here/$BINARYPATH ;; esac
  [ -f "$src" ] || die "option binaryPath: no file at $src"
  put "$src" "$bin"
  say "installed $src as /usr/local/bin/mcp-sidecar"
else
  case $(uname -m) in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) die "no release binary for $(uname -m); build one (cargo build --release) and set binaryPath" ;;
  esac
  url=$RELEASE_BASE_URL/v$VERSION/mcp-sidecar-$arch-unknown-linux-musl
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  fetch() { # fetch URL FILE
    if command -v curl >/dev/null 2>&1; then
      curl -fsSL --retry 3 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
      wget -q -O "$2" "$1"
    else
      die "neither curl nor wget is installed to download $1; install one first, or set binaryPath"
    fi
  }
  fetch "$url" "$tmp/mcp-sidecar" || die "cannot download $url (is version $VERSION released?)"
  fetch "$url.sha256" "$tmp/sha256" || die "cannot download $url.sha256"
  expected=$(cut -d ' ' -f 1 <"$tmp/sha256")
  actual=$(sha256sum "$tmp/mcp-sidecar" | cut -d ' ' -f 1)
  if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
    die "checksum mismatch for $url: expected '$expected', got '$actual'"
  fi
  put "$tmp/mcp-sidecar" "$bin"
  say "installed $url as /usr/local/bin/mcp-sidecar"
fi
# Proves the binary runs here (a static musl binary runs on any Linux of its architecture).
say "$("$bin" --version)"

{
  echo "# Written by the mcp-sidecar dev container feature. MCP_SIDECAR_* variables override it"
  echo "# (e.g. MCP_SIDECAR_TOKEN_FILE in devcontainer.json's containerEnv)."
  echo "listen = \"127.0.0.1:$PORT\""
  [ -z "$UPSTREAMURL" ] || echo "upstream_url = \"$UPSTREAMURL\""
} >"$DESTDIR/usr/local/etc/mcp-sidecar/config.toml"
chmod 0644 "$DESTDIR/usr/local/etc/mcp-sidecar/config.toml"

# The state dir (tokens from logins) belongs to whoever the container runs as.
mkdir -p "$DESTDIR/var/lib/mcp-sidecar"
chmod 0700 "$DESTDIR/var/lib/mcp-sidecar"
user=${_CONTAINER_USER:-root}
if id -u "$user" >/dev/null 2>&1; then
  chown "$(id -u "$user"):$(id -g "$user")" "$DESTDIR/var/lib/mcp-sidecar"
fi

put "$here/entrypoint.sh" "$DESTDIR/usr/local/share/mcp-sidecar/entrypoint.sh"
say "the sidecar starts with the container on 127.0.0.1:$PORT (log: /tmp/mcp-sidecar.log)"
