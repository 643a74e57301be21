#!/usr/bin/env bash
# OAuth interop: mcp-sidecar obtaining tokens from a REAL authorization server (npm oidc-provider,
# idp.mjs) for an MCP server that validates every token it is given (resource-server.mjs: JWT
# signature from the issuer's JWKS, issuer, audience = its own URL, expiry, scope mcp:tools).
# Each scenario starts its own authorization server and resource server (so each one's log holds only
# that scenario's requests and can be counted), then the sidecar, and asserts that /ready turns 200,
# that `tools/call whoami` through the sidecar reaches the resource server as the expected principal,
# and that no secret (client secret, private key, any token the IdP issued) appears in the sidecar's
# log, /ready, /status or `mcp-sidecar wait` output.
#
#   A   client_credentials, client_secret_basic, endpoints configured (TOKEN_URL)
#   A2  client_credentials, client_secret_post, secret from the environment
#   B   client_credentials, private_key_jwt: RS256 (PKCS#8 RSA key, no kid), then ES256 (PKCS#8 EC key, kid)
#   B2  the same with the other PEM encodings of those keys: PKCS#1 RSA, SEC1 EC
#   C   refresh_token: a refresh token obtained here through the device flow is seeded with
#       REFRESH_TOKEN_FILE; access tokens live 8 s (REFRESH_SKEW 2s); two MCP sessions keep calling
#       whoami across two expiries, then the sidecar restarts with the same seed file and STATE_DIR
#       and goes on across a third; the IdP rotates the refresh token on every use and answers a
#       reused one with invalid_grant (revoking the grant): there must be refreshes, no invalid_grant,
#       and no request the resource server refused
#   C2  two sidecars sharing one STATE_DIR and seed, both busy across two expiries: no invalid_grant
#   D   device_code with ISSUER only: /ready shows login.user_code, approve-device.mjs approves it on
#       the provider's own pages, /ready turns 200; a restarted sidecar on the same STATE_DIR is ready
#       without a new login (the refresh token was persisted)
#   E   discovery: only UPSTREAM_URL + client credentials; the sidecar must find the authorization
#       server through the resource server's 401 -> RFC 9728 metadata -> authorization server metadata
#   F   the IdP refuses: a wrong client secret (invalid_client) and an unknown refresh token
#       (invalid_grant) each give /ready 503 auth_required with a detail naming the error
#   G   the resource server revokes a token that has an hour to live (401 invalid_token): the sidecar
#       gets one new token and the client's call is answered
#   S   the stdio front (SDK StdioClientTransport spawning `mcp-sidecar stdio`) killed with SIGKILL
#       mid-session and respawned 10 times, 4 s access tokens, rotating refresh tokens: every call
#       answered, no invalid_grant, no login (stdio-kill.mjs)
#   M   two upstreams in one sidecar: server-everything (no auth) and this resource server (client
#       credentials); the SDK client calls a tool on each route; then the resource server is killed:
#       its route 502 JSON-RPC error, /ready 503 naming it, the other route keeps serving
#   H   a fleet (STATE_STORE=redis://, a real redis-server): refresh_token with rotation; H2 the same
#       with client credentials (see scenario_fleet below for what is checked, and FLEET_CHAOS)
#
# Called by ../run.sh at its end with MCP_SIDECAR_BIN set; runs alone too (`bash run.sh`, which
# builds the sidecar with cargo when MCP_SIDECAR_BIN is unset). Needs node/npm, curl and jq.
# KEEP_LOGS=1 keeps the temp dir of logs after a green run. ONLY=A,C runs a subset.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INTEROP=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$INTEROP/../.." && pwd)
SIDECAR_BIN=${MCP_SIDECAR_BIN:-}
[[ -n $SIDECAR_BIN && $SIDECAR_BIN != /* ]] && SIDECAR_BIN=$PWD/$SIDECAR_BIN
cd "$HERE"

# The sidecar rejects MCP_SIDECAR_* names it does not know: each scenario passes exactly its own.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^MCP_SIDECAR_' || true)

STARTED_AT=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcp-sidecar-oauth.XXXXXX")
chmod 700 "$WORK"
PASSED=0
FAILED=0
FAILED_NAMES=()

# ---------------------------------------------------------------------------------------------
# Process handling, as in ../run.sh: every server in its own process group, killed by its scenario
# and, whatever is left after a crash or an interrupt, by the EXIT trap (pids in $WORK/pids).
any_alive() {
  local pgid
  for pgid in "$@"; do kill -0 -- "-$pgid" 2>/dev/null && return 0; done
  return 1
}

kill_groups() {
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
    echo "interop-oauth: logs in $WORK"
    # the files of the failed scenarios (named after their ids, lower case), else all of them
    local f id files=()
    for id in "${FAILED_NAMES[@]}"; do
      for f in "$WORK"/*-"${id,,}".* "$WORK"/*-"${id,,}"-*; do
        [[ -f $f && ($f == *.log || $f == *.out) ]] && files+=("$f")
      done
    done
    ((${#files[@]} > 0)) || files=("$WORK"/*.log "$WORK"/*.out)
    for f in "${files[@]}"; do
      [[ -f $f ]] || continue
      echo "----- tail $f"
      tail -n 25 "$f" | cut -c1-600
      echo
    done
  elif [[ ${KEEP_LOGS:-} == 1 ]]; then
    echo "interop-oauth: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

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

stop() { # stop PID: stop one server this scenario started (its process group)
  kill_groups "$1"
}

fail() {
  echo "  FAIL: $*" >&2
  exit 1
}
note() { echo "  $*"; }

free_port() { node "$INTEROP/lib/free-port.cjs"; }

canary() { echo "canary-$1-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"; }

wait_http() { # wait_http URL PID SECONDS: poll until anything answers HTTP at URL
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

http_get() { # http_get URL OUTFILE: prints the status, body to OUTFILE, headers to OUTFILE.headers
  curl -s --max-time 10 -D "$2.headers" -o "$2" -w '%{http_code}' "$1" || true
}

# json_lines LOG JQ_FILTER: the JSON lines of a server log that match the filter (the logs also
# hold non-JSON warnings, e.g. oidc-provider's about its development settings)
json_lines() { grep '^{' "$1" | jq -c "select($2)"; }
count_lines() { json_lines "$@" | wc -l | tr -d ' '; }

# ---------------------------------------------------------------------------------------------
# The authorization server and the resource server of one scenario. start_servers NAME [ACCESS_TTL]
# sets IDP (issuer URL), RS (the MCP resource URL), IDP_LOG, RS_LOG, ISSUED (file of every token
# the IdP issued, for the leak checks) and CC_SECRET (cc-client's secret, a canary).
start_servers() {
  local name=$1 ttl=${2:-3600} idp_port rs_port
  idp_port=$(free_port)
  rs_port=$(free_port)
  IDP=http://127.0.0.1:$idp_port
  RS=http://127.0.0.1:$rs_port/mcp
  IDP_LOG=$WORK/idp-$name.log
  RS_LOG=$WORK/rs-$name.log
  ISSUED=$WORK/issued-$name
  CC_SECRET=$(canary cc-secret)
  : >"$ISSUED"
  chmod 600 "$ISSUED"
  start "idp-$name" env IDP_PORT="$idp_port" IDP_RESOURCE="$RS" IDP_CC_SECRET="$CC_SECRET" \
    IDP_RSA_KEY_FILE="$WORK/rsa-pkcs8.pem" IDP_EC_KEY_FILE="$WORK/ec-pkcs8.pem" \
    IDP_SECRETS_FILE="$ISSUED" ACCESS_TTL="$ttl" node "$HERE/idp.mjs"
  wait_http "$IDP/.well-known/openid-configuration" "$STARTED_PID" 30
  start "rs-$name" env RS_PORT="$rs_port" RS_ISSUER="$IDP" node "$HERE/resource-server.mjs"
  # any path answers (404); not the metadata path, whose fetches scenario E counts
  wait_http "http://127.0.0.1:$rs_port/" "$STARTED_PID" 30
}

# start_sidecar NAME VAR=VALUE...: `mcp-sidecar serve` in front of $RS with exactly these settings
# (plus LISTEN, debug logging, a fresh STATE_DIR unless given); waits for /healthz; sets SIDECAR_PID,
# SIDECAR (its base URL) and STATE (its state dir).
start_sidecar() {
  local name=$1 port code
  shift
  port=$(free_port)
  SIDECAR=http://127.0.0.1:$port
  STATE=$WORK/state-$name
  local settings=("$@")
  if [[ " ${settings[*]} " != *" MCP_SIDECAR_STATE_DIR="* ]]; then
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    settings+=("MCP_SIDECAR_STATE_DIR=$STATE")
  fi
  # with [upstreams.NAME] blocks (scenario M) an upstream key at the top level is an error
  [[ " ${settings[*]} " == *" MCP_SIDECAR_UPSTREAMS__"* ]] || settings+=("MCP_SIDECAR_UPSTREAM_URL=$RS")
  start "sidecar-$name" env "MCP_SIDECAR_LISTEN=127.0.0.1:$port" MCP_SIDECAR_LOG=debug \
    "${settings[@]}" "$SIDECAR_BIN" serve
  SIDECAR_PID=$STARTED_PID
  wait_http "$SIDECAR/healthz" "$SIDECAR_PID" 30
  code=$(http_get "$SIDECAR/healthz" "$WORK/sidecar-$name-healthz.out")
  [[ $code == 200 ]] || fail "GET /healthz: expected 200, got $code"
}

# wait_ready NAME: the sidecar's own `wait` command (what users gate on), then /ready must be 200
wait_ready() {
  local name=$1 code
  if ! "$SIDECAR_BIN" wait --url "$SIDECAR/ready" --timeout 30s >"$WORK/sidecar-$name-wait.out" 2>&1; then
    http_get "$SIDECAR/ready" "$WORK/sidecar-$name-ready.out" >/dev/null
    kill -0 "$SIDECAR_PID" 2>/dev/null || fail "the sidecar exited before it became ready"
    fail "mcp-sidecar wait: not ready within 30 s; /ready: $(head -c 400 "$WORK/sidecar-$name-ready.out")"
  fi
  code=$(http_get "$SIDECAR/ready" "$WORK/sidecar-$name-ready.out")
  [[ $code == 200 ]] || fail "GET /ready after wait succeeded: expected 200, got $code"
  jq -e '.ready == true and .reason == "ready"' "$WORK/sidecar-$name-ready.out" >/dev/null ||
    fail "/ready 200 without ready:true, reason:ready: $(head -c 300 "$WORK/sidecar-$name-ready.out")"
  note "/ready 200: $(head -c 200 "$WORK/sidecar-$name-ready.out")"
}

# whoami NAME [ARGS...]: tools/call whoami through the sidecar (the SDK client); sets WHO (the
# last answer's JSON)
whoami() {
  local name=$1
  shift
  if ! node "$HERE/whoami.mjs" "$SIDECAR/mcp" "$@" >"$WORK/whoami-$name.out" 2>"$WORK/whoami-$name.log"; then
    sed 's/^/  /' "$WORK/whoami-$name.out"
    fail "tools/call whoami through the sidecar (HTTP exchanges in whoami-$name.log)"
  fi
  WHO=$(sed -n 's/^whoami //p' "$WORK/whoami-$name.out" | tail -n 1)
  note "whoami through the sidecar: $WHO"
}

# check_status NAME: /status is JSON with a token object
check_status() {
  local name=$1 code
  code=$(http_get "$SIDECAR/status" "$WORK/sidecar-$name-status.out")
  [[ $code == 200 ]] || fail "GET /status: expected 200, got $code"
  jq -e '.token | type == "object"' "$WORK/sidecar-$name-status.out" >/dev/null ||
    fail "/status has no token object: $(head -c 400 "$WORK/sidecar-$name-status.out")"
  note "/status token: $(jq -c .token "$WORK/sidecar-$name-status.out" | head -c 300)"
}

# assert_no_secrets NAME SECRET...: neither the given secrets nor any token the scenario's IdP issued
# appears in what the sidecar logged or answered (its state dir is where secrets belong: not grepped)
assert_no_secrets() {
  local name=$1 files hits patterns
  patterns=$WORK/patterns-$name
  shift
  { printf '%s\n' "$@"; cat "$ISSUED"; } | grep -v '^$' >"$patterns" || true
  [[ -s $patterns ]] || return 0
  files=("$WORK"/sidecar-"$name"*.log "$WORK"/sidecar-"$name"*.out "$WORK"/sidecar-"$name"*.headers)
  hits=$(grep -lF -f "$patterns" "${files[@]}" 2>/dev/null || true)
  [[ -z $hits ]] || fail "a secret appears in: $hits"
  note "no secret (${#@} configured, $(grep -c '' "$ISSUED") issued tokens) in the sidecar's log or responses"
}

run_scenario() { # run_scenario ID DESCRIPTION FUNCTION
  local id=$1 desc=$2 fn=$3 rc began=$SECONDS
  if [[ -n ${ONLY:-} && ",$ONLY," != *",$id,"* ]]; then return 0; fi
  echo "--- oauth scenario $id: $desc"
  set +e
  (
    set -e
    trap 'kill_groups "${SCENARIO_PGIDS[@]}"' EXIT
    "$fn"
  )
  rc=$?
  set -e
  if ((rc == 0)); then
    echo "PASS oauth $id: $desc ($((SECONDS - began)) s)"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL oauth $id: $desc ($((SECONDS - began)) s)"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$id")
  fi
}

# ---------------------------------------------------------------------------------------------
# A refresh token for device-client, obtained the way a user would: device authorization request,
# approval on the provider's own pages, token request. Prints it.
device_refresh_token() {
  local out=$WORK/device-seed
  curl -s --max-time 10 -o "$out-auth.json" -d client_id=device-client \
    -d "scope=openid offline_access mcp:tools" --data-urlencode "resource=$RS" "$IDP/device/auth"
  jq -e .user_code "$out-auth.json" >/dev/null || fail "device authorization: $(cat "$out-auth.json")"
  node "$HERE/approve-device.mjs" "$(jq -r .verification_uri "$out-auth.json")" \
    "$(jq -r .user_code "$out-auth.json")" seed-user >"$out-approve.out" 2>&1 ||
    fail "approve-device.mjs: $(tail -n 3 "$out-approve.out")"
  curl -s --max-time 10 -o "$out-token.json" -d client_id=device-client \
    -d grant_type=urn:ietf:params:oauth:grant-type:device_code \
    --data-urlencode "device_code=$(jq -r .device_code "$out-auth.json")" "$IDP/token"
  jq -er .refresh_token "$out-token.json" || fail "device token request: $(jq -c 'del(.access_token, .id_token)' "$out-token.json")"
  rm -f "$out-auth.json" "$out-token.json"
}

# ---------------------------------------------------------------------------------------------
scenario_cc() { # scenario_cc NAME CLIENT_AUTH SECRET_VIA(file|env)
  local name=$1 method=$2 via=$3 secret_setting
  start_servers "$name"
  if [[ $via == file ]]; then
    printf '%s\n' "$CC_SECRET" >"$WORK/cc-secret-$name"
    chmod 600 "$WORK/cc-secret-$name"
    secret_setting=MCP_SIDECAR_CLIENT_SECRET_FILE=$WORK/cc-secret-$name
  else
    secret_setting=MCP_SIDECAR_CLIENT_SECRET=$CC_SECRET
  fi
  start_sidecar "$name" MCP_SIDECAR_AUTH=client_credentials MCP_SIDECAR_CLIENT_ID=cc-client \
    "$secret_setting" "MCP_SIDECAR_CLIENT_AUTH=$method" "MCP_SIDECAR_TOKEN_URL=$IDP/token" \
    MCP_SIDECAR_SCOPES=mcp:tools
  wait_ready "$name"
  whoami "$name"
  jq -e '.sub == "cc-client" and .client_id == "cc-client" and .scope == "mcp:tools"' <<<"$WHO" >/dev/null ||
    fail "whoami: expected cc-client with scope mcp:tools: $WHO"
  local ok
  ok=$(count_lines "$IDP_LOG" ".event == \"token\" and .outcome == \"ok\" and .auth == \"$method\"")
  ((ok >= 1)) || fail "the IdP saw no successful $method token request: $(json_lines "$IDP_LOG" '.event == "token"')"
  (($(count_lines "$IDP_LOG" ".event == \"token\" and .resource == \"$RS\"") >= 1)) ||
    fail "no token request carried resource=$RS (RFC 8707): $(json_lines "$IDP_LOG" '.event == "token"')"
  note "IdP: $ok token request(s) with $method, resource=$RS"
  check_status "$name"
  assert_no_secrets "$name" "$CC_SECRET"
}
scenario_a() { scenario_cc a client_secret_basic file; }
scenario_a2() { scenario_cc a2 client_secret_post env; }

# scenario_jwt NAME ALG KEY_FILE [KID]: client_credentials with private_key_jwt, CLIENT_AUTH left to its
# default (private_key_jwt, because a key file is set) and the algorithm inferred from the key
scenario_jwt() {
  local name=$1 alg=$2 key=$3 kid=${4:-} key_line
  local -a kid_setting=()
  [[ -n $kid ]] && kid_setting=("MCP_SIDECAR_CLIENT_ASSERTION_KID=$kid")
  start_sidecar "$name" MCP_SIDECAR_AUTH=client_credentials MCP_SIDECAR_CLIENT_ID=jwt-client \
    "MCP_SIDECAR_CLIENT_ASSERTION_KEY_FILE=$key" "${kid_setting[@]}" "MCP_SIDECAR_TOKEN_URL=$IDP/token" \
    MCP_SIDECAR_SCOPES=mcp:tools
  wait_ready "$name"
  whoami "$name"
  jq -e '.sub == "jwt-client" and .client_id == "jwt-client"' <<<"$WHO" >/dev/null ||
    fail "whoami: expected jwt-client: $WHO"
  (($(count_lines "$IDP_LOG" ".event == \"token\" and .outcome == \"ok\" and (.auth | startswith(\"private_key_jwt/$alg\"))") >= 1)) ||
    fail "the IdP saw no successful private_key_jwt/$alg request: $(json_lines "$IDP_LOG" '.event == "token"')"
  note "IdP: client assertions so far: $(json_lines "$IDP_LOG" '.event == "token"' | jq -r '"\(.auth) \(.outcome)"' | sort | uniq -c | tr -s ' \n' ' ')"
  check_status "$name"
  # a line of the private key's base64 stands for the key
  key_line=$(sed -n 2p "$key")
  assert_no_secrets "$name" "$key_line"
  stop "$SIDECAR_PID"
}
scenario_b() {
  start_servers b
  scenario_jwt b-rs RS256 "$WORK/rsa-pkcs8.pem"
  scenario_jwt b-es ES256 "$WORK/ec-pkcs8.pem" ec-key
}
scenario_b2() { # the same keys in their other PEM encodings: PKCS#1 RSA, SEC1 EC
  start_servers b2
  scenario_jwt b2-rs RS256 "$WORK/rsa-pkcs1.pem"
  scenario_jwt b2-es ES256 "$WORK/ec-sec1.pem"
}

# seed_refresh_token NAME: a refresh token from a device login, in $WORK/refresh-token-NAME (0600);
# sets SEED_FILE and SEED
seed_refresh_token() {
  SEED_FILE=$WORK/refresh-token-$1
  SEED=$(device_refresh_token)
  printf '%s\n' "$SEED" >"$SEED_FILE"
  chmod 600 "$SEED_FILE"
}

# refresh_outcomes: asserts that the scenario's IdP saw no refresh-token reuse; prints a summary
refresh_outcomes() {
  local invalid
  invalid=$(count_lines "$IDP_LOG" '.event == "token" and .outcome == "invalid_grant"')
  ((invalid == 0)) || fail "the IdP answered invalid_grant $invalid time(s): a rotated refresh token was reused: $(json_lines "$IDP_LOG" '.outcome == "invalid_grant"' | head -n 2)"
  (($(count_lines "$IDP_LOG" '.event == "grant_revoked"') == 0)) || fail "the IdP revoked the grant (refresh token reuse)"
  local rejected
  rejected=$(count_lines "$RS_LOG" '.event == "request" and .path == "/mcp" and .auth != "ok"')
  ((rejected == 0)) || fail "the resource server refused $rejected request(s) from the sidecar (an expired token was sent): $(json_lines "$RS_LOG" '.event == "request" and .path == "/mcp" and .auth != "ok"' | head -n 3)"
}

# whoami_bg NAME SIDECAR_URL ARGS...: whoami.mjs in the background (a second client); sets BG_PID
whoami_bg() {
  local name=$1 url=$2
  shift 2
  node "$HERE/whoami.mjs" "$url/mcp" "$@" >"$WORK/whoami-$name.out" 2>"$WORK/whoami-$name.log" &
  BG_PID=$!
}
wait_bg() { # wait_bg NAME: the background client NAME succeeded
  wait "$BG_PID" || fail "client $1: $(grep FAIL "$WORK/whoami-$1.out" || tail -n 2 "$WORK/whoami-$1.out")"
  note "client $1: $(grep '^calls ' "$WORK/whoami-$1.out")"
}

scenario_c() {
  local ttl=8 name=c
  start_servers c "$ttl"
  seed_refresh_token c
  note "seeded a refresh token from a device login (access tokens live $ttl s)"
  local seeded_refreshes
  seeded_refreshes=$(count_lines "$IDP_LOG" '.event == "token" and .grant_type == "refresh_token"')
  local settings=(MCP_SIDECAR_AUTH=refresh_token MCP_SIDECAR_CLIENT_ID=device-client
    "MCP_SIDECAR_REFRESH_TOKEN_FILE=$SEED_FILE" "MCP_SIDECAR_TOKEN_URL=$IDP/token" MCP_SIDECAR_REFRESH_SKEW=2s)
  start_sidecar "$name" "${settings[@]}"
  local state=$STATE
  wait_ready "$name"
  # two client sessions at once across two expiries: one calls every 2 s, the other every second
  whoami_bg c-second "$SIDECAR" --repeat-for $((2 * ttl + 2)) --every 1
  whoami "$name" --repeat-for $((2 * ttl + 2)) --every 2
  wait_bg c-second
  local calls tokens
  read -r _ calls _ tokens < <(grep '^calls ' "$WORK/whoami-$name.out")
  note "$calls calls in one session, answered with $tokens distinct access tokens"
  ((tokens >= 3)) || fail "expected at least 3 distinct access tokens across $((2 * ttl)) s, saw $tokens"
  jq -e '.sub == "seed-user" and .client_id == "device-client"' <<<"$WHO" >/dev/null ||
    fail "whoami: expected seed-user via device-client: $WHO"
  local code
  code=$(http_get "$SIDECAR/ready" "$WORK/sidecar-$name-ready-after.out")
  [[ $code == 200 ]] || fail "/ready after the expiries: expected 200, got $code: $(head -c 300 "$WORK/sidecar-$name-ready-after.out")"
  check_status "$name"
  refresh_outcomes

  # A restart (a pod restarted with its secret and its state volume): the seed file still holds the
  # refresh token spent long ago; the sidecar must go on with the rotated one from STATE_DIR, across
  # one more expiry.
  stop "$SIDECAR_PID"
  start_sidecar c-restart "${settings[@]}" "MCP_SIDECAR_STATE_DIR=$state"
  wait_ready c-restart
  whoami c-restart --repeat-for $((ttl + 2)) --every 2
  refresh_outcomes
  local refreshes rotated
  refreshes=$(($(count_lines "$IDP_LOG" '.event == "token" and .grant_type == "refresh_token" and .outcome == "ok"') - seeded_refreshes))
  rotated=$(count_lines "$IDP_LOG" '.event == "token" and .grant_type == "refresh_token" and .rotated == true')
  note "IdP: $refreshes refresh requests (each rotated: $rotated), no invalid_grant; resource sent on refresh: $(json_lines "$IDP_LOG" '.grant_type == "refresh_token"' | jq -r '.resource // "none"' | sort | uniq -c | tr -s ' \n' ' ')"
  ((refreshes >= 3)) || fail "expected at least 3 refreshes across 3 expiries, the IdP saw $refreshes"
  note "resource server: every request from the sidecar carried a valid token (refreshed ahead of expiry)"
  assert_no_secrets c "$SEED"
}

scenario_c2() {
  local ttl=8 state=$WORK/state-c2-shared one two
  start_servers c2 "$ttl"
  seed_refresh_token c2
  mkdir -p "$state"
  chmod 700 "$state"
  local settings=(MCP_SIDECAR_AUTH=refresh_token MCP_SIDECAR_CLIENT_ID=device-client
    "MCP_SIDECAR_REFRESH_TOKEN_FILE=$SEED_FILE" "MCP_SIDECAR_TOKEN_URL=$IDP/token" MCP_SIDECAR_REFRESH_SKEW=2s
    "MCP_SIDECAR_STATE_DIR=$state")
  start_sidecar c2-one "${settings[@]}"
  wait_ready c2-one
  one=$SIDECAR
  start_sidecar c2-two "${settings[@]}"
  wait_ready c2-two
  two=$SIDECAR
  whoami_bg c2-one "$one" --repeat-for $((2 * ttl + 2)) --every 1
  local first=$BG_PID
  whoami_bg c2-two "$two" --repeat-for $((2 * ttl + 2)) --every 1
  BG_PID=$first wait_bg c2-one
  wait_bg c2-two
  refresh_outcomes
  note "IdP: $(count_lines "$IDP_LOG" '.event == "token" and .grant_type == "refresh_token" and .outcome == "ok"') refreshes for two sidecars over $((2 * ttl)) s, no invalid_grant"
  assert_no_secrets c2 "$SEED"
}

# poll_login NAME SECONDS: poll /ready until it shows a pending device login; sets USER_CODE, VERIFY_URI
poll_login() {
  local name=$1 deadline=$((SECONDS + $2)) code out=$WORK/sidecar-$1-ready-login.out
  while :; do
    code=$(http_get "$SIDECAR/ready" "$out")
    if [[ $code == 503 ]] && jq -e '.login.user_code' "$out" >/dev/null 2>&1; then
      break
    fi
    [[ $code == 200 ]] && fail "/ready 200 before any login"
    kill -0 "$SIDECAR_PID" 2>/dev/null || fail "the sidecar exited while waiting for a login"
    ((SECONDS < deadline)) || fail "/ready never showed login.user_code within $2 s: $code $(head -c 400 "$out")"
    sleep 0.3
  done
  [[ $(jq -r .reason "$out") == auth_required ]] || fail "/ready with a login pending: expected reason auth_required: $(cat "$out")"
  jq -e '.login.verification_uri and .login.expires_at' "$out" >/dev/null ||
    fail "/ready login object lacks verification_uri or expires_at: $(jq -c .login "$out")"
  USER_CODE=$(jq -r .login.user_code "$out")
  VERIFY_URI=$(jq -r .login.verification_uri "$out")
  note "/ready 503 auth_required with login: $(jq -c .login "$out")"
}

scenario_d() {
  local name=d
  start_servers d
  start_sidecar "$name" MCP_SIDECAR_AUTH=device_code MCP_SIDECAR_CLIENT_ID=device-client \
    "MCP_SIDECAR_ISSUER=$IDP" "MCP_SIDECAR_SCOPES=openid offline_access mcp:tools"
  local state=$STATE
  poll_login "$name" 30
  [[ $VERIFY_URI == "$IDP/"* ]] || fail "verification_uri $VERIFY_URI is not on the IdP $IDP"
  # what a user runs to gate on readiness shows them the code too
  "$SIDECAR_BIN" wait --url "$SIDECAR/ready" --timeout 1s >"$WORK/sidecar-$name-wait-login.out" 2>&1 || true
  grep -qF "$USER_CODE" "$WORK/sidecar-$name-wait-login.out" ||
    fail "mcp-sidecar wait does not show the user code: $(cat "$WORK/sidecar-$name-wait-login.out")"
  node "$HERE/approve-device.mjs" "$VERIFY_URI" "$USER_CODE" device-user >"$WORK/approve-$name.out" 2>&1 ||
    fail "approve-device.mjs: $(tail -n 3 "$WORK/approve-$name.out")"
  note "approved $USER_CODE on the provider's pages ($(grep -c '^step' "$WORK/approve-$name.out") steps)"
  wait_ready "$name"
  whoami "$name"
  jq -e '.sub == "device-user" and .client_id == "device-client"' <<<"$WHO" >/dev/null ||
    fail "whoami: expected device-user via device-client: $WHO"
  check_status "$name"
  assert_no_secrets "$name"
  [[ -n $(find "$state" -type f 2>/dev/null) ]] || fail "nothing persisted in STATE_DIR $state"

  # a restart on the same state dir needs no new login
  stop "$SIDECAR_PID"
  start_sidecar d-restart MCP_SIDECAR_AUTH=device_code MCP_SIDECAR_CLIENT_ID=device-client \
    "MCP_SIDECAR_ISSUER=$IDP" "MCP_SIDECAR_SCOPES=openid offline_access mcp:tools" "MCP_SIDECAR_STATE_DIR=$state"
  wait_ready d-restart
  whoami d-restart
  jq -e '.sub == "device-user"' <<<"$WHO" >/dev/null || fail "whoami after restart: expected device-user: $WHO"
  (($(count_lines "$IDP_LOG" '.event == "device_authorization"') == 1)) ||
    fail "the restarted sidecar started a new device login instead of using the persisted token"
  (($(count_lines "$IDP_LOG" '.event == "token" and .outcome == "invalid_grant"') == 0)) || fail "invalid_grant seen"
  note "restarted on the same STATE_DIR: ready without a new login"
  assert_no_secrets d-restart
}

scenario_e() {
  local name=e
  start_servers e
  printf '%s\n' "$CC_SECRET" >"$WORK/cc-secret-$name"
  chmod 600 "$WORK/cc-secret-$name"
  # no TOKEN_URL, no ISSUER, no SCOPES, no CLIENT_AUTH
  start_sidecar "$name" MCP_SIDECAR_AUTH=client_credentials MCP_SIDECAR_CLIENT_ID=cc-client \
    "MCP_SIDECAR_CLIENT_SECRET_FILE=$WORK/cc-secret-$name"
  wait_ready "$name"
  whoami "$name"
  jq -e '.sub == "cc-client" and .scope == "mcp:tools"' <<<"$WHO" >/dev/null ||
    fail "whoami: expected cc-client with scope mcp:tools: $WHO"
  (($(count_lines "$RS_LOG" '.path == "/.well-known/oauth-protected-resource/mcp" and .status == 200') >= 1)) ||
    fail "the sidecar never fetched the resource server's RFC 9728 metadata"
  (($(count_lines "$RS_LOG" '.path == "/mcp" and .auth == "missing" and .status == 401') >= 1)) ||
    note "(the sidecar went to the well-known metadata without a 401 first)"
  note "discovery: $(json_lines "$RS_LOG" '.event == "request" and .path != "/"' | jq -r '"\(.method) \(.path) \(.status) \(.auth // "")"' | head -n 4 | paste -sd ';')"
  (($(count_lines "$IDP_LOG" '.event == "token" and .outcome == "ok"') >= 1)) || fail "the IdP issued no token"
  note "IdP token requests: $(json_lines "$IDP_LOG" '.event == "token"' | jq -c '{auth, resource, scope, outcome}' | sort | uniq -c | tr -s ' \n' ' ')"
  check_status "$name"
  assert_no_secrets "$name" "$CC_SECRET"
}

# poll_settled NAME SECONDS: poll /ready until its reason is no longer `starting`; the body is in
# $WORK/sidecar-NAME-ready-settled.out and READY_CODE, READY_REASON, READY_DETAIL are set
poll_settled() {
  local out=$WORK/sidecar-$1-ready-settled.out deadline=$((SECONDS + $2))
  while :; do
    READY_CODE=$(http_get "$SIDECAR/ready" "$out")
    READY_REASON=$(jq -r .reason "$out" 2>/dev/null || echo '?')
    READY_DETAIL=$(jq -r .detail "$out" 2>/dev/null || echo '?')
    [[ $READY_REASON != starting && $READY_CODE != 000 ]] && return 0
    kill -0 "$SIDECAR_PID" 2>/dev/null || fail "the sidecar exited"
    ((SECONDS < deadline)) || fail "/ready still says starting after $2 s"
    sleep 0.3
  done
}

scenario_f() {
  start_servers f
  local wrong bogus
  wrong=$(canary wrong-secret)
  start_sidecar f-client MCP_SIDECAR_AUTH=client_credentials MCP_SIDECAR_CLIENT_ID=cc-client \
    "MCP_SIDECAR_CLIENT_SECRET=$wrong" "MCP_SIDECAR_TOKEN_URL=$IDP/token" MCP_SIDECAR_SCOPES=mcp:tools
  poll_settled f-client 20
  [[ $READY_CODE == 503 && $READY_REASON == auth_required ]] ||
    fail "wrong client secret: expected 503 auth_required, got $READY_CODE $READY_REASON: $READY_DETAIL"
  [[ $READY_DETAIL == *invalid_client* ]] || fail "wrong client secret: the detail does not name invalid_client: $READY_DETAIL"
  note "wrong client secret: 503 auth_required: $READY_DETAIL"
  check_status f-client
  assert_no_secrets f-client "$wrong" "$CC_SECRET"
  stop "$SIDECAR_PID"

  bogus=$(canary refresh-token)
  start_sidecar f-refresh MCP_SIDECAR_AUTH=refresh_token MCP_SIDECAR_CLIENT_ID=device-client \
    "MCP_SIDECAR_REFRESH_TOKEN=$bogus" "MCP_SIDECAR_TOKEN_URL=$IDP/token"
  poll_settled f-refresh 20
  [[ $READY_CODE == 503 && $READY_REASON == auth_required ]] ||
    fail "unknown refresh token: expected 503 auth_required, got $READY_CODE $READY_REASON: $READY_DETAIL"
  [[ $READY_DETAIL == *invalid_grant* ]] || fail "unknown refresh token: the detail does not name invalid_grant: $READY_DETAIL"
  note "unknown refresh token: 503 auth_required: $READY_DETAIL"
  assert_no_secrets f-refresh "$bogus"
}

scenario_g() {
  start_servers g
  printf '%s\n' "$CC_SECRET" >"$WORK/cc-secret-g"
  chmod 600 "$WORK/cc-secret-g"
  start_sidecar g MCP_SIDECAR_AUTH=client_credentials MCP_SIDECAR_CLIENT_ID=cc-client \
    "MCP_SIDECAR_CLIENT_SECRET_FILE=$WORK/cc-secret-g" "MCP_SIDECAR_TOKEN_URL=$IDP/token" MCP_SIDECAR_SCOPES=mcp:tools
  wait_ready g
  whoami g
  local before=$WHO revoked
  revoked=$(curl -s --max-time 10 -X POST "${RS%/mcp}/_test/revoke-seen" | jq -r .revoked)
  note "the resource server now refuses the $revoked access token(s) it has seen (valid for another hour)"
  whoami g-after
  [[ $(jq -r .jti <<<"$WHO") != "$(jq -r .jti <<<"$before")" ]] || fail "whoami answered with the revoked token"
  (($(count_lines "$RS_LOG" '.path == "/mcp" and .reason == "revoked by /_test/revoke-seen"') >= 1)) ||
    fail "the revoked token never reached the resource server (so nothing was tested)"
  (($(count_lines "$IDP_LOG" '.event == "token" and .outcome == "ok"') == 2)) ||
    fail "expected exactly one new token after the 401: $(json_lines "$IDP_LOG" '.event == "token"')"
  note "upstream 401 invalid_token: one new token, the request retried and answered"
  assert_no_secrets g "$CC_SECRET"
}

# ---------------------------------------------------------------------------------------------
# M: one sidecar, two upstreams at once (`[upstreams.NAME]` through MCP_SIDECAR_UPSTREAMS__NAME__KEY):
# `everything` (server-everything, no auth) at /mcp/everything and `secured` (this scenario's
# resource server, client credentials from its IdP) at /mcp/secured. The SDK clients call a tool on
# each route; /ready 200 and /upstreams list both. Then the resource server is killed: its route
# answers 502 with a JSON-RPC error, /ready turns 503 naming `secured`, and `everything` keeps
# serving (/ready/everything 200, the SDK client's tool call answered).
scenario_m() {
  local se_port rs_pid se_pid code
  start_servers m
  rs_pid=$STARTED_PID
  se_port=$(free_port)
  # server-everything listens on all interfaces; the preload pins it to 127.0.0.1 (as in ../run.sh)
  start everything-m env PORT="$se_port" node --require "$INTEROP/lib/loopback.cjs" \
    "$INTEROP/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
  se_pid=$STARTED_PID
  wait_http "http://127.0.0.1:$se_port/mcp" "$se_pid" 30
  printf '%s\n' "$CC_SECRET" >"$WORK/cc-secret-m"
  chmod 600 "$WORK/cc-secret-m"
  start_sidecar m MCP_SIDECAR_READY_INTERVAL=2s \
    "MCP_SIDECAR_UPSTREAMS__EVERYTHING__UPSTREAM_URL=http://127.0.0.1:$se_port/mcp" \
    MCP_SIDECAR_UPSTREAMS__EVERYTHING__AUTH=none \
    "MCP_SIDECAR_UPSTREAMS__SECURED__UPSTREAM_URL=$RS" MCP_SIDECAR_UPSTREAMS__SECURED__AUTH=client_credentials \
    MCP_SIDECAR_UPSTREAMS__SECURED__CLIENT_ID=cc-client \
    "MCP_SIDECAR_UPSTREAMS__SECURED__CLIENT_SECRET_FILE=$WORK/cc-secret-m" \
    "MCP_SIDECAR_UPSTREAMS__SECURED__TOKEN_URL=$IDP/token" MCP_SIDECAR_UPSTREAMS__SECURED__SCOPES=mcp:tools
  wait_ready m
  jq -e '[.upstreams[] | select(.ready) | "\(.name) \(.path)"] == ["everything /mcp/everything", "secured /mcp/secured"]' \
    "$WORK/sidecar-m-ready.out" >/dev/null || fail "/ready does not list both upstreams ready: $(cat "$WORK/sidecar-m-ready.out")"
  code=$(http_get "$SIDECAR/upstreams" "$WORK/sidecar-m-upstreams.out")
  [[ $code == 200 && $(cat "$WORK/sidecar-m-upstreams.out") == "everything /mcp/everything required
secured /mcp/secured required" ]] || fail "GET /upstreams: $code $(cat "$WORK/sidecar-m-upstreams.out")"
  note "/upstreams: $(paste -sd ';' "$WORK/sidecar-m-upstreams.out")"

  if ! node "$INTEROP/client.mjs" "$SIDECAR/mcp/everything" >"$WORK/client-m.out" 2>"$WORK/client-m.log"; then
    sed 's/^/  /' "$WORK/client-m.out"
    fail "client.mjs through /mcp/everything (HTTP exchanges in client-m.log)"
  fi
  note "SDK client through /mcp/everything: $(grep -c '^ok ' "$WORK/client-m.out") checks ok"
  node "$HERE/whoami.mjs" "$SIDECAR/mcp/secured" >"$WORK/whoami-m.out" 2>"$WORK/whoami-m.log" ||
    fail "whoami through /mcp/secured: $(tail -n 2 "$WORK/whoami-m.out")"
  WHO=$(sed -n 's/^whoami //p' "$WORK/whoami-m.out" | tail -n 1)
  jq -e '.sub == "cc-client" and .scope == "mcp:tools"' <<<"$WHO" >/dev/null || fail "whoami: expected cc-client: $WHO"
  note "whoami through /mcp/secured: $WHO"
  # the client secret and any Authorization header stay out of server-everything's log
  if grep -qiF -e "$CC_SECRET" -e authorization "$WORK/everything-m.log"; then
    fail "server-everything's log shows an authorization header or the client secret"
  fi

  stop "$rs_pid"
  code=$(curl -s --max-time 10 -o "$WORK/sidecar-m-502.out" -w '%{http_code}' -X POST \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
    --data '{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}' \
    "$SIDECAR/mcp/secured" || true)
  if [[ $code != 502 ]] || ! jq -e '.jsonrpc == "2.0" and .id == 7 and (.error.code | type == "number")' \
    "$WORK/sidecar-m-502.out" >/dev/null; then
    fail "/mcp/secured with its upstream down: expected 502 with a JSON-RPC error, got $code $(head -c 300 "$WORK/sidecar-m-502.out")"
  fi
  note "/mcp/secured with its upstream down: 502 $(jq -c .error "$WORK/sidecar-m-502.out" | head -c 200)"
  local deadline=$((SECONDS + 15))
  while :; do
    code=$(http_get "$SIDECAR/ready" "$WORK/sidecar-m-ready-down.out")
    [[ $code == 503 ]] && break
    ((SECONDS < deadline)) || fail "/ready still $code 15 s after the secured upstream went down"
    sleep 0.3
  done
  jq -e '.ready == false and ([.upstreams[] | select(.ready | not) | .name] == ["secured"])' \
    "$WORK/sidecar-m-ready-down.out" >/dev/null || fail "/ready 503 does not name secured alone: $(cat "$WORK/sidecar-m-ready-down.out")"
  note "/ready 503: $(jq -c '[.upstreams[] | {name, ready, reason}]' "$WORK/sidecar-m-ready-down.out")"
  code=$(http_get "$SIDECAR/ready/everything" "$WORK/sidecar-m-ready-everything.out")
  [[ $code == 200 ]] || fail "/ready/everything with the other upstream down: expected 200, got $code"
  if ! node "$INTEROP/client.mjs" "$SIDECAR/mcp/everything" >"$WORK/client-m-after.out" 2>"$WORK/client-m-after.log"; then
    sed 's/^/  /' "$WORK/client-m-after.out"
    fail "client.mjs through /mcp/everything after the secured upstream went down"
  fi
  note "/ready/everything 200 and the SDK client still served through /mcp/everything"
  check_status m
  jq -e '[.upstreams[] | "\(.name) \(.token.source)"] == ["everything none", "secured client_credentials"]' \
    "$WORK/sidecar-m-status.out" >/dev/null ||
    fail "/status: not one token section per upstream: $(jq -c '[.upstreams[] | {name, token}]' "$WORK/sidecar-m-status.out")"
  assert_no_secrets m "$CC_SECRET"
}

# ---------------------------------------------------------------------------------------------
# H / H2: a fleet. FLEET_SIDECARS sidecars (default 5) share one real redis-server
# (STATE_STORE, no persistence, loopback) in front of this scenario's IdP (6 s access tokens,
# rotating refresh tokens with reuse detection), each with its own SDK client calling whoami every
# 0.5 s for FLEET_SECONDS (default 30). Every call must succeed, the IdP must see no invalid_grant
# and no revoked grant, the token requests must be about one per lifetime for the whole fleet (not
# one per sidecar), and no token may be in Redis in clear (every key and value is scanned).
# FLEET_CHAOS=1 (outside CI): Redis is killed (SIGKILL) halfway and restarted empty, and the lock
# holder is killed (SIGKILL) up to FLEET_KILLS times (default 20, one per FLEET_KILL_EVERY=10 s),
# each replaced by a new sidecar with a new client; the clients of killed sidecars are not counted
# (their sidecars are gone), the others' are, and invalid_grant is reported. The long run of the issue:
#   FLEET_SIDECARS=20 FLEET_SECONDS=300 FLEET_CHAOS=1 ONLY=H,H2 bash tests/interop/oauth/run.sh
redis_up() { # redis_up PORT SECONDS: until redis-server on PORT answers PING
  local deadline=$((SECONDS + $2))
  until [[ $(redis-cli -p "$1" PING 2>/dev/null) == PONG ]]; do
    ((SECONDS < deadline)) || fail "redis-server on port $1 did not answer within $2 s"
    sleep 0.1
  done
}

scenario_fleet() { # scenario_fleet NAME GRANT
  # Tokens of 6 s refreshed 2 s ahead. The IdP writes `exp` in whole seconds, rounded down, so a
  # token dies up to 1 s before the sidecar's reckoning: with 4 s tokens and a 1 s skew (as this
  # scenario had) the margin for a request in flight was zero, and a loaded machine sent expired
  # tokens (retried, but counted as refused below).
  local name=$1 grant=$2 n=${FLEET_SIDECARS:-5} secs=${FLEET_SECONDS:-30} ttl=6 skew=2 rport key i
  command -v redis-server >/dev/null ||
    fail "redis-server is not installed (apt-get install -y redis-server; .ci/run installs it)"
  start_servers "$name" "$ttl"
  rport=$(free_port)
  start "redis-$name" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no
  local redis_pid=$STARTED_PID
  redis_up "$rport" 30
  key=$WORK/state-key-$name
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$key"
  chmod 600 "$key"
  local settings=("MCP_SIDECAR_TOKEN_URL=$IDP/token" "MCP_SIDECAR_STATE_STORE=redis://127.0.0.1:$rport"
    "MCP_SIDECAR_STATE_KEY_FILE=$key" "MCP_SIDECAR_REFRESH_SKEW=${skew}s"
    "MCP_SIDECAR_STATE_LOCK_TTL=${FLEET_LOCK_TTL:-3s}")
  local secrets=()
  if [[ $grant == refresh_token ]]; then
    seed_refresh_token "$name"
    secrets+=("$SEED")
    settings+=(MCP_SIDECAR_AUTH=refresh_token MCP_SIDECAR_CLIENT_ID=device-client
      "MCP_SIDECAR_REFRESH_TOKEN_FILE=$SEED_FILE")
  else
    printf '%s\n' "$CC_SECRET" >"$WORK/cc-secret-$name"
    chmod 600 "$WORK/cc-secret-$name"
    secrets+=("$CC_SECRET")
    settings+=(MCP_SIDECAR_AUTH=client_credentials MCP_SIDECAR_CLIENT_ID=cc-client
      "MCP_SIDECAR_CLIENT_SECRET_FILE=$WORK/cc-secret-$name" MCP_SIDECAR_SCOPES=mcp:tools)
  fi
  local before
  before=$(count_lines "$IDP_LOG" ".event == \"token\" and .grant_type == \"$grant\"")
  local urls=() pids=() clients=() names=() killed=() began
  for ((i = 1; i <= n; i++)); do
    start_sidecar "$name-$i" "${settings[@]}"
    urls+=("$SIDECAR")
    pids+=("$SIDECAR_PID")
    names+=("$name-$i")
  done
  for ((i = 0; i < n; i++)); do
    SIDECAR=${urls[i]} SIDECAR_PID=${pids[i]} wait_ready "${names[i]}" >/dev/null
  done
  note "$n sidecars ready, sharing redis://127.0.0.1:$rport"
  began=$SECONDS
  before=$(count_lines "$IDP_LOG" ".event == \"token\" and .grant_type == \"$grant\"")
  for ((i = 0; i < n; i++)); do
    whoami_bg "${names[i]}" "${urls[i]}" --repeat-for "$secs" --every 0.5
    clients+=("$BG_PID")
  done
  local kills=0 redis_killed=0 state_key lock_key holder pid j last_kill=-100
  if [[ ${FLEET_CHAOS:-} == 1 ]]; then
    state_key=$(redis-cli -p "$rport" --scan --pattern 'mcp-sidecar:*:state' | head -n 1)
    lock_key=${state_key%:state}:lock
    while ((SECONDS - began < secs - 8)); do
      if ((redis_killed == 0 && SECONDS - began >= secs / 2)); then
        kill -KILL "$redis_pid"
        start "redis-$name-restarted" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no
        redis_pid=$STARTED_PID
        redis_up "$rport" 30
        redis_killed=$((SECONDS - began))
        note "redis-server killed (SIGKILL) and restarted empty at $redis_killed s"
      fi
      # one kill per FLEET_KILL_EVERY (10 s): each costs a lock expiry, and back-to-back kills
      # of every new holder would keep the lock taken for good
      if ((kills < ${FLEET_KILLS:-20} && SECONDS - last_kill >= ${FLEET_KILL_EVERY:-10})); then
        holder=$(redis-cli -p "$rport" --raw GET "$lock_key" 2>/dev/null || true)
        pid=${holder#*/pid-}
        pid=${pid%% *}
        for ((j = 0; j < ${#pids[@]}; j++)); do
          [[ -n $pid && ${pids[j]} == "$pid" && -z ${killed[j]:-} ]] || continue
          kill -KILL "$pid" 2>/dev/null || continue
          killed[j]=1
          kills=$((kills + 1))
          last_kill=$SECONDS
          # a replacement, with a client of its own for the rest of the run
          start_sidecar "$name-r$kills" "${settings[@]}"
          urls+=("$SIDECAR")
          pids+=("$SIDECAR_PID")
          names+=("$name-r$kills")
          whoami_bg "$name-r$kills" "$SIDECAR" --repeat-for $((secs - (SECONDS - began))) --every 0.5
          clients+=("$BG_PID")
        done
        continue
      fi
      sleep 0.2
    done
    note "killed $kills lock holders (SIGKILL) while they held the fleet lock"
  fi
  local counted=0 calls=0 c
  for ((i = 0; i < ${#clients[@]}; i++)); do
    if [[ -n ${killed[i]:-} ]]; then
      wait "${clients[i]}" || true
      continue
    fi
    BG_PID=${clients[i]} wait_bg "${names[i]}" >/dev/null
    read -r _ c _ < <(grep '^calls ' "$WORK/whoami-${names[i]}.out")
    calls=$((calls + c))
    counted=$((counted + 1))
  done
  local invalid requests
  invalid=$(count_lines "$IDP_LOG" '.event == "token" and .outcome == "invalid_grant"')
  requests=$(($(count_lines "$IDP_LOG" ".event == \"token\" and .grant_type == \"$grant\"") - before))
  note "fleet of $n over $secs s: $calls calls from $counted clients, 0 failed; $requests $grant token requests while the clients ran (one per ${ttl} s lifetime would be $((secs / ttl)); refreshed $skew s before expiry: $((secs / (ttl - skew)))), invalid_grant $invalid"
  refresh_outcomes
  # about one per lifetime for the fleet: refreshed $skew s before expiry, so up to one per
  # ttl - skew seconds, and a few around a Redis restart; one per sidecar per lifetime would be n
  # times as many
  local most=$((secs / (ttl - skew) + 3 + kills))
  ((requests <= most)) || fail "$requests token requests for the fleet in $secs s (at most $most expected)"
  # no token in Redis in clear: every key and value
  local dump=$WORK/redis-dump-$name k
  : >"$dump"
  while IFS= read -r k; do
    printf '%s\n' "$k" >>"$dump"
    redis-cli -p "$rport" --raw GET "$k" >>"$dump" 2>/dev/null || true
  done < <(redis-cli -p "$rport" --scan)
  [[ -s $dump ]] || fail "nothing stored in Redis"
  { printf '%s\n' "${secrets[@]}"; cat "$ISSUED"; } | grep -v '^$' >"$WORK/patterns-redis-$name"
  if grep -qF -f "$WORK/patterns-redis-$name" "$dump"; then fail "a token or secret is in Redis in clear"; fi
  grep -q '^msc1\.' "$dump" || fail "the Redis entry is not sealed: $(head -c 200 "$dump")"
  note "Redis: $(grep -c '^mcp-sidecar:' "$dump") keys, every value sealed; none of $(grep -c '' "$ISSUED") issued tokens in clear"
  for i in "${names[@]}"; do assert_no_secrets "$i" "${secrets[@]}" >/dev/null; done
}
scenario_h() { scenario_fleet h refresh_token; }
scenario_h2() { scenario_fleet h2 client_credentials; }

# ---------------------------------------------------------------------------------------------
# The pinned packages: ../run.sh has installed them; alone, install them if they are not the locked ones.
locked() { jq -r --arg p "node_modules/$1" '.packages[$p].version' "$INTEROP/package-lock.json"; }
installed() { jq -r .version "$INTEROP/node_modules/$1/package.json" 2>/dev/null || echo none; }
if [[ $(installed oidc-provider) != "$(locked oidc-provider)" || $(installed jose) != "$(locked jose)" ||
  $(installed @modelcontextprotocol/sdk) != "$(locked @modelcontextprotocol/sdk)" ]]; then
  echo "interop-oauth: installing pinned npm packages"
  (cd "$INTEROP" && npm ci --quiet --no-audit --no-fund --loglevel=error) >"$WORK/npm-ci.log" 2>&1 || {
    cat "$WORK/npm-ci.log"
    exit 1
  }
fi
echo "interop-oauth: oidc-provider $(installed oidc-provider), jose $(installed jose), @modelcontextprotocol/sdk $(installed @modelcontextprotocol/sdk), node $(node --version)"

if [[ -z $SIDECAR_BIN ]]; then
  echo "interop-oauth: building mcp-sidecar (MCP_SIDECAR_BIN not set)"
  (cd "$ROOT" && cargo build --quiet)
  SIDECAR_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/mcp-sidecar
fi
[[ -x $SIDECAR_BIN ]] || {
  echo "interop-oauth: no sidecar binary at $SIDECAR_BIN"
  exit 1
}

# A host kills its stdio servers and respawns them (Claude Code after an idle spell; here SIGKILL,
# which leaves no chance to save anything on the way out), ten times, with 4 s access tokens and
# the IdP rotating the refresh token on every use: each new process must go on from the rotated
# refresh token its predecessor left in STATE_DIR (the seed file holds one spent long ago), so no
# login and no invalid_grant.
scenario_s() {
  local ttl=4 name=s state=$WORK/state-s rounds=10
  start_servers s "$ttl"
  seed_refresh_token s
  mkdir -p "$state"
  chmod 700 "$state"
  local seeded_refreshes seeded_grants
  seeded_refreshes=$(count_lines "$IDP_LOG" '.event == "token" and .grant_type == "refresh_token"')
  seeded_grants=$(count_lines "$IDP_LOG" '.event == "token" and .grant_type != "refresh_token"')
  if ! env -i PATH="$PATH" HOME="$WORK" MCP_SIDECAR_LOG=debug MCP_SIDECAR_UPSTREAM_URL="$RS" \
    MCP_SIDECAR_AUTH=refresh_token MCP_SIDECAR_CLIENT_ID=device-client \
    "MCP_SIDECAR_REFRESH_TOKEN_FILE=$SEED_FILE" "MCP_SIDECAR_TOKEN_URL=$IDP/token" MCP_SIDECAR_REFRESH_SKEW=2s \
    "MCP_SIDECAR_STATE_DIR=$state" \
    node "$HERE/stdio-kill.mjs" "$SIDECAR_BIN" "$rounds" 3 1 "$WORK/sidecar-$name.log" \
    >"$WORK/stdio-kill-$name.out" 2>"$WORK/stdio-kill-$name.err"; then
    sed 's/^/  /' "$WORK/stdio-kill-$name.out" | tail -n 5
    tail -n 5 "$WORK/stdio-kill-$name.err" | sed 's/^/  /'
    fail "stdio-kill.mjs (the sidecars' stderr in sidecar-$name.log)"
  fi
  local calls tokens
  read -r _ _ _ calls _ tokens < <(grep '^rounds ' "$WORK/stdio-kill-$name.out")
  note "$rounds processes killed with SIGKILL and respawned: $calls calls, $tokens distinct access tokens"
  ((tokens >= 3)) || fail "expected the access token to change across $((rounds * 2)) s of 4 s tokens, saw $tokens distinct"
  refresh_outcomes
  local refreshes
  refreshes=$(($(count_lines "$IDP_LOG" '.event == "token" and .grant_type == "refresh_token" and .outcome == "ok"') - seeded_refreshes))
  ((refreshes >= 2)) || fail "expected refreshes across the respawns, the IdP saw $refreshes"
  local logins
  logins=$(($(count_lines "$IDP_LOG" '.event == "token" and .grant_type != "refresh_token"') - seeded_grants))
  ((logins == 0)) || fail "the respawned processes made $logins token request(s) of another grant than refresh_token"
  note "IdP: $refreshes refreshes over $rounds processes, no invalid_grant, no other grant"
  assert_no_secrets "$name" "$SEED"
}

# the client keys for private_key_jwt, each in two PEM encodings: RSA as PKCS#8 (BEGIN PRIVATE KEY)
# and PKCS#1 (BEGIN RSA PRIVATE KEY), EC P-256 as PKCS#8 and SEC1 (BEGIN EC PRIVATE KEY, what
# `openssl ecparam -genkey` writes); the IdP registers their public halves
node -e '
const { generateKeyPairSync } = require("node:crypto");
const { writeFileSync } = require("node:fs");
const dir = process.argv[1];
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
const out = { "rsa-pkcs8": [rsa, "pkcs8"], "rsa-pkcs1": [rsa, "pkcs1"], "ec-pkcs8": [ec, "pkcs8"], "ec-sec1": [ec, "sec1"] };
for (const [name, [key, type]] of Object.entries(out)) {
  writeFileSync(`${dir}/${name}.pem`, key.export({ type, format: "pem" }), { mode: 0o600 });
}
' "$WORK"

run_scenario A "client_credentials, client_secret_basic (secret file), TOKEN_URL" scenario_a
run_scenario A2 "client_credentials, client_secret_post (secret in env), TOKEN_URL" scenario_a2
run_scenario B "client_credentials, private_key_jwt: RS256 (PKCS#8 key, no kid), ES256 (PKCS#8 key, kid)" scenario_b
run_scenario B2 "client_credentials, private_key_jwt: RS256 from a PKCS#1 key, ES256 from a SEC1 key" scenario_b2
run_scenario C "refresh_token: rotation across expiries with two clients, then a restart; no invalid_grant" scenario_c
run_scenario C2 "refresh_token: two sidecars sharing one STATE_DIR, across two expiries; no invalid_grant" scenario_c2
run_scenario S "stdio front killed (SIGKILL) and respawned 10 times, rotating refresh tokens: no login, no invalid_grant" scenario_s
run_scenario D "device_code via ISSUER: approved on the provider's pages; restart reuses the state" scenario_d
run_scenario E "discovery: UPSTREAM_URL + client credentials only (401 -> PRM -> AS metadata)" scenario_e
run_scenario F "IdP refusals: wrong client secret, unknown refresh token -> 503 auth_required naming the error" scenario_f
run_scenario G "upstream 401 invalid_token on a token the IdP considers valid: new token, request retried" scenario_g
run_scenario M "two upstreams at once: server-everything (no auth) + client_credentials; one goes down" scenario_m
run_scenario H "fleet: ${FLEET_SIDECARS:-5} sidecars sharing Redis, refresh_token with rotation, ${FLEET_SECONDS:-30} s" scenario_h
run_scenario H2 "fleet: ${FLEET_SIDECARS:-5} sidecars sharing Redis, client_credentials, ${FLEET_SECONDS:-30} s" scenario_h2

echo
echo "interop-oauth: $((SECONDS - STARTED_AT)) s"
((FAILED == 0)) || echo "interop-oauth: failed: ${FAILED_NAMES[*]}"
echo "interop-oauth: $PASSED passed, $FAILED failed"
((FAILED == 0))
