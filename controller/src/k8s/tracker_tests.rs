use std::sync::Mutex;

use http::Method;
use serde_json::json;

use super::*;
use crate::domain::outcome::machine::{PodObs, ProbeKind};
use crate::fixtures::ApiServerVerifier;
use crate::fixtures::StaticIndex;
use crate::metrics::catalogue;
use crate::metrics::store::{Store, Value};

fn pusher() -> Pusher {
    Pusher::without_client(Arc::new(Store::new()))
}

fn late_pod() -> PodObs {
    PodObs {
        uid: "u1".into(),
        namespace: "pie".into(),
        name: "mount-p-n1-sc-abc-1-x".into(),
        job: Some("mount-p-n1-sc-abc-1".into()),
        kind: ProbeKind::Mount,
        pie_probe_name: "p".into(),
        storage_class: "sc".into(),
        node: "n1".into(),
        created_ms: 1_000,
        started_ms: Some(71_000),
        threshold_ms: 60_000,
        counted: false,
        waiting_reason: None,
        pvcs: vec![],
        node_eligible: true,
    }
}

#[test]
fn a_step_returns_its_decisions_and_records_nothing_of_them_yet() {
    let pusher = pusher();
    let mut tracker = Tracker::new(pusher.clone(), Arc::default());
    let decisions = tracker.step(Observation::Pod(late_pod()), 72_000);
    assert_eq!(decisions.len(), 1);
    let d = &decisions[0];
    assert_eq!(d.uid, "u1");
    assert_eq!(
        d.mark,
        Some(Action::MarkCounted {
            namespace: "pie".into(),
            pod: "mount-p-n1-sc-abc-1-x".into()
        })
    );
    assert_eq!(
        d.actions,
        [
            Action::DeleteJob {
                namespace: "pie".into(),
                job: "mount-p-n1-sc-abc-1".into()
            },
            Action::RecordOutcome {
                namespace: "pie".into(),
                pie_probe: "p".into(),
                kind: ProbeKind::Mount,
                time_ms: 71_000,
                node: Some("n1".into()),
                result: "Late",
                started_after_ms: Some(70_000),
                threshold_ms: 60_000,
                reason: None
            }
        ]
    );
    assert_eq!(d.updates.len(), 3, "mount total, start duration, failure");
    assert_eq!(
        pusher
            .store()
            .get(&catalogue::MOUNT_TOTAL, &["p", "n1", "sc", "false"]),
        None,
        "recorded only once the Pod is marked"
    );
    // The same Pod again (e.g. its next status update): nothing more.
    assert!(
        tracker
            .step(Observation::Pod(late_pod()), 73_000)
            .is_empty()
    );
    assert_eq!(tracker.tracked(), 1);
}

/// Answers the status apply of PieProbe `p`'s mount outcome; returns its body.
async fn expect_mount_status(api: &mut ApiServerVerifier) -> serde_json::Value {
    api.expect(
        Method::PATCH,
        "/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/p/status?&force=true&fieldManager=pie-controller-mount-outcome",
        json!({"apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
               "metadata": {"name": "p", "namespace": "pie"},
               "spec": {"monitoringStorageClass": "sc"}}),
    )
    .await
}

fn outcome(uid: &str, result: &'static str) -> Decision {
    Decision {
        uid: uid.into(),
        mark: None,
        updates: Vec::new(),
        actions: vec![Action::RecordOutcome {
            namespace: "pie".into(),
            pie_probe: "p".into(),
            kind: ProbeKind::Mount,
            time_ms: 71_000,
            node: Some("n1".into()),
            result,
            started_after_ms: Some(1_000),
            threshold_ms: 60_000,
            reason: None,
        }],
    }
}

/// An outcome that says what the status already says waits for the throttle instead of being
/// written (one PieProbe's status was written for every probe Pod); a changed one is written at
/// once.
#[tokio::test]
async fn the_status_is_written_at_once_only_when_the_result_changes() {
    let (client, mut api) = ApiServerVerifier::new();
    let pusher = pusher();
    let counted = Arc::new(CountedPods::default());
    let status = Arc::new(Mutex::new(StatusThrottle::new(30_000)));
    let key = ("pie".to_owned(), "p".to_owned(), ProbeKind::Mount);
    let written = outcome("u0", "OnTime").actions.pop().unwrap();
    assert!(
        status
            .lock()
            .unwrap()
            .offer(key, "OnTime", written, now_ms())
            .is_some()
    );
    settle(
        client.clone(),
        pusher.clone(),
        counted.clone(),
        status.clone(),
        outcome("u1", "OnTime"),
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), api.0.next_request())
            .await
            .is_err(),
        "the same result again is not written at once"
    );
    let due = status.lock().unwrap().due(now_ms() + 30_000);
    assert_eq!(
        due,
        outcome("u1", "OnTime").actions,
        "it waits, to be written later"
    );

    let task = tokio::spawn(settle(
        client,
        pusher,
        counted,
        status,
        outcome("u2", "Late"),
    ));
    expect_mount_status(&mut api).await;
    task.await.unwrap();
}

