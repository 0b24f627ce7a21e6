//! Scenario 12, migration: the CronJobs and PVCs topolvm/pie made for a PieProbe (its names,
//! labels, owner references, its Pod template with the `pie.topolvm.io/pod` finalizer and the
//! `genericvol` volume, created by another field manager) exist when pie starts. pie adopts
//! them: the same objects (same UIDs), none duplicated, now exactly pie's (its labels, its Pod
//! template: no finalizer, no leftover volume), and the probes they run are pie's and counted.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::cluster::LOCAL_STORAGE_CLASS;
use e2e::scenario::{Scenario, group_selector, note};
use kube::ResourceExt;
use pie_api::names;

use crate::Env;

/// topolvm/pie's finalizer on its probe Pods.
const LEGACY_FINALIZER: &str = "pie.topolvm.io/pod";

const PROBE: &str = "migrated";

/// The probe Pod of Job `job`, if any.
async fn pod_of_job(s: &Scenario, job: &str) -> Option<k8s_openapi::api::core::v1::Pod> {
    s.pods(PROBE)
        .await
        .into_values()
        .find(|p| p.labels().get("job-name").map(String::as_str) == Some(job))
}
/// topolvm/pie's image: one image for controller and probe.
const TOPOLVM_IMAGE: &str = "ghcr.io/topolvm/pie:0.17.0";

/// A probe CronJob as topolvm/pie 0.17 creates it (`node` for a mount probe).
fn topolvm_cron_job(owner: &serde_json::Value, node: Option<&str>, sc: &str) -> serde_json::Value {
    let mut labels = BTreeMap::from([("storage-class", sc), ("pie-probe", PROBE)]);
    let (name, args, affinity, volume) = match node {
        Some(node) => {
            labels.insert("node", node);
            (
                names::mount_cronjob(PROBE, node, sc),
                serde_json::json!([
                    "probe",
                    "--destination-address=http://pie.pie.svc:8082",
                    "--path=/mounted/",
                    format!("--node-name={node}"),
                    format!("--storage-class={sc}"),
                    format!("--pie-probe-name={PROBE}")
                ]),
                serde_json::json!({"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}),
                serde_json::json!({"name": "genericvol", "persistentVolumeClaim":
                    {"claimName": names::pvc(PROBE, node, sc)}}),
            )
        }
        None => (
            names::provision_cronjob(PROBE, sc),
            serde_json::json!(["provision-probe"]),
            group_selector("spare"),
            serde_json::json!({"name": "genericvol", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": sc,
                "resources": {"requests": {"storage": "100Mi"}}}}}}),
        ),
    };
    let mounts = if node.is_some() {
        serde_json::json!([{"name": "genericvol", "mountPath": "/mounted"}])
    } else {
        serde_json::json!([])
    };
    serde_json::json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
        "spec": {
            "schedule": names::schedule(PROBE, sc, node.unwrap_or(""), 59),
            "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 0,
            "jobTemplate": {"spec": {"template": {
                "metadata": {"labels": labels, "finalizers": ["pie.topolvm.io/pod"]},
                "spec": {
                    "restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsUser": 1001, "runAsGroup": 1001, "fsGroup": 1001},
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": affinity}},
                    "containers": [{"name": "probe", "image": TOPOLVM_IMAGE, "args": args,
                                    "volumeMounts": mounts}],
                    "volumes": [volume],
                }
            }}}
        }
    })
}

/// A mount probe PVC as topolvm/pie creates it.
fn topolvm_pvc(owner: &serde_json::Value, node: &str, sc: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": names::pvc(PROBE, node, sc), "ownerReferences": [owner],
                     "labels": {"storage-class": sc, "node": node, "pie-probe": PROBE}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": sc,
                 "resources": {"requests": {"storage": "100Mi"}}},
    })
}

