"""Every flag and PIE_* variable a manifest gives pie-controller exists in `pie-controller run
--help`, and the remote-write buffer directory is on a writable volume (the root filesystem is
read-only). Used for deploy/ (scripts/check-deploy-flags.sh) and for the Helm chart's renders
(scripts/lib/check_chart.py), so neither can drift from the CLI.

Usage: check_deploy_flags.py PIE_CONTROLLER MANIFEST.yaml...
"""

import os
import re
import subprocess
import sys

import yaml


def check(help_text, paths):
    """(problems, containers checked) over the `pie-controller` Deployments in `paths`."""
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    envs = set(re.findall(r"env: (PIE_[A-Z0-9_]+)", help_text))
    problems = set()
    checked = 0
    for path in paths:
        name = os.path.basename(path)
        with open(path) as f:
            objects = list(yaml.safe_load_all(f))
        for obj in objects:
            if not obj or obj.get("kind") != "Deployment" or obj["metadata"]["name"] != "pie-controller":
                continue
            for c in obj["spec"]["template"]["spec"]["containers"]:
                checked += 1
                args = c.get("args", [])
                env = c.get("env", [])
                for arg in args[1:]:
                    flag = arg.split("=", 1)[0]
                    if flag not in flags:
                        problems.add(f"pie-controller run does not know flag {flag} ({name})")
                for e in env:
                    if e["name"].startswith("PIE_") and e["name"] not in envs:
                        problems.add(f"pie-controller run does not know env {e['name']} ({name})")
                buffer_dirs = [a.split("=", 1)[1] for a in args if a.startswith("--remote-write-buffer-dir=")]
                buffer_dirs += [e["value"] for e in env if e["name"] == "PIE_REMOTE_WRITE_BUFFER_DIR" and "value" in e]
                mounts = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
                for d in buffer_dirs:
                    if not any(d == m["mountPath"] or d.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
                        problems.add(f"--remote-write-buffer-dir {d} is on no writable volume mount ({name})")
    return sorted(problems), checked


def main(controller, paths):
    help_text = subprocess.run([controller, "run", "--help"], check=True, capture_output=True, text=True).stdout
    problems, checked = check(help_text, paths)
    for p in problems:
        print("FAIL", p)
    if checked == 0:
        print("FAIL no pie-controller Deployment in", " ".join(paths))
    print(f"check-deploy-flags: {checked} containers, {len(problems)} problems")
    return 1 if problems or checked == 0 else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: check_deploy_flags.py PIE_CONTROLLER MANIFEST.yaml...")
    sys.exit(main(sys.argv[1], sys.argv[2:]))
