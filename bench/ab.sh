#!/usr/bin/env bash
# A/B of two gateway binaries on run.sh's overhead scenario, same run, alternating rounds; optional callgrind.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY
#
# Four nginx `return 200` upstreams (any CPU); both gateways pinned to CPU 0 with --runtime.worker-threads 1;
# ds-loadgen on CPU 1. Each round runs both binaries, the start order alternating between rounds. CPU per push
# is utime+stime from /proc/<pid>/stat over all rounds divided by the successful pushes.
#
# With CALLGRIND=1 it instead runs each binary under `valgrind --tool=callgrind` twice, for CG_SMALL and CG_LARGE
# pushes (ds-loadgen -n, C=CG_CONCURRENCY), and reports (Ir(large) - Ir(small)) / (large - small): instructions
# per push with start-up and warm-up cancelled out. Instruction counts do not depend on the machine's load.
#
# Environment [defaults]: ROUNDS [6], DURATION seconds per run [4], CONCURRENCY [32], PUSH_GROUPS [1000],
# CALLGRIND [0], STRACE [0] (1: system call counts over CG_LARGE pushes), PERF_STAT [0]
# (1: perf stat context switches and task-clock (ms) per push, ROUNDS x DURATION), CG_SMALL [2000], CG_LARGE [6000], CG_CONCURRENCY [4], LOADGEN [$CARGO_TARGET_DIR/release/ds-loadgen],
# NEW_EXTRA_YAML (appended to the new binary's config only), KEEP_WORKDIR=1 to keep configs, logs and callgrind
# outputs.
set -euo pipefail

OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4}
CONCURRENCY=${CONCURRENCY:-32}
PUSH_GROUPS=${PUSH_GROUPS:-1000}
CALLGRIND=${CALLGRIND:-0}
CG_SMALL=${CG_SMALL:-2000}
CG_LARGE=${CG_LARGE:-6000}
CG_CONCURRENCY=${CG_CONCURRENCY:-4}
LOADGEN=${LOADGEN:-${CARGO_TARGET_DIR:-$REPO/target}/release/ds-loadgen}
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/ds-ab.XXXXXX)
PIDS=()

log() { printf '[ab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { # a loopback port nobody listens on, below the ephemeral range
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    [[ -z $(ss -Htln "sport = :$port") ]] && { echo "$port"; return; }
  done
}
wait_http() { # URL: until it answers 200 (60 s: a gateway under valgrind starts slowly)
  local deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 "$1" || true) == 200 ]] && return 0
    sleep 0.2
  done
  log "error: $1 never answered 200"
  exit 1
}
cpu_ticks() { # PID -> utime+stime
  local stat rest fields
  stat=$(cat "/proc/$1/stat")
  rest=${stat##*) }
  read -ra fields <<<"$rest"
  echo $((fields[11] + fields[12]))
}

# ---- upstreams
UPSTREAMS=() listens=""
for _ in 1 2 3 4; do
  port=$(free_port)
  UPSTREAMS+=("$port")
  listens+="    listen 127.0.0.1:$port;"$'\n'
done
cat >"$WORK/upstreams.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $WORK/upstreams.pid;
error_log $WORK/upstreams.error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_buffer_size 64k;
  client_body_temp_path $WORK/body;
  server {
$listens    location / { return 200; }
  }
}
EOF
nginx -e "$WORK/upstreams.error.log" -p "$WORK" -c "$WORK/upstreams.conf" >"$WORK/upstreams.log" 2>&1 &
PIDS+=($!)
for port in "${UPSTREAMS[@]}"; do wait_http "http://127.0.0.1:$port/"; done
servers=$(printf '"127.0.0.1:%s", ' "${UPSTREAMS[@]}")
# Rare health checks: probes then cost the same (almost nothing) in both binaries.
cat >"$WORK/gateway.yaml" <<EOF
mode: proxy
pushgateway:
  servers: [${servers%, }]
