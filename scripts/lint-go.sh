#!/usr/bin/env bash
# gofmt and go vet for the Go module of the local cluster (e2e/cluster); e2e/helm and
# e2e/victoriametrics tidy.
set -euo pipefail
cd "$(dirname "$0")/../e2e/cluster"
if ! command -v go >/dev/null 2>&1; then
  echo "lint-go: the Go toolchain (go) is not on PATH; e2e/cluster needs Go >= 1.26" >&2
  exit 1
fi
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "lint-go: not gofmt-formatted (run gofmt -w e2e/cluster): $unformatted" >&2
  exit 1
fi
CGO_ENABLED=0 go vet ./...

# e2e/helm and e2e/victoriametrics hold no Go code, only pinned modules (scripts/build-helm.sh,
# scripts/build-victoriametrics.sh): their go.mod and go.sum must be what `go mod tidy` makes of
# them. e2e/victoriametrics names Go 1.27, which its build script fetches the same way.
for module in helm victoriametrics; do
  toolchain=local
  [ "$module" = victoriametrics ] && toolchain=go1.27.3
  cd "../$module"
  if ! GOTOOLCHAIN=$toolchain CGO_ENABLED=0 go mod tidy -diff >/dev/null; then
    echo "lint-go: e2e/$module/go.mod or go.sum is not tidy: run (cd e2e/$module && GOTOOLCHAIN=$toolchain go mod tidy)" >&2
    GOTOOLCHAIN=$toolchain CGO_ENABLED=0 go mod tidy -diff >&2 || true
    exit 1
  fi
done
