#!/usr/bin/env bash
# Checks that every flag and PIE_* variable deploy/'s manifests give pie-controller exists in
# `pie-controller run --help`, so deploy/ cannot drift from the CLI, and that the remote-write
# buffer directory is on a writable volume (the root filesystem is read-only); the check itself
# is scripts/lib/check_deploy_flags.py, which the Helm chart's check uses too.
# Usage: scripts/check-deploy-flags.sh [path/to/pie-controller]   (default: builds target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --quiet --locked -p pie-controller --bin pie-controller
  bin=target/debug/pie-controller
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for dir in deploy deploy/overlays/* deploy/examples/kind; do
  kubectl kustomize "$dir" >"$tmp/$(echo "$dir" | tr / _).yaml"
done
python3 scripts/lib/check_deploy_flags.py "$bin" "$tmp"/*.yaml
