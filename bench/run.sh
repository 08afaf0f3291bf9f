#!/usr/bin/env bash
# Side-by-side benchmark of dynamic-sharding against a direct push, nginx and HAProxy; writes bench/RESULTS.md.
#
# Run as root from anywhere: `bench/run.sh`. Everything listens on 127.0.0.1 ports picked at random, lives in a
# temporary directory, and is stopped on exit. Scenarios run in rounds (every case once per round) so that slow
# drift of the machine spreads over all cases instead of favouring one.
#
# Environment (defaults in brackets):
#   SCENARIOS       which to run, any of: overhead latency redirect pushgateway churn tls instructions replication
#                   [all but replication]
#                   (replication: bench/replication_cost.py, replication.factor 1, 2, 3 side by side, each gateway in
#                   front of its own four Pushgateways: writes, and the de-duplicated view at exactly 10,000 groups;
#                   it writes REPLICATION_RESULTS, not RESULTS, and takes about 40 minutes, most of it filling the
#                   Pushgateways; REPLICATION_ENV passes its knobs, e.g. REPLICATION_ENV='VIEW_GROUPS=2000')
#                   (tls: the gateway and nginx terminating TLS with one throwaway certificate, with and without
#                   basic auth, over the overhead scenario's four upstreams)
#                   (instructions: user-space instructions per request of each proxy under callgrind, which
#                   counts the same whatever else the machine does; INSTRUCTION_REQUESTS pushes per case [5000])
#   TLS_BCRYPT_COST bcrypt cost of the tls scenario's password hash (gateway and nginx alike)  [10]
#   DURATION        seconds per measured run                                          [10]
#   LOW_C_DURATION  seconds per run of the C=1 latency scenario                       [5]
#   WARMUP          seconds of unmeasured load per case before the rounds             [2]
#   ROUNDS          rounds over all cases                                             [3]
#   CONCURRENCY     client connections                                                [32]
#   PUSH_GROUPS     distinct groups for the trivial-upstream scenarios                [1000]
#   PGW_GROUPS      distinct groups for the real-Pushgateway scenarios                [100]
#   CHURN_FAULTS    the churn scenario's variants, any of: sigkill sigstop            [sigkill sigstop]
#                   (sigkill: a Pushgateway is SIGKILLed and restarted on its port; sigstop: it is SIGSTOPped,
#                   so it keeps its connections but answers nothing, and SIGCONTed; one table, a row each)
#   CHURN_INTERVAL  seconds between faults of a Pushgateway in the churn scenario     [3]
#   CHURN_DOWNTIME  seconds a killed Pushgateway stays down                           [1]
#   CHURN_STOPTIME  seconds a stopped Pushgateway stays stopped: longer than the health checks need to take it
#                   out of the ring (about 2 s) and than the load generator's 5 s request timeout  [6]
#   CHURN_UPSTREAM_TIMEOUT  proxy.upstream_timeout of the churn gateway: below the load generator's 5 s timeout, so
#                   a push to a node that stopped answering is retried on the next node before the client gives up [2s]
#   CRITERION       1: run the ring and grouping Criterion benches first and add their table; 0: skip  [1]
#   SKIP_INSTALL=1  do not apt-get anything; SKIP_BUILD=1  use the binaries as they are
#   GATEWAY_THREADS --runtime.worker-threads of the gateways; 1 suits a gateway pinned to one CPU     [1]
#   COMPARE_MULTI_THREAD  1: also run overhead/latency against a gateway with the default multi-thread runtime [1]
#   GATEWAY         gateway binary                          [$CARGO_TARGET_DIR/release/dynamic-sharding]
#   KEEP_WORKDIR=1  keep the temporary directory (configs, logs, per-run JSON) for inspection
#   RESULTS         output file                                                       [bench/RESULTS.md]
#   REPLICATION_RESULTS  the replication scenario's output file                       [bench/REPLICATION.md]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND_LINE="$0${*:+ $*}"
ALL_SCENARIOS="overhead latency redirect pushgateway churn tls instructions"
# Accepted but not run by default: it takes longer than all the others together.
OPTIONAL_SCENARIOS="replication"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
REPLICATION_RESULTS=${REPLICATION_RESULTS:-$REPO/bench/REPLICATION.md}
REPLICATION_ENV=${REPLICATION_ENV:-}
TLS_BCRYPT_COST=${TLS_BCRYPT_COST:-10}
INSTRUCTION_REQUESTS=${INSTRUCTION_REQUESTS:-5000}
DURATION=${DURATION:-10}
LOW_C_DURATION=${LOW_C_DURATION:-5}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-32}
PUSH_GROUPS=${PUSH_GROUPS:-1000}
PGW_GROUPS=${PGW_GROUPS:-100}
CHURN_INTERVAL=${CHURN_INTERVAL:-3}
CHURN_DOWNTIME=${CHURN_DOWNTIME:-1}
CHURN_STOPTIME=${CHURN_STOPTIME:-6}
CHURN_UPSTREAM_TIMEOUT=${CHURN_UPSTREAM_TIMEOUT:-2s}
CHURN_FAULTS=${CHURN_FAULTS:-"sigkill sigstop"}
CRITERION=${CRITERION:-1}
CRITERION_ARGS="--warm-up-time 1 --measurement-time 3"
GATEWAY_THREADS=${GATEWAY_THREADS:-1}
COMPARE_MULTI_THREAD=${COMPARE_MULTI_THREAD:-1}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS=${RESULTS:-$REPO/bench/RESULTS.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
LOADGEN=$TARGET_DIR/release/ds-loadgen
GATEWAY=${GATEWAY:-$TARGET_DIR/release/dynamic-sharding}
# Our own errors should print as one line, not a backtrace.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

for scenario in $SCENARIOS; do
  case $scenario in overhead | latency | redirect | pushgateway | churn | tls | instructions | replication) ;;
    *) die "unknown scenario '$scenario' in SCENARIOS; use: $ALL_SCENARIOS $OPTIONAL_SCENARIOS" ;;
  esac
