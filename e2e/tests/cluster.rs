//! Cluster end-to-end test of pie-controller. Runs only when `PIE_E2E_KUBECONFIG` names a
//! kubeconfig of a disposable cluster (kind, with its `standard` StorageClass); otherwise it
//! prints a skip line and passes.
//!
//! It installs the CRD, runs the controller in-process (namespace-scoped, no leader election)
//! against the cluster, creates PieProbes on `standard` and on a StorageClass whose provisioner
//! does not exist, checks the CronJobs and PVCs appear with the right owners, and checks that
//! deleting a PieProbe removes them (ownerReferences, garbage collector).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt, ResourceExt};
use pie_controller::crd::PieProbe;
use pie_controller::health::Health;
use pie_controller::plan::{Config, names};
use pie_controller::run::{Handles, RunOptions};

const MISSING_SC: &str = "pie-e2e-no-provisioner";

async fn client() -> Option<Client> {
    let Ok(path) = std::env::var("PIE_E2E_KUBECONFIG") else {
        println!("skipping cluster e2e: PIE_E2E_KUBECONFIG is not set");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("reading PIE_E2E_KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Some(Client::try_from(config).expect("client"))
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn probe(name: &str, storage_class: &str) -> PieProbe {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
        "metadata": {"name": name},
        "spec": {"monitoringStorageClass": storage_class, "probePeriod": 1, "probeThreshold": "30s"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieprobes_get_owned_cron_jobs_and_pvcs_that_go_with_them() {
    let Some(client) = client().await else { return };
    let ssa = PatchParams::apply("pie-e2e").force();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "pieprobes.pie.topolvm.io",
        &ssa,
        &Patch::Apply(PieProbe::crd()),
    )
    .await
    .unwrap();
    eventually(
        "the CRD to be established",
        Duration::from_secs(60),
        || async {
            crds.get("pieprobes.pie.topolvm.io")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await;

    let ns = format!("pie-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let classes: Api<StorageClass> = Api::all(client.clone());
    let missing = serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": MISSING_SC}, "provisioner": "example.com/does-not-exist",
        "volumeBindingMode": "WaitForFirstConsumer"});
    classes
        .patch(MISSING_SC, &ssa, &Patch::Apply(&missing))
        .await
        .unwrap();

    let health = Arc::new(Health::default());
    let controller = tokio::spawn(pie_controller::run::run(
        client.clone(),
        Config {
            agent_image: "ghcr.io/pie-rs/pie-agent:e2e".into(),
            controller_url: "http://pie-controller.pie.svc:8082".into(),
            probe_service_account: None,
            image_pull_secrets: vec![],
        },
        RunOptions {
            namespaces: vec![ns.clone()],
            leader_elect: false,
            lease_namespace: ns.clone(),
            identity: "pie-e2e".into(),
        },
        health.clone(),
        Handles::default(),
        // Outcomes are recorded into a store; nothing is pushed in this test.
        pie_controller::push::Pusher::with_client(
            Arc::new(pie_controller::store::Store::new()),
            None,
        ),
    ));

    let probes: Api<PieProbe> = Api::namespaced(client.clone(), &ns);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();

    for (name, sc) in [("on-standard", "standard"), ("on-missing", MISSING_SC)] {
        let created = probes
            .create(&PostParams::default(), &probe(name, sc))
            .await
            .unwrap();
        let uid = created.uid().unwrap();
        let mut want = vec![names::provision_cronjob(name, sc)];
        want.extend(nodes.iter().map(|n| names::mount_cronjob(name, n, sc)));
        let want_pvcs: Vec<String> = nodes.iter().map(|n| names::pvc(name, n, sc)).collect();
        let selector = ListParams::default().labels(&format!("pie-probe={name}"));
        eventually(
            &format!("{name}'s CronJobs and PVCs"),
            Duration::from_secs(90),
            || async {
                let cjs = cron_jobs.list(&selector).await.unwrap().items;
                let claims = pvcs.list(&selector).await.unwrap().items;
                let owned_by =
                    |o: &dyn Fn() -> Option<String>| o().as_deref() == Some(uid.as_str());
                let mut got: Vec<String> = cjs
                    .iter()
                    .filter(|c| {
                        owned_by(&|| {
                            c.owner_references()
                                .iter()
                                .find(|r| r.controller == Some(true))
                                .map(|r| r.uid.clone())
                        })
                    })
                    .map(|c| c.name_any())
                    .collect();
                let mut got_pvcs: Vec<String> = claims
                    .iter()
                    .filter(|c| {
                        owned_by(&|| {
                            c.owner_references()
                                .iter()
                                .find(|r| r.controller == Some(true))
                                .map(|r| r.uid.clone())
                        })
                    })
                    .map(|c| c.name_any())
                    .collect();
                got.sort();
                got_pvcs.sort();
                let mut w = want.clone();
                w.sort();
                let mut wp = want_pvcs.clone();
                wp.sort();
                got == w && got_pvcs == wp
            },
        )
        .await;
    }
    eventually(
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
    assert!(
        health.ready(),
        "controller should be ready once its caches synced"
    );

    probes
        .delete("on-standard", &DeleteParams::background())
        .await
        .unwrap();
    let selector = ListParams::default().labels("pie-probe=on-standard");
    eventually(
        "on-standard's objects to be garbage collected",
        Duration::from_secs(180),
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
            .is_empty()
    );

    controller.abort();
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    let _ = classes.delete(MISSING_SC, &DeleteParams::default()).await;
}
