#!/usr/bin/env python3
"""Checks the Helm chart charts/pie with real Helm, offline (scripts/check-chart.sh runs it).

Usage: check_chart.py HELM PIE_CONTROLLER

1. One source of truth: Chart.yaml's version and appVersion are Cargo.toml's version; the
   chart's copies of the CRD, the alert rules and the dashboard are deploy/'s files byte for
   byte, and the CRD is what `pie-controller crd` prints.
2. `helm lint --strict`, with the defaults and with each values file of charts/pie/ci/.
3. `helm template` with the required values, with every ci/ values file (full, vmauth-bearer,
   topolvm/pie's) rendered and validated like deploy/ (scripts/lib/check_manifests.py:
   Kubernetes schemas, strict, pie's RBAC and hardening invariants).
4. No drift: the chart and `kubectl kustomize` of deploy/ render the same objects for the same
   settings (default, everything on, vmauth-bearer), after removing what Helm adds (its labels,
   the config checksum, the CRD's keep policy) and kustomize's ConfigMap name hashes.
5. topolvm/pie's values map as documented (replicas, nodeSelector, tolerations, annotations,
   resources merged over pie's, pie's hardening kept).
6. Bad values: each gets a non-zero exit and an error that names it.
"""
import copy
import os
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_deploy_flags  # noqa: E402  (scripts/lib, beside this file)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/pie"
REQUIRED = ["--set", "remoteWrite.url=http://victoria-metrics.monitoring.svc:8428/api/v1/write",
            "--set", "cluster=my-cluster"]
# Labels and annotations Helm's chart adds and kustomize's deploy/ does not.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
               "app.kubernetes.io/version"}
HELM_ANNOTATIONS = {"checksum/config", "helm.sh/resource-policy"}
# kustomize's configMapGenerator appends a content hash unless disableNameSuffixHash.
HASHED = re.compile(r"^(pie-controller|pie-rules)-[a-z0-9]{10}$")

failures = []


def fail(msg):
    failures.append(msg)
    print("check-chart: FAIL", msg, file=sys.stderr)


