#!/usr/bin/env bash
# The quick-start demo (`task demo`): all of pie on this machine, on a real local Kubernetes,
# without a Kubernetes installed. README.md ("What `task demo` shows") explains its output.
#
# 1. Installs what it needs (Debian's victoria-metrics, prometheus, fio, curl; matplotlib from
#    PyPI) and builds the local Kubernetes (e2e/cluster, Go; minutes the first time), pie-agent
#    and pie-controller (cargo) and a current VictoriaMetrics and vmalert (Go, with vmui; the
#    tests' e2e/victoriametrics), showing progress.
# 2. Starts, on 127.0.0.1 only and in a temp dir: the local cluster with 3 nodes (`pie-cluster up`
#    in the foreground, stopped when this script's end closes its stdin, as e2e/src/cluster.rs
#    does), VictoriaMetrics, vmalert with deploy/alerts/pie.rules.yml unchanged and an
#    Alertmanager stand-in, and `pie-controller run` with deploy/base/deployment.yaml's flags,
#    authenticated as the ServiceAccount pie/pie-controller with deploy/'s RBAC, leader election
#    on (the flags and environment e2e/src/cluster.rs's PieController uses).
# 3. Applies two PieProbes shaped like deploy/samples/pieprobe.yaml: `healthy` on the StorageClass
#    pie-local (probePeriod 1, nodes pie-node-1 and pie-node-2) and `failing` on demo-failing, a
#    StorageClass of the test provisioner whose provisioning is broken once its mount PVCs are
#    bound (all 3 nodes). Breaks mounts on pie-node-3. Runs probes at once with
#    `kubectl create job --from=cronjob/...` so the alerts' `for:` clocks start early.
# 4. Shows the CronJobs, PVCs, probe Pods, PieProbes and outcomes as they happen, until
#    PieProvisionProbeFailing (demo-failing) and PieMountProbeFailingOnNode (pie-node-3) fire,
#    then checks that pie-local, pie-node-1 and pie-node-2 have no alert, draws the probe results
#    from VictoriaMetrics' query_range API into a PNG, and says where to look.
#
# At a terminal it then waits for Enter; without one (CI) it exits. Everything it started is
# stopped on every exit path. Exit status 0 when the demo showed what it should, else one line
# saying what went wrong and status 1.
#
# Environment: PIE_DEMO_PNG (where to write the picture; default
# ${CARGO_TARGET_DIR:-target}/demo/pie-demo.png), PIE_DEMO_KEEP=1 (keep the temp dir with the
# logs), PIE_DEMO_ALERT_TIMEOUT (seconds to wait for the alerts, default 1080).
set -euo pipefail
# The whole script is one compound command: bash reads all of it before running it, so a change
# to the file while a demo runs (an edit, a git pull) cannot change the running demo.
{
cd "$(dirname "$0")/.."
source scripts/lib/demo.sh

EVAL=5s
NAMESPACE=pie
HEALTHY_SC=pie-local
FAILING_SC=demo-failing
BROKEN_NODE=pie-node-3
HEALTHY_NODES=(pie-node-1 pie-node-2)
THRESHOLD=30s
ALERT_TIMEOUT=${PIE_DEMO_ALERT_TIMEOUT:-1080}
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
png=${PIE_DEMO_PNG:-$target/demo/pie-demo.png}
case "$png" in /*) ;; *) png="$PWD/$png" ;; esac

[ "$ALERT_TIMEOUT" -gt 0 ] 2>/dev/null || die "PIE_DEMO_ALERT_TIMEOUT must be a positive number of seconds, not '$ALERT_TIMEOUT'"
say "checking what the demo needs"
bash scripts/deps.sh victoria-metrics prometheus fio curl
command -v go >/dev/null 2>&1 ||
  die "Go is not installed: task demo builds a local Kubernetes from Go modules (Go >= 1.26); task demo:receive needs no Go"
for tool in cargo python3 curl victoria-metrics vmalert; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "  installing matplotlib (PyPI) for the picture of the run"
  python3 -m pip install --quiet matplotlib >/dev/null 2>&1 || die "could not install matplotlib: python3 -m pip install matplotlib"
fi
mkdir -p "$(dirname "$png")" || die "cannot create the directory of $png"

# The cluster keeps its volumes in its dir: a real filesystem (fio), not a tmpfs.
tmp=$(mktemp -d /var/tmp/pie-demo.XXXXXX)
cluster_pid=""
cleanup() {
  local status=$? started=${#demo_pids[@]}
  trap - INT TERM
  stop_all
  if [ -n "$cluster_pid" ]; then
    # Closing its stdin stops the cluster: every component and every probe Pod's process.
    exec {DEMO_CLUSTER_FD}>&-
    for _ in $(seq 1 900); do
      kill -0 "$cluster_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$cluster_pid" 2>/dev/null; then
      echo "demo: the local cluster did not stop within 90 s; stopping it with pie-cluster down" >&2
      "$target/pie-cluster/pie-cluster" down --dir "$tmp/cluster" >/dev/null 2>&1 || true
    fi
  fi
  if [ -n "${PIE_DEMO_KEEP:-}" ]; then
    echo "demo: kept $tmp (logs: $tmp/*.log, $tmp/cluster/logs/)"
  else
    rm -rf "$tmp"
  fi
  if [ "$started" -gt 0 ] || [ -n "$cluster_pid" ]; then
    echo "demo: stopped everything it started"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

say "building (later runs reuse the builds and take seconds here)"
with_progress "building the local Kubernetes (e2e/cluster, Go: kube-apiserver, etcd, controller-manager, scheduler, process kubelet, test provisioner)" \
  "7-9 min, downloading about 800 MB of Go modules" "$tmp/build-cluster.log" bash scripts/build-cluster.sh
with_progress "building pie-agent and pie-controller (cargo, debug)" "2-4 min" "$tmp/build-pie.log" \
  cargo build -p pie-agent -p pie-controller
# Debian's VictoriaMetrics 1.79 has no vmui; the current release the tests also run has.
with_progress "building a current VictoriaMetrics and vmalert (Go, e2e/victoriametrics; Debian's 1.79 has no vmui)" \
  "1-2 min, fetching Go 1.27 (76 MB)" "$tmp/build-victoriametrics.log" bash scripts/build-victoriametrics.sh
DEMO_VM_BIN="$target/victoriametrics/victoria-metrics"
DEMO_VMALERT_BIN="$target/victoriametrics/vmalert"
# It evaluates at now - 30 s unless told otherwise; VictoriaMetrics runs with no latency offset.
DEMO_VMALERT_FLAGS=(-rule.evalDelay=0s)
bin="$target/debug"
kubectl="$target/pie-cluster/kubectl"
t0=$(date +%s)

say "starting the local Kubernetes: 3 nodes, everything on 127.0.0.1"
cluster_dir="$tmp/cluster"
exec {DEMO_CLUSTER_FD}> >(exec "$target/pie-cluster/pie-cluster" up --foreground --stop-on-stdin-eof \
  --dir "$cluster_dir" --nodes 3 --apiserver-port 0 \
  --image "ghcr.io/pie-rs/pie-agent=$bin/pie-agent,user=1001:1001" >"$tmp/cluster.out" 2>&1)
cluster_pid=$!
for _ in $(seq 1 2400); do
  [ -f "$cluster_dir/ready" ] && break
  kill -0 "$cluster_pid" 2>/dev/null || die "the local cluster did not start: $(tail -n 3 "$tmp/cluster.out")"
  sleep 0.1
done
[ -f "$cluster_dir/ready" ] || die "the local cluster was not ready within 240 s; its output: $(tail -n 3 "$tmp/cluster.out")"
sed -n '1,2s/^/  /p' "$cluster_dir/ready"
export KUBECONFIG="$cluster_dir/kubeconfig"
k() {
  echo "  \$ kubectl $*"
  "$kubectl" "$@" 2>&1 | sed 's/^/    /'
}
kq() { "$kubectl" "$@"; }

start_victoria_metrics "$tmp"
start_notifier "$tmp"
start_vmalert "$tmp" "$EVAL"
vm_version=$(curl -fsS "$vm/metrics" | sed -n 's/^vm_app_version{.*short_version="\([^"]*\)".*/\1/p' | head -1)
echo "  VictoriaMetrics ${vm_version:-?} $vm, vmalert $vmalert_url (deploy/alerts/pie.rules.yml, unchanged, every $EVAL)"

say "installing pie as deploy/ does: namespace, CRD, RBAC; pie-controller run as its ServiceAccount"
kq apply --server-side --field-manager=pie-demo -f deploy/base/namespace.yaml -f deploy/base/rbac.yaml \
  -f deploy/crd/pie.topolvm.io_pieprobes.yaml | sed 's/^/  /'
kq wait --for=condition=Established --timeout=60s crd/pieprobes.pie.topolvm.io >/dev/null
# The token a projected ServiceAccount volume would hold (TokenRequest), in a kubeconfig.
token=$(kq -n pie create token pie-controller --duration=24h)
server=$(kq config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kq config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat >"$tmp/pie-controller.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: pie-controller, user: {token: "$token"}}]
contexts: [{name: demo, context: {cluster: demo, user: pie-controller, namespace: pie}}]
current-context: demo
EOF
agent_image=$(sed -n 's/^ *- agent-image=//p' deploy/base/kustomization.yaml)
results_port=$(free_port)
health_port=$(free_port)
metrics_port=$(free_port)
# deployment.yaml's args and env; loopback addresses instead of :PORT, and the results URL is
# the receiver on 127.0.0.1, since the process kubelet's Pods share this host's loopback.
start_bg pie-controller "$tmp/pie-controller.log" env -i PATH="$PATH" \
  KUBECONFIG="$tmp/pie-controller.kubeconfig" PIE_AGENT_IMAGE="$agent_image" \
  PIE_CONTROLLER_URL="http://127.0.0.1:$results_port" PIE_POD_NAME=pie-controller-demo \
  PIE_LEASE_NAMESPACE=pie RUST_LOG=info,kube=warn \
  "$bin/pie-controller" run --remote-write-url="$vm/api/v1/write" --external-label=cluster=demo \
  --listen="127.0.0.1:$results_port" --health-addr="127.0.0.1:$health_port" \
  --metrics-addr="127.0.0.1:$metrics_port" --probe-service-account=pie-probe \
  --remote-write-buffer-dir="$tmp/remote-write-buffer"
wait_http "http://127.0.0.1:$health_port/readyz" pie-controller "$tmp/pie-controller.log" 90
echo "  pie-controller is the leader (Lease pie/pie-controller) and ready; results on 127.0.0.1:$results_port"

say "a StorageClass whose provisioner will fail, and two PieProbes (deploy/samples/pieprobe.yaml's shape)"
kq apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $FAILING_SC
provisioner: hostpath.pie.test
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
cat >"$tmp/pieprobes.yaml" <<EOF
apiVersion: pie.topolvm.io/v1alpha1
kind: PieProbe
metadata:
  name: healthy
  namespace: $NAMESPACE
spec:
  monitoringStorageClass: $HEALTHY_SC
  probePeriod: 1
  probeThreshold: $THRESHOLD
  pvcCapacity: 100Mi
  nodeSelector:
    nodeSelectorTerms:
    - matchExpressions:
      - key: kubernetes.io/hostname
        operator: In
        values: [${HEALTHY_NODES[0]}, ${HEALTHY_NODES[1]}]
---
apiVersion: pie.topolvm.io/v1alpha1
kind: PieProbe
metadata:
  name: failing
  namespace: $NAMESPACE
spec:
  monitoringStorageClass: $FAILING_SC
  probePeriod: 5
  probeThreshold: $THRESHOLD
  pvcCapacity: 100Mi
  nodeSelector:
    nodeSelectorTerms:
    - matchExpressions:
      - key: kubernetes.io/os
        operator: In
        values: [linux]
EOF
sed 's/^/  /' "$tmp/pieprobes.yaml"
kq apply -f "$tmp/pieprobes.yaml" | sed 's/^/  /'

# Waits until COMMAND succeeds, up to SECONDS; else dies saying WHAT.
wait_for() { # seconds what command...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 "$seconds"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "$what did not happen within $seconds s (pie-controller's log: $tmp/pie-controller.log; PIE_DEMO_KEEP=1 keeps it)"
}
count_is() { # want kubectl-args...
  local want=$1
  shift
  [ "$(kq "$@" -o name | wc -l)" -eq "$want" ]
}
wait_for 60 "pie creating 3 CronJobs for healthy and 4 for failing" \
  bash -c "[ \$('$kubectl' -n $NAMESPACE get cronjobs -l pie-probe=healthy -o name | wc -l) -eq 3 ] &&
           [ \$('$kubectl' -n $NAMESPACE get cronjobs -l pie-probe=failing -o name | wc -l) -eq 4 ]"
wait_for 30 "pie creating the mount PVCs" count_is 5 -n "$NAMESPACE" get pvc -l app.kubernetes.io/component=mount-probe

say "what pie created: a provision CronJob per PieProbe, a mount CronJob and a PVC per node"
k -n "$NAMESPACE" get cronjobs -L node,storage-class
k -n "$NAMESPACE" get pvc -L node
echo "  (the PVCs wait for their first consumer, the first mount probe Pod: WaitForFirstConsumer)"

cron_jobs() { # probe [component]
  kq -n "$NAMESPACE" get cronjobs -l "pie-probe=$1${2:+,app.kubernetes.io/component=$2}" -o jsonpath='{.items[*].metadata.name}'
}
runs=0
run_now() { # cronjob
  runs=$((runs + 1))
  local job="${1:0:50}-now$runs"
  kq -n "$NAMESPACE" create job "$job" --from="cronjob/$1" >/dev/null
  echo "  \$ kubectl create job $job --from=cronjob/$1"
}
mount_of() { # probe node
  kq -n "$NAMESPACE" get cronjobs -l "pie-probe=$1,node=$2" -o jsonpath='{.items[0].metadata.name}'
}

say "running every probe once now, not at the next cron minute (kubectl create job --from=cronjob/...)"
for cj in $(cron_jobs healthy) $(cron_jobs failing mount-probe); do
  run_now "$cj"
done
sleep 2
k -n "$NAMESPACE" get pods -o wide --sort-by=.metadata.creationTimestamp
wait_for 120 "the mount PVCs of demo-failing being bound" bash -c \
  "! '$kubectl' -n $NAMESPACE get pvc -l pie-probe=failing,app.kubernetes.io/component=mount-probe -o jsonpath='{.items[*].status.phase}' | grep -qv Bound"
wait_for 120 "the first mount probes being counted in VictoriaMetrics" bash -c \
  "python3 $DEMO_PY outcomes $vm | grep -q 'failing  *$FAILING_SC  *mount  *$BROKEN_NODE  *[1-9][0-9]* on time'"
echo "  the mount PVCs of $FAILING_SC are bound; the first outcomes are in VictoriaMetrics:"
python3 "$DEMO_PY" outcomes "$vm"

say "breaking things: provisioning of $FAILING_SC, and every mount on $BROKEN_NODE"
echo "  \$ kubectl annotate storageclass $FAILING_SC faults.pie.test/provision=fail"
kq annotate storageclass "$FAILING_SC" faults.pie.test/provision=fail >/dev/null
echo "  \$ kubectl annotate node $BROKEN_NODE faults.pie.test/mount=fail"
kq annotate node "$BROKEN_NODE" faults.pie.test/mount=fail >/dev/null
broken_at=$(date +%s)
# Three failures each, at once: the alerts need 2 in 30 minutes, and half of the probes (an
# on-time run before the faults counts too).
echo "  three failures each, now, so that the alerts' for: clocks start early:"
provision_failing=$(cron_jobs failing provision-probe)
mount_broken=$(mount_of failing "$BROKEN_NODE")
for _ in 1 2 3; do
  run_now "$provision_failing"
  run_now "$mount_broken"
done
sleep 8
k -n "$NAMESPACE" get pods -o wide --field-selector=status.phase!=Succeeded
k -n "$NAMESPACE" get events --field-selector=reason=ProvisioningFailed --sort-by=.lastTimestamp
k -n "$NAMESPACE" get events --field-selector=reason=FailedMount --sort-by=.lastTimestamp

say "pie counts each Pod that did not start within probeThreshold ($THRESHOLD), with the reason"
wait_for 150 "pie counting the failures" bash -c \
  "python3 $DEMO_PY outcomes $vm | grep -q 'failing  *$FAILING_SC  *provision .*ProvisioningFailed [3-9]' &&
   python3 $DEMO_PY outcomes $vm | grep -q 'failing  *$FAILING_SC  *mount  *$BROKEN_NODE .*FailedMount [3-9]'"
k -n "$NAMESPACE" get pieprobes
kq -n "$NAMESPACE" get pieprobes -o jsonpath='{range .items[*]}  {.metadata.name}: last provision {.status.lastProvisionOutcome.result}: {.status.lastProvisionOutcome.message}{"\n"}  {.metadata.name}: last mount {.status.lastMountOutcome.result}: {.status.lastMountOutcome.message}{"\n"}{end}'
echo "  outcomes in VictoriaMetrics (pie_provision_probe_total, pie_mount_probe_total, pie_probe_failures_total):"
python3 "$DEMO_PY" outcomes "$vm"

say "as it happens: outcomes landing in VictoriaMetrics and vmalert's alerts ([min:s] since the cluster started)"
cat <<EOF
  PieProvisionProbeFailing has for: 5m and PieMountProbeFailingOnNode for: 10m, so this takes
  about 11 minutes. Meanwhile the CronJobs run on their schedule (healthy every minute).
  Look around meanwhile: vmui $vm/vmui/  vmalert $vmalert_url/vmalert/alerts
EOF
python3 "$DEMO_PY" watch "$vm" "$vmalert_url" "$t0" "$ALERT_TIMEOUT" \
  "PieProvisionProbeFailing:storage_class=$FAILING_SC" \
  "PieMountProbeFailingOnNode:node=$BROKEN_NODE" --marks "$tmp/marks" {DEMO_CLUSTER_FD}>&-

say "the PieProbes now (kubectl get pieprobes: the printer columns show the last outcomes)"
k -n "$NAMESPACE" get pieprobes
say "scheduled runs (the CronJob controller, not kubectl create job)"
k -n "$NAMESPACE" get cronjobs -l pie-probe=healthy \
  -o custom-columns=CRONJOB:.metadata.name,SCHEDULE:.spec.schedule,LAST-SCHEDULE:.status.lastScheduleTime,LAST-SUCCESS:.status.lastSuccessfulTime
scheduled=$(kq -n "$NAMESPACE" get cronjobs -l pie-probe=healthy -o jsonpath='{range .items[*]}{.status.lastSuccessfulTime}{"\n"}{end}' | grep -c . || true)
[ "$scheduled" -gt 0 ] || die "no CronJob of healthy has run on its schedule"
echo "  scheduled runs: $scheduled of 3 CronJobs of healthy ran on their schedule and succeeded"

say "outcomes per PieProbe, StorageClass and node (VictoriaMetrics)"
python3 "$DEMO_PY" outcomes "$vm"

say "storage alerts in vmalert ($vmalert_url/api/v1/alerts)"
quiet=(--quiet "storage_class=$HEALTHY_SC")
for node in "${HEALTHY_NODES[@]}"; do quiet+=("node=$node"); done
python3 "$DEMO_PY" verdict "$vmalert_url" "PieProvisionProbeFailing:storage_class=$FAILING_SC" \
  "PieMountProbeFailingOnNode:node=$BROKEN_NODE" "${quiet[@]}"
python3 "$DEMO_PY" rules "$vmalert_url"
python3 "$DEMO_PY" notifications "$notifications"

say "a picture of the run (VictoriaMetrics /api/v1/query_range, matplotlib)"
touch "$tmp/marks"
mapfile -t marks <"$tmp/marks"
python3 "$DEMO_PY" plot "$vm" "$t0" "$(date +%s)" "$png" "faults set=$broken_at" "${marks[@]}"

say "where to look"
echo "  vmui (VictoriaMetrics):  $vm/vmui/  e.g. query pie_mount_probe_total"
echo "  vmalert:                 $vmalert_url/vmalert/alerts  (API: $vmalert_url/api/v1/alerts)"
echo "  pie-controller /metrics: http://127.0.0.1:$metrics_port/metrics"
echo "  the cluster:             KUBECONFIG=$KUBECONFIG $kubectl get pieprobes -A"
echo "  logs:                    $tmp/*.log, $cluster_dir/logs/ (removed on exit unless PIE_DEMO_KEEP=1)"
echo "  the picture:             $png (kept)"
if [ -t 0 ]; then
  echo
  echo "Everything keeps running (the CronJobs too). Press Enter to stop everything (or Ctrl-C)."
  read -r _ || true
fi
exit
}
