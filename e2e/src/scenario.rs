//! One end-to-end scenario of pie on the local cluster (e2e/tests/scenarios/): a namespace of
//! its own, its own VictoriaMetrics, a vmalert evaluating the shipped rules
//! (`deploy/alerts/pie.rules.yml`, unchanged) every 5 s with an Alertmanager stand-in, and its
//! own `pie-controller run` as `deploy/base/deployment.yaml` runs it, whose `cluster` label is
//! the scenario's name and whose Lease is its own.
//!
//! Scenarios run side by side on one cluster, so each confines itself: its probes select the
//! nodes of its node group (the node label [`GROUP_LABEL`]), and its faults go on its own
//! StorageClasses, PVCs or on nodes of its own group only. When a wait times out, the panic
//! message carries what a person would look at first ([`Scenario::diagnostics`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use pie_controller::crd::PieProbe;

use crate::cluster::{ControllerOptions, PieController, TestCluster, TestNamespace};
use crate::time::poll_until;
use crate::{ExportedSeries, Notifier, VictoriaMetrics, Vmalert, VmalertAlert, shipped_rules};

/// The node label that puts a node into a scenario group.
pub const GROUP_LABEL: &str = "pie.test/group";

/// The alerts that say a StorageClass is broken (the paging and ticket alerts about storage).
pub const STORAGE_ALERTS: [&str; 6] = [
    "PieProvisionProbeFailing",
    "PieMountProbeFailingOnNode",
    "PieMountProbeFailingOnManyNodes",
    "PieMountProbeIOErrors",
    "PieMountProbeHighLatency",
    "PieVolumeDeletionStuck",
];

/// The user the controllers under test act as.
pub const CONTROLLER_USER: &str = "system:serviceaccount:pie:pie-controller";

/// Labels the cluster's nodes into groups, in node order: `groups` gives each group's name and
/// size. Returns each group's node names. Every node must be in a group.
pub async fn label_node_groups(
    cluster: &TestCluster,
    groups: &[(&str, usize)],
) -> BTreeMap<String, Vec<String>> {
    let client = cluster.client().await;
    let mut names: Vec<String> = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    // pie-node-1 .. pie-node-N in numeric order.
    names.sort_by_key(|n| {
        (
            n.len(),
            n.trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse::<u32>()
                .unwrap_or(0),
            n.clone(),
        )
    });
    let wanted: usize = groups.iter().map(|(_, n)| n).sum();
    assert_eq!(
        names.len(),
        wanted,
        "the cluster has nodes {names:?}, the groups {groups:?}"
    );
    let mut out = BTreeMap::new();
    let mut nodes = names.into_iter();
    for (group, size) in groups {
        let members: Vec<String> = nodes.by_ref().take(*size).collect();
        for node in &members {
            cluster.kubectl_ok(&[
                "label",
                "node",
                node,
                &format!("{GROUP_LABEL}={group}"),
                "--overwrite",
            ]);
        }
        out.insert((*group).to_owned(), members);
    }
    out
}

/// The PieProbe `nodeSelector` of the nodes of `group`.
pub fn group_selector(group: &str) -> serde_json::Value {
    serde_json::json!({"nodeSelectorTerms": [{"matchExpressions": [
        {"key": GROUP_LABEL, "operator": "In", "values": [group]}
    ]}]})
}

/// One scenario's namespace, VictoriaMetrics, vmalert, notifier and controller.
pub struct Scenario {
    /// Its name: the `cluster` label of everything its controller pushes.
    pub name: String,
    /// The cluster it runs on.
    pub cluster: &'static TestCluster,
    /// An admin client.
    pub client: Client,
    /// Its namespace (`pie-e2e-<name>`).
    pub namespace: String,
    /// Where its controller pushes.
    pub vm: VictoriaMetrics,
    /// vmalert with the shipped rules, against [`Scenario::vm`].
    pub vmalert: Vmalert,
    /// What vmalert would have sent to Alertmanager.
    pub notifier: Notifier,
    /// `pie-controller run`.
    pub controller: PieController,
    ns: Option<TestNamespace>,
    jobs_started: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// Starts a scenario with deployment.yaml's controller settings.
    pub async fn start(cluster: &'static TestCluster, name: &str) -> Scenario {
        Scenario::start_with(cluster, name, |_| {}).await
    }

