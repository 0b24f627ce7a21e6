#!/usr/bin/env bash
# gofmt and go vet for the Go module of the local cluster (e2e/cluster); e2e/helm tidy.
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

# e2e/helm holds no Go code, only the pinned Helm module (scripts/build-helm.sh): its go.mod and
# go.sum must be what `go mod tidy` makes of them.
cd ../helm
if ! CGO_ENABLED=0 go mod tidy -diff >/dev/null; then
  echo "lint-go: e2e/helm/go.mod or go.sum is not tidy: run (cd e2e/helm && go mod tidy)" >&2
  CGO_ENABLED=0 go mod tidy -diff >&2 || true
  exit 1
fi
