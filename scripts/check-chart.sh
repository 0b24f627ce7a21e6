#!/usr/bin/env bash
# Checks the Helm chart charts/pie offline with real Helm (built from e2e/helm by
# scripts/build-helm.sh): helm lint --strict, helm template validated like deploy/, no drift
# from deploy/ (kubectl kustomize), the CRD equal to `pie-controller crd`, topolvm/pie's values,
# and every bad value refused with an error naming it (scripts/lib/check_chart.py says more).
# Usage: scripts/check-chart.sh [PIE_CONTROLLER]   (default: ${CARGO_TARGET_DIR:-target}/debug/pie-controller)
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
controller=${1:-$target/debug/pie-controller}
[ -x "$controller" ] || { echo "check-chart: $controller not found; run 'cargo build -p pie-controller' first" >&2; exit 1; }
command -v kubectl >/dev/null 2>&1 || { echo "check-chart: kubectl not found (needed for 'kubectl kustomize')" >&2; exit 1; }
if ! python3 -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  echo "check-chart: installing kubernetes-validate from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31' jsonschema pyyaml
fi
bash scripts/build-helm.sh
python3 scripts/lib/check_chart.py "$target/helm/helm" "$controller" kubectl