pub async fn run(env: &'static Env) {
    let mut s = Scenario::start(env.cluster, "migration").await;
    let nodes = env.group("spare");
    let sc = LOCAL_STORAGE_CLASS;
    // topolvm/pie ran until now: pie's controller is not running yet.
    assert!(s.controller.terminate(), "the controller stops on SIGTERM");
    let probe = s
        .create_probe(
            PROBE,
            serde_json::json!({
                "monitoringStorageClass": sc, "probePeriod": 59, "probeThreshold": "30s",
                "nodeSelector": group_selector("spare"),
            }),
        )
        .await;
    let owner = serde_json::json!({
        "apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe", "name": PROBE,
        "uid": probe.uid().expect("a uid"), "controller": true, "blockOwnerDeletion": true,
    });
    let mut objects = vec![topolvm_cron_job(&owner, None, sc)];
    for node in nodes {
        objects.push(topolvm_cron_job(&owner, Some(node), sc));
        objects.push(topolvm_pvc(&owner, node, sc));
    }
    let file = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .expect("a file");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(file.path(), list.to_string()).expect("write the objects");
    // Created by another field manager (kubectl's, as topolvm/pie's by controller-runtime's).
    s.kubectl(&["create", "-f", file.path().to_str().expect("utf-8")]);
    let uids = |cron_jobs: &BTreeMap<String, k8s_openapi::api::batch::v1::CronJob>| {
        cron_jobs
            .iter()
            .map(|(n, c)| (n.clone(), c.uid().unwrap_or_default()))
            .collect::<BTreeMap<_, _>>()
    };
    let before = uids(&s.cron_jobs(PROBE).await);
    let pvcs_before: BTreeMap<String, String> = s
        .pvcs(PROBE)
        .await
        .iter()
        .map(|(n, p)| (n.clone(), p.uid().unwrap_or_default()))
        .collect();
    assert_eq!(before.len(), 1 + nodes.len());
    // A probe Pod of topolvm/pie's template, in flight when pie takes over: it carries
    // topolvm/pie's finalizer, which only topolvm/pie's controller removed.
    let legacy_job = s.run_now(&names::mount_cronjob(PROBE, &nodes[0], sc));
    s.wait(
        "a Pod of topolvm/pie's template, with its finalizer",
        Duration::from_secs(60),
        || async {
            pod_of_job(&s, &legacy_job)
                .await
                .is_some_and(|p| p.finalizers().iter().any(|f| f == LEGACY_FINALIZER))
        },
    )
    .await;

    // pie starts.
    s.controller.restart().await;
    let adopted = |c: &k8s_openapi::api::batch::v1::CronJob| {
        let template = c
            .spec
            .as_ref()
            .map(|s| &s.job_template)
            .and_then(|j| j.spec.as_ref())
            .map(|j| &j.template);
        let pod = template.and_then(|t| t.spec.as_ref());
        c.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("pie-controller")
            && template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.finalizers.as_ref())
                .is_none_or(Vec::is_empty)
            && pod.is_some_and(|p| {
                p.containers
                    .iter()
                    .all(|c| c.image.as_deref() == Some(e2e::cluster::AGENT_IMAGE))
                    && p.volumes.iter().flatten().all(|v| v.name != "genericvol")
            })
    };
    s.wait(
        "topolvm/pie's CronJobs adopted as pie's",
        Duration::from_secs(90),
        || async {
            let cron_jobs = s.cron_jobs(PROBE).await;
            cron_jobs.len() == before.len() && cron_jobs.values().all(adopted)
        },
    )
    .await;
    let cron_jobs = s.cron_jobs(PROBE).await;
    assert_eq!(uids(&cron_jobs), before, "the same CronJobs, not new ones");
    let pvcs: BTreeMap<String, String> = s
        .pvcs(PROBE)
        .await
        .iter()
        .filter(|(n, _)| n.starts_with("pie-pvc-"))
        .map(|(n, p)| (n.clone(), p.uid().unwrap_or_default()))
        .collect();
    assert_eq!(pvcs, pvcs_before, "the same PVCs, not new ones");
    s.wait(
        "the PVCs labelled as pie's",
        Duration::from_secs(60),
        || async {
            s.pvcs(PROBE).await.values().all(|p| {
                p.labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("pie-controller")
            })
        },
    )
    .await;
    note(
        "migration",
        "topolvm/pie's objects adopted, none duplicated",
    );
    s.wait(
        "topolvm/pie's finalizer released from its in-flight Pod",
        Duration::from_secs(90),
        || async {
            pod_of_job(&s, &legacy_job)
                .await
                .is_some_and(|p| !p.finalizers().iter().any(|f| f == LEGACY_FINALIZER))
        },
    )
    .await;
    s.kubectl(&["delete", "job", &legacy_job, "--wait=false"]);
    s.wait(
        "that Pod gone with its Job, not left Terminating",
        Duration::from_secs(60),
        || async { pod_of_job(&s, &legacy_job).await.is_none() },
    )
    .await;

    // Their probes are pie's now, and counted.
    s.run_now(&names::provision_cronjob(PROBE, sc));
    s.mount_probes_on_time(PROBE, nodes, sc).await;
    s.wait_increase(
        &format!(r#"pie_provision_probe_total{{pie_probe_name="{PROBE}",on_time="true"}}"#),
        1.0,
        Duration::from_secs(120),
    )
    .await;
    // Pods of pie's template never get topolvm/pie's finalizer; one a Job made from the old
    // template just before the adoption loses it within a requeue of the PieProbe.
    s.wait(
        "no probe Pod with a finalizer but the Job controller's",
        Duration::from_secs(90),
        || async {
            s.pods(PROBE).await.values().all(|pod| {
                pod.finalizers()
                    .iter()
                    .all(|f| f == "batch.kubernetes.io/job-tracking")
            })
        },
    )
    .await;
    for pod in s.pods(PROBE).await.values() {
        let pies = pod
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("pie-controller");
        assert!(
            !pies || pod.finalizers().iter().all(|f| f != LEGACY_FINALIZER),
            "{}: a Pod of pie's template with topolvm/pie's finalizer",
            pod.name_any()
        );
    }
    assert_eq!(uids(&s.cron_jobs(PROBE).await), before);
    s.finish().await;
}