def run(args, check=True):
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise SystemExit(f"check-chart: {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                         f"{proc.stderr}{proc.stdout}")
    return proc


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def cargo_version():
    text = (ROOT / "Cargo.toml").read_text()
    m = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', text, re.M | re.S)
    return m.group(1)


def check_sources(controller):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = cargo_version()
    for key in ("version", "appVersion"):
        if str(chart[key]) != version:
            fail(f"Chart.yaml {key} is {chart[key]!r}, Cargo.toml's version is {version!r}")
    copies = {
        "files/pie.topolvm.io_pieprobes.yaml": "deploy/crd/pie.topolvm.io_pieprobes.yaml",
        "files/pie.rules.yml": "deploy/alerts/pie.rules.yml",
        "files/pie-dashboard.json": "deploy/grafana/pie-dashboard.json",
    }
    for mine, theirs in copies.items():
        if (CHART / mine).read_bytes() != (ROOT / theirs).read_bytes():
            fail(f"charts/pie/{mine} differs from {theirs}: cp {theirs} charts/pie/{mine}")
    crd = run([controller, "crd"]).stdout
    if crd != (CHART / "files/pie.topolvm.io_pieprobes.yaml").read_text():
        fail("charts/pie/files/pie.topolvm.io_pieprobes.yaml is not `pie-controller crd`'s output: "
             "pie-controller crd > charts/pie/files/pie.topolvm.io_pieprobes.yaml")
    print(f"check-chart: Chart.yaml is {version}; the CRD, rules and dashboard are deploy/'s and the CRD is `pie-controller crd`'s")


def lint(helm):
    cases = [[]] + [["-f", str(f)] + REQUIRED for f in sorted((CHART / "ci").glob("*.yaml"))]
    for extra in cases:
        proc = run([helm, "lint", "--strict", str(CHART), *extra], check=False)
        if proc.returncode != 0 or "0 chart(s) failed" not in proc.stdout:
            fail(f"helm lint --strict {' '.join(extra) or '(defaults)'}:\n{proc.stdout}{proc.stderr}")
    print(f"check-chart: helm lint --strict: {len(cases)} runs (defaults and {len(cases) - 1} values files) pass")


def template(helm, *args, release="pie", namespace="pie"):
    # The PieProbe API as if the CRD were installed (pieProbes need it, see values.yaml).
    return run([helm, "template", release, str(CHART), "--namespace", namespace,
                "--api-versions", "pie.topolvm.io/v1alpha1/PieProbe", *args]).stdout


def kustomize(kubectl, tmp, resources, components=(), files=()):
    """deploy/ as a user's kustomization would combine it: directories as resources (namespace
    pie), components on top; plain files (which kustomize only loads from below its root) are
    appended as `kubectl apply -f` would apply them."""
    d = Path(tempfile.mkdtemp(dir=tmp))
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
             "namespace: pie",
             # deploy/base labels its objects so; a component included here is not under it.
             "labels:", "- pairs:", "    app.kubernetes.io/part-of: pie", "resources:"]
    rel = os.path.relpath(ROOT, d)  # kustomize takes relative paths only
    lines += [f"- {rel}/{r}" for r in resources]
    if components:
        lines += ["components:"] + [f"- {rel}/{c}" for c in components]
    (d / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    out = run([kubectl, "kustomize", str(d)]).stdout
    return out + "".join("\n---\n" + (ROOT / f).read_text() for f in files)


def strip_labels(labels):
    return {k: v for k, v in (labels or {}).items() if k not in HELM_LABELS}


def normalise(obj):
    """What must be equal: the object without Helm's bookkeeping and kustomize's hashes."""
    obj = copy.deepcopy(obj)

    def walk(node, path=()):
        if isinstance(node, dict):
            for key in list(node):
                value = node[key]
                if key in ("labels", "matchLabels") and isinstance(value, dict):
                    node[key] = strip_labels(value)
                elif key == "selector" and path[-1:] == ("spec",) and obj["kind"] == "Service":
                    node[key] = strip_labels(value)
                elif key == "annotations" and isinstance(value, dict):
                    node[key] = {k: v for k, v in value.items() if k not in HELM_ANNOTATIONS}
                elif key == "name" and isinstance(value, str) and HASHED.match(value):
                    node[key] = value.rsplit("-", 1)[0]
                else:
                    walk(value, path + (key,))
                if node.get(key) in ({}, None) and key in ("labels", "annotations"):
                    del node[key]
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(obj)
    # A Pod's volumes are a set by name (kustomize's strategic merge moves a patched one first).
    pod = obj.get("spec", {}).get("template", {}).get("spec", {}) if obj["kind"] == "Deployment" else {}
    if "volumes" in pod:
        pod["volumes"].sort(key=lambda v: v["name"])
    if obj["kind"] == "PieProbe":
        # deploy/samples' PieProbe is applied by hand and carries no labels.
        obj["metadata"].pop("labels", None)
    return obj


def key(obj):
    m = obj["metadata"]
    return (obj["kind"], m.get("namespace", ""), m["name"])


def compare(name, chart_text, deploy_text):
    chart = {key(o): o for o in map(normalise, docs(chart_text))}
    # The chart does not create its namespace (helm install --create-namespace; README.md).
    deploy = {key(o): o for o in map(normalise, docs(deploy_text)) if o["kind"] != "Namespace"}
    for k in sorted(set(deploy) - set(chart)):
        fail(f"{name}: deploy/ renders {k} and the chart does not")
    for k in sorted(set(chart) - set(deploy)):
        fail(f"{name}: the chart renders {k} and deploy/ does not")
    differing = 0
    for k in sorted(set(chart) & set(deploy)):
        if chart[k] != deploy[k]:
            differing += 1
            diff = difflib.unified_diff(
                yaml.safe_dump(deploy[k], sort_keys=True).splitlines(),
                yaml.safe_dump(chart[k], sort_keys=True).splitlines(),
                "deploy/", "chart", lineterm="")
            fail(f"{name}: {k} differs (- deploy/, + chart):\n" + "\n".join(diff))
    print(f"check-chart: drift {name}: {len(chart)} chart objects, {len(deploy)} deploy/ objects "
          f"(less the Namespace), {differing} differing")


def check_drift(helm, kubectl, tmp):
    ci = CHART / "ci"
    compare("default (deploy/overlays/vm-single)",
            template(helm, *REQUIRED),
            kustomize(kubectl, tmp, ["deploy/overlays/vm-single"]))
    compare("vmauth-bearer (deploy/overlays/vmauth-bearer)",
            template(helm, "-f", str(ci / "vmauth-bearer-values.yaml")),
            kustomize(kubectl, tmp, ["deploy/overlays/vmauth-bearer"]))
    compare("everything on (vm-single + remote-write-buffer-pvc, monitoring, alerts, grafana, samples)",
            template(helm, "-f", str(ci / "full-values.yaml")),
            kustomize(kubectl, tmp, ["deploy/overlays/vm-single", "deploy/alerts", "deploy/grafana"],
                      ["deploy/components/remote-write-buffer-pvc"],
                      ["deploy/monitoring/vmservicescrape.yaml", "deploy/alerts/vmrule.yaml",
                       "deploy/alerts/prometheusrule.yaml", "deploy/samples/pieprobe.yaml"]))


def check_crd_policy(helm):
    objs = docs(template(helm, *REQUIRED))
    (crd,) = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
    if crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
        fail("the CRD lacks helm.sh/resource-policy: keep (helm uninstall would delete every PieProbe)")
    objs = docs(template(helm, *REQUIRED, "--set", "crds.install=false"))
    if any(o["kind"] == "CustomResourceDefinition" for o in objs):
        fail("crds.install=false still renders the CRD")


def check_topolvm_values(helm):
    values = yaml.safe_load((CHART / "ci/topolvm-pie-values.yaml").read_text())
    objs = docs(template(helm, "-f", str(CHART / "ci/topolvm-pie-values.yaml"), *REQUIRED))
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    want = {
        "replicas": (dep["spec"]["replicas"], values["replicaCount"]),
        "nodeSelector": (pod["spec"].get("nodeSelector"), values["nodeSelector"]),
        "tolerations": (pod["spec"].get("tolerations"), values["tolerations"]),
        "podAnnotations": ({k: v for k, v in pod["metadata"]["annotations"].items() if k != "checksum/config"},
                           values["podAnnotations"]),
        "resources": (c["resources"], values["resources"]),
        "image": (c["image"], f"ghcr.io/pie-rs/pie-controller:{cargo_version()}"),
        # securityContext: {} of topolvm/pie's chart keeps pie's hardening.
        "securityContext.readOnlyRootFilesystem": (c["securityContext"].get("readOnlyRootFilesystem"), True),
        "podSecurityContext.runAsNonRoot": (pod["spec"]["securityContext"].get("runAsNonRoot"), True),
    }
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "pie-controller"]
    want["serviceAccount.annotations"] = (sa["metadata"].get("annotations"), values["serviceAccount"]["annotations"])
    (svc,) = [o for o in objs if o["kind"] == "Service"]
    port = {p["name"]: p["port"] for p in svc["spec"]["ports"]}["metrics"]
    want["service.metrics.port"] = (port, values["service"]["metrics"]["port"])
    # The ignored controller.* keys add no flag.
    want["args without topolvm/pie flags"] = (
        [a for a in c["args"] if re.match(r"--(monitoring-storage-class|create-probe-threshold|node-selector|probe-period|enable-pprof)", a)], [])
    for what, (got, expected) in want.items():
        if got != expected:
            fail(f"topolvm/pie values: {what} is {got!r}, expected {expected!r}")
    # NOTES.txt names every ignored key that is set.
    notes = run([helm, "install", "pie", str(CHART), "--dry-run=client", "--namespace", "pie",
                 "-f", str(CHART / "ci/topolvm-pie-values.yaml"), *REQUIRED]).stdout
    for k in ("monitoringStorageClasses", "createProbeThreshold", "nodeSelector", "probePeriod", "enablePProf"):
        if f"controller.{k}" not in notes.split("IGNORED values")[-1]:
            fail(f"NOTES.txt does not list the ignored controller.{k}")
    print(f"check-chart: topolvm/pie's values: {len(want)} mappings hold; NOTES.txt lists the 5 ignored controller.* keys")


