#!/usr/bin/env python3
"""The demos' helpers (scripts/demo.sh, scripts/demo-receive.sh): what they ask VictoriaMetrics
and vmalert, and how they print it. Standard library only, except `plot` (matplotlib).

  demo.py notifier PORT FILE          an Alertmanager stand-in on 127.0.0.1:PORT; appends to FILE
  demo.py series VM CLUSTER           the pie_* series of CLUSTER: last value, number of samples
  demo.py alerts VMALERT              the active alerts
  demo.py rules VMALERT               how many rules are loaded and evaluate without error
  demo.py notifications FILE          what vmalert sent to the stand-in
  demo.py outcomes VM                 probe outcomes by PieProbe, StorageClass, node; failure reasons
  demo.py watch VM VMALERT T0 TIMEOUT WANT... [--marks FILE]
                                      prints outcomes and alert changes as they happen, until every
                                      WANT (ALERT:label=value,...) fires; exit 1 after TIMEOUT s;
                                      appends "ALERT fires=TIME" lines to FILE (for plot)
  demo.py verdict VMALERT WANT... --quiet label=value...
                                      the storage alerts; exit 1 unless every WANT fires and no
                                      storage alert is active for a quiet StorageClass or node
  demo.py plot VM START END PNG [WHAT=TIME]...
                                      probe results over [START, END] (Unix s) as a PNG, with a
                                      marked line at each TIME (Unix s) saying WHAT

Bad input or an unreachable endpoint: one line on stderr, exit 1.
"""
import http.server
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# The alerts that say storage is broken (e2e/src/scenario.rs has the same list).
STORAGE_ALERTS = ("PieProvisionProbeFailing", "PieMountProbeFailingOnNode",
                  "PieMountProbeFailingOnManyNodes", "PieMountProbeIOErrors",
                  "PieMountProbeHighLatency", "PieVolumeDeletionStuck")


def fail(msg):
    print(f"demo: {msg}", file=sys.stderr)
    sys.exit(1)


def get_json(url, params=None):
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        fail(f"{url}: {e}")


def query(vm, expr, at=None):
    params = {"query": expr}
    if at is not None:
        params["time"] = at
    return get_json(f"{vm}/api/v1/query", params)["data"]["result"]


def alerts_of(vmalert):
    return get_json(f"{vmalert}/api/v1/alerts")["data"]["alerts"] or []


def where(labels, keys=("storage_class", "node")):
    return " ".join(f"{k}={labels[k]}" for k in keys if labels.get(k))


def notifier(port, path):
    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with open(path, "ab") as f:
                f.write(body + b"\n")
            self.send_response(200)
            self.end_headers()

        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(port)), Sink).serve_forever()


def series(vm, cluster):
    series = {}
    url = f"{vm}/api/v1/export?" + urllib.parse.urlencode(
        {"match[]": f'{{__name__=~"pie_.*",cluster="{cluster}"}}', "end": int(time.time()) + 3600})
    try:
        lines = urllib.request.urlopen(url, timeout=30).read().decode().splitlines()
    except (urllib.error.URLError, OSError) as e:
        fail(f"{url}: {e}")
    for line in lines:
        s = json.loads(line)
        m = s["metric"]
        key = (m.pop("__name__"), tuple(sorted((k, v) for k, v in m.items() if k != "cluster")))
        old = series.get(key, ([], []))
        series[key] = (old[0] + s["timestamps"], old[1] + s["values"])
    probes = {k: v for k, v in series.items() if dict(k[1]).get("pie_probe_name")}
    names = sorted({dict(k[1])["pie_probe_name"] for k in probes})
    classes = sorted({dict(k[1]).get("storage_class", "") for k in probes})
    print(f"  with pie_probe_name={','.join(names)}, storage_class={','.join(classes)}, cluster={cluster}:")
    for (name, labels), (ts, vs) in sorted(probes.items()):
        last = vs[max(range(len(ts)), key=ts.__getitem__)]
        shown = ",".join(f'{k}="{v}"' for k, v in labels if k not in ("pie_probe_name", "storage_class"))
        n = len(ts)
        print(f"    {name}{{{shown}}} = {last:.6g}  ({n} sample{'s' if n > 1 else ''})")
    others = sorted({name for (name, labels) in series if (name, labels) not in probes})
    print(f"  plus {len(series) - len(probes)} self-metric series: " + ", ".join(others))