health_check: {interval: 60s, timeout: 2s, unhealthy_threshold: 2, healthy_threshold: 1}
EOF
# The new binary may get extra YAML (e.g. `proxy: {per_node_pool: true}`); the old one may not know those keys.
cp "$WORK/gateway.yaml" "$WORK/gateway-new.yaml"
printf '%s\n' "${NEW_EXTRA_YAML:-}" >>"$WORK/gateway-new.yaml"

start_gateway() { # VAR_PID VAR_PORT BINARY [wrapper...]; the config is gateway-new.yaml for $NEW
  # Locals are not named like any caller's variable: printf -v must reach the caller's.
  local gw_pid_var=$1 gw_port_var=$2 gw_binary=$3 gw_port gw_pid gw_config=$WORK/gateway.yaml
  [[ $3 == "$NEW" ]] && gw_config=$WORK/gateway-new.yaml
  shift 3
  gw_port=$(free_port)
  taskset -c 0 "$@" "$gw_binary" --config.file="$gw_config" --web.listen-address="127.0.0.1:$gw_port" \
    --log.level=warn --runtime.worker-threads=1 >"$WORK/gateway-$gw_port.log" 2>&1 &
  gw_pid=$!
  PIDS+=("$gw_pid")
  wait_http "http://127.0.0.1:$gw_port/-/ready"
  printf -v "$gw_pid_var" '%s' "$gw_pid"
  printf -v "$gw_port_var" '%s' "$gw_port"
}

load() { # PORT JSON_OUT loadgen-args...
  local port=$1 out=$2
  shift 2
  taskset -c 1 "$LOADGEN" --target "http://127.0.0.1:$port" -k "$PUSH_GROUPS" --timeout-ms 20000 --json "$out" "$@" \
    >"$out.log" 2>&1
}

if [[ ${PERF_STAT:-0} == 1 ]]; then
  # Context switches and task-clock of each gateway per push, DURATION seconds of load per run, alternating
  # (software counters: the benchmark VM has no hardware counters).
  start_gateway OLD_PID OLD_PORT "$OLD"
  start_gateway NEW_PID NEW_PORT "$NEW"
  for round in $(seq "$ROUNDS"); do
    for which in old new; do
      if [[ $which == old ]]; then pid=$OLD_PID port=$OLD_PORT; else pid=$NEW_PID port=$NEW_PORT; fi
      perf stat -x, -e task-clock,context-switches -p "$pid" \
        -o "$WORK/perf.$which.$round" &
      perf_pid=$!
      load "$port" "$WORK/$which.perf.$round.json" -c "$CONCURRENCY" -d "$DURATION"
      kill -INT "$perf_pid"
      wait "$perf_pid" || true
      ok=$(jq .ok "$WORK/$which.perf.$round.json")
      awk -F, -v n="$ok" -v w="$which" -v r="$round" '$3 != "" && $1 ~ /^[0-9.]+$/ {
        printf "%s round %s: %s per push %.4f (%s pushes)\n", w, r, $3, $1 / n, n }' "$WORK/perf.$which.$round"
    done
  done
  exit 0
fi

if [[ ${STRACE:-0} == 1 ]]; then
  # System calls per push: `strace -c -f` over CG_LARGE pushes at CONCURRENCY (counts, not times, are the point).
  for which in old new; do
    binary=$OLD
    [[ $which == new ]] && binary=$NEW
    out=$WORK/strace.$which
    start_gateway pid port "$binary" strace -c -f -o "$out"
    load "$port" "$WORK/$which.strace.json" -c "$CONCURRENCY" -n "$CG_LARGE"
    # strace itself ignores SIGTERM: stop the traced gateway, strace then writes its table and exits.
    pkill -TERM -P "$pid" || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    echo "== $which ($binary): $(jq .ok "$WORK/$which.strace.json") pushes"
    head -n 14 "$out"
  done
  exit 0
fi