/// The mark comes first: until the API server has the Pod marked, nothing is recorded and the
/// Pod is not counted for the results API; then the outcome is, and the Job goes.
#[tokio::test]
async fn a_decision_is_recorded_once_the_pod_is_marked() {
    let (client, mut api) = ApiServerVerifier::new();
    let pusher = pusher();
    let counted = Arc::new(CountedPods::default());
    let mut tracker = Tracker::new(pusher.clone(), counted.clone());
    let decision = tracker
        .step(Observation::Pod(late_pod()), 72_000)
        .pop()
        .unwrap();
    let status = Arc::new(std::sync::Mutex::new(StatusThrottle::new(30_000)));
    let task = tokio::spawn(settle(
        client,
        pusher.clone(),
        counted.clone(),
        status,
        decision,
    ));
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.0.next_request())
        .await
        .expect("the mark")
        .unwrap();
    assert_eq!(request.method(), Method::PATCH);
    assert!(
        request
            .uri()
            .path()
            .ends_with("/pods/mount-p-n1-sc-abc-1-x")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let total = || {
        pusher
            .store()
            .get(&catalogue::MOUNT_TOTAL, &["p", "n1", "sc", "false"])
    };
    assert_eq!(total(), None, "not recorded before the mark is made");
    assert!(!counted.contains("u1"));
    send.send_response(
        http::Response::builder()
            .body(kube::client::Body::from(
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "mount-p-n1-sc-abc-1-x"}}))
                .unwrap(),
            ))
            .unwrap(),
    );
    api.expect(
        Method::DELETE,
        "/apis/batch/v1/namespaces/pie/jobs/mount-p-n1-sc-abc-1?",
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
    )
    .await;
    assert_eq!(total(), Some(Value::Scalar(1.0)));
    assert!(counted.contains("u1"));
    expect_mount_status(&mut api).await;
    task.await.unwrap();
}

#[tokio::test]
async fn event_watches_are_namespaced_and_field_selected() {
    let (client, mut api) = ApiServerVerifier::new();
    let (tx, mut rx) = mpsc::channel(8);
    let _task = watch_events_in(&client, "pie", tx);
    let event_list = |items: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "EventList", "metadata": {"resourceVersion": "7"},
               "items": items})
    };
    // The two initial lists, in either order.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.0.next_request())
            .await
            .expect("an Event list")
            .unwrap();
        assert_eq!(request.method(), Method::GET);
        let uri = request.uri().to_string();
        let items = if uri.contains("involvedObject.kind%3DPod") {
            json!([{"metadata": {"name": "e", "namespace": "pie",
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
                    "involvedObject": {"kind": "Pod", "name": "mount-p-n1-sc-abc-1-x", "namespace": "pie"},
                    "reason": "FailedMount", "message": "m"}])
        } else {
            json!([])
        };
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(
                    serde_json::to_vec(&event_list(items)).unwrap(),
                ))
                .unwrap(),
        );
        seen.push(uri);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "/api/v1/namespaces/pie/events?&fieldSelector=involvedObject.kind%3DPersistentVolumeClaim&limit=500",
            "/api/v1/namespaces/pie/events?&fieldSelector=involvedObject.kind%3DPod&limit=500",
        ]
    );
    let obs = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&obs, Observation::Event(e) if e.reason == "FailedMount"),
        "{obs:?}"
    );
}

