//! The Helm chart `charts/pie` with real Helm (`e2e/helm`, built by scripts/build-helm.sh) on the
//! local cluster of `e2e/cluster`: the chart's own Deployment runs the real `pie-controller` on
//! the process kubelet (the image `ghcr.io/pie-rs/pie-controller` maps to the binary built for
//! the tests), pushes to a real VictoriaMetrics and turns PieProbes into CronJobs.
//!
//! One test, in the order a user lives through it: a fresh `helm install`, `helm uninstall`
//! (the CRD and the PieProbes stay), a release shaped like topolvm/pie's (its CRD a template
//! without a keep policy, its Deployment `pie`), `helm upgrade` of it to pie's chart with a values
//! file written for topolvm/pie's chart (the PieProbes and the CRD survive, nothing is
//! duplicated), a second upgrade, and a last uninstall.
//!
//! The process kubelet has no network namespaces: containers share this host's loopback, so the
//! chart is told to listen on 127.0.0.1 at free ports (`controller.listenHost`,
//! `controller.ports.*`) with one replica (two would bind the same ports), and probe Pods post to
//! `http://127.0.0.1:<port>` (`controller.url`). Skipped, saying so, only without Go.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e::cluster::{LOCAL_STORAGE_CLASS, TestCluster, build_helm, eventually, test_cluster};
use e2e::{VictoriaMetrics, free_port, now_millis, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use pie_api::names;
use pie_controller::crd::PieProbe;

const NAMESPACE: &str = "pie";
const RELEASE: &str = "pie";
const CLUSTER_LABEL: &str = "helm-e2e";
const CRD: &str = "pieprobes.pie.topolvm.io";
const NODE: &str = "pie-node-1";

/// Real Helm against the cluster, with its config, cache and data in a temp dir of its own.
struct Helm {
    binary: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new(cluster: &TestCluster) -> Helm {
        Helm {
            binary: build_helm(),
            kubeconfig: cluster.kubeconfig.clone(),
            home: tempfile::Builder::new()
                .prefix("pie-helm-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        Command::new(&self.binary)
            .current_dir(repo_root())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.binary.display()))
    }

    /// Runs helm, panics with its output when it fails, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (kind, name) of every object in the release's manifest.
    fn manifest_objects(&self) -> Vec<(String, String)> {
        let text = self.ok(&["get", "manifest", RELEASE, "-n", NAMESPACE]);
        let mut objects = Vec::new();
        let (mut kind, mut name) = (None, None);
        for line in text.lines() {
            if line == "---" {
                if let (Some(k), Some(n)) = (kind.take(), name.take()) {
                    objects.push((k, n));
                }
            } else if let Some(k) = line.strip_prefix("kind: ") {
                kind = Some(k.trim().to_owned());
            } else if let Some(n) = line.strip_prefix("  name: ")
                && name.is_none()
            {
                name = Some(n.trim().to_owned());
            }
        }
        if let (Some(k), Some(n)) = (kind, name) {
            objects.push((k, n));
        }
        objects
    }
}

/// What the chart needs on the process kubelet: the required values (a real VictoriaMetrics),
/// loopback addresses at free ports, one replica.
fn loopback_values(vm: &VictoriaMetrics) -> Vec<String> {
    let (results, health, metrics) = (free_port(), free_port(), free_port());
    vec![
        format!("remoteWrite.url={}", vm.write_url()),
        format!("cluster={CLUSTER_LABEL}"),
        "controller.listenHost=127.0.0.1".into(),
        format!("controller.ports.results={results}"),
        format!("controller.ports.health={health}"),
        format!("controller.ports.metrics={metrics}"),
        format!("controller.url=http://127.0.0.1:{results}"),
        "replicaCount=1".into(),
    ]
}

fn with_sets<'a>(args: &[&'a str], sets: &'a [String]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    for s in sets {
        all.push("--set");
        all.push(s);
    }
    all
}

