#!/usr/bin/env bash
# Builds a current VictoriaMetrics release from its own Go module
# (github.com/VictoriaMetrics/VictoriaMetrics at the version e2e/victoriametrics/go.mod requires,
# from the Go module proxy) into ${CARGO_TARGET_DIR:-target}/victoriametrics/: the single node
# (victoria-metrics), vmagent, vmalert and vmauth, for the tests that run against both it and
# Debian's 1.79 (e2e/src/victoria_metrics.rs, VmFlavor). Go's build and module caches are reused,
# so a rebuild takes seconds; the first build on a new machine compiles VictoriaMetrics and
# takes minutes (docs/testing.md).
#
# The module's go.mod names Go 1.27 (VictoriaMetrics' own go.mod requires it), newer than the
# machine's Go 1.26: GOTOOLCHAIN makes the go command fetch that toolchain from the Go module
# proxy once (golang.org/toolchain, about 76 MB) and use it for this module only.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3
GO_BUILD_FOR="the current VictoriaMetrics of the tests (e2e/victoriametrics)"
source scripts/lib/go-build.sh

module=github.com/VictoriaMetrics/VictoriaMetrics
version=$(sed -n 's/^\tgithub\.com\/VictoriaMetrics\/VictoriaMetrics \(v[^ ]*\).*$/\1/p' e2e/victoriametrics/go.mod | head -1)
[ -n "$version" ] || { echo "build-victoriametrics: e2e/victoriametrics/go.mod requires no $module version" >&2; exit 1; }
# VictoriaMetrics' Makefile sets lib/buildinfo.Version to APP-DATE-TAG (`git describe --long
# --all` with / as -); the date here is the release's, so that a rebuild is the same binary.
# The binaries report it in `-version` and in vm_app_version{short_version="vX.Y.Z"}.
released=$(cd e2e/victoriametrics && go list -m -f '{{.Time.UTC.Format "20060102-150405"}}' "$module")
date=$released

for app in victoria-metrics vmagent vmalert vmauth; do
  go_build "$app" e2e/victoriametrics victoriametrics "$module/app/$app" \
    "-s -w -X $module/lib/buildinfo.Version=$app-$date-tags-$version-0"
done
