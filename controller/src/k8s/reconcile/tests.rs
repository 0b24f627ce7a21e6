//! The reconciler against a verifying fake API server: exact methods, paths, queries and bodies.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ObjectMeta, PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{ApiServerVerifier, NodeBuilder, PieProbeBuilder, config};
use pie_api::names;

const APPLY: &str = "?&force=true&fieldManager=pie-controller";

/// Writers behind the stores, so a test can fill the caches.
struct Caches {
    nodes: Writer<NodeFacts>,
    storage_classes: Writer<PartialObjectMeta<StorageClass>>,
    cron_jobs: Writer<Existing<CronJob>>,
    pvcs: Writer<Existing<PersistentVolumeClaim>>,
}

fn setup() -> (Caches, Stores) {
    let (nodes, nw) = reflector::store();
    let (storage_classes, sw) = reflector::store();
    let (cron_jobs, cw) = reflector::store();
    let (pvcs, pw) = reflector::store();
    let caches = Caches {
        nodes: nw,
        storage_classes: sw,
        cron_jobs: cw,
        pvcs: pw,
    };
    (
        caches,
        Stores {
            nodes,
            storage_classes,
            cron_jobs,
            pvcs,
        },
    )
}

fn context(stores: Stores) -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = ApiServerVerifier::new();
    let recorder = Recorder::new(client.clone(), "pie-controller".into());
    (
        Arc::new(Context::new(
            client,
            config(),
            stores,
            recorder,
            Arc::default(),
        )),
        verifier,
    )
}

fn add<K: kube::runtime::reflector::Lookup + Clone>(writer: &mut Writer<K>, object: K)
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Apply(object));
}

fn storage_class(name: &str) -> PartialObjectMeta<StorageClass> {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
    .into_response_partial()
}

/// Cache entry for an object as the API server would have it after our apply.
fn cached<K: kube::Resource>(object: &K, rv: &str) -> Existing<K> {
    let mut meta = object.meta().clone();
    meta.uid = Some(format!("uid-{}", meta.name.as_deref().unwrap()));
    meta.resource_version = Some(rv.into());
    Existing::from_meta(&meta)
}

fn nodes() -> Vec<NodeFacts> {
    vec![
        NodeBuilder::new("worker-1")
            .label("role", "compute")
            .build(),
        NodeBuilder::new("worker-2")
            .label("role", "compute")
            .build(),
        NodeBuilder::new("master-1")
            .label("role", "control")
            .build(),
    ]
}

fn probe() -> PieProbe {
    PieProbeBuilder::new("probe", "standard")
        .selector_in("role", &["compute"])
        .build()
}

fn probe_json(probe: &PieProbe) -> Value {
    serde_json::to_value(probe).unwrap()
}

async fn run(probe: PieProbe, ctx: Arc<Context>) -> Result<Action> {
    tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(probe), ctx))
        .await
        .expect("reconcile waited for an API call nobody expected")
}

