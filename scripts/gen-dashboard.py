#!/usr/bin/env python3
"""Writes deploy/grafana/pie-dashboard.json, pie's Grafana dashboard.

    python3 scripts/gen-dashboard.py           # write it
    python3 scripts/gen-dashboard.py --check   # exit 1 if the committed file is not up to date

Every query uses the names and labels of docs/metrics.md; scripts/check-dashboard.py checks it.
The datasource is a variable of type prometheus (VictoriaMetrics answers the same API).
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "pie-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
C = 'cluster=~"$cluster"'
SC = f'{C},storage_class=~"$storage_class"'
N = f'{SC},node=~"$node"'

panels = []
_next = {"id": 1, "y": 0, "x": 0, "h": 0}


def row(title):
    _next["y"] += _next["h"]
    _next.update(x=0, h=1)
    panels.append({"id": _id(), "type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _next["y"]}, "panels": []})
    _next["y"] += 1
    _next["h"] = 0


def _id():
    i = _next["id"]
    _next["id"] += 1
    return i


def _place(w, h):
    if _next["x"] + w > 24:
        _next["y"] += _next["h"]
        _next.update(x=0, h=0)
    pos = {"h": h, "w": w, "x": _next["x"], "y": _next["y"]}
    _next["x"] += w
    _next["h"] = max(_next["h"], h)
    return pos


def panel(title, targets, unit="short", kind="timeseries", w=12, h=8, description="", **extra):
    p = {
        "id": _id(), "type": kind, "title": title, "description": description,
        "datasource": DS, "gridPos": _place(w, h),
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                     "legendFormat": legend, "range": True}
                    for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}
    if unit == "percentunit":
        p["fieldConfig"]["defaults"].update(min=0, max=1, thresholds={"mode": "absolute", "steps": [
            {"color": "red", "value": None}, {"color": "orange", "value": 0.9},
            {"color": "green", "value": 0.99}]})
    p.update(extra)
    panels.append(p)


def ratio(metric, good, sel, by):
    return (f'sum by ({by}) (increase({metric}{{{sel},{good}}}[$window]))\n'
            f'/ sum by ({by}) (increase({metric}{{{sel}}}[$window]))')


def quantiles(metric, sel, by, legend):
    return [(f'histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[$window])))',
             f'p{int(q * 100)} {legend}') for q in (0.5, 0.99)]


# --- overview ---------------------------------------------------------------------------
row("Overview")
panel("Provision probes on time", [(ratio("pie_provision_probe_total", 'on_time="true"', SC, "storage_class"),
                                    "{{storage_class}}")], unit="percentunit", kind="stat", w=6, h=5,
      description="Share of provision probes whose Pod started within probeThreshold over $window.")
panel("Mount probes on time", [(ratio("pie_mount_probe_total", 'on_time="true"', N, "storage_class"),
                                "{{storage_class}}")], unit="percentunit", kind="stat", w=6, h=5,
      description="Share of mount probes whose Pod started within probeThreshold over $window.")
panel("Mount probe I/O succeeded", [(ratio("pie_performance_on_mount_probe_total", 'succeed="true"', N, "storage_class"),
                                     "{{storage_class}}")], unit="percentunit", kind="stat", w=6, h=5,
      description="Share of mount probes whose fio run succeeded over $window.")
panel("Eligible nodes", [(f'sum by (storage_class) (pie_node_eligible{{{N}}})', "{{storage_class}} eligible"),
                         (f'count by (storage_class) (pie_node_eligible{{{N}}})', "{{storage_class}} matched")],
      kind="stat", w=6, h=5,
      description="Nodes that can run mount probes (not NotReady, cordoned or tainted) of the nodes the PieProbes select.")

# --- provision --------------------------------------------------------------------------
row("Provision probes (per StorageClass)")
panel("Provision probe success ratio", [(ratio("pie_provision_probe_total", 'on_time="true"', SC,
                                               "storage_class, pie_probe_name"), "{{storage_class}} ({{pie_probe_name}})")],
      unit="percentunit")
panel("Probe Pod start time (creation to container start)",
      quantiles("pie_probe_start_duration_seconds", SC, "storage_class, probe", "{{storage_class}} {{probe}}"), unit="s")
panel("Volume provision time (PVC created to Bound)",
      quantiles("pie_probe_volume_provision_seconds", SC, "storage_class", "{{storage_class}}"), unit="s")
panel("Volume deletion time (PVC deleted to PV gone)",
      quantiles("pie_probe_volume_delete_seconds", SC, "storage_class", "{{storage_class}}"), unit="s")
panel("Volume deletions late or stuck",
      [(f'sum by (storage_class) (increase(pie_probe_volume_delete_total{{{SC},on_time="false"}}[$window]))',
        "{{storage_class}} late"),
       (f'sum by (storage_class) (increase(pie_probe_volume_delete_total{{{SC},on_time="true"}}[$window]))',
        "{{storage_class}} on time")], w=12)
panel("Probes not started on time, by reason",
      [(f'sum by (storage_class, probe, reason) (increase(pie_probe_failures_total{{{SC}}}[$window]))',
        "{{storage_class}} {{probe}} {{reason}}")], w=12,
      description="ImagePull is a registry problem, not a storage one; timeout = nothing explained the delay.")

# --- mount ------------------------------------------------------------------------------
row("Mount probes (per node)")
panel("Mount probe success ratio", [(ratio("pie_mount_probe_total", 'on_time="true"', N, "storage_class, node"),
                                     "{{storage_class}} {{node}}")], unit="percentunit")
panel("fio success ratio", [(ratio("pie_performance_on_mount_probe_total", 'succeed="true"', N, "storage_class, node"),
                             "{{storage_class}} {{node}}")], unit="percentunit")
panel("Mean latency (fio)",
      [(f'max by (storage_class, node) (pie_io_read_latency_on_mount_probe_seconds{{{N}}})', "read {{storage_class}} {{node}}"),
       (f'max by (storage_class, node) (pie_io_write_latency_on_mount_probe_seconds{{{N}}})', "write {{storage_class}} {{node}}")],
      unit="s")
panel("p99 completion latency (fio)",
      [(f'max by (storage_class, node) (pie_io_read_latency_p99_on_mount_probe_seconds{{{N}}})', "read {{storage_class}} {{node}}"),
       (f'max by (storage_class, node) (pie_io_write_latency_p99_on_mount_probe_seconds{{{N}}})', "write {{storage_class}} {{node}}")],
      unit="s")
panel("IOPS (fio)",
      [(f'max by (storage_class, node) (pie_io_read_iops_on_mount_probe{{{N}}})', "read {{storage_class}} {{node}}"),
       (f'max by (storage_class, node) (pie_io_write_iops_on_mount_probe{{{N}}})', "write {{storage_class}} {{node}}")],
      unit="iops")
panel("Bandwidth (fio)",
      [(f'max by (storage_class, node) (pie_io_read_bytes_per_second_on_mount_probe{{{N}}})', "read {{storage_class}} {{node}}"),
       (f'max by (storage_class, node) (pie_io_write_bytes_per_second_on_mount_probe{{{N}}})', "write {{storage_class}} {{node}}")],
      unit="Bps")
panel("Time since the last successful mount probe",
      [(f'time() - max by (storage_class, node) (pie_mount_probe_last_success_timestamp_seconds{{{N}}})',
        "{{storage_class}} {{node}}")], unit="s")
panel("Node eligibility (1 = probed, 0 = NotReady, cordoned or tainted)",
      [(f'max by (storage_class, node) (pie_node_eligible{{{N}}})', "{{storage_class}} {{node}}")],
      kind="state-timeline", fieldConfig={"defaults": {"unit": "short", "mappings": [
          {"type": "value", "options": {"0": {"text": "ineligible", "color": "orange"},
                                        "1": {"text": "eligible", "color": "green"}}}]}, "overrides": []})

# --- controller and remote write --------------------------------------------------------
row("Controller and remote write")
panel("Leader", [(f'max by (cluster) (pie_controller_leader{{{C}}})', "{{cluster}}")], kind="stat", w=6, h=6,
      description="1 while a leader pushes; no value = the controller or its push is down.")
panel("Reconciles", [(f'sum by (result) (rate(pie_controller_reconciles_total{{{C}}}[$window]))', "{{result}}")],
      unit="ops", w=9, h=6)
panel("Results received", [(f'sum by (code) (rate(pie_receiver_requests_total{{{C}}}[$window]))', "{{code}}")],
      unit="reqps", w=9, h=6)
panel("Remote write samples",
      [(f'sum by (url) (rate(pie_remote_write_samples_total{{{C}}}[$window]))', "sent {{url}}"),
       (f'sum by (url, reason) (rate(pie_remote_write_samples_dropped_total{{{C}}}[$window]))', "dropped {{reason}} {{url}}"),
       (f'sum by (url) (rate(pie_remote_write_samples_retried_total{{{C}}}[$window]))', "retried {{url}}")],
      unit="short", w=8)
panel("Remote write requests by status",
      [(f'sum by (url, code) (rate(pie_remote_write_requests_total{{{C}}}[$window]))', "{{code}} {{url}}")],
      unit="reqps", w=8)
panel("Remote write pending samples",
      [(f'max by (url) (pie_remote_write_pending_samples{{{C}}})', "{{url}}")], w=8)
panel("Time since the last successful remote write",
      [(f'time() - max by (url) (pie_remote_write_last_success_timestamp_seconds{{{C}}})', "{{url}}")], unit="s", w=8)
panel("Remote write request duration",
      quantiles("pie_remote_write_send_duration_seconds", C, "url", "{{url}}"), unit="s", w=8)
panel("Remote write bytes sent",
      [(f'sum by (url, encoding) (rate(pie_remote_write_sent_bytes_total{{{C}}}[$window]))', "{{encoding}} {{url}}")],
      unit="Bps", w=8)


def query_var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-query"}, "definition": query,
            "refresh": 2, "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


dashboard = {
    "uid": "pie-storage",
    "title": "pie: storage availability",
    "description": "pie's probes per StorageClass and node, and the health of its controller and remote write. "
                   "Metrics: docs/metrics.md.",
    "tags": ["pie", "storage", "kubernetes"],
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "1m",
    "time": {"from": "now-6h", "to": "now"},
    "timezone": "",
    "links": [],
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": ""},
        query_var("cluster", "Cluster", "label_values(pie_controller_leader, cluster)"),
        query_var("storage_class", "StorageClass",
                  'label_values({__name__=~"pie_provision_probe_total|pie_mount_probe_total",cluster=~"$cluster"}, storage_class)'),
        query_var("node", "Node", 'label_values(pie_node_eligible{cluster=~"$cluster",storage_class=~"$storage_class"}, node)'),
        {"name": "window", "label": "Window", "type": "custom", "query": "30m,1h,6h,1d",
         "current": {"selected": True, "text": "1h", "value": "1h"},
         "options": [{"selected": v == "1h", "text": v, "value": v} for v in ("30m", "1h", "6h", "1d")]},
    ]},
    "panels": panels,
}


def main(argv):
    text = json.dumps(dashboard, indent=2) + "\n"
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("gen-dashboard: deploy/grafana/pie-dashboard.json is out of date (run python3 scripts/gen-dashboard.py)")
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
