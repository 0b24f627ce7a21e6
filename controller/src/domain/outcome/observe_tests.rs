use super::*;
use crate::fixtures::StaticIndex;
use serde_json::json;

const T0: &str = "2026-01-01T00:00:00Z";
const T0_MS: i64 = 1_767_225_600_000;

fn index() -> StaticIndex {
    let mut index = StaticIndex::default();
    index.thresholds.insert(("pie".into(), "p".into()), 60_000);
    index
        .ineligible
        .insert(("pie".into(), "p".into(), "n2".into(), "sc".into()));
    index
}

fn mount_pod(extra: serde_json::Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "mount-p-n1-sc-abc123-29000000-x7k2p",
            "namespace": "pie",
            "uid": "u1",
            "creationTimestamp": T0,
            "labels": {
                "app.kubernetes.io/managed-by": "pie-controller",
                "app.kubernetes.io/component": "mount-probe",
                "pie-probe": "p",
                "storage-class": "sc",
                "node": "n1"
            },
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                "name": "mount-p-n1-sc-abc123-29000000", "uid": "j1"}]
        },
        "spec": {
            "containers": [{"name": "probe", "image": "i"}],
            "volumes": [
                {"name": "mounted", "persistentVolumeClaim": {"claimName": "pie-pvc-p-n1-sc-abc123"}},
                {"name": "tmp", "emptyDir": {}}
            ]
        }
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn an_unscheduled_mount_pod() {
    let obs = pod(&mount_pod(json!({})), &index()).unwrap();
    assert_eq!(
        obs,
        PodObs {
            uid: "u1".into(),
            namespace: "pie".into(),
            name: "mount-p-n1-sc-abc123-29000000-x7k2p".into(),
            job: Some("mount-p-n1-sc-abc123-29000000".into()),
            kind: ProbeKind::Mount,
            pie_probe_name: "p".into(),
            storage_class: "sc".into(),
            // Not scheduled yet: the node label names it.
            node: "n1".into(),
            created_ms: T0_MS,
            started_ms: None,
            threshold_ms: 60_000,
            counted: false,
            waiting_reason: None,
            pvcs: vec!["pie-pvc-p-n1-sc-abc123".into()],
            node_eligible: true,
        }
    );
}