#[tokio::test]
async fn first_reconcile_applies_provision_and_mount_probes_for_matching_nodes() {
    let (mut caches, stores) = setup();
    for n in nodes() {
        add(&mut caches.nodes, n);
    }
    add(&mut caches.storage_classes, storage_class("standard"));
    let (ctx, mut api) = context(stores);
    let probe = probe();
    let task = tokio::spawn(run(probe.clone(), ctx));

    let ns = "/api/v1/namespaces/pie/persistentvolumeclaims";
    for node in ["worker-1", "worker-2"] {
        let name = names::pvc("probe", node, "standard");
        let body = api
            .expect(Method::PATCH, &format!("{ns}/{name}{APPLY}"), Value::Null)
            .await;
        let body = api_echo_check(body, "PersistentVolumeClaim", &name);
        assert_eq!(body["spec"]["storageClassName"], "standard");
        assert_eq!(body["metadata"]["labels"]["node"], node);
    }
    let cj_path = "/apis/batch/v1/namespaces/pie/cronjobs";
    let mut expected = vec![names::provision_cronjob("probe", "standard")];
    expected.extend(["worker-1", "worker-2"].map(|n| names::mount_cronjob("probe", n, "standard")));
    for name in expected {
        let body = api
            .expect(
                Method::PATCH,
                &format!("{cj_path}/{name}{APPLY}"),
                Value::Null,
            )
            .await;
        let body = api_echo_check(body, "CronJob", &name);
        assert_eq!(body["spec"]["suspend"], false);
        assert_eq!(body["spec"]["jobTemplate"]["spec"]["backoffLimit"], 0);
    }
    let mut answer = probe_json(&probe);
    let status = api
        .expect(
            Method::PATCH,
            &format!("/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/probe/status{APPLY}"),
            answer.take(),
        )
        .await;
    assert_eq!(status["apiVersion"], "pie.topolvm.io/v1alpha1");
    assert_eq!(status["kind"], "PieProbe");
    assert_eq!(
        status["status"]["nodes"],
        json!({"selected": 2, "probed": 2, "skipped": 0})
    );
    assert_eq!(status["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(status["status"]["conditions"][0]["status"], "True");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert!(
        status["status"].get("lastProvisionOutcome").is_none(),
        "outcomes belong to the tracker"
    );

    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

/// Checks the applied body names the object and carries ownership and the desired hash.
fn api_echo_check(body: Value, kind: &str, name: &str) -> Value {
    assert_eq!(body["kind"], kind);
    assert_eq!(body["metadata"]["name"], name);
    assert_eq!(body["metadata"]["namespace"], "pie");
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "PieProbe");
    assert_eq!(owner["uid"], "uid-probe");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "pie-controller"
    );
    assert_eq!(
        body["metadata"]["annotations"]["pie.topolvm.io/desired-hash"]
            .as_str()
            .unwrap()
            .len(),
        40
    );
    body
}

/// Caches holding exactly what a reconcile of `probe` over `nodes` applied.
fn converged(probe: &PieProbe, nodes: &[NodeFacts]) -> (Caches, Stores, PieProbe) {
    let (mut caches, stores) = setup();
    for n in nodes {
        add(&mut caches.nodes, n.clone());
    }
    add(&mut caches.storage_classes, storage_class("standard"));
    let planned = plan::plan(probe, nodes, true, &config());
    let p = planned.clone().unwrap();
    for cj in p.cron_jobs() {
        add(&mut caches.cron_jobs, cached(&cj, "10"));
    }
    for pvc in p.pvcs() {
        add(&mut caches.pvcs, cached(&pvc, "11"));
    }
    let mut probe = probe.clone();
    probe.status = Some(status::desired(&probe, &planned, &Time(Timestamp::now())));
    (caches, stores, probe)
}

