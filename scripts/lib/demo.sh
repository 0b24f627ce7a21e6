# Sourced by scripts/demo.sh (`task demo`) and scripts/demo-receive.sh (`task demo:receive`):
# what both demos do the same way. Everything listens on a free 127.0.0.1 port; every process
# started with `start_bg` is stopped (SIGTERM, newest first) by `stop_all`, which the demos call
# from their EXIT trap. Python helpers: scripts/lib/demo.py.
#
#   say TEXT                          a section header
#   die TEXT                          one line on stderr, exit 1
#   free_port                         a free port on 127.0.0.1
#   start_bg NAME LOG CMD...          runs CMD in the background, output to LOG; remembered
#   stop_all                          stops what start_bg started, newest first
#   wait_http URL NAME LOG [SECONDS]  until URL answers 2xx; else LOG's tail and exit 1
#   with_progress WHAT FIRST LOG CMD...  runs a long CMD, printing the elapsed time every 30 s
#   start_victoria_metrics DIR        sets vm (its URL)
#   start_notifier DIR                sets notifier_url and notifications (the file it appends to)
#   start_vmalert DIR EVAL            sets vmalert_url; deploy/alerts/pie.rules.yml, unchanged
#
# VictoriaMetrics and vmalert are Debian's unless DEMO_VM_BIN and DEMO_VMALERT_BIN name others
# (scripts/demo.sh: the current release scripts/build-victoriametrics.sh builds, which has vmui);
# DEMO_VMALERT_FLAGS (an array) adds flags to vmalert.

DEMO_PY="scripts/lib/demo.py"
DEMO_VMALERT_FLAGS=()
demo_pids=()
demo_names=()

say() { printf '\n==> %s\n' "$*"; }
die() {
  echo "demo: $*" >&2
  exit 1
}
free_port() { python3 "$(dirname "${BASH_SOURCE[0]}")/ports.py"; }

# A background process must not hold the cluster's stdin pipe (scripts/demo.sh, DEMO_CLUSTER_FD):
# the cluster stops when the demo's end closes it, whoever else is still running.
start_bg() { # name log cmd...
  local name=$1 log=$2
  shift 2
  if [ -n "${DEMO_CLUSTER_FD:-}" ]; then
    "$@" >"$log" 2>&1 </dev/null {DEMO_CLUSTER_FD}>&- &
  else
    "$@" >"$log" 2>&1 </dev/null &
  fi
  demo_pids+=($!)
  demo_names+=("$name")
}

stop_all() {
  local i
  for ((i = ${#demo_pids[@]} - 1; i >= 0; i--)); do
    kill "${demo_pids[i]}" 2>/dev/null || true
    wait "${demo_pids[i]}" 2>/dev/null || true
  done
  demo_pids=()
  demo_names=()
}

wait_http() { # url name log [seconds]
  local url=$1 name=$2 log=$3 tries=$((${4:-30} * 10))
  for _ in $(seq 1 "$tries"); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "${demo_pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "demo: $name did not start (no answer from $url); the end of its log $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

# Runs a step that can take minutes; every 30 s says how long it has run. FIRST says how long it
# takes the first time. On failure prints the end of LOG and exits 1.
with_progress() { # what first log cmd...
  local what=$1 first=$2 log=$3 started=$SECONDS pid status=0 next=30
  shift 3
  echo "  $what (the first time: $first; later runs reuse the build)"
  start_bg "$what" "$log" "$@"
  pid=${demo_pids[-1]}
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if ((SECONDS - started >= next)); then
      echo "  ... still building, $((SECONDS - started)) s so far"
      next=$((next + 30))
    fi
  done
  wait "$pid" || status=$?
  unset 'demo_pids[-1]' 'demo_names[-1]'
  if [ "$status" -ne 0 ]; then
    echo "demo: $what failed (exit $status); the end of its output ($log):" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  echo "  done in $((SECONDS - started)) s"
}

start_victoria_metrics() { # dir
  local port
  port=$(free_port)
  vm="http://127.0.0.1:$port"
  start_bg victoria-metrics "$1/victoria-metrics.log" "${DEMO_VM_BIN:-victoria-metrics}" -storageDataPath="$1/vm-data" \
    -httpListenAddr="127.0.0.1:$port" -loggerLevel=WARN -search.latencyOffset=0s
  wait_http "$vm/health" VictoriaMetrics "$1/victoria-metrics.log"
}

# vmalert needs somewhere to send alerts; this stands in for Alertmanager and keeps them.
start_notifier() { # dir
  local port
  port=$(free_port)
  notifier_url="http://127.0.0.1:$port"
  notifications="$1/notifications.jsonl"
  start_bg notifier "$1/notifier.log" python3 "$DEMO_PY" notifier "$port" "$notifications"
  wait_http "$notifier_url/" notifier "$1/notifier.log"
}

start_vmalert() { # dir eval
  local port
  port=$(free_port)
  vmalert_url="http://127.0.0.1:$port"
  start_bg vmalert "$1/vmalert.log" "${DEMO_VMALERT_BIN:-vmalert}" -rule=deploy/alerts/pie.rules.yml \
    -datasource.url="$vm" -remoteWrite.url="$vm" -notifier.url="$notifier_url" -evaluationInterval="$2" \
    -httpListenAddr="127.0.0.1:$port" -external.url="$vmalert_url" -loggerLevel=WARN \
    "${DEMO_VMALERT_FLAGS[@]}"
  wait_http "$vmalert_url/health" vmalert "$1/vmalert.log"
}
