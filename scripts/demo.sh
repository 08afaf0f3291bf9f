#!/usr/bin/env bash
# Quickstart: three local Pushgateways and dynamic-sharding in front of them, a push, and where it went.
# Everything listens on 127.0.0.1 only and is stopped on exit (Ctrl-C). DEMO_EXIT=1 exits after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus-pushgateway >/dev/null; then
  echo "installing prometheus-pushgateway (Debian package)..."
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq prometheus-pushgateway >/dev/null
fi
cargo build --release --quiet

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

servers=()
for i in 1 2 3; do
  port=$(free_port)
  prometheus-pushgateway --web.listen-address="127.0.0.1:$port" --persistence.file= >"$work/pgw$i.log" 2>&1 &
  pids+=($!)
  servers+=("127.0.0.1:$port")
done
gw_port=${DEMO_PORT:-$(free_port)}
cat >"$work/dynamic-sharding.yml" <<YAML
http_listen_addr: 127.0.0.1:$gw_port
pushgateway:
  servers: [$(IFS=,; echo "${servers[*]}")]
health_check: {interval: 1s, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1}
YAML
"${CARGO_TARGET_DIR:-target}/release/dynamic-sharding" --config.file="$work/dynamic-sharding.yml" 2>"$work/gateway.log" &
pids+=($!)
gw="http://127.0.0.1:$gw_port"
for _ in $(seq 100); do curl -fs "$gw/-/ready" >/dev/null 2>&1 && break; sleep 0.1; done

echo "Pushgateways: ${servers[*]}"
echo "Gateway:      $gw"
echo
for instance in host-1 host-2 host-3 host-4; do
  node=$(printf '# TYPE demo_job_last_success gauge\ndemo_job_last_success %s\n' "$(date +%s)" |
    curl -fsS -X PUT --data-binary @- -D - -o /dev/null "$gw/metrics/job/demo/instance/$instance" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="x-dynamic-sharding-node" {print $2}')
  echo "pushed {job=\"demo\",instance=\"$instance\"} -> $node"
done
echo
echo "Owner lookup:  curl $gw/metrics/job/demo/instance/host-1"
echo "  $(curl -fsS "$gw/metrics/job/demo/instance/host-1")"
echo "Ring:          curl $gw/-/ring"
echo
for server in "${servers[@]}"; do
  groups=$(curl -fsS "http://$server/api/v1/metrics" | python3 -c 'import json,sys; print(" ".join(sorted(g["labels"].get("instance","") for g in json.load(sys.stdin)["data"])))')
  echo "$server holds: ${groups:-(nothing)}"
done
[ "${DEMO_EXIT:-0}" = 1 ] && exit 0
echo
echo "Running; press Ctrl-C to stop everything."
wait