def check_flags(helm, controller, tmp):
    """Every flag and PIE_* variable the chart can give pie-controller exists in
    `pie-controller run --help`, and a buffer directory is on a writable mount: the same check
    as deploy/'s (check_deploy_flags.py), over renders that switch on every flag the chart has."""
    renders = [
        REQUIRED + ["--set", "remoteWrite.extraUrls[0]=http://vm2:8428/api/v1/write",
                    "--set", "externalLabels.env=prod", "--set", "remoteWrite.buffer.maxBytes=1Gi",
                    "--set", "remoteWrite.auth.secretName=s", "--set", "remoteWrite.auth.bearerTokenKey=token",
                    "--set", "remoteWrite.auth.caKey=ca.crt", "--set", "controller.namespaces[0]=pie",
                    "--set", "controller.pushInterval=15s", "--set", "imagePullSecrets[0].name=regcred"],
        REQUIRED + ["--set", "remoteWrite.auth.secretName=s", "--set", "remoteWrite.auth.username=u",
                    "--set", "remoteWrite.auth.passwordKey=password"],
    ]
    paths = []
    for i, args in enumerate(renders):
        out = Path(tmp) / f"flags-{i}.yaml"
        out.write_text(template(helm, *args))
        paths.append(str(out))
    help_text = run([controller, "run", "--help"]).stdout
    problems, checked = check_deploy_flags.check(help_text, paths)
    for p in problems:
        fail(f"the chart: {p}")
    if checked != len(renders):
        fail(f"expected one pie-controller container per render, found {checked}")
    print(f"check-chart: the flags and PIE_* variables of {checked} renders all exist in pie-controller run --help")


