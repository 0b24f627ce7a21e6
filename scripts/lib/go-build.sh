# Sourced by scripts/build-cluster.sh and scripts/build-helm.sh: one way to build a Go program of
# this repository's Go modules into ${CARGO_TARGET_DIR:-target}/<dir>/.
#
#   go_build NAME MODULE_DIR OUT_DIR PACKAGE LDFLAGS
#
# builds PACKAGE of the module in MODULE_DIR (relative to the repository root) into
# $target/OUT_DIR/NAME with CGO_ENABLED=0, reusing Go's build and module caches when present (a
# rebuild takes seconds; the first build on a new machine takes minutes, docs/testing.md). Test
# binaries and scripts may ask at the same time: a lock in OUT_DIR lets one build run, and the
# others then find it up to date. Sets GO_BUILD_OUT to $target/OUT_DIR.
#
# Sourcing it first checks that Go is there, before the calling script runs anything else: a
# machine without Go gets one line naming the script and GO_BUILD_FOR (what needs the build),
# and exit status 1.

script_name=${0##*/}
if ! command -v go >/dev/null 2>&1; then
  echo "${script_name%.sh}: the Go toolchain (go) is not on PATH; ${GO_BUILD_FOR:-this build} needs Go >= 1.26" >&2
  exit 1
fi

go_build() {
  local name=$1 module=$2 dir=$3 package=$4 ldflags=$5
  local target=${CARGO_TARGET_DIR:-target}
  case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
  GO_BUILD_OUT="$target/$dir"
  mkdir -p "$GO_BUILD_OUT"
  (
    exec 9>"$GO_BUILD_OUT/.build.lock"
    flock 9
    cd "$module"
    CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}" go build -ldflags "$ldflags" -o "$GO_BUILD_OUT/$name" "$package"
  )
}
