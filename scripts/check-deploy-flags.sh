#!/usr/bin/env bash
# Checks that every flag and PIE_* variable the manifests give pie-controller exists in
# `pie-controller run --help`, so deploy/ cannot drift from the CLI, and that the remote-write
# buffer directory is on a writable volume (the root filesystem is read-only).
# Usage: scripts/check-deploy-flags.sh [path/to/pie-controller]   (default: builds target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --quiet --locked -p pie-controller --bin pie-controller
  bin=target/debug/pie-controller
fi
help=$("$bin" run --help)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for dir in deploy deploy/overlays/* deploy/examples/kind; do
  kubectl kustomize "$dir" >"$tmp/$(echo "$dir" | tr / _).yaml"
done
HELP="$help" python3 - "$tmp"/*.yaml <<'PY'
import os, re, sys, yaml
help_text = os.environ["HELP"]
flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
envs = set(re.findall(r"env: (PIE_[A-Z0-9_]+)", help_text))
missing = set()
unmounted = set()
for path in sys.argv[1:]:
    for obj in yaml.safe_load_all(open(path)):
        if not obj or obj.get("kind") != "Deployment" or obj["metadata"]["name"] != "pie-controller":
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            for arg in c.get("args", [])[1:]:
                flag = arg.split("=", 1)[0]
                if flag not in flags:
                    missing.add(f"flag {flag} ({os.path.basename(path)})")
            for env in c.get("env", []):
                if env["name"].startswith("PIE_") and env["name"] not in envs:
                    missing.add(f"env {env['name']} ({os.path.basename(path)})")
            # The root filesystem is read-only: the buffer directory must be on a writable mount.
            buffer_dirs = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--remote-write-buffer-dir=")]
            buffer_dirs += [e["value"] for e in c.get("env", []) if e["name"] == "PIE_REMOTE_WRITE_BUFFER_DIR" and "value" in e]
            mounts = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            for d in buffer_dirs:
                if not any(d == m["mountPath"] or d.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
                    unmounted.add(f"--remote-write-buffer-dir {d} is on no writable volume mount ({os.path.basename(path)})")
for m in sorted(missing):
    print("FAIL pie-controller run does not know", m)
for m in sorted(unmounted):
    print("FAIL", m)
print(f"check-deploy-flags: {len(missing)} unknown, {len(unmounted)} buffer directories not mounted")
sys.exit(1 if missing or unmounted else 0)
PY