def print_alerts(alerts, indent="  "):
    if not alerts:
        print(f"{indent}none")
    for a in sorted(alerts, key=lambda a: (a["name"], sorted(a["labels"].items()))):
        l = a["labels"]
        keys = ("severity", "cluster", "pie_probe_name", "storage_class", "node")
        labels = " ".join(k + "=" + l[k] for k in keys if l.get(k))
        print(f"{indent}{a['state'].upper()} {a['name']} {labels} value={a['value']}")
        print(f"{indent}  " + a["annotations"].get("summary", ""))


def rules(vmalert):
    groups = get_json(f"{vmalert}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    bad = [r["name"] for r in rules if r.get("lastError")]
    print(f"  {len(rules)} shipped rules loaded, {len(rules) - len(bad)} evaluated without error"
          + (f"; errors: {bad}" if bad else ""))


def notifications(path):
    names = set()
    try:
        lines = open(path).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        for a in json.loads(line):
            l = a["labels"]
            names.add((l["alertname"], where(l)))
    if names:
        print("  sent to the notifier (Alertmanager's API): "
              + ", ".join(f"{n} ({w})" for n, w in sorted(names)))


# Outcome counters: (metric, probe kind, labels to group by).
COUNTERS = (("pie_provision_probe_total", "provision", "pie_probe_name, storage_class, on_time"),
            ("pie_mount_probe_total", "mount", "pie_probe_name, storage_class, node, on_time"))


def outcome_counts(vm):
    """{(pie_probe_name, storage_class, kind, node): {"on time": n, "late": n, reasons...}}"""
    counts = {}
    for metric, kind, by in COUNTERS:
        for r in query(vm, f"sum by ({by}) (last_over_time({metric}[1h]))"):
            l = r["metric"]
            key = (l["pie_probe_name"], l["storage_class"], kind, l.get("node", ""))
            what = "on time" if l["on_time"] == "true" else "late"
            counts.setdefault(key, {})[what] = int(float(r["value"][1]))
    by = "pie_probe_name, storage_class, probe, node, reason"
    for r in query(vm, f"sum by ({by}) (last_over_time(pie_probe_failures_total[1h]))"):
        l = r["metric"]
        node = l.get("node", "") if l["probe"] == "mount" else ""
        key = (l["pie_probe_name"], l["storage_class"], l["probe"], node)
        counts.setdefault(key, {})[l["reason"]] = int(float(r["value"][1]))
    return counts


def describe(counts):
    on_time, late = counts.get("on time", 0), counts.get("late", 0)
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(counts.items()) if r not in ("on time", "late"))
    return f"{on_time} on time, {late} late" + (f" ({reasons})" if reasons else "")


def outcomes(vm):
    counts = outcome_counts(vm)
    if not counts:
        print("  none yet")
    for (probe, sc, kind, node), c in sorted(counts.items()):
        print(f"  {probe:<8} {sc:<13} {kind:<9} {node or '-':<11} {describe(c)}")


def parse_want(text):
    name, _, labels = text.partition(":")
    pairs = dict(p.split("=", 1) for p in labels.split(",") if p)
    return name, pairs


def matches(alert, want):
    name, labels = want
    return alert["name"] == name and all(alert["labels"].get(k) == v for k, v in labels.items())