/// The chart of a release as topolvm/pie's chart makes it, in the points that matter for an
/// upgrade: the CRD is a template without a keep policy (so Helm deletes it, and every
/// PieProbe, if the next chart's manifest lacks it), and the controller's Deployment, Service
/// and ServiceAccount are named after the release (`pie`) with selector labels of their own.
/// Its image is topolvm/pie's, which the process kubelet cannot pull: it only has to exist.
fn write_topolvm_like_chart(dir: &Path) -> PathBuf {
    let chart = dir.join("topolvm-like");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: pie\nversion: 0.11.0\nappVersion: 0.17.0\n",
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("deploy/crd/pie.topolvm.io_pieprobes.yaml"),
        chart.join("templates/crd.yaml"),
    )
    .unwrap();
    let labels = "app.kubernetes.io/name: pie\n    app.kubernetes.io/instance: {{ .Release.Name }}";
    std::fs::write(
        chart.join("templates/controller.yaml"),
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{{{ .Release.Name }}}}\n  namespace: {{{{ .Release.Namespace }}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: {{{{ .Release.Name }}}}\n  namespace: {{{{ .Release.Namespace }}}}\nspec:\n  selector:\n    {labels}\n  ports:\n  - name: receiver\n    port: 8082\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{{{ .Release.Name }}}}\n  namespace: {{{{ .Release.Namespace }}}}\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: pie\n      app.kubernetes.io/instance: {{{{ .Release.Name }}}}\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: pie\n        app.kubernetes.io/instance: {{{{ .Release.Name }}}}\n    spec:\n      serviceAccountName: {{{{ .Release.Name }}}}\n      containers:\n      - name: controller\n        image: ghcr.io/topolvm/pie:0.17.0\n        args: [controller]\n"
        ),
    )
    .unwrap();
    chart
}

fn probe(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "monitoringStorageClass": LOCAL_STORAGE_CLASS, "probePeriod": 1, "probeThreshold": "30s",
            "nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}
        }
    })
}

/// The CronJobs the controller makes for `probe`: one provision probe, one mount probe on NODE.
fn wanted_cron_jobs(probe: &str) -> BTreeSet<String> {
    BTreeSet::from([
        names::provision_cronjob(probe, LOCAL_STORAGE_CLASS),
        names::mount_cronjob(probe, NODE, LOCAL_STORAGE_CLASS),
    ])
}

/// Names of the CronJobs owned by the PieProbe of `uid`.
async fn cron_jobs_of(api: &Api<CronJob>, uid: &str) -> BTreeSet<String> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|c| c.owner_references().iter().any(|o| o.uid == uid))
        .map(|c| c.name_any())
        .collect()
}

async fn uid<K>(api: &Api<K>, name: &str) -> Option<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .unwrap()
        .and_then(|o| o.meta().uid.clone())
}

/// Waits until the chart's Deployment has its one replica Ready (readiness = the Lease's
/// leader with synced caches) and VictoriaMetrics has a `pie_controller_leader == 1` sample
/// newer than `since` (milliseconds) with the `cluster` label and `labels` (more matchers),
/// pushed by that controller.
async fn controller_runs(
    cluster: &TestCluster,
    vm: &VictoriaMetrics,
    since: i64,
    labels: &str,
    what: &str,
) {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client().await, NAMESPACE);
    let ready = e2e::cluster::within(Duration::from_secs(120), || async {
        deployments
            .get_opt("pie-controller")
            .await
            .unwrap()
            .and_then(|d| d.status)
            .is_some_and(|s| s.ready_replicas == Some(1) && s.updated_replicas == Some(1))
    })
    .await;
    if !ready {
        let pods = cluster.kubectl(&["-n", NAMESPACE, "get", "pods", "-o", "wide"]);
        let logs = cluster.kubectl(&[
            "-n",
            NAMESPACE,
            "logs",
            "deploy/pie-controller",
            "--tail=40",
        ]);
        panic!(
            "{what}: the chart's Deployment pie-controller has no Ready replica after 120 s\npods:\n{}\ncontroller log:\n{}{}\nkubelet log:\n{}",
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr),
            cluster.log_tail("kubelet", 30)
        );
    }
    let selector = format!("pie_controller_leader{{cluster=\"{CLUSTER_LABEL}\"{labels}}}");
    let fresh = |series: &[e2e::ExportedSeries]| {
        series.iter().any(|s| {
            s.timestamps
                .iter()
                .zip(&s.values)
                .any(|(t, v)| *t > since && *v == 1.0)
        })
    };
    let series = vm
        .export_until(&selector, Duration::from_secs(60), fresh)
        .await;
    assert!(
        fresh(&series),
        "{what}: VictoriaMetrics has no {selector} == 1 newer than {since} from the chart's controller: {series:?}"
    );
}

