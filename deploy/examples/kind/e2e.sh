#!/usr/bin/env bash
# End-to-end on kind: builds both images, creates a kind cluster, runs the cluster test
# (e2e/tests/cluster.rs, with PIE_E2E_KUBECONFIG set to the cluster) before pie is installed
# there, then loads the images, installs pie with an in-cluster VictoriaMetrics and vmalert
# (deploy/examples/kind), probes kind's `standard` StorageClass, and checks that probe results
# arrive in VictoriaMetrics, the alert rules are loaded, and no storage alert fires on a healthy
# cluster.
# Needs docker, kind, kubectl and cargo. Every query goes through `kubectl port-forward` on
# 127.0.0.1.
# KEEP=1 keeps the cluster afterwards; CLUSTER=name picks the kind cluster (default pie-e2e).
set -euo pipefail
cd "$(dirname "$0")/../../.."

cluster=${CLUSTER:-pie-e2e}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
for tool in docker kind kubectl curl cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e-kind: $tool not found" >&2; exit 1; }
done

log() { echo "e2e-kind: $*" >&2; }
pf_pids=()
kubeconfig=$(mktemp)
cleanup() {
  for pid in "${pf_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -f "$kubeconfig"
  if [ "${KEEP:-0}" != 1 ]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "timed out waiting for: $*"; return 1; }
    sleep 5
  done
}

log "building images ($version)"
docker build --target controller -t "ghcr.io/pie-rs/pie-controller:$version" .
docker build --target agent -t "ghcr.io/pie-rs/pie-agent:$version" .

kind get clusters 2>/dev/null | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
kubectl config use-context "kind-$cluster" >/dev/null

# The in-process controller of the cluster test must be alone: run it before pie is deployed
# (the deployed controller watches every namespace).
if kubectl get namespace pie >/dev/null 2>&1; then
  log "not running the cluster test: pie is already deployed on $cluster (KEEP=1 earlier?)"
else
  log "running the cluster test against kind"
  kind get kubeconfig --name "$cluster" >"$kubeconfig"
  PIE_E2E_KUBECONFIG="$kubeconfig" cargo test -p pie-e2e --test cluster -- --nocapture
fi

kind load docker-image --name "$cluster" "ghcr.io/pie-rs/pie-controller:$version" "ghcr.io/pie-rs/pie-agent:$version"

log "installing pie, VictoriaMetrics and vmalert"
kubectl apply -k deploy/examples/kind
kubectl wait --for=condition=Established --timeout=60s crd/pieprobes.pie.topolvm.io
kubectl -n monitoring rollout status deploy/vmsingle --timeout=180s
kubectl -n monitoring rollout status deploy/vmalert --timeout=180s
# Only the leader is Ready: wait for the Service to have an endpoint, not for every Pod.
wait_for 180 sh -c "kubectl -n pie get endpoints pie-controller -o jsonpath='{.subsets[0].addresses[0].ip}' | grep -q ."
kubectl apply -f deploy/examples/kind/pieprobe.yaml

kubectl -n monitoring port-forward --address 127.0.0.1 svc/vmsingle 18428:8428 >/dev/null 2>&1 &
pf_pids+=($!)
kubectl -n monitoring port-forward --address 127.0.0.1 svc/vmalert 18880:8880 >/dev/null 2>&1 &
pf_pids+=($!)
sleep 3

# Succeeds when the instant query $1 returns at least one series.
has_series() {
  curl -fsS --max-time 10 http://127.0.0.1:18428/api/v1/query --data-urlencode "query=$1" \
    | grep -q '"result":\[{'
}

log "waiting for pushed series"
wait_for 120 has_series 'pie_controller_leader{cluster="kind"} == 1'
wait_for 300 has_series 'pie_provision_probe_total{cluster="kind",storage_class="standard",on_time="true"} > 0'
wait_for 300 has_series 'pie_mount_probe_total{cluster="kind",storage_class="standard",on_time="true"} > 0'
wait_for 300 has_series 'pie_performance_on_mount_probe_total{cluster="kind",succeed="true"} > 0'
wait_for 120 has_series 'pie_node_eligible{cluster="kind"} == 1'

log "checking vmalert"
rules=$(curl -fsS --max-time 10 http://127.0.0.1:18880/api/v1/rules)
for group in pie.rules pie.alerts; do
  echo "$rules" | grep -q "\"name\":\"$group\"" || { log "vmalert has no group $group"; exit 1; }
done
wait_for 120 has_series 'pie:mount_probes:increase30m{cluster="kind"}'
if has_series 'ALERTS{alertstate="firing",severity=~"critical|warning"}'; then
  log "alerts fire on a healthy cluster:"
  curl -fsS http://127.0.0.1:18428/api/v1/query --data-urlencode 'query=ALERTS{alertstate="firing"}' >&2
  exit 1
fi

log "a broken StorageClass: provision probes never start, are counted late with a reason, and alert"
kubectl apply -f deploy/examples/kind/broken.yaml
broken='cluster="kind",storage_class="pie-e2e-broken"'
wait_for 300 has_series "pie_provision_probe_total{$broken,on_time=\"false\"} > 0"
wait_for 300 has_series "pie_probe_failures_total{$broken,probe=\"provision\",reason=~\"FailedScheduling|ProvisioningFailed|timeout\"} > 0"
wait_for 300 sh -c "kubectl -n pie get pieprobe kind-broken -o jsonpath='{.status.lastProvisionOutcome.result}' | grep -qx NotStarted"
# Two late probes in 30 minutes, then for: 5m.
wait_for 900 has_series "ALERTS{alertname=\"PieProvisionProbeFailing\",alertstate=\"firing\",$broken}"
if has_series 'ALERTS{alertstate="firing",severity=~"critical|warning",storage_class="standard"}'; then
  log "alerts fire for the healthy StorageClass:"
  curl -fsS http://127.0.0.1:18428/api/v1/query --data-urlencode 'query=ALERTS{alertstate="firing"}' >&2
  exit 1
fi
log "ok"