#[test]
fn started_waiting_and_counted_pods() {
    let running = mount_pod(json!({
        "spec": {"nodeName": "n1"},
        "status": {"containerStatuses": [{"name": "probe", "image": "i", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:07Z"}}}]}
    }));
    assert_eq!(
        pod(&running, &index()).unwrap().started_ms,
        Some(T0_MS + 7_000)
    );

    let finished = mount_pod(json!({
        "status": {"containerStatuses": [{"name": "probe", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 1,
                "startedAt": "2026-01-01T00:00:03Z", "finishedAt": "2026-01-01T00:00:05Z"}}}]}
    }));
    assert_eq!(
        pod(&finished, &index()).unwrap().started_ms,
        Some(T0_MS + 3_000)
    );

    let pulling = mount_pod(json!({
        "status": {"containerStatuses": [{"name": "probe", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
    }));
    let obs = pod(&pulling, &index()).unwrap();
    assert_eq!(obs.started_ms, None);
    assert_eq!(obs.waiting_reason.as_deref(), Some("ImagePullBackOff"));

    let counted = mount_pod(json!({"metadata": {"annotations": {ANNOTATION_COUNTED: "true"}}}));
    assert!(pod(&counted, &index()).unwrap().counted);

    // Another container's start is not the probe's.
    let sidecar = mount_pod(json!({
        "status": {"containerStatuses": [{"name": "sidecar", "image": "i", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]}
    }));
    assert_eq!(pod(&sidecar, &index()).unwrap().started_ms, None);
}

#[test]
fn ineligible_nodes_and_provision_pods() {
    let on_n2 =
        mount_pod(json!({"spec": {"nodeName": "n2"}, "metadata": {"labels": {"node": "n2"}}}));
    assert!(!pod(&on_n2, &index()).unwrap().node_eligible);

    let provision = mount_pod(json!({
        "metadata": {"name": "provision-p-sc-abc-29000000-q", "labels": {
            "app.kubernetes.io/component": "provision-probe", "node": null}},
        "spec": {"nodeName": "n2", "volumes": [
            {"name": "mounted", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}
    }));
    let obs = pod(&provision, &index()).unwrap();
    assert_eq!(obs.kind, ProbeKind::Provision);
    assert_eq!(obs.node, "n2", "the node it landed on");
    assert!(obs.node_eligible, "provision probes run anywhere");
    assert_eq!(obs.pvcs, ["provision-p-sc-abc-29000000-q-mounted"]);
}

#[test]
fn pods_that_are_not_probes_are_ignored() {
    let cases = [
        json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "helm"}}}),
        json!({"metadata": {"labels": {"app.kubernetes.io/component": "web"}}}),
        json!({"metadata": {"labels": {"pie-probe": null}}}),
        json!({"metadata": {"labels": {"storage-class": null}}}),
        // Its PieProbe is unknown (deleted, or not in a watched namespace).
        json!({"metadata": {"labels": {"pie-probe": "other"}}}),
        json!({"metadata": {"namespace": "elsewhere"}}),
        json!({"metadata": {"uid": null}}),
        json!({"metadata": {"creationTimestamp": null}}),
    ];
    for case in cases {
        let p = mount_pod(case.clone());
        assert_eq!(pod(&p, &index()), None, "{case}");
    }
}

fn k8s_event(kind: &str, name: &str, reason: &str, times: serde_json::Value) -> Event {
    let mut e = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e1", "namespace": "pie", "creationTimestamp": "2026-01-01T00:00:09Z"},
        "involvedObject": {"kind": kind, "name": name, "namespace": "pie"},
        "reason": reason,
        "message": "MountVolume.SetUp failed"
    });
    merge(&mut e, times);
    serde_json::from_value(e).unwrap()
}

#[test]
fn events_about_probe_objects() {
    let e = k8s_event(
        "Pod",
        "mount-p-n1-sc-abc123-29000000-x7k2p",
        "FailedMount",
        json!({"lastTimestamp": "2026-01-01T00:00:05Z", "firstTimestamp": "2026-01-01T00:00:02Z"}),
    );
    assert_eq!(
        event(&e),
        Some(EventObs {
            namespace: "pie".into(),
            involved_kind: "Pod".into(),
            involved_name: "mount-p-n1-sc-abc123-29000000-x7k2p".into(),
            reason: "FailedMount".into(),
            message: "MountVolume.SetUp failed".into(),
            time_ms: T0_MS + 5_000,
        })
    );
    // events.k8s.io-style Events carry only eventTime; the oldest carry only creationTimestamp.
    let micro = k8s_event(
        "PersistentVolumeClaim",
        "pie-pvc-p-n1-sc-abc123",
        "ProvisioningFailed",
        json!({"eventTime": "2026-01-01T00:00:04.250000Z"}),
    );
    assert_eq!(event(&micro).unwrap().time_ms, T0_MS + 4_250);
    let bare = k8s_event(
        "PersistentVolumeClaim",
        "provision-p-sc-x-1-q-mounted",
        "X",
        json!({}),
    );
    assert_eq!(event(&bare).unwrap().time_ms, T0_MS + 9_000);
}

#[test]
fn events_about_other_objects_are_ignored() {
    for (kind, name) in [
        ("Pod", "web-7d9f8"),
        ("Pod", "pie-pvc-p-n1"),
        ("PersistentVolumeClaim", "data-postgres-0"),
        ("Node", "mount-n1"),
        ("CronJob", "mount-p-n1-sc-abc123"),
    ] {
        let e = k8s_event(kind, name, "FailedMount", json!({}));
        assert_eq!(event(&e), None, "{kind}/{name}");
    }
}

fn ephemeral_pvc(extra: serde_json::Value) -> PersistentVolumeClaim {
    let mut p = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "provision-p-sc-abc-29000000-q-mounted", "namespace": "pie",
            "creationTimestamp": T0,
            "labels": {"app.kubernetes.io/managed-by": "pie-controller",
                "app.kubernetes.io/component": "provision-probe", "pie-probe": "p", "storage-class": "sc"}
        },
        "spec": {}
    });
    merge(&mut p, extra);
    serde_json::from_value(p).unwrap()
}

