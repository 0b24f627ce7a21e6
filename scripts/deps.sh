#!/usr/bin/env bash
# Installs the Debian packages given as arguments when any of their programs is missing.
# Idempotent; works as root (CI) or through sudo.
set -euo pipefail

declare -A program_of=(
  [victoria-metrics]=victoria-metrics
  [prometheus]=promtool
  [fio]=fio
  [curl]=curl
)

missing=()
for package in "$@"; do
  program=${program_of[$package]:-$package}
  command -v "$program" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's packages may start services in environments with an init system; the tests start
# their own instances on free ports, so stop the packaged ones where they exist.
for service in victoria-metrics prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    $sudo systemctl stop "$service" || true
  fi
done
