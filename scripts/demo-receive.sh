#!/usr/bin/env bash
# The receive-only demo (`task demo:receive`): pie's receive path on this machine, without
# Kubernetes and without Go. (`task demo`, scripts/demo.sh, shows all of pie on a local cluster.)
#
# Installs what it needs (Debian's victoria-metrics, prometheus, fio and curl packages), builds
# pie-agent and pie-controller, and starts on free 127.0.0.1 ports, with temporary directories:
# VictoriaMetrics; vmalert with the shipped rules (deploy/alerts/pie.rules.yml, unchanged) and a
# small notifier that stands in for Alertmanager; and `pie-controller receive`. Then it runs
# `pie-agent mount-probe` (real fio) a few times on a healthy directory and on a broken one,
# and prints what landed in VictoriaMetrics, which alerts vmalert fires, and where to look.
# When stdin is a terminal it waits for Enter; everything it started is stopped on exit, also
# on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/demo.sh

ROUNDS=${PIE_DEMO_ROUNDS:-3}
EVAL=5s

bash scripts/deps.sh victoria-metrics prometheus fio curl
for tool in cargo python3 curl victoria-metrics vmalert fio; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# fio needs a real filesystem (not a tmpfs) for the probe's directory.
tmp=$(mktemp -d /var/tmp/pie-demo.XXXXXX)
cleanup() {
  local status=$?
  local started=${#demo_pids[@]}
  stop_all
  chmod -R u+w "$tmp" 2>/dev/null || true
  rm -rf "$tmp"
  [ "$started" -eq 0 ] || echo "demo: stopped everything it started"
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

say "building pie-agent and pie-controller"
cargo build -q -p pie-agent -p pie-controller
bin="${CARGO_TARGET_DIR:-target}/debug"

start_victoria_metrics "$tmp"
say "started VictoriaMetrics on $vm"
start_notifier "$tmp"
start_vmalert "$tmp" "$EVAL"
say "started vmalert on $vmalert_url with deploy/alerts/pie.rules.yml, evaluating every $EVAL"

receiver_port=$(free_port)
metrics_port=$(free_port)
receiver="http://127.0.0.1:$receiver_port"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/token"
say "starting pie-controller receive on $receiver (shared token, cluster=demo, pushing to VictoriaMetrics)"
start_bg pie-controller "$tmp/pie-controller.log" env RUST_LOG=warn "$bin/pie-controller" receive \
  --listen "127.0.0.1:$receiver_port" --metrics-addr "127.0.0.1:$metrics_port" \
  --auth-token-file "$tmp/token" --remote-write-url "$vm/api/v1/write" \
  --external-label cluster=demo --push-interval 10s
wait_http "http://127.0.0.1:$metrics_port/metrics" pie-controller "$tmp/pie-controller.log"

healthy="$tmp/volume-node-1"
mkdir "$healthy"
if [ "$(id -u)" -ne 0 ]; then
  broken="$tmp/volume-node-2-read-only"
  mkdir "$broken"
  chmod 0555 "$broken"
  broken_what="a read-only directory (fio cannot write: an I/O error)"
else
  # Root writes to read-only directories anyway: use a file where the volume should be.
  broken="$tmp/volume-node-2-not-mounted"
  echo "not a volume" >"$broken"
  broken_what="a file where the volume's directory should be (root ignores read-only permissions)"
fi

# Runs one mount probe; prints its outcome in one line.
probe() { # node path
  local node=$1 path=$2 code=0
  "$bin/pie-agent" mount-probe --controller-url "$receiver" --path "$path" --node-name "$node" \
    --storage-class demo-ssd --pie-probe-name demo-probe --token-file "$tmp/token" --size 16M \
    >"$tmp/agent.log" 2>&1 || code=$?
  case $code in
    0) echo "  $node: exit 0, fio ran, success delivered" ;;
    1) echo "  $node: exit 1, probe failed, failure delivered: $(strip_ansi <"$tmp/agent.log" | sed -n 's/.*I\/O probe failed error=\(.*\) seconds=.*/\1/p' | head -1)" ;;
    *) echo "  $node: exit $code, result NOT delivered:"; strip_ansi <"$tmp/agent.log"; exit 1 ;;
  esac
}

say "running pie-agent mount-probe $ROUNDS times on two nodes"
echo "  demo-node-1 probes $healthy (healthy)"
echo "  demo-node-2 probes $broken_what"
for round in $(seq 1 "$ROUNDS"); do
  echo " round $round"
  probe demo-node-1 "$healthy"
  probe demo-node-2 "$broken"
done

say "waiting for vmalert (evaluates every $EVAL)"
firing=""
for _ in $(seq 1 60); do
  if curl -fsS "$vmalert_url/api/v1/alerts" | grep -q '"state":"firing","name":"PieMountProbeIOErrors"'; then
    firing=yes
    break
  fi
  sleep 0.5
done
[ -n "$firing" ] || echo "  PieMountProbeIOErrors is not firing yet (see below)"
curl -fsS "$vm/internal/force_flush" >/dev/null

say "what landed in VictoriaMetrics (series of cluster=demo; last value, number of samples)"
python3 "$DEMO_PY" series "$vm" demo

say "alerts in vmalert ($vmalert_url/api/v1/alerts)"
python3 "$DEMO_PY" alerts "$vmalert_url"
python3 "$DEMO_PY" rules "$vmalert_url"
python3 "$DEMO_PY" notifications "$notifications"
cat <<EOF

  PieMountProbeIOErrors needs 2 failed I/O probes on a node within 30m and has "for: 0m", so it
  fires at the first evaluation after demo-node-2's second failure; demo-node-1 raises nothing.
  Rules with a "for:" (e.g. PieMountProbeHighLatency, 15m) would show PENDING here for that long
  first. The shipped rules are used unchanged. The attach/mount, provision and volume deletion
  alerts need pie-controller run in a cluster: receive mode only gets the fio probes' results.
EOF

say "where to look"
echo "  vmui (VictoriaMetrics):  $vm/vmui/  e.g. query pie_performance_on_mount_probe_total"
echo "  vmalert:                 $vmalert_url/  (API: $vmalert_url/api/v1/alerts)"
echo "  pie-controller /metrics: http://127.0.0.1:$metrics_port/metrics"
echo "  logs:                    $tmp/*.log (removed on exit)"
if [ -t 0 ]; then
  echo
  echo "Press Enter to stop everything (or Ctrl-C)."
  read -r _ || true
fi
