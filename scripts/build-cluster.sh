#!/usr/bin/env bash
# Builds the local test control plane (e2e/cluster, Go) into
# ${CARGO_TARGET_DIR:-target}/pie-cluster/pie-cluster, with a `kubectl` symlink next to it.
# Go's build and module caches are reused when present, so a rebuild after a change takes seconds;
# the first build on a new machine compiles Kubernetes and takes several minutes (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1; then
  echo "build-cluster: the Go toolchain (go) is not on PATH; the local cluster (e2e/cluster) needs Go >= 1.26" >&2
  exit 1
fi

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
out="$target/pie-cluster"
mkdir -p "$out"
# Test binaries build it in parallel: one build at a time, the others then find it up to date.
exec 9>"$out/.build.lock"
flock 9

# Kubernetes' components report this version (kubectl version, /version, the Node's kubelet version).
version=$(sed -n 's/^\tk8s.io\/kubernetes v\(.*\)$/\1/p' e2e/cluster/go.mod | head -1)
minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

cd e2e/cluster
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}" go build -ldflags "$ldflags" -o "$out/pie-cluster" .
ln -sf pie-cluster "$out/kubectl"
