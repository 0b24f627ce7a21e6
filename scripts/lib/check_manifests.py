#!/usr/bin/env python3
"""Validates pie's rendered manifests offline.

Usage: check_manifests.py FILE...   (multi-document YAML, as `kubectl kustomize` prints it)

* Built-in kinds: against the Kubernetes OpenAPI schemas of kubernetes-validate (strict: unknown
  fields are errors), for the oldest supported (1.29) and the newest Kubernetes it ships.
* PieProbe: against the openAPIV3Schema of deploy/crd/pie.topolvm.io_pieprobes.yaml.
* VMRule, PrometheusRule, VMServiceScrape: against the subset of their operators' CRD schemas
  written below (the CRDs themselves are not vendored here).
* pie's own invariants: least-privilege RBAC exactly as documented, a hardened Deployment,
  no placeholder values left in an overlay.
"""
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ["1.29.0", None]  # None: the newest kubernetes-validate knows

STR = {"type": "string"}
LABELS = {"type": "object", "additionalProperties": STR}
META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STR, "namespace": STR, "labels": LABELS, "annotations": LABELS},
}
RULE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "alert": STR, "record": STR, "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": "^[0-9]+[smhdwy]$"},
        "keep_firing_for": STR, "labels": LABELS, "annotations": LABELS,
    },
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
GROUPS = {
    "type": "array", "minItems": 1,
    "items": {
        "type": "object", "required": ["name", "rules"],
        "properties": {
            "name": STR, "interval": STR, "concurrency": {"type": "integer"},
            "labels": LABELS, "type": STR,
            "rules": {"type": "array", "minItems": 1, "items": RULE},
        },
    },
}
def cr(api_version, kind, spec):
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version}, "kind": {"const": kind},
            "metadata": META, "spec": spec,
        },
    }
CR_SCHEMAS = {
    "VMRule": cr("operator.victoriametrics.com/v1beta1", "VMRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": GROUPS}}),
    "PrometheusRule": cr("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": GROUPS}}),
    "VMServiceScrape": cr("operator.victoriametrics.com/v1beta1", "VMServiceScrape", {
        "type": "object", "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": LABELS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"port": STR, "path": STR, "interval": STR,
                               "scrapeTimeout": STR, "honorLabels": {"type": "boolean"},
                               "scheme": STR},
                "required": ["port"]}},
        }}),
}

