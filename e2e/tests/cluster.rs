//! pie on a real Kubernetes: the local control plane of `e2e/cluster` (real kube-apiserver,
//! kube-controller-manager and kube-scheduler, the process kubelet, the test provisioner),
//! started once for this test binary, or the cluster `PIE_E2E_KUBECONFIG` names (kind, whose
//! StorageClass is `standard`). Skipped, saying so, only on a machine without Go.
//!
//! The controller is the real `pie-controller run` binary, authenticated as the ServiceAccount
//! `pie/pie-controller` with exactly `deploy/base/rbac.yaml`'s RBAC; any request the API server
//! refuses it (403, from the audit log) fails the test.

use std::io::Write as _;
use std::time::Duration;

use e2e::cluster::{
    LOCAL_STORAGE_CLASS, NO_PROVISIONER_STORAGE_CLASS, PieController, SHELL_IMAGE, TestCluster,
    eventually, test_cluster, within,
};
use e2e::{VictoriaMetrics, scrape_value};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use pie_api::names;
use pie_controller::crd::PieProbe;

const CONTROLLER_USER: &str = "system:serviceaccount:pie:pie-controller";

/// The StorageClass with a working provisioner: the local cluster's, or `standard` on kind.
fn healthy_class(cluster: &TestCluster) -> String {
    std::env::var("PIE_E2E_STORAGE_CLASS").unwrap_or_else(|_| {
        if cluster.is_local() {
            LOCAL_STORAGE_CLASS.into()
        } else {
            "standard".into()
        }
    })
}

fn probe(name: &str, storage_class: &str) -> PieProbe {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
        "metadata": {"name": name},
        "spec": {"monitoringStorageClass": storage_class, "probePeriod": 1, "probeThreshold": "30s"}
    }))
    .unwrap()
}

/// [`eventually`] for what the controller does: a timeout also names the requests the API
/// server refused it, the usual cause when a verb is missing from `deploy/base/rbac.yaml`.
async fn controller_does<F, Fut>(cluster: &TestCluster, what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if !within(timeout, check).await {
        panic!(
            "timed out after {timeout:?} waiting for {what}; requests refused to pie-controller: {:#?}",
            cluster.denied_requests(CONTROLLER_USER)
        );
    }
}

/// Runs a CronJob once now, as an admin would: `kubectl create job JOB --from=cronjob/CRON_JOB`.
fn run_now(cluster: &TestCluster, namespace: &str, job: &str, cron_job: &str) {
    cluster.kubectl_ok(&[
        "-n",
        namespace,
        "create",
        "job",
        job,
        &format!("--from=cronjob/{cron_job}"),
    ]);
}

fn assert_no_denials(cluster: &TestCluster) {
    let denied = cluster.denied_requests(CONTROLLER_USER);
    assert!(
        denied.is_empty(),
        "the API server refused pie-controller (deploy/base/rbac.yaml lacks a verb?):\n{}",
        denied.join("\n")
    );
}