    /// Starts a scenario; `configure` may change the controller's options (agent image, extra
    /// flags) before it starts.
    pub async fn start_with(
        cluster: &'static TestCluster,
        name: &str,
        configure: impl FnOnce(&mut ControllerOptions),
    ) -> Scenario {
        let client = cluster.client().await;
        let ns = cluster.namespace(&format!("pie-e2e-{name}")).await;
        // Probe Pods run as pie-probe in the PieProbe's namespace (docs/deploy.md), a
        // ServiceAccount without an API token.
        let account: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pie-probe"}, "automountServiceAccountToken": false
        }))
        .expect("ServiceAccount");
        Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &account)
            .await
            .expect("create the probe ServiceAccount");
        let vm = VictoriaMetrics::start().await;
        let notifier = Notifier::start().await;
        let vmalert = Vmalert::start(&shipped_rules(), &vm, notifier.url(), "5s").await;
        let mut options = ControllerOptions::new(&ns.name, &vm.write_url());
        options.cluster_label = name.to_owned();
        options.lease_name = format!("pie-controller-{name}");
        configure(&mut options);
        let controller = PieController::start_with(cluster, options).await;
        Scenario {
            name: name.to_owned(),
            cluster,
            client,
            namespace: ns.name.clone(),
            vm,
            vmalert,
            notifier,
            controller,
            ns: Some(ns),
            jobs_started: Default::default(),
        }
    }

    /// An `Api` of `K` in the scenario's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates the PieProbe `name` with `spec` (JSON, as in a manifest).
    pub async fn create_probe(&self, name: &str, spec: serde_json::Value) -> PieProbe {
        let probe: PieProbe = serde_json::from_value(serde_json::json!({
            "apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("PieProbe {name}: {e}"));
        self.api::<PieProbe>()
            .create(&PostParams::default(), &probe)
            .await
            .unwrap_or_else(|e| panic!("create PieProbe {name}: {e}"))
    }

    /// Creates a StorageClass `name` of the test provisioner (`hostpath.pie.test`,
    /// WaitForFirstConsumer, Delete) with `annotations` (faults, docs/testing.md), owned by this
    /// scenario: its faults touch nobody else's volumes.
    pub fn create_storage_class(&self, name: &str, annotations: &[(&str, &str)]) {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        self.cluster.apply(&serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": annotations},
            "provisioner": "hostpath.pie.test",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        }));
    }

    /// The PieProbe `name` as the API server has it now.
    pub async fn probe(&self, name: &str) -> PieProbe {
        self.api::<PieProbe>()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get PieProbe {name}: {e}"))
    }

    /// Runs `kubectl` as admin in the scenario's namespace; returns stdout, panics on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl_ok(&all)
    }

    /// Runs the mount probe of PieProbe `probe` on every node of `nodes` once now and waits
    /// until VictoriaMetrics has that many more on-time mount probes of it than before.
    pub async fn mount_probes_on_time(&self, probe: &str, nodes: &[String], storage_class: &str) {
        let selector =
            format!(r#"pie_mount_probe_total{{pie_probe_name="{probe}",on_time="true"}}"#);
        let before = self.increase(&selector).await;
        for node in nodes {
            self.run_now(&pie_api::names::mount_cronjob(probe, node, storage_class));
        }
        self.wait_increase(
            &selector,
            before + nodes.len() as f64,
            Duration::from_secs(120),
        )
        .await;
    }

    /// Runs the CronJob `cron_job` once now, as an admin would (`kubectl create job
    /// --from=cronjob/...`), and returns the Job's name.
    pub fn run_now(&self, cron_job: &str) -> String {
        let n = self
            .jobs_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = format!("{}-now{n}", &cron_job[..cron_job.len().min(50)]);
        self.kubectl(&["create", "job", &job, &format!("--from=cronjob/{cron_job}")]);
        job
    }

    /// The CronJobs with the label `pie-probe=<probe>`, by name.
    pub async fn cron_jobs(&self, probe: &str) -> BTreeMap<String, CronJob> {
        self.by_probe::<CronJob>(probe).await
    }

    /// The PVCs with the label `pie-probe=<probe>` (mount probes' and provision probes'), by name.
    pub async fn pvcs(&self, probe: &str) -> BTreeMap<String, PersistentVolumeClaim> {
        self.by_probe::<PersistentVolumeClaim>(probe).await
    }

    /// The Jobs with the label `pie-probe=<probe>`, by name.
    pub async fn jobs(&self, probe: &str) -> BTreeMap<String, Job> {
        self.by_probe::<Job>(probe).await
    }

    /// The probe Pods of `probe`, by name.
    pub async fn pods(&self, probe: &str) -> BTreeMap<String, Pod> {
        self.by_probe::<Pod>(probe).await
    }

    async fn by_probe<K>(&self, probe: &str) -> BTreeMap<String, K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .list(&ListParams::default().labels(&format!("pie-probe={probe}")))
            .await
            .unwrap_or_else(|e| panic!("list {}: {e}", K::kind(&Default::default())))
            .items
            .into_iter()
            .map(|o| (o.name_any(), o))
            .collect()
    }

    /// Every series matching `selector` in the scenario's VictoriaMetrics.
    pub async fn series(&self, selector: &str) -> Vec<ExportedSeries> {
        self.vm.export(selector).await
    }

    /// How much the counters matching `selector` grew in VictoriaMetrics, summed over series
    /// and across controller restarts (see [`ExportedSeries::counter_increase`]).
    pub async fn increase(&self, selector: &str) -> f64 {
        self.series(selector)
            .await
            .iter()
            .map(ExportedSeries::counter_increase)
            .sum()
    }

    /// The last value (not a staleness marker) of the one series matching `selector`.
    pub async fn last(&self, selector: &str) -> Option<f64> {
        let series = self.series(selector).await;
        assert!(
            series.len() <= 1,
            "{selector} matches several series: {series:?}"
        );
        series
            .first()?
            .values
            .iter()
            .rev()
            .find(|v| !v.is_nan())
            .copied()
    }

    /// Polls until `check` holds, every second; on timeout panics with `what` and
    /// [`Scenario::diagnostics`].
    pub async fn wait<F, Fut>(&self, what: &str, timeout: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        let ok = poll_until(timeout, Duration::from_secs(1), check, |ok| *ok).await;
        if !ok {
            panic!(
                "[{}] timed out after {timeout:?} waiting for {what}\n{}",
                self.name,
                self.diagnostics().await
            );
        }
        note(
            &self.name,
            &format!("{what}: after {:.1} s", started.elapsed().as_secs_f64()),
        );
    }

    /// Waits until the counters matching `selector` have grown by at least `at_least` in
    /// VictoriaMetrics; returns the increase.
    pub async fn wait_increase(&self, selector: &str, at_least: f64, timeout: Duration) -> f64 {
        self.wait(
            &format!("increase({selector}) >= {at_least} in VictoriaMetrics"),
            timeout,
            || async { self.increase(selector).await >= at_least },
        )
        .await;
        self.increase(selector).await
    }

    /// The alerts vmalert has active (pending or firing).
    pub async fn alerts(&self) -> Vec<VmalertAlert> {
        self.vmalert.alerts().await
    }

    /// Waits until the alert `name` fires with (at least) `labels`; returns it.
    pub async fn wait_firing(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> VmalertAlert {
        let matches = |a: &VmalertAlert| {
            a.name == name
                && a.state == "firing"
                && labels
                    .iter()
                    .all(|(k, v)| a.labels.get(*k).map(String::as_str) == Some(*v))
        };
        self.wait(
            &format!("{name} {labels:?} to fire in vmalert"),
            timeout,
            || async { self.alerts().await.iter().any(matches) },
        )
        .await;
        self.alerts()
            .await
            .into_iter()
            .find(matches)
            .expect("the alert fires")
    }

    /// The active (pending or firing) storage alerts ([`STORAGE_ALERTS`]).
    pub async fn storage_alerts(&self) -> Vec<VmalertAlert> {
        self.alerts()
            .await
            .into_iter()
            .filter(|a| STORAGE_ALERTS.contains(&a.name.as_str()))
            .collect()
    }

    /// What to look at when a wait fails: the scenario's Pods, Jobs and Events, the active
    /// alerts, and the tails of the controller's and the kubelet's logs.
    pub async fn diagnostics(&self) -> String {
        let get = |what: &str| {
            let out = self
                .cluster
                .kubectl(&["-n", &self.namespace, "get", what, "-o", "wide"]);
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let alerts = tokio::time::timeout(Duration::from_secs(5), self.vmalert.alerts())
            .await
            .map(|a| {
                a.iter()
                    .map(|a| format!("{} {} {:?}", a.state, a.name, a.labels))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|_| "(vmalert did not answer)".into());
        format!(
            "--- pods, jobs, cronjobs, pvcs:\n{}\n{}\n{}\n{}\n--- events:\n{}\n--- alerts:\n{alerts}\n\
             --- controller log:\n{}\n--- kubelet log:\n{}\n--- refused to pie-controller: {:?}",
            get("pods"),
            get("jobs"),
            get("cronjobs"),
            get("pvc"),
            get("events"),
            self.controller.log_tail(),
            self.cluster.log_tail("kubelet", 20),
            self.cluster.denied_requests(CONTROLLER_USER),
        )
    }

    /// Creates `pod` and waits until it runs; returns it as the API server has it.
    pub async fn create_running(&self, pod: &Pod) -> Pod {
        let pods = self.api::<Pod>();
        let name = pod.name_any();
        pods.create(&PostParams::default(), pod)
            .await
            .unwrap_or_else(|e| panic!("create Pod {name}: {e}"));
        self.wait(
            &format!("Pod {name} running"),
            Duration::from_secs(60),
            || async {
                pods.get(&name)
                    .await
                    .ok()
                    .and_then(|p| p.status?.phase)
                    .as_deref()
                    == Some("Running")
            },
        )
        .await;
        pods.get(&name).await.expect("the Pod")
    }

    /// A token of the ServiceAccount `pie-probe` bound to `pod`, for `audience`, from the real
    /// TokenRequest API (10 minutes).
    pub async fn probe_token(&self, pod: &Pod, audience: &str) -> String {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        self.api::<ServiceAccount>()
            .create_token_request("pie-probe", &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("a token")
            .token
    }

    /// Compares what VictoriaMetrics counted for PieProbe `probe` up to `cut_ms` (the counters'
    /// increase over their samples until then, across controller restarts) with what `ledger`
    /// saw the cluster run: every probe Pod created before the cut (a quiet one, see
    /// [`PodLedger::quiet_cut`]), by probe, node (mount probes) and outcome under
    /// `threshold_ms`; and the mount probes' results delivered against the mount probe Pods that
    /// started, by node (at least one per Pod that started on time, at most one per Pod that
    /// started). `None` when both agree, else what differs. The ledger must have seen
    /// both probes, and with `with_late` on-time and late Pods.
    pub async fn counted_against_ledger(
        &self,
        ledger: &PodLedger,
        probe: &str,
        threshold_ms: i64,
        cut_ms: i64,
        with_late: bool,
    ) -> Option<String> {
        type Key = (String, String, bool);
        let mut want: BTreeMap<Key, f64> = BTreeMap::new();
        // Results per node: one from every mount Pod that started on time; a late one may have
        // been stopped before it posted (pie deletes a late Pod's Job: CI saw a Pod that started
        // 25 s late, when the API server came back, killed as it started). So a range.
        // Per node: (at least: mount Pods started on time, at most: mount Pods started).
        let mut want_results: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for r in ledger.records().values() {
            if r.created_ms > cut_ms {
                continue;
            }
            if r.created_ms > cut_ms - threshold_ms - CUT_MARGIN_MS {
                return Some(format!(
                    "{r:?} was created too close to the cut (see PodLedger::quiet_cut)"
                ));
            }
            let Some(on_time) = r.on_time(threshold_ms, cut_ms) else {
                return Some(format!("{r:?} was not decidable by the cut"));
            };
            let node = if r.probe == "mount" {
                r.node.clone()
            } else {
                String::new()
            };
            *want
                .entry((r.probe.clone(), node.clone(), on_time))
                .or_default() += 1.0;
            if r.probe == "mount" && r.started_ms.is_some() {
                let (least, most) = want_results.entry(node).or_default();
                *least += if on_time { 1.0 } else { 0.0 };
                *most += 1.0;
            }
        }
        let mut got: BTreeMap<Key, f64> = BTreeMap::new();
        for (kind, metric) in [
            ("mount", "pie_mount_probe_total"),
            ("provision", "pie_provision_probe_total"),
        ] {
            for series in self
                .series(&format!(r#"{metric}{{pie_probe_name="{probe}"}}"#))
                .await
            {
                let n = series.counter_increase_until(cut_ms);
                if n > 0.0 {
                    let key = (
                        kind.to_owned(),
                        series.label("node").to_owned(),
                        series.label("on_time") == "true",
                    );
                    *got.entry(key).or_default() += n;
                }
            }
        }
        let mut got_results: BTreeMap<String, f64> = BTreeMap::new();
        for series in self
            .series(&format!(
                r#"pie_performance_on_mount_probe_total{{pie_probe_name="{probe}",succeed="true"}}"#
            ))
            .await
        {
            let n = series.counter_increase_until(cut_ms);
            if n > 0.0 {
                *got_results
                    .entry(series.label("node").to_owned())
                    .or_default() += n;
            }
        }
        let kinds: std::collections::BTreeSet<(&str, bool)> = want
            .keys()
            .map(|(kind, _, on_time)| (kind.as_str(), *on_time))
            .collect();
        let probes: std::collections::BTreeSet<&str> = kinds.iter().map(|(k, _)| *k).collect();
        let late = kinds.iter().any(|(_, on_time)| !on_time);
        let results_agree = want_results.iter().all(|(node, (least, most))| {
            let n = got_results.get(node).copied().unwrap_or(0.0);
            *least <= n && n <= *most
        }) && got_results
            .keys()
            .all(|node| want_results.contains_key(node));
        if got == want && results_agree && probes.len() == 2 && (late || !with_late) {
            note(
                &self.name,
                &format!(
                    "{} probe Pods, each counted once: {want:?}; results {want_results:?}",
                    want.values().sum::<f64>()
                ),
            );
            return None;
        }
        Some(format!(
            "counted (VictoriaMetrics) against ran (the ledger), up to the cut at {cut_ms}:\n              got: {got:?}\nwant: {want:?}\nresults delivered: {got_results:?}\nresults wanted (at least: mount Pods started on time, at most: started): {want_results:?}\n(the run must have both probes{}: {kinds:?})\nledger: {:#?}",
            if with_late { " and a late Pod" } else { "" },
            ledger.records()
        ))
    }

    /// Deletes the namespace and stops everything the scenario started.
    pub async fn finish(mut self) {
        if let Some(ns) = self.ns.take() {
            ns.delete().await;
        }
    }
}

/// A Pod of the ServiceAccount `pie-probe` on `node` that sleeps for 10 minutes. With `probe`
/// (PieProbe, node, StorageClass) it carries the labels of that mount probe's Pods, so its
/// token is a probe's; it is marked counted, so the outcome tracker leaves it alone.
pub fn sleeper_pod(name: &str, node: &str, probe: Option<(&str, &str, &str)>) -> Pod {
    let labels: BTreeMap<&str, &str> = match probe {
        Some((probe, probe_node, storage_class)) => BTreeMap::from([
            ("app.kubernetes.io/managed-by", "pie-controller"),
            ("app.kubernetes.io/component", "mount-probe"),
            ("pie-probe", probe),
            ("node", probe_node),
            ("storage-class", storage_class),
        ]),
        None => BTreeMap::from([("app", "not-a-probe")]),
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"pie.topolvm.io/counted": "true"}},
        "spec": {
            "nodeName": node, "serviceAccountName": "pie-probe",
            "automountServiceAccountToken": false, "restartPolicy": "Never",
            "containers": [{"name": "sleep", "image": crate::cluster::SHELL_IMAGE,
                            "command": ["/bin/sh", "-c", "sleep 600"]}],
        }
    }))
    .expect("a Pod")
}

/// A progress line on stderr (shown by the scenario runner), prefixed with the scenario.
pub fn note(scenario: &str, what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "[{scenario}] {what}");
}