def watch(vm, vmalert, t0, timeout, wants, marks=None):
    wants = [parse_want(w) for w in wants]
    t0 = float(t0)
    deadline = time.time() + float(timeout)
    stamp = lambda: "[{:02d}:{:02d}]".format(*divmod(int(time.time() - t0), 60))
    # What was counted before the watch is the baseline: only what lands from now on is shown.
    seen_counts, seen_alerts = outcome_counts(vm), {}
    durations = {r["name"]: r.get("duration", 0)
                 for g in get_json(f"{vmalert}/api/v1/rules")["data"]["groups"] for r in g["rules"]}
    last_note = time.time()
    while True:
        counts = outcome_counts(vm)
        for key, c in sorted(counts.items()):
            old = seen_counts.get(key, {})
            changed = {k: n - old.get(k, 0) for k, n in c.items() if n > old.get(k, 0)}
            if changed:
                probe, sc, kind, node = key
                what = ", ".join(f"+{n} {k}" for k, n in sorted(changed.items()))
                print(f"  {stamp()} {probe} {sc} {kind}{' on ' + node if node else ''}: {what}"
                      f"  (so far {describe(c)})", flush=True)
                last_note = time.time()
        seen_counts = counts
        active = {(a["name"], tuple(sorted(a["labels"].items()))): a for a in alerts_of(vmalert)
                  if a["name"] in STORAGE_ALERTS}
        for key, a in sorted(active.items()):
            if seen_alerts.get(key) != a["state"]:
                extra = ""
                if a["state"] == "pending":
                    extra = f"  (fires if it holds for {durations.get(a['name'], 0) / 60:g} min)"
                print(f"  {stamp()} vmalert: {a['state'].upper()} {a['name']} {where(a['labels'])}{extra}",
                      flush=True)
                if a["state"] == "firing" and marks:
                    with open(marks, "a") as f:
                        f.write(f"{a['name']} fires={int(time.time())}\n")
                last_note = time.time()
        for key in set(seen_alerts) - set(active):
            print(f"  {stamp()} vmalert: resolved {key[0]} {where(dict(key[1]))}", flush=True)
        seen_alerts = {k: a["state"] for k, a in active.items()}
        firing = [a for a in active.values() if a["state"] == "firing"]
        missing = [w for w in wants if not any(matches(a, w) for a in firing)]
        if not missing:
            return
        if time.time() > deadline:
            fail("after {:.0f} min these alerts do not fire: {}".format(
                float(timeout) / 60, ", ".join(f"{n} {where(l)}" for n, l in missing)))
        if time.time() - last_note >= 60:
            print(f"  {stamp()} waiting for: " + ", ".join(f"{n} {where(l)}" for n, l in missing),
                  flush=True)
            last_note = time.time()
        time.sleep(5)


def verdict(vmalert, args):
    cut = args.index("--quiet") if "--quiet" in args else len(args)
    wants, quiet = args[:cut], args[cut + 1:]
    wants = [parse_want(w) for w in wants]
    quiet = [tuple(q.split("=", 1)) for q in quiet]
    storage = [a for a in alerts_of(vmalert) if a["name"] in STORAGE_ALERTS]
    print_alerts(storage)
    problems = []
    for name, labels in wants:
        if not any(a["state"] == "firing" and matches(a, (name, labels)) for a in storage):
            problems.append(f"{name} {where(labels)} does not fire")
    for key, value in quiet:
        noisy = [a for a in storage if a["labels"].get(key) == value]
        what = "StorageClass" if key == "storage_class" else "node"
        if noisy:
            problems.append(f"{what} {value} should be quiet but has "
                            + ", ".join(f"{a['state']} {a['name']}" for a in noisy))
        else:
            print(f"  quiet: {what} {value}: no storage alert, not even pending")
    if problems:
        fail("; ".join(problems))