/// The controller-owned objects of `probe` (by the `pie-probe` label and a controller
/// ownerReference to `uid`), sorted.
async fn owned<K>(api: &Api<K>, probe: &str, uid: &str) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let selector = ListParams::default().labels(&format!("pie-probe={probe}"));
    let mut names: Vec<String> = api
        .list(&selector)
        .await
        .unwrap()
        .items
        .iter()
        .filter(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_to_the_api_server_with_server_side_dry_run() {
    let Some(cluster) = test_cluster() else {
        return;
    };
    // A server-side dry run creates nothing, so the namespace `pie` must exist for the
    // namespaced objects: install_pie applies it (with the CRD and RBAC) for real.
    cluster.install_pie().await;
    for dir in [
        "deploy",
        "deploy/overlays/vm-single",
        "deploy/overlays/vm-cluster",
        "deploy/overlays/vmauth-bearer",
    ] {
        let out = cluster.kubectl_ok(&["apply", "-k", dir, "--server-side", "--dry-run=server"]);
        assert!(
            out.contains("deployment.apps/pie-controller serverside-applied (server dry run)"),
            "{dir}: {out}"
        );
    }
    // The sample PieProbe passes the real CRD's schema; the CEL transition rules refuse a
    // change of an immutable field with the CRD's own message.
    let ns = cluster.namespace("pie-e2e-crd").await;
    let sample =
        std::fs::read_to_string(e2e::cluster::repo_root().join("deploy/samples/pieprobe.yaml"))
            .unwrap()
            .replace("namespace: pie", &format!("namespace: {}", ns.name));
    let path = std::env::temp_dir().join(format!("pie-e2e-sample-{}.yaml", std::process::id()));
    std::fs::write(&path, &sample).unwrap();
    let path = path.to_str().unwrap();
    cluster.kubectl_ok(&["apply", "--server-side", "-f", path]);
    let changed = sample.replace(
        "monitoringStorageClass: topolvm-provisioner",
        "monitoringStorageClass: other",
    );
    std::fs::write(path, changed).unwrap();
    let out = cluster.kubectl(&["apply", "--server-side", "-f", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("monitoringStorageClass is immutable"),
        "changing monitoringStorageClass: {stderr}"
    );
    let out = cluster.kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "pieprobe",
        "test-pie-probe",
        "--type=merge",
        "-p",
        r#"{"spec":{"probePeriod":0}}"#,
    ]);
    assert!(
        !out.status.success(),
        "probePeriod 0 must be refused by the schema"
    );
    let _ = std::fs::remove_file(path);
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_cron_job_runs_to_completion_through_job_pod_and_kubelet() {
    let Some(cluster) = test_cluster() else {
        return;
    };
    if !cluster.is_local() {
        // The shell stand-in is the process kubelet's; kind would pull a real image.
        return;
    }
    let ns = cluster.namespace("pie-e2e-cronjob").await;
    let client = cluster.client().await;
    let cron_job: CronJob = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1,
          "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "sh", "image": SHELL_IMAGE,
              "command": ["/bin/sh", "-c", "echo hello from $(hostname) as $(id -u)"],
              "securityContext": {"runAsUser": 1234}}]}}}}}
    }))
    .unwrap();
    Api::<CronJob>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &cron_job)
        .await
        .unwrap();
    // The real schedule: the CronJob controller creates a Job within a minute.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "a Job of CronJob hello to complete",
        Duration::from_secs(150),
        || async {
            jobs.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|j| j.status.as_ref().and_then(|s| s.succeeded) == Some(1))
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        .expect("a Succeeded Pod");
    let status = pod.status.as_ref().unwrap();
    let terminated = status.container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated container state");
    assert_eq!(terminated.exit_code, 0);
    assert!(terminated.started_at.is_some());
    let logs = cluster.kubectl_ok(&["-n", &ns.name, "logs", &pod.name_any()]);
    assert_eq!(
        logs.trim(),
        format!("hello from {} as 1234", pod.name_any()),
        "the container ran as its Pod (hostname, runAsUser)"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieprobes_become_owned_cron_jobs_and_pvcs_and_probe_pods_report_back() {
    let Some(cluster) = test_cluster() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("pie-e2e").await;
    // Probe Pods run as pie-probe in the PieProbe's namespace (docs/deploy.md).
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pie-probe"}, "automountServiceAccountToken": false
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let vm = VictoriaMetrics::start().await;
    let controller = PieController::start(cluster, &ns.name, &vm.write_url(), &[]).await;

    let healthy = healthy_class(cluster);
    let missing = if cluster.is_local() {
        NO_PROVISIONER_STORAGE_CLASS.to_owned()
    } else {
        // kind has no StorageClass without a provisioner; the test provides one.
        let sc = "pie-e2e-no-provisioner";
        cluster.apply(&serde_json::json!({"apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass", "metadata": {"name": sc},
            "provisioner": "example.com/does-not-exist", "volumeBindingMode": "WaitForFirstConsumer"}));
        sc.to_owned()
    };
    let probes: Api<PieProbe> = Api::namespaced(client.clone(), &ns.name);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();

    for (name, sc) in [
        ("on-healthy", healthy.as_str()),
        ("on-missing", missing.as_str()),
    ] {
        let created = probes
            .create(&PostParams::default(), &probe(name, sc))
            .await
            .unwrap();
        let uid = created.uid().unwrap();
        let mut want = vec![names::provision_cronjob(name, sc)];
        want.extend(nodes.iter().map(|n| names::mount_cronjob(name, n, sc)));
        want.sort();
        let mut want_pvcs: Vec<String> = nodes.iter().map(|n| names::pvc(name, n, sc)).collect();
        want_pvcs.sort();
        controller_does(
            cluster,
            &format!("{name}'s CronJobs and PVCs"),
            Duration::from_secs(60),
            || async {
                owned(&cron_jobs, name, &uid).await == want
                    && owned(&pvcs, name, &uid).await == want_pvcs
            },
        )
        .await;
    }
    controller_does(
        cluster,
        "Ready=True on both PieProbes",
        Duration::from_secs(60),
        || async {
            let list = probes.list(&ListParams::default()).await.unwrap().items;
            list.len() == 2
                && list.iter().all(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
        },
    )
    .await;

    if cluster.is_local() {
        // One mount probe now, as an admin would (`kubectl create job --from=cronjob/...`):
        // the probe Pod runs pie-agent with its projected token, fio writes to the PV's host
        // directory and the result reaches the receiver, which checks the token by TokenReview.
        let node = &nodes[0];
        run_now(
            cluster,
            &ns.name,
            "mount-now",
            &names::mount_cronjob("on-healthy", node, &healthy),
        );
        // And one provision probe: its generic ephemeral volume is provisioned for it, the
        // controller times the Pod and the claim from the watches.
        run_now(
            cluster,
            &ns.name,
            "provision-now",
            &names::provision_cronjob("on-healthy", &healthy),
        );
        let provision_labels = [
            ("pie_probe_name", "on-healthy"),
            ("storage_class", healthy.as_str()),
        ];
        // And one on the StorageClass whose provisioner does not exist: its Pod never starts,
        // which must count as not on time once probeThreshold (30 s) has passed.
        run_now(
            cluster,
            &ns.name,
            "provision-missing",
            &names::provision_cronjob("on-missing", &missing),
        );
        let labels = [
            ("pie_probe_name", "on-healthy"),
            ("node", node.as_str()),
            ("storage_class", healthy.as_str()),
            ("on_time", "true"),
        ];
        let reported = |m: &str| {
            scrape_value(m, "pie_mount_probe_total", &labels).is_some_and(|v| v >= 1.0)
                && scrape_value(
                    m,
                    "pie_performance_on_mount_probe_total",
                    &[
                        ("pie_probe_name", "on-healthy"),
                        ("node", node.as_str()),
                        ("storage_class", healthy.as_str()),
                        ("succeed", "true"),
                    ],
                )
                .is_some_and(|v| v >= 1.0)
                && scrape_value(
                    m,
                    "pie_provision_probe_total",
                    &[
                        provision_labels[0],
                        provision_labels[1],
                        ("on_time", "true"),
                    ],
                )
                .is_some_and(|v| v >= 1.0)
                && scrape_value(
                    m,
                    "pie_probe_volume_provision_seconds_count",
                    &provision_labels,
                )
                .is_some_and(|v| v >= 1.0)
        };
        let last = controller
            .metrics_until(Duration::from_secs(120), reported)
            .await;
        let pods = cluster.kubectl(&["-n", &ns.name, "get", "pods,events", "-o", "wide"]);
        assert!(
            reported(&last),
            "no on-time, successful mount probe of {node} and on-time provision probe in /metrics:\n{}\n\npods and events:\n{}\n\ncontroller log:\n{}\n\nkubelet log:\n{}",
            last.lines()
                .filter(|l| l.starts_with("pie_mount")
                    || l.starts_with("pie_perf")
                    || l.starts_with("pie_provision")
                    || l.starts_with("pie_probe_volume")
                    || l.starts_with("pie_receiver"))
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&pods.stdout),
            controller.log_tail(),
            cluster.log_tail("kubelet", 40),
        );
        let missing_labels = [
            ("pie_probe_name", "on-missing"),
            ("storage_class", missing.as_str()),
            ("on_time", "false"),
        ];
        let late = |m: &str| {
            scrape_value(m, "pie_provision_probe_total", &missing_labels).is_some_and(|v| v >= 1.0)
        };
        let last = controller
            .metrics_until(Duration::from_secs(90), late)
            .await;
        assert!(
            late(&last),
            "the provision probe on {missing} was not counted as not on time:\n{}\n\ncontroller log:\n{}",
            last.lines()
                .filter(|l| l.starts_with("pie_provision") || l.starts_with("pie_probe_failures"))
                .collect::<Vec<_>>()
                .join("\n"),
            controller.log_tail(),
        );
        let reasons: Vec<&str> = last
            .lines()
            .filter(|l| {
                l.starts_with("pie_probe_failures_total{")
                    && l.contains("pie_probe_name=\"on-missing\"")
                    && l.contains("probe=\"provision\"")
            })
            .collect();
        assert!(
            !reasons.is_empty(),
            "a late provision probe has a failure reason: {last}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "provision probe on {missing}: {reasons:?}"
        );

        // And it was pushed: VictoriaMetrics has the series with the cluster label.
        let series = vm
            .export_until(
                &format!(
                    "pie_mount_probe_total{{pie_probe_name=\"on-healthy\",node=\"{node}\",cluster=\"e2e\"}}"
                ),
                Duration::from_secs(30),
                |s| !s.is_empty(),
            )
            .await;
        assert!(!series.is_empty(), "pie_mount_probe_total was not pushed");
    }

    probes
        .delete("on-healthy", &DeleteParams::background())
        .await
        .unwrap();
    let selector = ListParams::default().labels("pie-probe=on-healthy");
    eventually(
        "on-healthy's objects to be garbage collected",
        Duration::from_secs(120),
        || async {
            cron_jobs.list(&selector).await.unwrap().items.is_empty()
                && pvcs.list(&selector).await.unwrap().items.is_empty()
        },
    )
    .await;
    assert!(
        !cron_jobs
            .list(&ListParams::default().labels("pie-probe=on-missing"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "deleting one PieProbe must leave the other's CronJobs"
    );
    assert_no_denials(cluster);
    drop(controller);
    ns.delete().await;
}