/// What the test itself saw of one probe Pod, from a watch of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// Pod name.
    pub name: String,
    /// `mount` or `provision` (the Pod's `app.kubernetes.io/component`, without `-probe`).
    pub probe: String,
    /// Its PieProbe (the label `pie-probe`).
    pub pie_probe: String,
    /// The node it ran on (or was pinned to), empty if never scheduled.
    pub node: String,
    /// creationTimestamp, ms.
    pub created_ms: i64,
    /// The `probe` container's startedAt, ms.
    pub started_ms: Option<i64>,
    /// When this watch first saw pie's counted mark (`pie.topolvm.io/counted`) on the Pod, ms
    /// by the test's clock.
    pub marked_ms: Option<i64>,
    /// The Pod is gone.
    pub deleted: bool,
}

impl PodRecord {
    /// The outcome pie must count for it under `threshold_ms`: `Some(true)` started in time,
    /// `Some(false)` started late or never (once it has existed for the threshold), `None`
    /// not decidable (yet).
    pub fn on_time(&self, threshold_ms: i64, now_ms: i64) -> Option<bool> {
        match self.started_ms {
            Some(started) => Some(started - self.created_ms < threshold_ms),
            None if now_ms - self.created_ms >= threshold_ms => Some(false),
            None => None,
        }
    }
}

