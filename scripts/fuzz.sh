#!/usr/bin/env bash
# Runs every fuzz target of api/fuzz and remote_write/fuzz for SECONDS each (default 60) with cargo-fuzz and
# libFuzzer, on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it accept the sanitizer flags
# libFuzzer needs; see docs/reliability.md). Installs cargo-fuzz with `cargo install` if it is
# missing. Prints one summary line per target; a crash fails the script and leaves the input in
# <crate>/fuzz/artifacts/<target>/ (reproduce there: cargo fuzz run <target> <file>).
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0
for crate in api remote_write; do
  cd "$root/$crate/fuzz"
  for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${secs}s"
    if cargo fuzz run "$target" -- -max_total_time="$secs" >"$logs/$target.log" 2>&1; then
      # libFuzzer's last status line (#runs, cov, corpus) and its "Done N runs in S second(s)".
      summary=$(grep -E '^#[0-9]+' "$logs/$target.log" | tail -1 || true)
      done_line=$(grep -E '^Done [0-9]+ runs' "$logs/$target.log" | tail -1 || true)
      echo "fuzz: $target ok: $done_line | $summary"
    else
      status=1
      echo "fuzz: $target FAILED; the end of its log:" >&2
      tail -40 "$logs/$target.log" >&2
    fi
  done
done
exit $status
