#!/usr/bin/env python3
"""Runs the promtool unit tests of deploy/alerts/tests/ against VictoriaMetrics and vmalert, so
the rules are proven in MetricsQL as well as in Prometheus.

A single-node VictoriaMetrics on 127.0.0.1 (temporary storage) receives each test's input
series (shifted to a recent day, one test every 3 days so windows never overlap, and the values
of `*_timestamp_seconds` gauges shifted alike); vmalert's
replay mode evaluates the rules over the test's time range, stage by stage so chained
recording rules see their inputs, and writes the results back; then every alert_rule_test
case is checked against the ALERTS{alertstate="firing"} samples at its eval_time.

Usage: vm_alert_replay.py [RULES_FILE]  (needs victoria-metrics and vmalert on PATH)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import yaml
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "alerts"
DAY = 86400


def duration(s):
    units = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhdw])", s))


def expand(values):
    """promtool's series notation -> list of float or None (missing)."""
    out = []
    for tok in values.split():
        m = re.fullmatch(r"_x(\d+)", tok)
        if m:
            out += [None] * int(m.group(1))
            continue
        if tok == "_":
            out.append(None)
            continue
        m = re.fullmatch(r"(-?[\d.e]+)(?:([+-])([\d.e]+))?x(\d+)", tok)
        if m:
            a, sign, b, n = float(m.group(1)), m.group(2), float(m.group(3) or 0), int(m.group(4))
            b = -b if sign == "-" else b
            out += [a + i * b for i in range(n + 1)]
            continue
        out.append(float(tok))
    return out


def http(url, data=None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
        return r.read()


def stages(rules):
    """Groups the rules so that a rule only reads recording rules of earlier stages."""
    result, done = [], set()
    pending = [r for g in rules["groups"] for r in g["rules"]]
    while pending:
        ready = [r for r in pending
                 if not any(p.get("record") and p["record"] in r["expr"] for p in pending if p is not r)]
        if not ready:
            raise SystemExit("vm_alert_replay: cyclic recording rules")
        result.append(ready)
        done |= {r.get("record") for r in ready}
        pending = [r for r in pending if r not in ready]
    return result


def main():
    for tool in ("victoria-metrics", "vmalert"):
        if not shutil.which(tool):
            print(f"vm_alert_replay: {tool} not found")
            return 1
    rules_file = Path(sys.argv[1]) if len(sys.argv) > 1 else ALERTS / "pie.rules.yml"
    rules = yaml.safe_load(rules_file.read_text())
    interval = "1m"
    tmp = Path(tempfile.mkdtemp(prefix="pie-vm-replay-"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    vm = subprocess.Popen(
        ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={tmp}/data",
         "-retentionPeriod=100y", "-search.disableCache", "-loggerLevel=ERROR",
         "-search.latencyOffset=0s"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "vm.log", "w"))
    failures, cases = [], 0
    try:
        for _ in range(100):
            try:
                http(base_url + "/health")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("vm_alert_replay: VictoriaMetrics did not start")
        stage_files = []
        for i, stage in enumerate(stages(rules)):
            path = tmp / f"stage{i}.yml"
            path.write_text(yaml.safe_dump({"groups": [{"name": f"stage{i}", "interval": interval,
                                                        "rules": stage}]}, sort_keys=False))
            stage_files.append(path)
        t0 = (int(time.time()) // 3600) * 3600 - 60 * DAY
        tests = []
        for f in sorted((ALERTS / "tests").glob("*.yaml")):
            tests += [(f.name, t) for t in yaml.safe_load(f.read_text())["tests"]]
        for n, (fname, test) in enumerate(tests):
            base = t0 + n * 3 * DAY
            step = duration(test.get("interval", "1m"))
            lines, last = [], 0
            for s in test["input_series"]:
                # Unix-time gauges move with the shifted clock.
                shift = base if re.match(r"\w+_timestamp_seconds\b", s["series"]) else 0
                for k, v in enumerate(expand(s["values"])):
                    if v is not None:
                        v += shift
                        lines.append(f"{s['series']} {v} {(base + k * step) * 1000}")
                        last = max(last, k * step)
            http(base_url + "/api/v1/import/prometheus", "\n".join(lines).encode())
            http(base_url + "/internal/force_flush")
            end = max([duration(c["eval_time"]) for c in test["alert_rule_test"]] + [last]) + 60
            iso = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for path in stage_files:
                subprocess.run(
                    ["vmalert", f"-rule={path}", f"-datasource.url={base_url}",
                     f"-remoteWrite.url={base_url}", f"-replay.timeFrom={iso(base)}",
                     f"-replay.timeTo={iso(base + end)}", "-replay.rulesDelay=0s",
                     "-replay.disableProgressBar", "-loggerLevel=ERROR",
                     f"-datasource.queryStep={interval}"],
                    check=True, stdout=subprocess.DEVNULL, stderr=open(tmp / "vmalert.log", "a"))
                http(base_url + "/internal/force_flush")
            for case in test["alert_rule_test"]:
                cases += 1
                at = base + duration(case["eval_time"])
                q = urllib.parse.urlencode({
                    "match[]": f'ALERTS{{alertname="{case["alertname"]}",alertstate="firing"}}',
                    "start": at - 20, "end": at + 20})
                got = set()
                for line in http(f"{base_url}/api/v1/export?{q}").decode().splitlines():
                    metric = json.loads(line)["metric"]
                    got.add(frozenset((k, v) for k, v in metric.items()
                                      if k not in ("__name__", "alertname", "alertstate", "alertgroup")))
                want = {frozenset((k, str(v)) for k, v in a.get("exp_labels", {}).items())
                        for a in case.get("exp_alerts") or []}
                if got != want:
                    failures.append(f"{fname}: {test['name']}: {case['alertname']} at {case['eval_time']}: "
                                    f"want {[dict(w) for w in want]}, got {[dict(g) for g in got]}")
    finally:
        vm.terminate()
        vm.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL", f)
    print(f"vm_alert_replay: {len(tests)} tests, {cases} cases against VictoriaMetrics + vmalert, "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