if [[ $CALLGRIND == 1 ]]; then
  printf '| binary | Ir for %s pushes | Ir for %s pushes | instructions per push |\n|---|---|---|---|\n' \
    "$CG_SMALL" "$CG_LARGE"
  for which in old new; do
    binary=$OLD
    [[ $which == new ]] && binary=$NEW
    declare -A IR=()
    for n in "$CG_SMALL" "$CG_LARGE"; do
      out=$WORK/callgrind.$which.$n
      start_gateway pid port "$binary" valgrind --tool=callgrind --callgrind-out-file="$out" --log-file="$out.vg.log"
      load "$port" "$WORK/$which.$n.json" -c "$CG_CONCURRENCY" -n "$n"
      ok=$(jq .ok "$WORK/$which.$n.json")
      [[ $ok == "$n" ]] || log "warning: $which n=$n: only $ok of $n pushes succeeded"
      kill -TERM "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
      IR[$n]=$(awk '/^summary:|^totals:/ {print $2; exit}' "$out")
    done
    per_push=$(awk -v a="${IR[$CG_SMALL]}" -v b="${IR[$CG_LARGE]}" -v s="$CG_SMALL" -v l="$CG_LARGE" \
      'BEGIN {printf "%.0f", (b - a) / (l - s)}')
    printf '| %s (%s) | %s | %s | %s |\n' "$which" "$binary" "${IR[$CG_SMALL]}" "${IR[$CG_LARGE]}" "$per_push"
  done
  exit 0
fi

start_gateway OLD_PID OLD_PORT "$OLD"
start_gateway NEW_PID NEW_PORT "$NEW"
declare -A TICKS=([old]=0 [new]=0) OK=([old]=0 [new]=0) SECS=([old]=0 [new]=0)
# Warm-up: connections, allocator, page cache.
load "$OLD_PORT" "$WORK/warm-old.json" -c "$CONCURRENCY" -d 2
load "$NEW_PORT" "$WORK/warm-new.json" -c "$CONCURRENCY" -d 2
printf '| round | order | old CPU µs/push | old ok/s | new CPU µs/push | new ok/s |\n|---|---|---|---|---|---|\n'
for round in $(seq "$ROUNDS"); do
  order="old new"
  ((round % 2 == 0)) && order="new old"
  declare -A ROUND_US=() ROUND_RATE=()
  for which in $order; do
    if [[ $which == old ]]; then pid=$OLD_PID port=$OLD_PORT; else pid=$NEW_PID port=$NEW_PORT; fi
    before=$(cpu_ticks "$pid")
    load "$port" "$WORK/$which.$round.json" -c "$CONCURRENCY" -d "$DURATION"
    after=$(cpu_ticks "$pid")
    ok=$(jq .ok "$WORK/$which.$round.json")
    elapsed=$(jq .elapsed_s "$WORK/$which.$round.json")
    TICKS[$which]=$((TICKS[$which] + after - before))
    OK[$which]=$((OK[$which] + ok))
    SECS[$which]=$(awk -v a="${SECS[$which]}" -v b="$elapsed" 'BEGIN {print a + b}')
    ROUND_US[$which]=$(awk -v t=$((after - before)) -v k="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.1f", t / k / n * 1e6}')
    ROUND_RATE[$which]=$(awk -v n="$ok" -v s="$elapsed" 'BEGIN {printf "%.0f", n / s}')
  done
  printf '| %s | %s | %s | %s | %s | %s |\n' "$round" "${order// / first, } second" "${ROUND_US[old]}" \
    "${ROUND_RATE[old]}" "${ROUND_US[new]}" "${ROUND_RATE[new]}"
done
for which in old new; do
  printf '%s: %s pushes, CPU %.1f µs/push, %.0f ok/s\n' "$which" "${OK[$which]}" \
    "$(awk -v t="${TICKS[$which]}" -v k="$CLK_TCK" -v n="${OK[$which]}" 'BEGIN {print t / k / n * 1e6}')" \
    "$(awk -v n="${OK[$which]}" -v s="${SECS[$which]}" 'BEGIN {print n / s}')"
done