#[tokio::test]
async fn second_reconcile_with_nothing_changed_writes_nothing() {
    let (_caches, stores, probe) = converged(&probe(), &nodes());
    let (ctx, _api) = context(stores);
    // Any API call would wait for an answer that never comes, and `run` would time out.
    let action = run(probe, ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

/// After a restart or a change of leader the caches list anew; at 5,000 nodes the PVC list
/// pages for seconds. The real API server showed reconciles that started before it ended:
/// every CronJob and PVC not listed yet was applied again (78 writes that changed nothing).
#[tokio::test]
async fn a_reconcile_waits_for_the_caches_first_list_and_then_writes_nothing() {
    let probe = probe();
    let (mut caches, stores) = setup();
    for n in nodes() {
        add(&mut caches.nodes, n);
    }
    add(&mut caches.storage_classes, storage_class("standard"));
    let (client, _api) = ApiServerVerifier::new();
    let recorder = Recorder::new(client.clone(), "pie-controller".into());
    let (synced, synced_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(
        Context::new(client, config(), stores, recorder, Arc::default())
            .after_caches_synced(synced_rx),
    );
    let planned = plan::plan(&probe, &nodes(), true, &config());
    let mut converged = probe.clone();
    converged.status = Some(status::desired(&probe, &planned, &Time(Timestamp::now())));
    let task = tokio::spawn(run(converged, ctx));
    // The CronJob and PVC lists have not ended: the reconcile must not act on empty caches
    // (had it applied anything, it would wait on the fake API server and `run` time out).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !task.is_finished(),
        "reconciled before the caches were listed"
    );

    let p = planned.unwrap();
    for cj in p.cron_jobs() {
        add(&mut caches.cron_jobs, cached(&cj, "10"));
    }
    for pvc in p.pvcs() {
        add(&mut caches.pvcs, cached(&pvc, "11"));
    }
    synced.send_replace(true);
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn node_that_stops_matching_loses_its_cron_job_and_pvc_with_preconditions() {
    let (mut caches, stores, probe) = converged(&probe(), &nodes());
    add(
        &mut caches.nodes,
        NodeBuilder::new("worker-2")
            .label("role", "storage")
            .build(),
    );
    let (ctx, mut api) = context(stores);
    let task = tokio::spawn(run(probe.clone(), ctx));

    let ok = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}});
    let cj = names::mount_cronjob("probe", "worker-2", "standard");
    let body = api
        .expect(
            Method::DELETE,
            &format!("/apis/batch/v1/namespaces/pie/cronjobs/{cj}?"),
            ok.clone(),
        )
        .await;
    assert_eq!(
        body["preconditions"],
        json!({"uid": format!("uid-{cj}"), "resourceVersion": "10"})
    );
    assert_eq!(body["propagationPolicy"], "Background");
    let pvc = names::pvc("probe", "worker-2", "standard");
    let body = api
        .expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/pie/persistentvolumeclaims/{pvc}?"),
            ok,
        )
        .await;
    assert_eq!(
        body["preconditions"],
        json!({"uid": format!("uid-{pvc}"), "resourceVersion": "11"})
    );
    let status = api
        .expect(
            Method::PATCH,
            &format!("/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/probe/status{APPLY}"),
            probe_json(&probe),
        )
        .await;
    assert_eq!(
        status["status"]["nodes"],
        json!({"selected": 1, "probed": 1, "skipped": 0})
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn node_going_not_ready_suspends_its_cron_job_and_keeps_its_pvc() {
    let (mut caches, stores, probe) = converged(&probe(), &nodes());
    add(
        &mut caches.nodes,
        NodeBuilder::new("worker-2")
            .label("role", "compute")
            .ready(false)
            .build(),
    );
    let (ctx, mut api) = context(stores);
    let task = tokio::spawn(run(probe.clone(), ctx.clone()));
    let cj = names::mount_cronjob("probe", "worker-2", "standard");
    let body = api
        .expect(
            Method::PATCH,
            &format!("/apis/batch/v1/namespaces/pie/cronjobs/{cj}{APPLY}"),
            Value::Null,
        )
        .await;
    assert_eq!(body["spec"]["suspend"], true);
    let status = api
        .expect(
            Method::PATCH,
            &format!("/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/probe/status{APPLY}"),
            probe_json(&probe),
        )
        .await;
    assert_eq!(
        status["status"]["skippedNodes"],
        json!([{"name": "worker-2", "reason": "NotReady"}])
    );
    assert_eq!(status["status"]["conditions"][1]["type"], "Degraded");
    assert_eq!(status["status"]["conditions"][1]["status"], "True");
    task.await.unwrap().unwrap();
    let gauges: Vec<_> = ctx.eligibility.read().unwrap()[&("pie".to_owned(), "probe".to_owned())]
        .iter()
        .map(|n| (n.node.clone(), n.gauge()))
        .collect();
    assert_eq!(
        gauges,
        [("worker-1".to_owned(), 1.0), ("worker-2".to_owned(), 0.0)]
    );
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(100),
            ctx.plan_changed.notified()
        )
        .await
        .is_ok(),
        "a changed eligibility is pushed at once"
    );
}

