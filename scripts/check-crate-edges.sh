#!/usr/bin/env bash
# Fails when a crate edge the layout forbids appears (docs/design.md, "Module map"):
# no pie crate depends on pie-agent; pie-api and pie-remote-write depend on no pie crate;
# normal, build and dev dependencies alike.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
edges=(-e normal,build,dev --prefix none)

dependents=$(cargo tree --workspace -i pie-agent "${edges[@]}" | sed "s/ (\*)$//" | sort -u | grep -v '^pie-agent ' || true)
if [ -n "$dependents" ]; then
  echo "pie-agent must be a leaf, but is depended on by: $(echo "$dependents" | tr '\n' ' ')"
  fail=1
fi
for crate in pie-api pie-remote-write; do
  own=$(cargo tree -p "$crate" "${edges[@]}" | sed "s/ (\*)$//" | sort -u | grep '^pie-' | grep -v "^$crate " || true)
  if [ -n "$own" ]; then
    echo "$crate must depend on no pie crate, but depends on: $(echo "$own" | tr '\n' ' ')"
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "crate edges: pie-agent is a leaf; pie-api and pie-remote-write depend on no pie crate"
exit "$fail"
