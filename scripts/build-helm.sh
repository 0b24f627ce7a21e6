#!/usr/bin/env bash
# Builds real Helm (helm.sh/helm/v4/cmd/helm, the version e2e/helm/go.mod requires, from the Go
# module proxy) into ${CARGO_TARGET_DIR:-target}/helm/helm for the chart's tests
# (scripts/check-chart.sh, e2e/tests/helm.rs). Go's build and module caches are reused, so a
# rebuild takes seconds; the first build on a new machine compiles Helm and takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
GO_BUILD_FOR="Helm for the chart's tests (e2e/helm)"
source scripts/lib/go-build.sh

# `helm version` reports the module version go.mod pins.
version=$(sed -n 's/^\thelm\.sh\/helm\/v4 \(v[^ ]*\).*$/\1/p' e2e/helm/go.mod | head -1)
[ -n "$version" ] || { echo "build-helm: e2e/helm/go.mod requires no helm.sh/helm/v4 version" >&2; exit 1; }

go_build helm e2e/helm helm helm.sh/helm/v4/cmd/helm "-s -w -X helm.sh/helm/v4/internal/version.version=$version"