/// Answers every request of the tracker's watches from fixed lists (watch requests are held
/// open), and records the writes.
async fn api_server(
    mut api: ApiServerVerifier,
    pods: serde_json::Value,
    events: serde_json::Value,
    writes: Arc<Mutex<Vec<(Method, String, serde_json::Value)>>>,
) {
    let mut held = Vec::new();
    while let Some((request, send)) = api.0.next_request().await {
        let uri = request.uri().to_string();
        let method = request.method().clone();
        if uri.contains("watch=true") {
            held.push(send);
            continue;
        }
        let list = |kind: &str, api_version: &str, items: serde_json::Value| {
            json!({"apiVersion": api_version, "kind": kind,
                   "metadata": {"resourceVersion": "1"}, "items": items})
        };
        let body = if method != Method::GET {
            let body = request.into_body().collect_bytes().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            writes.lock().unwrap().push((method, uri, body));
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
        } else if uri.starts_with("/api/v1/pods?") {
            list("PodList", "v1", pods.clone())
        } else if uri.starts_with("/api/v1/persistentvolumeclaims?") {
            list("PersistentVolumeClaimList", "v1", json!([]))
        } else if uri.starts_with("/api/v1/persistentvolumes?") {
            list("PartialObjectMetadataList", "meta.k8s.io/v1", json!([]))
        } else if uri.starts_with("/api/v1/namespaces/pie/events?") && uri.contains("kind%3DPod") {
            list("EventList", "v1", events.clone())
        } else if uri.starts_with("/api/v1/namespaces/pie/events?") {
            list("EventList", "v1", json!([]))
        } else {
            panic!("unexpected request {method} {uri}")
        };
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }
}

fn rfc3339(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_probe_pod_that_never_starts_is_counted_with_its_event_reason() {
    let (client, api) = ApiServerVerifier::new();
    let created = now_ms() - 200;
    let pod = json!({
        "metadata": {
            "name": "mount-p-n1-sc-abc-1-x", "namespace": "pie", "uid": "u1",
            "creationTimestamp": rfc3339(created),
            "labels": {"app.kubernetes.io/managed-by": "pie-controller",
                "app.kubernetes.io/component": "mount-probe", "pie-probe": "p",
                "storage-class": "sc", "node": "n1"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                "name": "mount-p-n1-sc-abc-1", "uid": "j1"}]
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "probe"}],
            "volumes": [{"name": "mounted", "persistentVolumeClaim": {"claimName": "pie-pvc-p-n1-sc-abc"}}]}
    });
    let event = json!({
        "metadata": {"name": "e", "namespace": "pie", "creationTimestamp": rfc3339(created + 100)},
        "involvedObject": {"kind": "Pod", "name": "mount-p-n1-sc-abc-1-x", "namespace": "pie"},
        "reason": "FailedMount", "message": "MountVolume.SetUp failed for volume \"pvc-1\"",
        "lastTimestamp": rfc3339(created + 100)
    });
    let writes = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(api_server(
        api,
        json!([pod]),
        json!([event]),
        writes.clone(),
    ));

    let mut index = StaticIndex::default();
    index.thresholds.insert(("pie".into(), "p".into()), 1_500);
    let pusher = pusher();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let counted = Arc::new(CountedPods::default());
    let run = tokio::spawn(run(
        client,
        vec![None],
        Arc::new(index),
        pusher.clone(),
        counted.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while writes.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no mark, delete and status: {:?}",
            writes.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut writes = writes.lock().unwrap().clone();
    writes.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(writes[0].0, Method::PATCH);
    assert_eq!(
        writes[0].1,
        "/api/v1/namespaces/pie/pods/mount-p-n1-sc-abc-1-x?"
    );
    assert_eq!(
        writes[0].2,
        json!({"metadata": {"annotations": {"pie.topolvm.io/counted": "true"}}})
    );
    assert_eq!(writes[1].0, Method::DELETE);
    assert_eq!(
        writes[1].1,
        "/apis/batch/v1/namespaces/pie/jobs/mount-p-n1-sc-abc-1?"
    );
    assert_eq!(writes[2].0, Method::PATCH);
    assert!(
        writes[2]
            .1
            .starts_with("/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/p/status?")
    );
    let outcome = &writes[2].2["status"]["lastMountOutcome"];
    assert_eq!(outcome["result"], "NotStarted");
    assert_eq!(outcome["node"], "n1");
    assert!(
        outcome["message"].as_str().unwrap().contains("FailedMount"),
        "{outcome}"
    );

    let s = pusher.store();
    assert_eq!(
        s.get(&catalogue::MOUNT_TOTAL, &["p", "n1", "sc", "false"]),
        Some(Value::Scalar(1.0))
    );
    assert_eq!(
        s.get(
            &catalogue::FAILURES_TOTAL,
            &["p", "n1", "sc", "mount", "FailedMount"]
        ),
        Some(Value::Scalar(1.0)),
        "the Event's reason, not timeout"
    );
    assert!(
        counted.contains("u1"),
        "the results API learns that the Pod is counted"
    );
    assert_eq!(
        s.get(
            &catalogue::FAILURES_TOTAL,
            &["p", "n1", "sc", "mount", "timeout"]
        ),
        None
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the tracker stops on shutdown")
        .unwrap();
}
