#!/usr/bin/env python3
"""Runs every query of deploy/grafana/*.json against VictoriaMetrics holding one synthetic series
set of every metric of docs/metrics.md, and fails when one returns nothing: a panel whose
labels, selectors or functions do not fit the metrics would stay empty in Grafana.

The variables get the values a user would pick (cluster=c1, storage_class=sc, node=n1,
window=30m); the template variables' label_values() queries must return those values.
Usage: vm_dashboard_queries.py  (needs victoria-metrics on PATH; listens on 127.0.0.1 only)
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_doc import ROOT, documented, documented_labels  # noqa: E402
from ports import free_port  # noqa: E402
from vm_alert_replay import http  # noqa: E402

VALUES = {"cluster": "c1", "pie_probe_name": "p", "storage_class": "sc", "node": "n1",
          "probe": "mount", "reason": "FailedMount", "on_time": "true", "succeed": "true",
          "result": "ok", "code": "200", "url": "http://vm/api/v1/write", "encoding": "snappy"}
BOTH = {"on_time": ("true", "false"), "succeed": ("true", "false")}
VARS = {"cluster": "c1", "storage_class": "sc", "node": "n1", "window": "30m",
        "__rate_interval": "2m", "__interval": "1m", "__range": "2h"}
VAR_RE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+)|\[\[(\w+)\]\])")


def series_lines(now):
    docs, labels = documented(), documented_labels()
    lines = []
    for name, kind in docs.items():
        sets = [{}]
        for label in sorted(labels[name]):
            options = BOTH.get(label, (VALUES[label],))
            sets = [dict(s, **{label: o}) for s in sets for o in options]
        for ls in sets:
            for minute in range(120):
                ts = (now - (120 - minute) * 60) * 1000
                def line(n, extra, v):
                    body = ",".join(f'{k}="{v2}"' for k, v2 in {**ls, **extra}.items())
                    return f"{n}{{{body}}} {v} {ts}"
                if kind == "histogram":
                    for le, frac in (("0.1", 0.5), ("1", 0.9), ("+Inf", 1.0)):
                        lines.append(line(name + "_bucket", {"le": le}, minute * frac))
                    lines.append(line(name + "_sum", {}, minute * 0.3))
                    lines.append(line(name + "_count", {}, minute))
                elif kind == "counter":
                    lines.append(line(name, {}, minute))
                elif name.endswith("_timestamp_seconds"):
                    lines.append(line(name, {}, ts // 1000 - 30))
                else:
                    lines.append(line(name, {}, 1))
    return lines


def main():
    if not shutil.which("victoria-metrics"):
        print("vm_dashboard_queries: victoria-metrics not found")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="pie-vm-dash-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    vm = subprocess.Popen(["victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}",
                           f"-storageDataPath={tmp}/data", "-retentionPeriod=1", "-search.disableCache",
                           "-search.latencyOffset=0s", "-loggerLevel=ERROR"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failures, count = [], 0
    try:
        for _ in range(100):
            try:
                http(base + "/health")
                break
            except OSError:
                time.sleep(0.1)
        now = int(time.time())
        http(base + "/api/v1/import/prometheus", "\n".join(series_lines(now)).encode())
        http(base + "/internal/force_flush")
        for path in sorted((ROOT / "deploy" / "grafana").glob("*.json")):
            d = json.loads(path.read_text())
            sub = lambda e: VAR_RE.sub(lambda m: VARS[m.group(1) or m.group(2) or m.group(3)], e)
            for v in d["templating"]["list"]:
                q = v.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
                if v.get("type") != "query" or not m:
                    continue
                count += 1
                url = f"{base}/api/v1/label/{m.group(2)}/values?" + urllib.parse.urlencode(
                    {"match[]": sub(m.group(1)), "start": now - 7200})
                got = json.loads(http(url))["data"]
                if VARS[v["name"]] not in got:
                    failures.append(f"{path.name}: variable {v['name']}: {got} lacks {VARS[v['name']]}")
            stack = list(d["panels"])
            while stack:
                p = stack.pop()
                stack += p.get("panels", [])
                for t in p.get("targets", []):
                    count += 1
                    expr = sub(t["expr"])
                    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": now})
                    try:
                        result = json.loads(http(url))["data"]["result"]
                    except Exception as e:  # noqa: BLE001
                        failures.append(f"{path.name}: panel {p['id']} {p['title']!r} {t['refId']}: {e}")
                        continue
                    if not result:
                        failures.append(f"{path.name}: panel {p['id']} {p['title']!r} {t['refId']}: "
                                        f"no data for {expr}")
    finally:
        vm.terminate()
        vm.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL", f)
    print(f"vm_dashboard_queries: {count} queries against VictoriaMetrics, {len(failures)} empty or failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