# Each bad input and what its error must say. `required`/`fail` messages are the chart's own,
# the others are Helm's values.schema.json errors, which name the key.
BAD = [
    ([], "remoteWrite.url is required"),
    (["--set", "remoteWrite.url=http://vm:8428/api/v1/write"], "cluster is required"),
    (["--set", "remoteWrite.url=ftp://vm/api/v1/write", "--set", "cluster=c"], "at '/remoteWrite/url'"),
    (["--set", "remoteWrite.url=http://vm:8428/api/v1/write", "--set", "cluster=a b"], "at '/cluster': 'a b' does not match pattern"),
    (REQUIRED + ["--set", "replicaCount=0"], "at '/replicaCount': minimum: got 0, want 1"),
    (REQUIRED + ["--set-string", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
    (REQUIRED + ["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    (REQUIRED + ["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
    (REQUIRED + ["--set", "service.metrics.port=70000"], "at '/service/metrics/port': maximum"),
    (REQUIRED + ["--set", "externalLabels.bad-name=x"], "at '/externalLabels': additional properties 'bad-name' not allowed"),
    (REQUIRED + ["--set", "externalLabels.cluster=other"], "externalLabels.cluster: the cluster label is the value cluster"),
    (REQUIRED + ["--set", "controller.pushInterval=30"], "at '/controller/pushInterval'"),
    (REQUIRED + ["--set", "controller.extraArgs[0]=push-interval=10s"], "at '/controller/extraArgs/0': 'push-interval=10s' does not match pattern '^--'"),
    (REQUIRED + ["--set", "remoteWrite.buffer.maxBytes=lots"], "at '/remoteWrite/buffer/maxBytes'"),
    (REQUIRED + ["--set", "imagePullSecrets[0]=regcred"], "at '/imagePullSecrets/0': got string, want object"),
    (REQUIRED + ["--set", "image.repository=ghcr.io/topolvm/pie"], "is topolvm/pie's image"),
    (REQUIRED + ["--set", "image.reference=registry.example/pie-controller@sha256:" + "a" * 64],
     "agent.image.repository (or agent.image.reference) is required"),
    (REQUIRED + ["--set", "image.repository=registry.example/pie"], "agent.image.repository is required"),
    (REQUIRED + ["--set", "remoteWrite.auth.bearerTokenKey=token"], "remoteWrite.auth.secretName is required"),
    (REQUIRED + ["--set", "remoteWrite.auth.secretName=s", "--set", "remoteWrite.auth.username=u"],
     "remoteWrite.auth.passwordKey is required"),
    (REQUIRED + ["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
]


def check_bad_values(helm):
    # Without --api-versions: a pieProbes value on a cluster without the CRD is refused too.
    cases = BAD + [(REQUIRED + ["--set", "pieProbes[0].name=p", "--set", "pieProbes[0].spec.monitoringStorageClass=sc"],
                    "pieProbes need the PieProbe CRD")]
    for args, says in cases:
        proc = run([helm, "template", "pie", str(CHART), "--namespace", "pie", *args], check=False)
        if proc.returncode == 0:
            fail(f"helm template {' '.join(args)} succeeded; expected an error saying {says!r}")
        elif says not in proc.stderr:
            fail(f"helm template {' '.join(args)}: the error does not say {says!r}:\n{proc.stderr}")
    print(f"check-chart: {len(cases)} bad values refused, each with an error naming it")


def main(helm, controller, kubectl):
    # Helm's config, cache and data in a temp dir: nothing of the user's is read or written.
    home = tempfile.mkdtemp(prefix="pie-check-chart-")
    for var in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        os.environ[var] = os.path.join(home, var.split("_")[1].lower())
    try:
        return checks(helm, controller, kubectl)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def checks(helm, controller, kubectl):
    print("check-chart:", run([helm, "version", "--short"]).stdout.strip())
    check_sources(controller)
    lint(helm)
    with tempfile.TemporaryDirectory() as tmp:
        rendered = []
        # topolvm/pie's file asks for replicaCount: 1, which the chart honours
        # (check_topolvm_values); check_manifests.py's invariants want pie's two replicas.
        cases = [("default", REQUIRED)] + [
            (f.stem, ["-f", str(f)] + ([] if f.stem in ("full-values", "vmauth-bearer-values")
                                       else REQUIRED + ["--set", "replicaCount=2"]))
            for f in sorted((CHART / "ci").glob("*.yaml"))]
        for name, args in cases:
            out = Path(tmp) / f"chart-{name}.yaml"
            out.write_text(template(helm, *args))
            rendered.append(str(out))
        proc = run([sys.executable, str(ROOT / "scripts/lib/check_manifests.py"), *rendered], check=False)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            fail("the rendered chart does not validate (above)")
        check_drift(helm, kubectl, tmp)
        check_flags(helm, controller, tmp)
    check_crd_policy(helm)
    check_topolvm_values(helm)
    check_bad_values(helm)
    if failures:
        print(f"check-chart: {len(failures)} failures", file=sys.stderr)
        return 1
    print("check-chart: ok")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: check_chart.py HELM PIE_CONTROLLER KUBECTL")
    sys.exit(main(*sys.argv[1:]))