#[test]
fn ephemeral_pvcs() {
    let pending = pvc(
        &ephemeral_pvc(json!({"status": {"phase": "Pending"}})),
        &index(),
    )
    .unwrap();
    assert_eq!(
        pending,
        PvcObs {
            namespace: "pie".into(),
            name: "provision-p-sc-abc-29000000-q-mounted".into(),
            pie_probe_name: "p".into(),
            storage_class: "sc".into(),
            created_ms: T0_MS,
            bound: false,
            volume: None,
            deleted_ms: None,
            threshold_ms: 60_000,
        }
    );
    let bound = pvc(
        &ephemeral_pvc(
            json!({"status": {"phase": "Bound"}, "spec": {"volumeName": "pv-1"},
            "metadata": {"deletionTimestamp": "2026-01-01T00:01:00Z"}}),
        ),
        &index(),
    )
    .unwrap();
    assert!(bound.bound);
    assert_eq!(bound.volume.as_deref(), Some("pv-1"));
    assert_eq!(bound.deleted_ms, Some(T0_MS + 60_000));

    let mount_pvc = ephemeral_pvc(
        json!({"metadata": {"labels": {"app.kubernetes.io/component": "mount-probe"}}}),
    );
    assert_eq!(pvc(&mount_pvc, &index()), None, "mount PVCs are long-lived");
    let unknown = ephemeral_pvc(json!({"metadata": {"labels": {"pie-probe": "gone"}}}));
    assert_eq!(pvc(&unknown, &index()), None);
}

#[test]
fn thresholds() {
    assert_eq!(parse_threshold_ms("1m"), Some(60_000));
    assert_eq!(parse_threshold_ms("1m30s"), Some(90_000));
    assert_eq!(parse_threshold_ms("250ms"), Some(250));
    for bad in ["", "0s", "-1m", "soon", "1"] {
        assert_eq!(parse_threshold_ms(bad), None, "{bad:?}");
    }
}

#[test]
fn a_relist_reports_pods_deleted_meanwhile() {
    let idx = index();
    let mut known = Known::default();
    let a = mount_pod(json!({}));
    let b =
        mount_pod(json!({"metadata": {"uid": "u2", "name": "mount-p-n1-sc-abc123-29000001-b"}}));
    let mut all = Vec::new();
    for e in [
        watcher::Event::Init,
        watcher::Event::InitApply(a.clone()),
        watcher::Event::InitApply(b.clone()),
        watcher::Event::InitDone,
    ] {
        all.extend(pod_events(&mut known, &e, &idx));
    }
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|o| matches!(o, Observation::Pod(_))));
    assert_eq!(known.len(), 2);

    // The watch broke; b was deleted while it was down.
    let mut relist = Vec::new();
    for e in [
        watcher::Event::Init,
        watcher::Event::InitApply(a.clone()),
        watcher::Event::InitDone,
    ] {
        relist.extend(pod_events(&mut known, &e, &idx));
    }
    assert!(matches!(relist[0], Observation::Pod(_)));
    assert_eq!(relist[1], Observation::PodGone { uid: "u2".into() });
    assert_eq!(relist.len(), 2);

    // A plain delete, and a second delete of the same object (nothing).
    let gone = pod_events(&mut known, &watcher::Event::Delete(a.clone()), &idx);
    assert_eq!(gone, [Observation::PodGone { uid: "u1".into() }]);
    assert!(pod_events(&mut known, &watcher::Event::Delete(a), &idx).is_empty());
    assert!(known.is_empty());
}

#[test]
fn pvc_and_pv_watch_events() {
    let idx = index();
    let mut known = Known::default();
    let p = ephemeral_pvc(json!({}));
    assert!(matches!(
        pvc_events(&mut known, &watcher::Event::Apply(p.clone()), &idx)[..],
        [Observation::Pvc(_)]
    ));
    assert_eq!(
        pvc_events(&mut known, &watcher::Event::Delete(p), &idx),
        [Observation::PvcGone {
            namespace: "pie".into(),
            name: "provision-p-sc-abc-29000000-q-mounted".into()
        }]
    );

    let mut known = Known::default();
    let pv: PartialObjectMeta<PersistentVolume> =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-1"}}))
        .unwrap();
    assert!(pv_events(&mut known, &watcher::Event::Apply(pv.clone())).is_empty());
    for e in [watcher::Event::Init, watcher::Event::InitDone] {
        let out = pv_events(&mut known, &e);
        if matches!(e, watcher::Event::InitDone) {
            assert_eq!(
                out,
                [Observation::PvGone {
                    name: "pv-1".into()
                }]
            );
        }
    }
    assert!(
        pv_events(&mut known, &watcher::Event::Delete(pv)).is_empty(),
        "already gone"
    );
}

#[test]
fn event_watch_events() {
    let e = k8s_event(
        "Pod",
        "mount-p-n1-sc-abc123-1-x",
        "FailedScheduling",
        json!({}),
    );
    assert_eq!(event_events(&watcher::Event::Apply(e.clone())).len(), 1);
    assert_eq!(event_events(&watcher::Event::InitApply(e.clone())).len(), 1);
    assert!(
        event_events(&watcher::Event::Delete(e)).is_empty(),
        "an expired Event changes nothing"
    );
}