async fn expect_blocked(probe: PieProbe, sc_present: bool, reason: &str, message: &str) {
    let (mut caches, stores) = setup();
    for n in nodes() {
        add(&mut caches.nodes, n);
    }
    if sc_present {
        add(&mut caches.storage_classes, storage_class("standard"));
    }
    let (ctx, mut api) = context(stores);
    let task = tokio::spawn(run(probe.clone(), ctx.clone()));
    let status = api
        .expect(
            Method::PATCH,
            &format!("/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/probe/status{APPLY}"),
            probe_json(&probe),
        )
        .await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("False"))
    );
    assert_eq!(ready["reason"], reason);
    assert_eq!(ready["message"], message);
    let event = api
        .expect(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/pie/events?",
            Value::Null,
        )
        .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], reason);
    assert_eq!(event["note"], message);
    assert_eq!(event["regarding"]["kind"], "PieProbe");
    assert_eq!(event["regarding"]["name"], "probe");
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Blocked(_)), "{err}");
    // The error policy backs off instead of retrying hot.
    let probe = Arc::new(probe);
    assert_eq!(
        error_policy(probe.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(probe, &err, ctx),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn missing_storage_class_sets_a_condition_and_an_event_and_creates_nothing() {
    expect_blocked(
        probe(),
        false,
        "StorageClassNotFound",
        "StorageClass standard not found",
    )
    .await;
}

#[tokio::test]
async fn invalid_spec_sets_a_condition_and_an_event_and_creates_nothing() {
    let probe = PieProbeBuilder::new("probe", "standard")
        .spec(|s| s.probe_threshold = "2m".into())
        .build();
    expect_blocked(
        probe,
        true,
        "InvalidSpec",
        "probePeriod (1m) must not be shorter than probeThreshold (2m)",
    )
    .await;
}

#[tokio::test]
async fn blocked_probe_already_reported_writes_nothing() {
    let mut probe = probe();
    let planned = plan::plan(&probe, &nodes(), false, &config());
    probe.status = Some(status::desired(&probe, &planned, &Time(Timestamp::now())));
    let (mut caches, stores) = setup();
    for n in nodes() {
        add(&mut caches.nodes, n);
    }
    let (ctx, _api) = context(stores);
    assert!(matches!(run(probe, ctx).await, Err(Error::Blocked(_))));
}

#[tokio::test]
async fn probe_being_deleted_is_left_to_the_garbage_collector() {
    let (mut caches, stores) = setup();
    for n in nodes() {
        add(&mut caches.nodes, n);
    }
    add(&mut caches.storage_classes, storage_class("standard"));
    let (ctx, _api) = context(stores);
    let mut probe = probe();
    probe.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    // Any API call would wait for an answer that never comes, and `run` would time out.
    assert_eq!(run(probe, ctx).await.unwrap(), Action::await_change());
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

/// topolvm/pie's CronJob for a node, as it made it (another field manager, its labels only, a
/// finalizer in the Pod template, its `genericvol` volume).
fn topolvm_cron_job(node: &str) -> Value {
    let name = names::mount_cronjob("probe", node, "standard");
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "namespace": "pie", "uid": format!("uid-{name}"),
                     "resourceVersion": "7",
                     "labels": {"storage-class": "standard", "pie-probe": "probe", "node": node},
                     "ownerReferences": [{"apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
                         "name": "probe", "uid": "uid-probe", "controller": true}]},
        "spec": {"schedule": "1-59/1 * * * *", "concurrencyPolicy": "Forbid",
                 "jobTemplate": {"spec": {"template": {
                     "metadata": {"labels": {"pie-probe": "probe"}, "finalizers": ["pie.topolvm.io/pod"]},
                     "spec": {"restartPolicy": "Never",
                              "containers": [{"name": "probe", "image": "ghcr.io/topolvm/pie:0.17.0",
                                              "args": ["probe"],
                                              "volumeMounts": [{"name": "genericvol", "mountPath": "/mounted"}]}],
                              "volumes": [{"name": "genericvol", "persistentVolumeClaim": {"claimName": "x"}}]}}}}}
    })
}

