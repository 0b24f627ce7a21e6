#!/usr/bin/env python3
"""Checks deploy/grafana/*.json are valid Grafana dashboards that follow docs/metrics.md.

* valid JSON with uid, title, schemaVersion, panels and templating;
* unique panel ids (rows and nested panels included); every panel has a complete gridPos
  inside the 24-column grid, and no two panels overlap;
* every target has a refId and a non-empty expr using only metrics and labels of
  docs/metrics.md; every variable an expr, title or datasource references exists;
* the datasource is the variable `datasource` of type prometheus (works with VictoriaMetrics);
* variables cluster, storage_class and node exist; the file is what scripts/gen-dashboard.py writes;
* every expr (variables replaced by sample values) parses as PromQL (`promtool check rules`) and
  as MetricsQL (`vmalert -dryRun`), when those tools are installed;
* every query returns data from a VictoriaMetrics on 127.0.0.1 holding synthetic series of
  every documented metric (scripts/lib/vm_dashboard_queries.py), when victoria-metrics is installed.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
from metrics_doc import ROOT, documented, unknown_metrics  # noqa: E402

BUILTIN = {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms",
           "__all", "__auto", "__dashboard", "__from", "__to", "__name", "__org", "__user", "timeFilter"}
VAR_RE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+)|\[\[(\w+)\]\])")


SAMPLE = {"cluster": ".*", "storage_class": ".*", "node": ".*", "window": "1h",
          "__rate_interval": "2m", "__interval": "1m", "__range": "6h"}


def exprs_of(d):
    """Every PromQL expression of a dashboard, variables replaced by sample values."""
    out = []
    for p in walk(d.get("panels", [])):
        for t in p.get("targets", []):
            if (t.get("expr") or "").strip():
                out.append((f"panel {p['id']} {t.get('refId')}", t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            out.append((f"variable {v['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q)))
    return [(w, VAR_RE.sub(lambda m: SAMPLE.get(m.group(1) or m.group(2) or m.group(3), ".*"), e))
            for w, e in out]


def parse_check(dashboards):
    """promtool and vmalert parse every expression, as recording rules of a scratch file."""
    import shutil
    import tempfile
    import yaml
    errors = []
    rules = [{"record": f"dashboard:expr_{i}", "expr": e}
             for i, (_, e) in enumerate(x for d in dashboards for x in exprs_of(d))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        for tool, cmd in (("promtool", ["promtool", "check", "rules", str(path)]),
                          ("vmalert", ["vmalert", "-dryRun", f"-rule={path}", "-loggerLevel=ERROR"])):
            if not shutil.which(tool):
                print(f"check-dashboard: {tool} not installed, skipping its parse check")
                continue
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                errors.append(f"{tool} rejects a dashboard expression: {(r.stdout + r.stderr)[-1500:]}")
    print(f"check-dashboard: {len(rules)} expressions parsed")
    return errors


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def referenced(text):
    return {a or b or c for a, b, c in VAR_RE.findall(text or "")}


def check(path, docs):
    errors = []
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{path}: not JSON: {e}"]
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in d:
            errors.append(f"missing {key}")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    for name in ("datasource", "cluster", "storage_class", "node"):
        if name not in variables:
            errors.append(f"no variable {name}")
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append("variable datasource must be of type datasource, query prometheus")
    known = set(variables) | BUILTIN
    for v in variables.values():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query":
            inner = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q or "")
            for bad in unknown_metrics(inner, docs):
                errors.append(f"variable {v['name']}: {bad} is not in docs/metrics.md")
        for ref in referenced(q if isinstance(q, str) else "") - known:
            errors.append(f"variable {v['name']} references ${ref}, which is not defined")
    ids, cells = set(), {}
    for p in walk(d.get("panels", [])):
        pid, title = p.get("id"), p.get("title", "")
        where = f"panel {pid} {title!r}"
        if not isinstance(pid, int) or pid in ids:
            errors.append(f"{where}: id missing or not unique")
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")):
            errors.append(f"{where}: incomplete gridPos {g}")
            continue
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24 or g["h"] < 1:
            errors.append(f"{where}: gridPos outside the 24-column grid {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    errors.append(f"{where}: overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = pid
            else:
                continue
            break
        for ref in referenced(title) - known:
            errors.append(f"{where}: title references undefined ${ref}")
        if p.get("type") == "row":
            continue
        dsref = json.dumps(p.get("datasource"))
        if "${datasource}" not in dsref:
            errors.append(f"{where}: datasource is not the variable ${{datasource}}")
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"{where}: no targets")
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids) or not all(refids):
            errors.append(f"{where}: refIds missing or repeated")
        for t in targets:
            expr = (t.get("expr") or "").strip()
            if not expr:
                errors.append(f"{where}: target {t.get('refId')} has an empty expr")
                continue
            for bad in unknown_metrics(expr, docs):
                errors.append(f"{where}: {bad} is not in docs/metrics.md")
            for ref in referenced(expr) - known:
                errors.append(f"{where}: expr references undefined ${ref}")
            if "${datasource}" not in json.dumps(t.get("datasource", p.get("datasource"))):
                errors.append(f"{where}: target datasource is not ${{datasource}}")
    return [f"{path.name}: {e}" for e in errors]


def main():
    docs = documented()
    files = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    errors = [] if files else ["deploy/grafana: no dashboard"]
    for f in files:
        errors += check(f, docs)
    errors += parse_check([json.loads(f.read_text()) for f in files])
    import shutil
    if shutil.which("victoria-metrics"):
        if subprocess.run([sys.executable, str(ROOT / "scripts" / "lib" / "vm_dashboard_queries.py")]).returncode:
            errors.append("some dashboard queries return no data from VictoriaMetrics (see above)")
    else:
        print("check-dashboard: victoria-metrics not installed, skipping the query run")
    gen = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-dashboard.py"), "--check"])
    if gen.returncode:
        errors.append("deploy/grafana/pie-dashboard.json differs from scripts/gen-dashboard.py's output")
    for e in errors:
        print("FAIL", e)
    print(f"check-dashboard: {len(files)} dashboards, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
