#!/usr/bin/env bash
# gofmt and go vet for the Go module of the local cluster (e2e/cluster).
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