/// An object of pie's name that pie did not make (topolvm/pie's, in a migration) is taken over
/// so that nothing of the other controller's remains: a server-side apply alone leaves fields
/// another manager set, and the real API server kept topolvm/pie's Pod finalizer and volume in
/// the template that way (every probe Pod then stayed Terminating). So: read it, merge-patch it
/// into exactly pie's object (nulling what pie does not set), forget the old field managers,
/// then apply as always.
#[tokio::test]
async fn a_cron_job_pie_did_not_make_is_adopted_without_leftovers() {
    let (mut caches, stores, probe) = converged(&probe(), &nodes());
    let foreign: CronJob = serde_json::from_value(topolvm_cron_job("worker-1")).unwrap();
    add(
        &mut caches.cron_jobs,
        Existing::from_meta(&foreign.metadata),
    );
    let (ctx, mut api) = context(stores);
    let task = tokio::spawn(run(probe.clone(), ctx));
    let name = names::mount_cronjob("probe", "worker-1", "standard");
    let path = format!("/apis/batch/v1/namespaces/pie/cronjobs/{name}");
    api.expect(Method::GET, &path, topolvm_cron_job("worker-1"))
        .await;
    let patch = api
        .expect(
            Method::PATCH,
            &format!("{path}?&fieldManager=pie-controller"),
            topolvm_cron_job("worker-1"),
        )
        .await;
    assert_eq!(
        patch["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );
    assert_eq!(
        patch["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "pie-controller"
    );
    let template = &patch["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        template["metadata"]["finalizers"],
        Value::Null,
        "the finalizer goes"
    );
    let volumes: Vec<&str> = template["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(!volumes.contains(&"genericvol"), "{volumes:?}");
    assert_eq!(
        template["spec"]["containers"][0]["image"],
        config().agent_image.as_str()
    );
    let reset = api
        .expect(
            Method::PATCH,
            &format!("{path}?&fieldManager=pie-controller"),
            topolvm_cron_job("worker-1"),
        )
        .await;
    assert_eq!(reset, json!({"metadata": {"managedFields": [{}]}}));
    let applied = api
        .expect(Method::PATCH, &format!("{path}{APPLY}"), Value::Null)
        .await;
    api_echo_check(applied, "CronJob", &name);
    // A Pod its old template made (its Job came before the adoption) keeps topolvm/pie's
    // finalizer, which nothing else removes: the real cluster showed one after the adoption.
    let pods = "/api/v1/namespaces/pie/pods";
    let legacy = json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
        "items": [{
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "old-pod", "namespace": "pie", "resourceVersion": "41",
                "finalizers": ["pie.topolvm.io/pod", "batch.kubernetes.io/job-tracking"]},
        }],
    });
    api.expect(
        Method::GET,
        &format!("{pods}?&labelSelector=pie-probe%3Dprobe%2C%21app.kubernetes.io%2Fmanaged-by"),
        legacy.clone(),
    )
    .await;
    let release = api
        .expect(
            Method::PATCH,
            &format!("{pods}/old-pod?"),
            legacy["items"][0].clone(),
        )
        .await;
    assert_eq!(
        release,
        json!({"metadata": {"resourceVersion": "41", "finalizers": ["batch.kubernetes.io/job-tracking"]}})
    );
    task.await.unwrap().unwrap();
}

#[test]
fn merge_patch_to_nulls_what_the_target_lacks() {
    let live = json!({"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"});
    let want = json!({"a": 1, "b": {"d": [3]}, "f": true});
    assert_eq!(
        merge_patch_to(&live, &want),
        json!({"b": {"c": null, "d": [3]}, "e": null, "f": true})
    );
}
