#!/usr/bin/env bash
# Builds real Helm (helm.sh/helm/v4/cmd/helm, the version e2e/helm/go.mod requires, from the Go
# module proxy) into ${CARGO_TARGET_DIR:-target}/helm/helm for the chart's tests
# (scripts/check-chart.sh, e2e/tests/helm.rs). Go's build and module caches are reused, so a
# rebuild takes seconds; the first build on a new machine compiles Helm and takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1; then
  echo "build-helm: the Go toolchain (go) is not on PATH; the chart's tests build Helm from e2e/helm with Go >= 1.26" >&2
  exit 1
fi

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
out="$target/helm"
mkdir -p "$out"
# Test binaries and scripts may build it at the same time: one build, the others find it done.
exec 9>"$out/.build.lock"
flock 9

# `helm version` reports the module version go.mod pins.
version=$(sed -n 's/^\thelm\.sh\/helm\/v4 \(v[^ ]*\).*$/\1/p' e2e/helm/go.mod | head -1)
[ -n "$version" ] || { echo "build-helm: e2e/helm/go.mod requires no helm.sh/helm/v4 version" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"

cd e2e/helm
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}" go build -ldflags "$ldflags" -o "$out/helm" helm.sh/helm/v4/cmd/helm
