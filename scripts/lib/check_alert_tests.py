#!/usr/bin/env python3
"""Checks pie's alert rules beyond promtool: every alert has a firing and a not-firing unit
test, the storage alerts are covered for image-pull-only failures, ineligible nodes and short
blips, every metric is in docs/metrics.md, every alert has severity, summary, description and
runbook, and the VMRule/PrometheusRule carry exactly the plain file's groups.

Usage: check_alert_tests.py  (from anywhere)
"""
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_doc import ROOT, documented, unknown_metrics  # noqa: E402

ALERTS = ROOT / "deploy" / "alerts"


def main():
    errors = []
    plain = yaml.safe_load((ALERTS / "pie.rules.yml").read_text())
    for name in ("vmrule.yaml", "prometheusrule.yaml"):
        if yaml.safe_load((ALERTS / name).read_text())["spec"]["groups"] != plain["groups"]:
            errors.append(f"{name}: groups differ from pie.rules.yml")
    docs = documented()
    alerts = {}
    records = set()
    for group in plain["groups"]:
        for rule in group["rules"]:
            for bad in unknown_metrics(rule["expr"], docs):
                errors.append(f"{rule.get('alert') or rule.get('record')}: {bad} is not in docs/metrics.md")
            if "record" in rule:
                records.add(rule["record"])
                continue
            alerts[rule["alert"]] = rule
            sev = rule.get("labels", {}).get("severity")
            if sev not in ("critical", "warning", "info"):
                errors.append(f"{rule['alert']}: severity {sev!r}")
            for key in ("summary", "description", "runbook", "runbook_url"):
                if not rule.get("annotations", {}).get(key):
                    errors.append(f"{rule['alert']}: no {key} annotation")
    firing, quiet, names = {}, {}, {}
    for path in sorted((ALERTS / "tests").glob("*.yaml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                target = firing if case.get("exp_alerts") else quiet
                target.setdefault(case["alertname"], []).append(test["name"])
                names.setdefault(case["alertname"], set()).add(test["name"])
    for alert in alerts:
        if alert not in firing:
            errors.append(f"{alert}: no unit test where it fires")
        if alert not in quiet:
            errors.append(f"{alert}: no unit test where it does not fire")
    for alert in set(firing) | set(quiet):
        if alert not in alerts:
            errors.append(f"tests name an unknown alert {alert}")
    # The cases the brief insists on, by test name.
    required = {
        "image pull": ["PieProvisionProbeFailing", "PieMountProbeFailingOnNode"],
        "ineligible": ["PieMountProbeFailingOnNode", "PieMountProbeFailingOnManyNodes"],
        "blip": ["PieProvisionProbeFailing"],
        "reboot": ["PieMountProbeFailingOnNode"],
    }
    for word, wanted in required.items():
        for alert in wanted:
            if not any(word in t for t in quiet.get(alert, [])):
                errors.append(f"{alert}: no not-firing test about {word!r}")
    for e in errors:
        print("FAIL", e)
    print(f"check_alert_tests: {len(alerts)} alerts, {len(records)} recording rules, "
          f"{sum(map(len, firing.values()))} firing and {sum(map(len, quiet.values()))} quiet cases, "
          f"{len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