# What pie-controller needs, and nothing more (see docs/deploy.md).
EXPECTED_CLUSTER_RULES = {
    ("pie.topolvm.io", "pieprobes"): {"get", "list", "watch"},
    ("pie.topolvm.io", "pieprobes/status"): {"patch"},
    ("batch", "cronjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "events"): {"get", "list", "watch", "create", "patch"},
    ("events.k8s.io", "events"): {"get", "list", "watch", "create", "patch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("", "persistentvolumes"): {"get", "list", "watch"},
    ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
}
EXPECTED_LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}


def crd_schema():
    crd = yaml.safe_load((ROOT / "deploy/crd/pie.topolvm.io_pieprobes.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = dict(version["schema"]["openAPIV3Schema"])
    # A CRD's structural schema leaves apiVersion/kind/metadata to the API server.
    schema.setdefault("properties", {})
    schema["properties"].update(
        {"apiVersion": {"const": "pie.topolvm.io/v1alpha1"}, "kind": {"const": "PieProbe"},
         "metadata": META})
    return openapi_to_jsonschema(schema)


def openapi_to_jsonschema(node):
    """Maps the OpenAPI v3 dialect of CRDs to JSON Schema: nullable, int-or-string, and
    closed objects (the API server prunes unknown fields; here they are errors)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "format")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out \
            and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def rules_of(obj):
    table = {}
    for rule in obj.get("rules", []):
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def check_invariants(obj, where, errors):
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "ClusterRole" and name == "pie-controller":
        got = rules_of(obj)
        if got != EXPECTED_CLUSTER_RULES:
            errors.append(f"{where}: ClusterRole pie-controller rules differ from the documented "
                          f"least privilege: {sorted(set(got.items()) ^ set(EXPECTED_CLUSTER_RULES.items()))}")
    if kind == "Role" and name == "pie-controller-leader-election":
        if rules_of(obj) != EXPECTED_LEASE_RULES:
            errors.append(f"{where}: Role {name}: unexpected rules {rules_of(obj)}")
    if kind in ("Role", "ClusterRole"):
        for rule in obj.get("rules", []):
            if "*" in rule.get("verbs", []) or "*" in rule.get("resources", []):
                errors.append(f"{where}: {kind} {name} uses a wildcard")
            if "nodes" in rule.get("resources", []) and set(rule["verbs"]) - {"get", "list", "watch"}:
                errors.append(f"{where}: {kind} {name} writes nodes")
    if kind == "Deployment" and name == "pie-controller":
        spec = obj["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        ok = psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            ok &= sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False \
                and sc.get("capabilities", {}).get("drop") == ["ALL"]
            ok &= c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz"
            ok &= c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz"
            ok &= "limits" in c.get("resources", {}) and "requests" in c.get("resources", {})
        if not ok:
            errors.append(f"{where}: Deployment {name} is not hardened (non-root, read-only root, "
                          "no capabilities, RuntimeDefault seccomp, probes, resources)")
        # One replica only with the remote-write buffer on a ReadWriteOnce PersistentVolumeClaim
        # (deploy/components/remote-write-buffer-pvc), which one Pod at a time can use.
        pvc_buffer = any(v.get("name") == "remote-write-buffer" and "persistentVolumeClaim" in v
                         for v in obj["spec"]["template"]["spec"].get("volumes", []))
        if obj["spec"].get("replicas", 1) < 2 and not pvc_buffer:
            errors.append(f"{where}: Deployment {name} needs 2 replicas")


def check_references(objs, path, errors):
    """Within one rendered file: volume mounts name a volume of the Pod, and ConfigMaps,
    Secrets-by-volume and ServiceAccounts a Pod uses are rendered too (or are documented as
    created by the user: the Secret pie-remote-write)."""
    have = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        ns = o["metadata"].get("namespace")
        spec = o["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        where = f"{path}: {o['kind']} {o['metadata']['name']}"
        sa = spec.get("serviceAccountName")
        if sa and ("ServiceAccount", ns, sa) not in have:
            errors.append(f"{where}: ServiceAccount {sa} is not rendered")
        for v in volumes.values():
            cm = v.get("configMap", {}).get("name")
            if cm and ("ConfigMap", ns, cm) not in have:
                errors.append(f"{where}: volume {v['name']}: ConfigMap {cm} is not rendered")
            pvc = v.get("persistentVolumeClaim", {}).get("claimName")
            if pvc and ("PersistentVolumeClaim", ns, pvc) not in have:
                errors.append(f"{where}: volume {v['name']}: PersistentVolumeClaim {pvc} is not rendered")
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    errors.append(f"{where}: mount {m['name']} has no volume")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ("ConfigMap", ns, ref["name"]) not in have:
                    errors.append(f"{where}: env {e['name']}: ConfigMap {ref['name']} is not rendered")
                elif ref:
                    (cm,) = [x for x in objs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == ref["name"]]
                    if ref["key"] not in cm.get("data", {}):
                        errors.append(f"{where}: env {e['name']}: key {ref['key']} not in ConfigMap {ref['name']}")


def validate(obj, where, errors, pieprobe_schema):
    kind = obj.get("kind")
    if kind == "PieProbe":
        validator = jsonschema.Draft202012Validator(pieprobe_schema)
    elif kind in CR_SCHEMAS:
        validator = jsonschema.Draft202012Validator(CR_SCHEMAS[kind])
    else:
        import kubernetes_validate
        for version in K8S_VERSIONS:
            version = version or kubernetes_validate.latest_version()
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except Exception as e:  # noqa: BLE001 (report every kind of failure)
                msg = getattr(e, "message", str(e))
                errors.append(f"{where}: {kind}/{obj['metadata'].get('name')} (Kubernetes {version}): {msg}")
        check_invariants(obj, where, errors)
        return
    for e in validator.iter_errors(obj):
        errors.append(f"{where}: {kind}/{obj['metadata'].get('name')}: {'/'.join(map(str, e.path))}: {e.message}")


def main(paths):
    pieprobe_schema = crd_schema()
    errors, count = [], 0
    for path in paths:
        objs = [o for o in yaml.safe_load_all(Path(path).read_text()) if o is not None]
        for i, obj in enumerate(objs):
            count += 1
            validate(obj, f"{path}#{i}", errors, pieprobe_schema)
        check_references(objs, path, errors)
    for e in errors:
        print("FAIL", e)
    print(f"check_manifests: {count} objects in {len(paths)} files, {len(errors)} errors")
    return 1 if errors or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
