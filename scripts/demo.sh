#!/usr/bin/env bash
# The quick-start demo (`task demo`): pie end to end on this machine, without Kubernetes.
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

ROUNDS=${PIE_DEMO_ROUNDS:-3}
EVAL=5s

bash scripts/deps.sh victoria-metrics prometheus fio curl
for tool in cargo python3 curl victoria-metrics vmalert fio; do
  command -v "$tool" >/dev/null 2>&1 || { echo "demo: $tool not found" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
say() { printf '\n==> %s\n' "$*"; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# fio needs a real filesystem (not a tmpfs) for the probe's directory.
tmp=$(mktemp -d /var/tmp/pie-demo.XXXXXX)
pids=()
cleanup() {
  local status=$?
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  chmod -R u+w "$tmp" 2>/dev/null || true
  rm -rf "$tmp"
  [ ${#pids[@]} -eq 0 ] || echo "demo: stopped everything it started"
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

# Waits until $1 answers 200; else prints the log $3 of $2 and fails.
wait_http() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "demo: $2 did not start; its log:" >&2
  cat "$3" >&2
  exit 1
}

say "building pie-agent and pie-controller"
cargo build -q -p pie-agent -p pie-controller
bin="${CARGO_TARGET_DIR:-target}/debug"

vm_port=$(free_port)
vm="http://127.0.0.1:$vm_port"
say "starting VictoriaMetrics on $vm"
victoria-metrics -storageDataPath="$tmp/vm-data" -httpListenAddr="127.0.0.1:$vm_port" \
  -loggerLevel=WARN -search.latencyOffset=0s >"$tmp/victoria-metrics.log" 2>&1 &
pids+=($!)
wait_http "$vm/health" VictoriaMetrics "$tmp/victoria-metrics.log"

# vmalert needs somewhere to send alerts; this stands in for Alertmanager and keeps them.
notifier_port=$(free_port)
python3 - "$notifier_port" "$tmp/notifications.jsonl" >"$tmp/notifier.log" 2>&1 <<'EOF' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[2], "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
pids+=($!)
wait_http "http://127.0.0.1:$notifier_port/" notifier "$tmp/notifier.log"

vmalert_port=$(free_port)
vmalert_url="http://127.0.0.1:$vmalert_port"
say "starting vmalert on $vmalert_url with deploy/alerts/pie.rules.yml, evaluating every $EVAL"
vmalert -rule=deploy/alerts/pie.rules.yml -datasource.url="$vm" -remoteWrite.url="$vm" \
  -notifier.url="http://127.0.0.1:$notifier_port" -evaluationInterval="$EVAL" \
  -httpListenAddr="127.0.0.1:$vmalert_port" -external.url="$vmalert_url" \
  -loggerLevel=WARN >"$tmp/vmalert.log" 2>&1 &
pids+=($!)
wait_http "$vmalert_url/health" vmalert "$tmp/vmalert.log"

receiver_port=$(free_port)
metrics_port=$(free_port)
receiver="http://127.0.0.1:$receiver_port"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/token"
say "starting pie-controller receive on $receiver (shared token, cluster=demo, pushing to VictoriaMetrics)"
RUST_LOG=warn "$bin/pie-controller" receive --listen "127.0.0.1:$receiver_port" \
  --metrics-addr "127.0.0.1:$metrics_port" --auth-token-file "$tmp/token" \
  --remote-write-url "$vm/api/v1/write" --external-label cluster=demo --push-interval 10s \
  >"$tmp/pie-controller.log" 2>&1 &
pids+=($!)
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
curl -fsS "$vm/api/v1/export" --data-urlencode 'match[]={__name__=~"pie_.*",cluster="demo"}' \
  --data-urlencode "end=$(($(date +%s) + 3600))" | python3 -c '
import json, sys
series = {}
for line in sys.stdin:
    s = json.loads(line)
    m = s["metric"]
    key = (m.pop("__name__"), tuple(sorted((k, v) for k, v in m.items() if k != "cluster")))
    old = series.get(key, ([], []))
    series[key] = (old[0] + s["timestamps"], old[1] + s["values"])
probes = {k: v for k, v in series.items() if dict(k[1]).get("pie_probe_name")}
print("  with pie_probe_name=\"demo-probe\", storage_class=\"demo-ssd\", cluster=\"demo\":")
for (name, labels), (ts, vs) in sorted(probes.items()):
    last = vs[max(range(len(ts)), key=ts.__getitem__)]
    shown = ",".join(f"{k}=\"{v}\"" for k, v in labels if k not in ("pie_probe_name", "storage_class"))
    n = len(ts)
    plural = "s" if n > 1 else ""
    print(f"    {name}{{{shown}}} = {last:.6g}  ({n} sample{plural})")
others = sorted({name for (name, labels) in series if (name, labels) not in probes})
print(f"  plus {len(series) - len(probes)} self-metric series: " + ", ".join(others))
'

say "alerts in vmalert ($vmalert_url/api/v1/alerts)"
curl -fsS "$vmalert_url/api/v1/alerts" | python3 -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"] or []
if not alerts:
    print("  none")
for a in sorted(alerts, key=lambda a: (a["name"], sorted(a["labels"].items()))):
    l = a["labels"]
    state, name, value = a["state"].upper(), a["name"], a["value"]
    where = " ".join(k + "=" + l.get(k, "-") for k in ("severity", "cluster", "node", "storage_class"))
    print(f"  {state} {name} {where} value={value}")
    print("    " + a["annotations"].get("summary", ""))
'
curl -fsS "$vmalert_url/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("lastError")]
print(f"  {len(rules)} shipped rules loaded, {len(rules) - len(bad)} evaluated without error" + (f"; errors: {bad}" if bad else ""))
'
if [ -s "$tmp/notifications.jsonl" ]; then
  python3 - "$tmp/notifications.jsonl" <<'EOF'
import json, sys
names = set()
for line in open(sys.argv[1]):
    for a in json.loads(line):
        names.add((a["labels"]["alertname"], a["labels"].get("node", "-")))
print("  sent to the notifier (Alertmanager's API): " + ", ".join(f"{n} (node {node})" for n, node in sorted(names)))
EOF
fi
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
