#!/usr/bin/env bash
# Checks deploy/: every kustomization renders (`kubectl kustomize`, the kustomize built into
# kubectl), and every object validates offline: built-in kinds against the Kubernetes schemas
# of PyPI's kubernetes-validate (1.29 and the newest it has, strict), PieProbes against the
# CRD's openAPIV3Schema, VMRule/PrometheusRule/VMServiceScrape against their spec's essentials;
# plus pie's invariants (least-privilege RBAC, hardened Deployment), the sample and example
# PieProbes, the Grafana ConfigMap and the Dockerfile's essentials.
# Needs: kubectl (client only, no cluster), python3 with PyYAML and jsonschema, and
# kubernetes-validate (installed here with pip when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v kubectl >/dev/null 2>&1 || { echo "check-deploy: kubectl not found (needed for 'kubectl kustomize')" >&2; exit 1; }
if ! python3 -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  echo "check-deploy: installing kubernetes-validate from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31' jsonschema pyyaml
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rendered=()
for dir in deploy deploy/overlays/* deploy/monitoring deploy/grafana deploy/alerts deploy/examples/kind; do
  [ -f "$dir/kustomization.yaml" ] || [ "$dir" = deploy/monitoring ] || { echo "check-deploy: $dir has no kustomization.yaml" >&2; exit 1; }
  out="$tmp/$(echo "$dir" | tr / _).yaml"
  if [ -f "$dir/kustomization.yaml" ]; then
    echo "check-deploy: kubectl kustomize $dir"
    kubectl kustomize "$dir" >"$out"
  else
    cat "$dir"/*.yaml >"$out"
  fi
  rendered+=("$out")
done

# Components (deploy/components/*) are rendered on top of the vm-single overlay, as a user's
# overlay would include them.
for comp in deploy/components/*/; do
  comp=${comp%/}
  name=$(basename "$comp")
  overlay="$tmp/with-$name"
  mkdir -p "$overlay"
  rel=$(realpath --relative-to="$overlay" "$PWD")
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- %s/deploy/overlays/vm-single\ncomponents:\n- %s/%s\n' \
    "$rel" "$rel" "$comp" >"$overlay/kustomization.yaml"
  out="$tmp/deploy_overlays_vm-single+$name.yaml"
  echo "check-deploy: kubectl kustomize deploy/overlays/vm-single + $comp"
  kubectl kustomize "$overlay" >"$out"
  rendered+=("$out")
done
python3 - "$tmp/deploy_overlays_vm-single+remote-write-buffer-pvc.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pie-controller")
spec = dep["spec"]
vols = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
buf = vols.get("remote-write-buffer", {})
errors = []
if "emptyDir" in buf or buf.get("persistentVolumeClaim", {}).get("claimName") not in pvcs:
    errors.append("the buffer volume is not the component's PersistentVolumeClaim")
if spec.get("replicas") != 1 or spec.get("strategy") != {"type": "Recreate"}:
    errors.append("a ReadWriteOnce buffer needs replicas: 1 and the Recreate strategy")
for e in errors:
    print("check-deploy: remote-write-buffer-pvc:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

# The base leaves the two required values as placeholders; no overlay or example may.
if ! grep -q 'CHANGE-ME' "$tmp/deploy.yaml"; then
  echo "check-deploy: the base should carry the CHANGE-ME placeholders" >&2; exit 1
fi
for out in "$tmp"/deploy_overlays_*.yaml "$tmp/deploy_examples_kind.yaml"; do
  if grep -q 'CHANGE-ME' "$out"; then
    echo "check-deploy: $(basename "$out") still has a CHANGE-ME placeholder" >&2; exit 1
  fi
done

python3 scripts/lib/check_manifests.py "${rendered[@]}" \
  deploy/samples/*.yaml deploy/examples/kind/pieprobe.yaml deploy/examples/kind/broken.yaml \
  deploy/alerts/vmrule.yaml deploy/alerts/prometheusrule.yaml

echo "check-deploy: Dockerfile"
for want in 'FROM rust:1.95-bookworm AS builder' 'AS controller' 'FROM debian:bookworm-slim AS agent' \
            'USER 65532:65532' 'USER 1001:1001' 'fio'; do
  grep -qF -- "$want" Dockerfile || { echo "check-deploy: Dockerfile lacks '$want'" >&2; exit 1; }
done
# The e2e harness runs pie-controller with the image's malloc arena limit; the two must agree.
image_arenas=$(sed -n 's/^ENV MALLOC_ARENA_MAX=\([0-9]*\)$/\1/p' Dockerfile)
harness_arenas=$(sed -n 's/^const MALLOC_ARENA_MAX: &str = "\([0-9]*\)";$/\1/p' e2e/src/cluster.rs)
if [ -z "$image_arenas" ] || [ "$image_arenas" != "$harness_arenas" ]; then
  echo "check-deploy: MALLOC_ARENA_MAX is '$image_arenas' in the Dockerfile but '$harness_arenas' in e2e/src/cluster.rs" >&2
  exit 1
fi
echo "check-deploy: ok"
