#!/usr/bin/env bash
# The quick-start demo: starts VictoriaMetrics on a free loopback port with a temporary data
# directory, pushes a few pie-like series with the remote-write library, reads them back and
# prints them. Everything it started is stopped on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

tmp=$(mktemp -d)
vm_pid=""
cleanup() {
  [ -n "$vm_pid" ] && kill "$vm_pid" 2>/dev/null && wait "$vm_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, stopping"; exit 130' INT TERM

echo "==> building"
cargo build -q -p pie-remote-write --example push

port=$(free_port)
vm="http://127.0.0.1:$port"
echo "==> starting VictoriaMetrics on $vm (data in $tmp)"
victoria-metrics -storageDataPath="$tmp/data" -httpListenAddr="127.0.0.1:$port" -loggerLevel=WARN \
  -search.latencyOffset=0s >"$tmp/victoria-metrics.log" 2>&1 &
vm_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$vm/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$vm/health" >/dev/null || { echo "VictoriaMetrics did not start:"; cat "$tmp/victoria-metrics.log"; exit 1; }

echo "==> pushing series with the remote-write client (cluster=demo)"
target/debug/examples/push --url "$vm/api/v1/write" --external-label cluster=demo

echo "==> what VictoriaMetrics stored (/api/v1/export)"
curl -fsS "$vm/internal/force_flush" >/dev/null
curl -fsS "$vm/api/v1/export" --data-urlencode 'match[]={__name__=~"pie_.*"}' --data-urlencode "end=$(( $(date +%s) + 3600 ))"
echo
echo "==> look around in vmui at $vm/vmui/ until you press Enter (or Ctrl-C); then everything stops"
if [ -t 0 ]; then read -r _; fi