/// Names of the objects of `K` in the namespace that carry the release's instance label.
async fn released<K>(cluster: &TestCluster) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    Api::<K>::namespaced(cluster.client().await, NAMESPACE)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_uninstall_and_upgrade_from_a_topolvm_pie_release() {
    let Some(cluster) = test_cluster().filter(|c| c.is_local()) else {
        return;
    };
    let helm = Helm::new(cluster);
    let client = cluster.client().await;
    let vm = VictoriaMetrics::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let probes: Api<PieProbe> = Api::namespaced(client.clone(), NAMESPACE);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let chart = repo_root().join("charts/pie");
    let chart = chart.to_str().unwrap();

    // Without the two required values, the install fails naming them and creates nothing.
    let out = helm.run(&[
        "install",
        RELEASE,
        chart,
        "-n",
        NAMESPACE,
        "--create-namespace",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("remoteWrite.url is required"),
        "helm install without values: {said}"
    );
    assert!(crds.get_opt(CRD).await.unwrap().is_none());

    // 1. A fresh install: the CRD, RBAC, the Deployment; pie runs and pushes; a PieProbe gets
    // its CronJobs.
    let sets = loopback_values(&vm);
    let since = now_millis();
    let install = helm.ok(&with_sets(
        &[
            "install",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--create-namespace",
        ],
        &sets,
    ));
    assert!(
        install.contains("STATUS: deployed"),
        "helm install: {install}"
    );
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{CRD}"),
    ]);
    controller_runs(cluster, &vm, since, "", "after helm install").await;
    cluster.apply(&probe("first"));
    let first = uid(&probes, "first").await.expect("PieProbe first");
    eventually(
        "the CronJobs of PieProbe first after helm install",
        Duration::from_secs(60),
        || async { cron_jobs_of(&cron_jobs, &first).await == wanted_cron_jobs("first") },
    )
    .await;
    let crd_uid = uid(&crds, CRD).await.expect("the CRD");

    // 2. helm uninstall removes the release's objects and leaves the CRD and the PieProbes.
    let uninstall = helm.ok(&["uninstall", RELEASE, "-n", NAMESPACE]);
    assert!(
        uninstall.contains(CRD),
        "helm uninstall names the kept CRD: {uninstall}"
    );
    eventually(
        "helm uninstall to remove the Deployment",
        Duration::from_secs(60),
        || async {
            deployments
                .get_opt("pie-controller")
                .await
                .unwrap()
                .is_none()
        },
    )
    .await;
    assert_eq!(
        uid(&crds, CRD).await,
        Some(crd_uid.clone()),
        "the CRD stays"
    );
    assert_eq!(
        uid(&probes, "first").await,
        Some(first.clone()),
        "PieProbes stay"
    );
    assert!(
        released::<ServiceAccount>(cluster).await.is_empty()
            && released::<Service>(cluster).await.is_empty(),
        "helm uninstall left the release's ServiceAccounts or Services"
    );

    // 3. A release as topolvm/pie's chart makes it (it adopts the kept CRD, whose ownership
    // annotations name this release).
    let dir = tempfile::tempdir().unwrap();
    let old_chart = write_topolvm_like_chart(dir.path());
    helm.ok(&[
        "install",
        RELEASE,
        old_chart.to_str().unwrap(),
        "-n",
        NAMESPACE,
    ]);
    assert!(deployments.get_opt(RELEASE).await.unwrap().is_some());
    assert_eq!(uid(&crds, CRD).await, Some(crd_uid.clone()));

    // 4. helm upgrade to pie's chart with topolvm/pie's values file (+ the required values):
    // the CRD and the PieProbe survive, topolvm/pie's objects go, pie runs and reconciles.
    let topolvm_values = repo_root().join("charts/pie/ci/topolvm-pie-values.yaml");
    let sets = loopback_values(&vm);
    let since = now_millis();
    let upgrade = helm.ok(&with_sets(
        &[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "-f",
            topolvm_values.to_str().unwrap(),
        ],
        &sets,
    ));
    let ignored = upgrade.split("IGNORED values").nth(1).unwrap_or_default();
    for key in [
        "monitoringStorageClasses",
        "createProbeThreshold",
        "nodeSelector",
        "probePeriod",
        "enablePProf",
    ] {
        assert!(
            ignored.contains(&format!("controller.{key}")),
            "NOTES.txt of the upgrade does not list the ignored controller.{key}: {upgrade}"
        );
    }
    assert_eq!(
        uid(&crds, CRD).await,
        Some(crd_uid.clone()),
        "the upgrade from a topolvm/pie release must keep the CRD"
    );
    assert_eq!(
        uid(&probes, "first").await,
        Some(first.clone()),
        "the upgrade from a topolvm/pie release must keep the PieProbes"
    );
    eventually(
        "the upgrade to remove topolvm/pie's Deployment pie",
        Duration::from_secs(60),
        || async { deployments.get_opt(RELEASE).await.unwrap().is_none() },
    )
    .await;
    controller_runs(
        cluster,
        &vm,
        since,
        "",
        "after helm upgrade from topolvm/pie",
    )
    .await;
    let dep = deployments.get("pie-controller").await.unwrap();
    let pod = dep.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("kubernetes.io/os"),
        Some(&"linux".to_owned()),
        "topolvm/pie's nodeSelector value"
    );
    cluster.apply(&probe("second"));
    let second = uid(&probes, "second").await.expect("PieProbe second");
    eventually(
        "the CronJobs of PieProbe second after the upgrade",
        Duration::from_secs(60),
        || async { cron_jobs_of(&cron_jobs, &second).await == wanted_cron_jobs("second") },
    )
    .await;
    assert_eq!(
        cron_jobs_of(&cron_jobs, &first).await,
        wanted_cron_jobs("first"),
        "PieProbe first's CronJobs after the upgrade: the same, none duplicated"
    );

    // 5. Another upgrade, with pie's own values: nothing duplicated, in the manifest or the
    // cluster. New ports: the old Pod may still hold its ports while the new one starts.
    let sets = loopback_values(&vm);
    let since = now_millis();
    helm.ok(&with_sets(
        &[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--set",
            "externalLabels.env=test",
        ],
        &sets,
    ));
    let objects = helm.manifest_objects();
    let unique: BTreeSet<_> = objects.iter().cloned().collect();
    assert_eq!(
        objects.len(),
        unique.len(),
        "duplicated objects in the manifest: {objects:?}"
    );
    let kinds: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ClusterRole",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            1,
            "{kind}s in the manifest: {objects:?}"
        );
    }
    assert_eq!(
        released::<Deployment>(cluster).await,
        vec!["pie-controller"]
    );
    let mut accounts = released::<ServiceAccount>(cluster).await;
    accounts.sort();
    assert_eq!(accounts, vec!["pie-controller", "pie-probe"]);
    controller_runs(
        cluster,
        &vm,
        since,
        ",env=\"test\"",
        "after the second helm upgrade (its external label env=test)",
    )
    .await;
    let all: Vec<String> = cron_jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    let want: BTreeSet<String> = wanted_cron_jobs("first")
        .into_iter()
        .chain(wanted_cron_jobs("second"))
        .collect();
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "CronJobs after two upgrades"
    );
    assert_eq!(all.len(), want.len(), "duplicated CronJobs: {all:?}");

    // 6. The last uninstall leaves the CRD and both PieProbes again.
    helm.ok(&["uninstall", RELEASE, "-n", NAMESPACE]);
    assert_eq!(uid(&crds, CRD).await, Some(crd_uid));
    assert_eq!(uid(&probes, "first").await, Some(first));
    assert_eq!(uid(&probes, "second").await, Some(second));
}
