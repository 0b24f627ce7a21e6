#!/usr/bin/env bash
# Builds the local test control plane (e2e/cluster, Go) into
# ${CARGO_TARGET_DIR:-target}/pie-cluster/pie-cluster, with a `kubectl` symlink next to it.
# Go's build and module caches are reused when present, so a rebuild after a change takes seconds;
# the first build on a new machine compiles Kubernetes and takes several minutes (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
GO_BUILD_FOR="the local cluster (e2e/cluster)"
source scripts/lib/go-build.sh

# Kubernetes' components report this version (kubectl version, /version, the Node's kubelet version).
version=$(sed -n 's/^\tk8s.io\/kubernetes v\(.*\)$/\1/p' e2e/cluster/go.mod | head -1)
minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

go_build pie-cluster e2e/cluster pie-cluster . "$ldflags"
ln -sf pie-cluster "$GO_BUILD_OUT/kubectl"