done
for fault in $CHURN_FAULTS; do
  case $fault in sigkill | sigstop) ;;
    *) die "unknown fault '$fault' in CHURN_FAULTS; use: sigkill sigstop" ;;
  esac
done
[[ $(id -u) == 0 || $SKIP_INSTALL == 1 ]] || die "run as root (it installs packages), or set SKIP_INSTALL=1"

# ---------------------------------------------------------------- install and build
install_dependencies() {
  local installer=$REPO/scripts/install-test-deps.sh
  if [[ -x $installer || -f $installer ]]; then
    log "running $installer"
    bash "$installer"
  fi
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v python3 >/dev/null || missing+=(python3)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v callgrind_control >/dev/null || missing+=(valgrind)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
[[ $SKIP_INSTALL == 1 ]] || install_dependencies

if [[ $SKIP_BUILD != 1 ]]; then
  log "building release binaries (cargo build --release --workspace)"
  if ! (cd "$REPO" && cargo build --release --workspace); then
    log "the workspace did not build; building the load generator alone, gateway cases will be skipped"
    (cd "$REPO" && cargo build --release -p ds-loadgen)
    GATEWAY=/nonexistent/dynamic-sharding
  fi
fi
[[ -x $LOADGEN ]] || die "$LOADGEN is missing; build it with cargo build --release -p ds-loadgen"

# ---------------------------------------------------------------- process bookkeeping
WORK=$(mktemp -d /tmp/ds-bench.XXXXXX)
mkdir -p "$WORK"/{pids,logs,results,conf}
CLK_TCK=$(getconf CLK_TCK)
NPROC=$(nproc)
if ((NPROC >= 2)); then
  PIN_PROXY=(taskset -c 0) PIN_CLIENT=(taskset -c 1) PIN_UPSTREAM=(taskset -c 0-$((NPROC - 1)))
else
  PIN_PROXY=() PIN_CLIENT=() PIN_UPSTREAM=()
fi

# Field 22 of /proc/<pid>/stat: start time, so a recycled pid is never mistaken for ours.
proc_field() { # pid field-number (1-based, as in proc(5))
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  local rest=${stat##*) } fields
  read -ra fields <<<"$rest"
  echo "${fields[$(($2 - 3))]}"
}

# start NAME CMD...: runs CMD in the background, logs to logs/NAME.log, remembers pid and start time.
start() {
  local name=$1
  shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  local pid=$!
  # Not a shell job any more: no "Killed" notices when the churn loop kills it, and cleanup() is what stops it.
  disown "$pid" 2>/dev/null || true
  echo "$pid $(proc_field "$pid" 22 || echo 0)" >"$WORK/pids/$name.pid"
}

pid_of() { # NAME -> pid if still ours and alive
  local file=$WORK/pids/$1.pid pid started
  [[ -f $file ]] || return 1
  read -r pid started <"$file"
  [[ $(proc_field "$pid" 22 2>/dev/null) == "$started" ]] || return 1
  echo "$pid"
}

stop() { # NAME: TERM, then KILL after 3 s
  local pid
  pid=$(pid_of "$1") || { rm -f "$WORK/pids/$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  # A process the churn loop left SIGSTOPped acts on TERM only once continued.
  kill -CONT "$pid" 2>/dev/null || true
  for _ in $(seq 30); do
    [[ -d /proc/$pid ]] || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$WORK/pids/$1.pid"
}

cleanup() {
  local status=$?
  touch "$WORK/churn.stop"
  local file
  for file in "$WORK"/pids/*.pid; do
    [[ -e $file ]] && stop "$(basename "$file" .pid)"
  done
  if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# All processes of a started program: the one we started and its children (nginx workers).
pids_with_children() { # NAME...
  local name pid
  for name in "$@"; do
    pid=$(pid_of "$name") || continue
    echo "$pid"
    ps -o pid= --ppid "$pid" 2>/dev/null || true
  done
}

cpu_ticks() { # PID... -> summed utime+stime in clock ticks
  local total=0 pid utime stime
  for pid in "$@"; do
    utime=$(proc_field "$pid" 14) || continue
    stime=$(proc_field "$pid" 15) || continue
    total=$((total + utime + stime))
  done
  echo "$total"
}

peak_rss_kb() { # PID... -> summed VmHWM
  local total=0 pid kb
  for pid in "$@"; do
    kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

declare -A USED_PORTS=()
# alloc_port VAR: stores a free loopback port in VAR. Not a $(...) function, so that USED_PORTS survives.
alloc_port() {
  local candidate # not named like any caller's variable: printf -v must reach the caller's
  while :; do
    candidate=$((20000 + RANDOM % 12000)) # below the usual ephemeral range (32768+)
    [[ -z ${USED_PORTS[$candidate]:-} ]] || continue
    [[ -z $(ss -Htln "sport = :$candidate") ]] || continue
    USED_PORTS[$candidate]=1
    printf -v "$1" '%s' "$candidate"
    return
  done
}

# https URLs are checked against the tls scenario's CA, with its credentials (ignored where auth is off).
CURL_TLS=()
wait_http() { # URL [seconds [NAME]]: until it answers 200; gives up early once process NAME has exited
  local deadline=$((SECONDS + ${2:-20})) tls_args=()
  [[ $1 == https://* ]] && tls_args=("${CURL_TLS[@]}")
  while ((SECONDS < deadline)); do
    [[ $(curl -s "${tls_args[@]}" -o /dev/null -w '%{http_code}' -m 1 "$1" || true) == 200 ]] && return 0
    if [[ -n ${3:-} ]] && ! pid_of "$3" >/dev/null; then return 1; fi
    sleep 0.2
  done
  return 1
}

wait_listening() { # PORT [seconds]
  local deadline=$((SECONDS + ${2:-20}))
  while ((SECONDS < deadline)); do
    [[ -n $(ss -Htln "sport = :$1") ]] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- components
UPSTREAM_PORTS=() NGINX_HASH_PORT= NGINX_REDIRECT_PORT= HAPROXY_PORT=
NGINX_TLS_PORT= NGINX_TLS_SHA_PORT= NGINX_TLS_BCRYPT_PORT=
declare -A GATEWAY_PORT=() GATEWAY_OK=() GATEWAY_WEB_CONFIG=()
PGW_SOLO_PORT= PGW_A_PORTS=() PGW_B_PORTS=()

nginx_common() { # NAME: the parts every nginx config here shares
  cat <<EOF
# Workers run as root so that they can use the temp paths in this private directory.
user root;
worker_processes 1;
daemon off;
pid $WORK/conf/$1.pid;
error_log $WORK/logs/$1.error.log warn;
events { worker_connections 16384; }
EOF
}

nginx_http_common() { # NAME
  cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_buffer_size 64k;
    client_body_temp_path $WORK/conf/$1.body;
    proxy_temp_path $WORK/conf/$1.proxy;
    fastcgi_temp_path $WORK/conf/$1.fastcgi;
    uwsgi_temp_path $WORK/conf/$1.uwsgi;
    scgi_temp_path $WORK/conf/$1.scgi;
EOF
}

start_upstreams() {
  local port listens=""
  for _ in 1 2 3 4; do
    alloc_port port
    UPSTREAM_PORTS+=("$port")
    listens+="        listen 127.0.0.1:$port;"$'\n'
  done
  cat >"$WORK/conf/upstreams.conf" <<EOF
$(nginx_common upstreams)
http {
$(nginx_http_common upstreams)
    server {
$listens
        location / { return 200; }
    }
}
EOF
  start upstreams "${PIN_UPSTREAM[@]}" nginx -e "$WORK/logs/upstreams.error.log" -p "$WORK/conf" -c "$WORK/conf/upstreams.conf"
  for port in "${UPSTREAM_PORTS[@]}"; do
    wait_http "http://127.0.0.1:$port/-/healthy" || die "nginx upstream on $port did not start; see $WORK/logs/upstreams*.log"
  done
}

start_nginx_proxy() {
  alloc_port NGINX_HASH_PORT
  alloc_port NGINX_REDIRECT_PORT
  local servers="" port
  for port in "${UPSTREAM_PORTS[@]}"; do servers+="        server 127.0.0.1:$port;"$'\n'; done
  cat >"$WORK/conf/nginx-proxy.conf" <<EOF
$(nginx_common nginx-proxy)
http {
$(nginx_http_common nginx-proxy)
    upstream pushgateways {
        hash \$request_uri consistent;
$servers
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_HASH_PORT;
        location / {
            proxy_pass http://pushgateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGINX_REDIRECT_PORT;
        location / { return 307 http://127.0.0.1:${UPSTREAM_PORTS[0]}\$request_uri; }
    }
}
EOF
  start nginx-proxy "${PIN_PROXY[@]}" nginx -e "$WORK/logs/nginx-proxy.error.log" -p "$WORK/conf" -c "$WORK/conf/nginx-proxy.conf"
  wait_http "http://127.0.0.1:$NGINX_HASH_PORT/-/healthy" || die "nginx proxy did not start; see $WORK/logs/nginx-proxy*.log"
}

# ---------------------------------------------------------------- tls scenario material
# A throwaway CA and a server certificate for 127.0.0.1 (ECDSA P-256), a random password, and its hashes: bcrypt
# for the gateway's basic_auth_users and for nginx's crypt(3), {SHA} as nginx's cheap alternative. All in $WORK.
TLS_DIR= TLS_LOADGEN_ARGS= TLS_AUTH_LOADGEN_ARGS=
make_tls_material() {
  TLS_DIR=$WORK/tls
  mkdir -p "$TLS_DIR"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 2 -subj /CN=ds-bench-ca -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=ds-bench-server -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$TLS_DIR/server.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
    -days 2 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.crt" 2>/dev/null
  local password bcrypt_hash sha_hash
  password=$(openssl rand -hex 16)
  printf '%s\n' "$password" >"$TLS_DIR/password"
  bcrypt_hash=$(python3 -W ignore -c 'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << int(sys.argv[2]))))' \
    "$password" "$TLS_BCRYPT_COST")
  [[ $bcrypt_hash == '$2'* ]] || die "python3 crypt made no bcrypt hash"
  sha_hash="{SHA}$(printf '%s' "$password" | openssl dgst -sha1 -binary | base64)"
  printf 'pusher:%s\n' "$bcrypt_hash" >"$TLS_DIR/bcrypt.htpasswd"
  printf 'pusher:%s\n' "$sha_hash" >"$TLS_DIR/sha.htpasswd"
  printf 'tls_server_config:\n  cert_file: %s\n  key_file: %s\n' "$TLS_DIR/server.crt" "$TLS_DIR/server.key" \
    >"$TLS_DIR/web-tls.yml"
  { cat "$TLS_DIR/web-tls.yml"; printf "basic_auth_users:\n  pusher: '%s'\n" "$bcrypt_hash"; } >"$TLS_DIR/web-tls-auth.yml"
  CURL_TLS=(--cacert "$TLS_DIR/ca.crt" -u "pusher:$password")
  TLS_LOADGEN_ARGS="--ca-file $TLS_DIR/ca.crt"
  TLS_AUTH_LOADGEN_ARGS="$TLS_LOADGEN_ARGS --basic-auth-user pusher --basic-auth-password-file $TLS_DIR/password"
}

# nginx terminating TLS with the same certificate in front of the same four upstreams, three ways: no auth,
# auth_basic with {SHA} (one SHA-1 per request: a cheap check, like the gateway's cached one) and auth_basic with
# bcrypt (crypt(3) on every request: nginx keeps no cache). Like the gateway, it does not pass the client's
# Authorization header on.
start_nginx_tls() {
  alloc_port NGINX_TLS_PORT
  alloc_port NGINX_TLS_SHA_PORT
  alloc_port NGINX_TLS_BCRYPT_PORT
  local servers="" port
  for port in "${UPSTREAM_PORTS[@]}"; do servers+="        server 127.0.0.1:$port;"$'\n'; done
  local location='location / {
            proxy_pass http://pushgateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
        }'
  cat >"$WORK/conf/nginx-tls.conf" <<NGINX
$(nginx_common nginx-tls)
http {
$(nginx_http_common nginx-tls)
    upstream pushgateways {
        hash \$request_uri consistent;
$servers
        keepalive 128;
        keepalive_requests 1000000;
    }
    ssl_certificate $TLS_DIR/server.crt;
    ssl_certificate_key $TLS_DIR/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    ssl_session_timeout 10m;
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        $location
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_SHA_PORT ssl;
        auth_basic "dynamic-sharding bench";
        auth_basic_user_file $TLS_DIR/sha.htpasswd;
        $location
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_BCRYPT_PORT ssl;
        auth_basic "dynamic-sharding bench";
        auth_basic_user_file $TLS_DIR/bcrypt.htpasswd;
        $location
    }
}
NGINX
  start nginx-tls "${PIN_PROXY[@]}" nginx -e "$WORK/logs/nginx-tls.error.log" -p "$WORK/conf" -c "$WORK/conf/nginx-tls.conf"
  for port in "$NGINX_TLS_PORT" "$NGINX_TLS_SHA_PORT" "$NGINX_TLS_BCRYPT_PORT"; do
    wait_http "https://127.0.0.1:$port/-/healthy" || die "nginx TLS on $port did not start; see $WORK/logs/nginx-tls*.log"
  done
}

start_haproxy() {
  alloc_port HAPROXY_PORT
  local servers="" port index=0
  for port in "${UPSTREAM_PORTS[@]}"; do
    index=$((index + 1))
    servers+="    server up$index 127.0.0.1:$port"$'\n'
  done
  cat >"$WORK/conf/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend push
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend pushgateways
backend pushgateways
    balance uri
    hash-type consistent
    http-reuse always
$servers
EOF
  start haproxy "${PIN_PROXY[@]}" haproxy -db -f "$WORK/conf/haproxy.cfg"
  wait_http "http://127.0.0.1:$HAPROXY_PORT/-/healthy" || die "haproxy did not start; see $WORK/logs/haproxy.log"
}

start_pushgateway() { # NAME PORT
  start "$1" "${PIN_UPSTREAM[@]}" prometheus-pushgateway --persistence.file= --web.listen-address="127.0.0.1:$2"
}

start_pushgateways() {
  local index port
  alloc_port PGW_SOLO_PORT
  start_pushgateway pgw-solo "$PGW_SOLO_PORT"
  for index in 1 2 3 4; do
    if wants pushgateway; then
      alloc_port port
      PGW_A_PORTS+=("$port")
      start_pushgateway "pgw-a$index" "$port"
    fi
    if wants churn; then
      alloc_port port
      PGW_B_PORTS+=("$port")
      start_pushgateway "pgw-b$index" "$port"
    fi
  done
  for port in "$PGW_SOLO_PORT" "${PGW_A_PORTS[@]}" "${PGW_B_PORTS[@]}"; do
    wait_http "http://127.0.0.1:$port/-/ready" || die "pushgateway on $port did not start; see $WORK/logs/pgw-*.log"
  done
}

start_gateway() { # NAME MODE THREADS PORT...: a dynamic-sharding instance over the given nodes
  local name=$1 mode=$2 threads=$3
  shift 3
  local servers port listen
  servers=$(printf '"127.0.0.1:%s", ' "$@")
  alloc_port listen
  GATEWAY_PORT[$name]=$listen
  GATEWAY_OK[$name]=0
  # --web.config.file when GATEWAY_WEB_CONFIG[NAME] is set: then the listener speaks https.
  local web_args=() scheme=http
  if [[ -n ${GATEWAY_WEB_CONFIG[$name]:-} ]]; then
    web_args=(--web.config.file="${GATEWAY_WEB_CONFIG[$name]}")
    scheme=https
  fi
  cat >"$WORK/conf/$name.yaml" <<EOF
mode: $mode
pushgateway:
  servers: [${servers%, }]
health_check: {interval: 1s, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1}
EOF
  if [[ $name == ds-churn ]]; then
    echo "proxy: {upstream_timeout: $CHURN_UPSTREAM_TIMEOUT}" >>"$WORK/conf/$name.yaml"
  fi
  if [[ ! -x $GATEWAY ]]; then
    log "skipping $name: $GATEWAY is missing"
    return
  fi
  start "$name" "${PIN_PROXY[@]}" "$GATEWAY" --config.file="$WORK/conf/$name.yaml" \
    --web.listen-address="127.0.0.1:$listen" --log.level=warn --runtime.worker-threads="$threads" "${web_args[@]}"
  if wait_http "$scheme://127.0.0.1:$listen/-/healthy" 20 "$name" && wait_http "$scheme://127.0.0.1:$listen/-/ready" 20 "$name"; then
    GATEWAY_OK[$name]=1
  else
    log "skipping $name: it exited or was not healthy and ready within 20 s; see $WORK/logs/$name.log"
    stop "$name"
  fi
}

# ---------------------------------------------------------------- cases
# A case: scenario|name|target|concurrency|duration|groups|proxy-process|upstream-processes|extra loadgen args
# (target: a port on 127.0.0.1 over plain HTTP, or a whole URL such as https://127.0.0.1:PORT)
CASES=()
add_case() { CASES+=("$1|$2|$3|$4|$5|$6|$7|$8|${9:-}"); }

plan_cases() {
  local ups=upstreams
  if wants overhead || wants latency; then
    add_case_pair() { # scenario concurrency duration
      add_case "$1" direct "${UPSTREAM_PORTS[0]}" "$2" "$3" "$PUSH_GROUPS" "" "$ups"
      if [[ ${GATEWAY_OK[ds-proxy]:-0} == 1 ]]; then
        add_case "$1" dynamic-sharding "${GATEWAY_PORT[ds-proxy]}" "$2" "$3" "$PUSH_GROUPS" ds-proxy "$ups"
      fi
      if [[ ${GATEWAY_OK[ds-proxy-mt]:-0} == 1 ]]; then
        add_case "$1" dynamic-sharding-multi-thread "${GATEWAY_PORT[ds-proxy-mt]}" "$2" "$3" "$PUSH_GROUPS" ds-proxy-mt "$ups"
      fi
      add_case "$1" nginx "$NGINX_HASH_PORT" "$2" "$3" "$PUSH_GROUPS" nginx-proxy "$ups"
      add_case "$1" haproxy "$HAPROXY_PORT" "$2" "$3" "$PUSH_GROUPS" haproxy "$ups"
    }
    if wants overhead; then add_case_pair overhead "$CONCURRENCY" "$DURATION"; fi
    if wants latency; then add_case_pair latency 1 "$LOW_C_DURATION"; fi
  fi
  if wants redirect; then
    if [[ ${GATEWAY_OK[ds-redirect]:-0} == 1 ]]; then
      add_case redirect dynamic-sharding "${GATEWAY_PORT[ds-redirect]}" "$CONCURRENCY" "$DURATION" \
        "$PUSH_GROUPS" ds-redirect "$ups" "--expect-status 307"
      add_case redirect dynamic-sharding-followed "${GATEWAY_PORT[ds-redirect]}" "$CONCURRENCY" "$DURATION" \
        "$PUSH_GROUPS" ds-redirect "$ups" "--follow-redirects"
    fi
    add_case redirect nginx "$NGINX_REDIRECT_PORT" "$CONCURRENCY" "$DURATION" "$PUSH_GROUPS" nginx-proxy "$ups" \
      "--expect-status 307"
  fi
  if wants pushgateway; then
    add_case pushgateway direct "$PGW_SOLO_PORT" "$CONCURRENCY" "$DURATION" "$PGW_GROUPS" "" pgw-solo
    if [[ ${GATEWAY_OK[ds-pgw]:-0} == 1 ]]; then
      add_case pushgateway dynamic-sharding "${GATEWAY_PORT[ds-pgw]}" "$CONCURRENCY" "$DURATION" "$PGW_GROUPS" \
        ds-pgw "pgw-a1 pgw-a2 pgw-a3 pgw-a4"
    fi
  fi
  if wants tls; then
    # The plain baselines, then the gateway and nginx in the same TLS setups.
    local gateway args
    if [[ ${GATEWAY_OK[ds-proxy]:-0} == 1 ]]; then
      add_case tls dynamic-sharding "${GATEWAY_PORT[ds-proxy]}" "$CONCURRENCY" "$DURATION" "$PUSH_GROUPS" ds-proxy "$ups"
    fi
    add_case tls nginx "$NGINX_HASH_PORT" "$CONCURRENCY" "$DURATION" "$PUSH_GROUPS" nginx-proxy "$ups"
    for gateway in ds-tls ds-tls-auth; do
      if [[ ${GATEWAY_OK[$gateway]:-0} == 1 ]]; then
        args=$TLS_LOADGEN_ARGS
        [[ $gateway == ds-tls-auth ]] && args=$TLS_AUTH_LOADGEN_ARGS
        add_case tls "dynamic-sharding${gateway#ds}" "https://127.0.0.1:${GATEWAY_PORT[$gateway]}" "$CONCURRENCY" \
          "$DURATION" "$PUSH_GROUPS" "$gateway" "$ups" "$args"
      fi
    done
    add_case tls nginx-tls "https://127.0.0.1:$NGINX_TLS_PORT" "$CONCURRENCY" "$DURATION" "$PUSH_GROUPS" nginx-tls \
      "$ups" "$TLS_LOADGEN_ARGS"
    add_case tls nginx-tls-auth-sha "https://127.0.0.1:$NGINX_TLS_SHA_PORT" "$CONCURRENCY" "$DURATION" "$PUSH_GROUPS" \
      nginx-tls "$ups" "$TLS_AUTH_LOADGEN_ARGS"
    add_case tls nginx-tls-auth-bcrypt "https://127.0.0.1:$NGINX_TLS_BCRYPT_PORT" "$CONCURRENCY" "$DURATION" \
      "$PUSH_GROUPS" nginx-tls "$ups" "$TLS_AUTH_LOADGEN_ARGS"
  fi
  if wants churn && [[ ${GATEWAY_OK[ds-churn]:-0} == 1 ]]; then
    local fault
    # One gateway and the same four Pushgateways for every variant; the cases alternate within each round.
    for fault in $CHURN_FAULTS; do
      add_case churn "dynamic-sharding-$fault" "${GATEWAY_PORT[ds-churn]}" "$CONCURRENCY" "$DURATION" "$PGW_GROUPS" \
        ds-churn "pgw-b1 pgw-b2 pgw-b3 pgw-b4"
    done
  fi
  return 0
}

# Sleeps SECONDS in steps of 0.1 s; returns 1 early once the churn loop is told to stop.
churn_sleep() {
  local slept
  for ((slept = 0; slept < $1 * 10; slept++)); do
    [[ -e $WORK/churn.stop ]] && return 1
    sleep 0.1
  done
  return 0
}

# The churn loop, FAULT sigkill: SIGKILL one of the B Pushgateways, keep it down a moment, start it again on the
# same port. FAULT sigstop: SIGSTOP it (its sockets stay open: connections succeed, nothing is answered), then
# SIGCONT it; it then answers what it had queued. Every fault is one line "fault" in churn.events.
churn_loop() { # FAULT
  local fault=$1 index=0 node port pid
  while churn_sleep "$CHURN_INTERVAL"; do
    node=pgw-b$((index % 4 + 1))
    port=${PGW_B_PORTS[$((index % 4))]}
    index=$((index + 1))
    if [[ $fault == sigstop ]]; then
      pid=$(pid_of "$node") || continue
      kill -STOP "$pid" 2>/dev/null || continue
      echo "$(date +%s.%N) fault stop $node" >>"$WORK/churn.events"
      churn_sleep "$CHURN_STOPTIME" || true
      kill -CONT "$pid" 2>/dev/null || true
      echo "$(date +%s.%N) cont $node" >>"$WORK/churn.events"
    else
      if pid=$(pid_of "$node"); then
        kill -KILL "$pid" 2>/dev/null || true
        echo "$(date +%s.%N) fault kill $node" >>"$WORK/churn.events"
      fi
      sleep "$CHURN_DOWNTIME"
      start_pushgateway "$node" "$port"
      echo "$(date +%s.%N) start $node" >>"$WORK/churn.events"
    fi
  done
}

restore_churned_nodes() {
  local index pid
  for index in 1 2 3 4; do
    if pid=$(pid_of "pgw-b$index"); then
      kill -CONT "$pid" 2>/dev/null || true
    else
      start_pushgateway "pgw-b$index" "${PGW_B_PORTS[$((index - 1))]}"
    fi
    wait_http "http://127.0.0.1:${PGW_B_PORTS[$((index - 1))]}/-/ready" || log "pgw-b$index did not come back"
  done
  # Let the gateway's health checks mark them healthy again (interval 1 s, healthy_threshold 1).
  sleep 3
}

run_case() { # CASE-STRING ROUND (0 = warm-up)
  local scenario name port concurrency duration groups proxy upstream extra
  IFS='|' read -r scenario name port concurrency duration groups proxy upstream extra <<<"$1"
  local round=$2 id="$scenario.$name"
  local out=$WORK/results/$id.$round.json
  ((round == 0)) && duration=$WARMUP && out=$WORK/results/warmup.json
  local proxy_pids upstream_pids proxy_before upstream_before churn_pid=""
  # shellcheck disable=SC2086
  proxy_pids=$(pids_with_children $proxy)
  # shellcheck disable=SC2086
  upstream_pids=$(pids_with_children $upstream)
  if [[ $scenario == churn ]] && ((round > 0)); then
    rm -f "$WORK/churn.stop" "$WORK/churn.events"
    churn_loop "${name##*-}" &
    churn_pid=$!
  fi
  # shellcheck disable=SC2086
  proxy_before=$(cpu_ticks $proxy_pids)
  # shellcheck disable=SC2086
  upstream_before=$(cpu_ticks $upstream_pids)
  local status=0
  local target=$port
  [[ $target == *://* ]] || target=http://127.0.0.1:$port
  # shellcheck disable=SC2086
  "${PIN_CLIENT[@]}" "$LOADGEN" --target "$target" -c "$concurrency" -d "$duration" -k "$groups" \
    --timeout-ms 5000 --label "$id" --json "$out" $extra >"$WORK/logs/loadgen.$id.$round.log" 2>&1 || status=$?
  local proxy_after upstream_after
  # The pids read before the run: under churn a restarted Pushgateway is not counted, so the report leaves
  # upstream CPU out for churn.
  # shellcheck disable=SC2086
  proxy_after=$(cpu_ticks $proxy_pids)
  # shellcheck disable=SC2086
  upstream_after=$(cpu_ticks $upstream_pids)
  if [[ -n $churn_pid ]]; then
    touch "$WORK/churn.stop"
    wait "$churn_pid" || true
    restore_churned_nodes
  fi
  ((round == 0)) && return 0
  if [[ ! -s $out ]]; then
    log "$id round $round produced no report (exit $status): $(tail -n 3 "$WORK/logs/loadgen.$id.$round.log")"
    return 0
  fi
  local rss=0
  # shellcheck disable=SC2086
  [[ -n $proxy ]] && rss=$(peak_rss_kb $(pids_with_children $proxy))
  local faults=0
  [[ $scenario == churn ]] && faults=$(grep -c ' fault ' "$WORK/churn.events" 2>/dev/null || true) && rm -f "$WORK/churn.events"
  jq --arg scenario "$scenario" --arg case "$name" --argjson round "$round" \
    --argjson proxy_cpu "$(awk -v a="$proxy_before" -v b="$proxy_after" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')" \
    --argjson upstream_cpu "$(awk -v a="$upstream_before" -v b="$upstream_after" -v t="$CLK_TCK" 'BEGIN {print (b - a) / t}')" \
    --argjson proxy_rss_kb "$rss" --argjson faults "${faults:-0}" --arg proxy "$proxy" \
    '. + {scenario: $scenario, case: $case, round: $round, proxy: $proxy, proxy_cpu_s: $proxy_cpu,
          upstream_cpu_s: $upstream_cpu, proxy_peak_rss_kb: $proxy_rss_kb, churn_faults: $faults}' \
    "$out" >"$out.tmp" && mv "$out.tmp" "$out"
  log "$id round $round: $(jq -r '"\(.ok_per_s | floor) ok/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs, errors \(.errors_total)"' "$out")"
}

# ---------------------------------------------------------------- criterion
# The ring and grouping micro-benchmarks, into the work directory (not the target dir's shared criterion/),
# summarised as a JSON list for report.py.
run_criterion() {
  log "criterion: cargo bench --bench ring --bench grouping -- $CRITERION_ARGS"
  # shellcheck disable=SC2086
  if ! (cd "$REPO" && CRITERION_HOME="$WORK/criterion" cargo bench --bench ring --bench grouping -- $CRITERION_ARGS \
    >"$WORK/logs/criterion.log" 2>&1); then
    log "criterion benches failed; see the log (KEEP_WORKDIR=1): $(tail -n 3 "$WORK/logs/criterion.log")"
    return 0
  fi
  local file entries=()
  while IFS= read -r file; do
    entries+=("$(jq -c --slurpfile estimates "${file%benchmark.json}estimates.json" '{id: .full_id,
      mean_ns: $estimates[0].mean.point_estimate, low_ns: $estimates[0].mean.confidence_interval.lower_bound,
      high_ns: $estimates[0].mean.confidence_interval.upper_bound}' "$file")")
  done < <(find "$WORK/criterion" -path '*/new/benchmark.json' | sort -V)
  printf '%s\n' "${entries[@]}" | jq -s . >"$WORK/criterion.json"
}

# ---------------------------------------------------------------- instructions per request (callgrind)
# Each proxy runs once more, alone, under `valgrind --tool=callgrind` (one process, one thread: nginx with
# master_process off, HAProxy with nbthread 1, the gateway with --runtime.worker-threads 1), over the same four
# upstreams. After 500 unmeasured pushes the counters are zeroed, INSTRUCTION_REQUESTS pushes run (C=4), and the
# counters are dumped. Kernel work (loopback TCP) is not counted: the system calls per push are the same for
# every proxy here (see bench/PROFILING.md), so this compares the work each one does in user space.
measure_instructions() { # NAME EXPECTED_STATUS(or empty) PORT READY_PATH CMD...
  local name=$1 expect=$2 port=$3 ready=$4
  shift 4
  local out=$WORK/callgrind/$name.out
  start "cg-$name" valgrind --tool=callgrind --callgrind-out-file="$out" "$@"
  local expect_args=()
  [[ -n $expect ]] && expect_args=(--expect-status "$expect")
  local answered=0
  if [[ -n $ready ]]; then
    wait_http "http://127.0.0.1:$port$ready" 60 "cg-$name" && answered=1
  else
    wait_listening "$port" 60 && answered=1
  fi
  if ((answered == 0)); then
    log "skipping instructions for $name: it did not answer under valgrind; see $WORK/logs/cg-$name.log"
    stop "cg-$name"
    return
  fi
  local pid
  pid=$(pid_of "cg-$name")
  "$LOADGEN" --target "http://127.0.0.1:$port" -c 4 -n 500 "${expect_args[@]}" >/dev/null 2>&1 || true
  callgrind_control -z "$pid" >/dev/null
  "$LOADGEN" --target "http://127.0.0.1:$port" -c 4 -n "$INSTRUCTION_REQUESTS" "${expect_args[@]}" \
    --label "$name" --json "$WORK/callgrind/$name.load" >/dev/null 2>&1 || true
  callgrind_control -d "$pid" >/dev/null
  stop "cg-$name"
  local total ok
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  ok=$(jq '.ok' "$WORK/callgrind/$name.load" 2>/dev/null || echo 0)
  jq -n --arg name "$name" --argjson instructions "${total:-0}" --argjson ok "${ok:-0}" \
    '$ARGS.named' >"$WORK/callgrind/$name.json"
  log "instructions: $name ${total:-?} over ${ok:-0} successful pushes"
}

run_instructions() {
  mkdir -p "$WORK/callgrind"
  local cg_port
  # The configs of the timed cases, run as one process, with only the server under test listening.
  alloc_port cg_port
  sed -e "s/^daemon off;/daemon off;\nmaster_process off;/" -e "s/listen 127.0.0.1:$NGINX_HASH_PORT;/listen 127.0.0.1:$cg_port;/" \
    -e "/listen 127.0.0.1:$NGINX_REDIRECT_PORT;/d" -e "s|nginx-proxy.pid|nginx-cg-proxy.pid|" \
    "$WORK/conf/nginx-proxy.conf" >"$WORK/conf/nginx-cg-proxy.conf"
  measure_instructions nginx "" "$cg_port" /-/healthy nginx -e "$WORK/logs/nginx-cg.error.log" -p "$WORK/conf" -c "$WORK/conf/nginx-cg-proxy.conf"
  alloc_port cg_port
  sed -e "s/^daemon off;/daemon off;\nmaster_process off;/" -e "s/listen 127.0.0.1:$NGINX_REDIRECT_PORT;/listen 127.0.0.1:$cg_port;/" \
    -e "/listen 127.0.0.1:$NGINX_HASH_PORT;/d" -e "s|nginx-proxy.pid|nginx-cg-redirect.pid|" \
    "$WORK/conf/nginx-proxy.conf" >"$WORK/conf/nginx-cg-redirect.conf"
  # nginx answers 307 on every path; wait for it to listen instead of for a 200.
  measure_instructions nginx-redirect 307 "$cg_port" "" nginx -e "$WORK/logs/nginx-cg.error.log" -p "$WORK/conf" -c "$WORK/conf/nginx-cg-redirect.conf"
  alloc_port cg_port
  sed -e "s/bind 127.0.0.1:$HAPROXY_PORT/bind 127.0.0.1:$cg_port/" "$WORK/conf/haproxy.cfg" >"$WORK/conf/haproxy-cg.cfg"
  measure_instructions haproxy "" "$cg_port" /-/healthy haproxy -db -f "$WORK/conf/haproxy-cg.cfg"
  if [[ -x $GATEWAY ]]; then
    local mode name expect servers
    servers=$(printf '"127.0.0.1:%s", ' "${UPSTREAM_PORTS[@]}")
    for mode in proxy redirect; do
      alloc_port cg_port
      printf 'mode: %s\npushgateway:\n  servers: [%s]\nhealth_check: {interval: 2s, timeout: 1s}\n' \
        "$mode" "${servers%, }" >"$WORK/conf/ds-cg-$mode.yaml"
      name=dynamic-sharding expect=""
      [[ $mode == redirect ]] && name=dynamic-sharding-redirect expect=307
      measure_instructions "$name" "$expect" "$cg_port" /-/ready "$GATEWAY" --config.file="$WORK/conf/ds-cg-$mode.yaml" \
        --web.listen-address="127.0.0.1:$cg_port" --log.level=warn --runtime.worker-threads=1
    done
  fi
  jq -s . "$WORK"/callgrind/*.json >"$WORK/instructions.json"
}

# ---------------------------------------------------------------- replication (bench/replication_cost.py)
# The script starts and stops its own gateways and Pushgateways on free loopback ports and prints REPLICATION.md.
# Its pid is kept like the others', so that cleanup() stops it (SIGTERM: it then stops its children) on exit.
run_replication() {
  log "replication: bench/replication_cost.py${REPLICATION_ENV:+ with $REPLICATION_ENV} (about 40 minutes at 10,000 groups)"
  local pid status=0
  # shellcheck disable=SC2086
  env DS_BIN="$GATEWAY" DS_LOADGEN="$LOADGEN" $REPLICATION_ENV python3 -W ignore "$REPO/bench/replication_cost.py" \
    >"$WORK/replication.md" 2>"$WORK/logs/replication.log" &
  pid=$!
  echo "$pid $(proc_field "$pid" 22 || echo 0)" >"$WORK/pids/replication.pid"
  wait "$pid" || status=$?
  rm -f "$WORK/pids/replication.pid"
  if ((status != 0)); then
    log "replication: the script failed (exit $status): $(tail -n 3 "$WORK/logs/replication.log")"
    return 0
  fi
  cp "$WORK/replication.md" "$REPLICATION_RESULTS"
  log "wrote $REPLICATION_RESULTS"
}

# ---------------------------------------------------------------- main
log "work directory $WORK; scenarios: $SCENARIOS"
if [[ " $SCENARIOS " == *" replication "* && ! -x $GATEWAY ]]; then die "the replication scenario needs $GATEWAY"; fi
if [[ $SCENARIOS == replication ]]; then
  # Nothing else to run: RESULTS stays as it is.
  run_replication
  exit 0
fi
if [[ $CRITERION == 1 ]]; then run_criterion; fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if wants overhead || wants latency || wants redirect || wants instructions || wants tls; then
  start_upstreams
  start_nginx_proxy
  if wants overhead || wants latency || wants redirect || wants instructions; then start_haproxy; fi
  if wants tls; then
    make_tls_material
    start_nginx_tls
    GATEWAY_WEB_CONFIG[ds-tls]=$TLS_DIR/web-tls.yml
    GATEWAY_WEB_CONFIG[ds-tls-auth]=$TLS_DIR/web-tls-auth.yml
    start_gateway ds-tls proxy "$GATEWAY_THREADS" "${UPSTREAM_PORTS[@]}"
    start_gateway ds-tls-auth proxy "$GATEWAY_THREADS" "${UPSTREAM_PORTS[@]}"
  fi
  if wants overhead || wants latency || wants tls; then
    start_gateway ds-proxy proxy "$GATEWAY_THREADS" "${UPSTREAM_PORTS[@]}"
    # 0: tokio's multi-thread runtime, one worker per CPU it may use (one here, as it is pinned).
    if [[ $COMPARE_MULTI_THREAD == 1 ]]; then start_gateway ds-proxy-mt proxy 0 "${UPSTREAM_PORTS[@]}"; fi
  fi
  if wants redirect; then start_gateway ds-redirect redirect "$GATEWAY_THREADS" "${UPSTREAM_PORTS[@]}"; fi
fi
if wants pushgateway || wants churn; then
  start_pushgateways
  if wants pushgateway; then start_gateway ds-pgw proxy "$GATEWAY_THREADS" "${PGW_A_PORTS[@]}"; fi
  if wants churn; then start_gateway ds-churn proxy "$GATEWAY_THREADS" "${PGW_B_PORTS[@]}"; fi
fi
plan_cases
if wants instructions; then
  log "measuring instructions per push under callgrind ($INSTRUCTION_REQUESTS pushes per proxy)"
  run_instructions
fi
((${#CASES[@]})) || wants instructions || die "no case to run"

log "warming up ${#CASES[@]} cases for ${WARMUP}s each"
for case_line in "${CASES[@]}"; do run_case "$case_line" 0; done
for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round of $ROUNDS"
  for case_line in "${CASES[@]}"; do run_case "$case_line" "$round"; done
done

# Facts about this machine and run for the report header.
skipped=()
for name in "${!GATEWAY_OK[@]}"; do [[ ${GATEWAY_OK[$name]} == 1 ]] || skipped+=("$name"); done
jq -n \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --arg command "$COMMAND_LINE" \
  --arg env "SCENARIOS='$SCENARIOS' GATEWAY_THREADS=$GATEWAY_THREADS COMPARE_MULTI_THREAD=$COMPARE_MULTI_THREAD DURATION=$DURATION LOW_C_DURATION=$LOW_C_DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS CONCURRENCY=$CONCURRENCY PUSH_GROUPS=$PUSH_GROUPS PGW_GROUPS=$PGW_GROUPS CHURN_FAULTS='$CHURN_FAULTS' CHURN_INTERVAL=$CHURN_INTERVAL CHURN_DOWNTIME=$CHURN_DOWNTIME CHURN_STOPTIME=$CHURN_STOPTIME CHURN_UPSTREAM_TIMEOUT=$CHURN_UPSTREAM_TIMEOUT TLS_BCRYPT_COST=$TLS_BCRYPT_COST" \
  --arg churn_downtime "$CHURN_DOWNTIME" \
  --arg churn_stoptime "$CHURN_STOPTIME" \
  --arg nproc "$NPROC" \
  --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  --arg kernel "$(uname -r)" \
  --arg loadavg "$LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after" \
  --arg load_before "${LOAD_BEFORE%% *}" \
  --arg nginx "$(nginx -v 2>&1)" \
  --arg haproxy "$(haproxy -v 2>&1 | head -n 1)" \
  --arg pushgateway "$(prometheus-pushgateway --version 2>&1 | head -n 1)" \
  --arg rustc "$(rustc -V 2>/dev/null || echo unknown)" \
  --arg gateway "$GATEWAY" \
  --arg revision "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')" \
  --arg pinned "$( ((NPROC >= 2)) && echo 'client on cpu 1, proxies on cpu 0, upstreams unpinned' || echo 'not pinned (1 cpu)')" \
  --arg skipped "${skipped[*]:-}" \
  --arg all_scenarios "$ALL_SCENARIOS" \
  --arg tls_bcrypt_cost "$TLS_BCRYPT_COST" \
  --arg instructions "$([[ -s $WORK/instructions.json ]] && echo "$WORK/instructions.json")" \
  --arg instruction_requests "$INSTRUCTION_REQUESTS" \
  --arg scenarios "$(echo ${SCENARIOS//replication/})" \
  --arg criterion "$([[ -s $WORK/criterion.json ]] && echo "$WORK/criterion.json")" \
  --arg criterion_command "cargo bench --bench ring --bench grouping -- $CRITERION_ARGS" \
  --argjson body_bytes "$(cat "$WORK"/results/*.json /dev/null 2>/dev/null | jq -s '.[0].body_bytes // 0')" \
  '$ARGS.named' >"$WORK/meta.json"
# Last and alone: it loads the machine for long, and its processes are its own.
if wants replication; then run_replication; fi
rm -f "$WORK/results/warmup.json"
shopt -s nullglob
python3 "$REPO/bench/report.py" "$WORK/meta.json" "$WORK"/results/*.json >"$RESULTS"
log "wrote $RESULTS"