/// Every probe Pod (made by a Job) of a namespace the cluster runs, as a watch of the test's own
/// records it: what pie's counters must add up to.
#[derive(Debug)]
pub struct PodLedger {
    pods: std::sync::Arc<std::sync::Mutex<BTreeMap<String, PodRecord>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodLedger {
    /// Starts watching the probe Pods of `namespace` (label
    /// `app.kubernetes.io/managed-by=pie-controller`) and waits for the first list.
    pub async fn start(client: Client, namespace: &str) -> PodLedger {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let pods: std::sync::Arc<std::sync::Mutex<BTreeMap<String, PodRecord>>> =
            Default::default();
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
        let task = {
            let pods = pods.clone();
            tokio::spawn(async move {
                let mut listed = Some(listed_tx);
                let events = watcher(
                    api,
                    watcher::Config::default()
                        .labels("app.kubernetes.io/managed-by=pie-controller"),
                );
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { continue };
                    let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
                    match event {
                        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                            if let Some((uid, record)) = record_of(&p) {
                                let entry = pods.entry(uid).or_insert(record.clone());
                                entry.started_ms = entry.started_ms.or(record.started_ms);
                                entry.marked_ms = entry.marked_ms.or(record.marked_ms);
                                if !record.node.is_empty() {
                                    entry.node = record.node;
                                }
                            }
                        }
                        watcher::Event::Delete(p) => {
                            if let Some(r) = p.metadata.uid.as_ref().and_then(|u| pods.get_mut(u)) {
                                r.deleted = true;
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(tx) = listed.take() {
                                let _ = tx.send(());
                            }
                        }
                        watcher::Event::Init => {}
                    }
                }
            })
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), listed_rx).await;
        PodLedger { pods, task }
    }

    /// What it has recorded, by Pod UID.
    pub fn records(&self) -> BTreeMap<String, PodRecord> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for a quiet moment to compare counters with the ledger at, after a Pod created
    /// later than `after_ms`, and returns it: `threshold_ms` plus [`CUT_MARGIN_MS`] after the
    /// last Pod created before it, with no Pod created in between, and at least
    /// [`CUT_SETTLE_MS`] in the past. Every Pod created before the cut is then decided by it
    /// (started, or late for good) and counted, and none after it is. Batches are not always a
    /// probe period apart: the real cluster created one 39 s late after its API server came
    /// back, 21 s before the next.
    pub async fn quiet_cut(&self, threshold_ms: i64, after_ms: i64, timeout: Duration) -> i64 {
        let started = std::time::Instant::now();
        loop {
            let records = self.records();
            let created: Vec<i64> = records.values().map(|r| r.created_ms).collect();
            let horizon = crate::now_millis() - CUT_SETTLE_MS - threshold_ms - CUT_MARGIN_MS;
            let last = created
                .iter()
                .copied()
                .filter(|t| *t > after_ms && *t <= horizon)
                .max();
            if let Some(last) = last {
                let cut = last + threshold_ms + CUT_MARGIN_MS;
                if !created.iter().any(|t| *t > last && *t <= cut) {
                    return cut;
                }
            }
            assert!(
                started.elapsed() < timeout,
                "no quiet moment after {after_ms} within {timeout:?}: Pods created at {created:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// How long after a Pod's deadline to be decided ([`PodLedger::quiet_cut`]) pie has to count it.
pub const CUT_MARGIN_MS: i64 = 5_000;
/// How far in the past a cut must be before the counters are read ([`PodLedger::quiet_cut`]).
pub const CUT_SETTLE_MS: i64 = 10_000;

impl Drop for PodLedger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record_of(pod: &Pod) -> Option<(String, PodRecord)> {
    // Probe Pods are made by Jobs; a test's own Pods with probe labels are not probes.
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job")?;
    let labels = pod.metadata.labels.as_ref()?;
    let probe = labels
        .get("app.kubernetes.io/component")?
        .trim_end_matches("-probe")
        .to_owned();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .or_else(|| labels.get("node").cloned())
        .unwrap_or_default();
    let started_ms = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "probe"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| {
            s.running
                .as_ref()
                .and_then(|r| r.started_at.clone())
                .or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.clone()))
        })
        .map(|t| t.0.as_millisecond());
    Some((
        pod.metadata.uid.clone()?,
        PodRecord {
            name: pod.metadata.name.clone()?,
            probe,
            pie_probe: labels.get("pie-probe").cloned().unwrap_or_default(),
            node,
            created_ms: pod.metadata.creation_timestamp.as_ref()?.0.as_millisecond(),
            started_ms,
            marked_ms: pod
                .annotations()
                .contains_key(pie_api::labels::ANNOTATION_COUNTED)
                .then(crate::now_millis),
            deleted: false,
        },
    ))
}
