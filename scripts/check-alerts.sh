#!/usr/bin/env bash
# Checks pie's alert rules (deploy/alerts/): the rendered files are up to date with source.yaml,
# promtool and vmalert accept them, every alert has firing and not-firing unit tests that pass
# (promtool test rules), the same tests pass in VictoriaMetrics + vmalert (replay mode, on
# 127.0.0.1), and they only use metrics and labels of docs/metrics.md.
# Needs: python3 with PyYAML, promtool (Debian `prometheus`), victoria-metrics and vmalert
# (Debian `victoria-metrics`).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in promtool vmalert victoria-metrics python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-alerts: $tool not found (task deps installs it)" >&2; exit 1; }
done

echo "check-alerts: rendered files up to date"
python3 scripts/gen-alerts.py --check

echo "check-alerts: promtool check rules"
promtool check rules deploy/alerts/pie.rules.yml

echo "check-alerts: vmalert -dryRun (MetricsQL and templates)"
vmalert -dryRun -rule=deploy/alerts/pie.rules.yml -loggerLevel=ERROR >/dev/null

echo "check-alerts: coverage, annotations, metric names"
python3 scripts/lib/check_alert_tests.py

echo "check-alerts: VMRule and PrometheusRule schemas"
python3 scripts/lib/check_manifests.py deploy/alerts/vmrule.yaml deploy/alerts/prometheusrule.yaml

echo "check-alerts: promtool test rules"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# promtool compares annotations verbatim; the tests check expressions, `for` and labels.
python3 - "$tmp/pie.rules.yml" <<'PY'
import sys, yaml
rules = yaml.safe_load(open("deploy/alerts/pie.rules.yml"))
for group in rules["groups"]:
    for rule in group["rules"]:
        rule.pop("annotations", None)
yaml.safe_dump(rules, open(sys.argv[1], "w"), sort_keys=False)
PY
cp deploy/alerts/tests/*.yaml "$tmp/"
promtool test rules "$tmp"/*.yaml

echo "check-alerts: the same tests in VictoriaMetrics + vmalert (MetricsQL)"
python3 scripts/lib/vm_alert_replay.py
echo "check-alerts: ok"