def plot(vm, start, end, path, *marks):
    try:
        import matplotlib
    except ImportError:
        fail("matplotlib is not installed: python3 -m pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime

    start, end = int(float(start)), int(float(end))
    step = max(15, (end - start) // 200)

    def series_of(expr, label):
        params = {"query": expr, "start": start, "end": end, "step": step}
        out = []
        for r in get_json(f"{vm}/api/v1/query_range", params)["data"]["result"]:
            xs, ys, last = [], [], None
            for t, v in r["values"]:
                if last is not None and float(t) - last > 1.5 * step:
                    # A gap (no probe in the window): break the line instead of bridging it.
                    xs.append(datetime.fromtimestamp(last + step))
                    ys.append(float("nan"))
                xs.append(datetime.fromtimestamp(float(t)))
                ys.append(float(v))
                last = float(t)
            out.append((label(r["metric"]), xs, ys))
        return sorted(out)

    node_sc = lambda m: f"{m.get('storage_class')} on {m.get('node')}"
    panels = [
        ("Mount probes on time (share of the last 5 min)",
         series_of("sum by (storage_class, node) (increase(pie_mount_probe_total{on_time=\"true\"}[5m]))"
                   " / sum by (storage_class, node) (increase(pie_mount_probe_total[5m]))", node_sc),
         "share", (-0.05, 1.05)),
        ("Provision probes on time (share of the last 5 min)",
         series_of("sum by (storage_class) (increase(pie_provision_probe_total{on_time=\"true\"}[5m]))"
                   " / sum by (storage_class) (increase(pie_provision_probe_total[5m]))",
                   lambda m: m.get("storage_class")),
         "share", (-0.05, 1.05)),
        ("Probe Pod start duration (creation to container start, mean over 2 min)",
         series_of("sum by (probe, storage_class, node) (increase(pie_probe_start_duration_seconds_sum[2m]))"
                   " / sum by (probe, storage_class, node) (increase(pie_probe_start_duration_seconds_count[2m]))",
                   lambda m: f"{m.get('probe')} {node_sc(m)}"),
         "seconds", None),
        ("fio mean latency of the last mount probe",
         series_of("pie_io_read_latency_on_mount_probe_seconds * 1e3", lambda m: f"read {node_sc(m)}")
         + series_of("pie_io_write_latency_on_mount_probe_seconds * 1e3", lambda m: f"write {node_sc(m)}"),
         "milliseconds", None),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), sharex=True)
    for ax, (title, lines, unit, ylim) in zip(axes, panels):
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(unit)
        for label, xs, ys in lines:
            ax.plot(xs, ys, label=label, marker=".", markersize=3, linewidth=1.2)
        if ylim:
            ax.set_ylim(*ylim)
        if lines:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
        ax.grid(alpha=0.3)
        ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end + (end - start) // 20))
        for i, mark in enumerate(marks):
            what, _, at = mark.rpartition("=")
            at = float(at)
            ax.axvline(datetime.fromtimestamp(at), color="grey", linestyle="--", linewidth=0.8)
            if ax is axes[0]:
                # Beside its line, on the side with room.
                left = at > start + 0.7 * (end - start)
                ax.annotate(what, (datetime.fromtimestamp(at), 0.8 - 0.1 * i), xycoords=("data", "axes fraction"),
                            xytext=(-3 if left else 3, 0), textcoords="offset points", fontsize=7,
                            color="dimgrey", ha="right" if left else "left",
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    every = max(1, (end - start) // 60 // 8)
    axes[-1].xaxis.set_major_locator(mdates.MinuteLocator(byminute=range(0, 60, every)))
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    axes[-1].set_xlabel("time (local)")
    fig.suptitle("pie demo: probe results in VictoriaMetrics (query_range)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"  {path}")


def main(argv):
    commands = {
        "notifier": (notifier, 2), "series": (series, 2), "rules": (rules, 1),
        "notifications": (notifications, 1), "outcomes": (outcomes, 1),
    }
    if len(argv) < 2:
        fail(f"usage: {__doc__.strip().splitlines()[2].strip()} ...")
    command, args = argv[1], argv[2:]
    if command == "plot" and len(args) >= 4:
        plot(*args)
    elif command == "alerts" and len(args) == 1:
        print_alerts(alerts_of(args[0]))
    elif command == "watch" and len(args) >= 5:
        marks = None
        if args[-2] == "--marks":
            marks, args = args[-1], args[:-2]
        watch(*args[:4], args[4:], marks)
    elif command == "verdict" and len(args) >= 2:
        verdict(args[0], args[1:])
    elif command in commands and len(args) == commands[command][1]:
        commands[command][0](*args)
    else:
        fail(f"bad arguments for {command!r}: {args} (see the usage in {argv[0]})")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except KeyboardInterrupt:
        sys.exit(130)
