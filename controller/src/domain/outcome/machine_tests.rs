use super::*;
use crate::metrics::catalogue;
use crate::metrics::store::{Store, Value};

const T: i64 = 10_000; // probeThreshold 10 s
const C: i64 = 1_000_000; // Pod creation time

fn pod(kind: ProbeKind) -> PodObs {
    PodObs {
        uid: "uid-1".into(),
        namespace: "pie".into(),
        name: "mount-x-123".into(),
        job: Some("mount-x-123j".into()),
        kind,
        pie_probe_name: "p".into(),
        storage_class: "sc".into(),
        node: "n1".into(),
        created_ms: C,
        started_ms: None,
        threshold_ms: T,
        counted: false,
        waiting_reason: None,
        pvcs: vec!["pvc-1".into()],
        node_eligible: true,
    }
}

fn started(mut p: PodObs, at: i64) -> PodObs {
    p.started_ms = Some(at);
    p
}

fn event(kind: &str, name: &str, reason: &str, message: &str, time: i64) -> Observation {
    Observation::Event(EventObs {
        namespace: "pie".into(),
        involved_kind: kind.into(),
        involved_name: name.into(),
        reason: reason.into(),
        message: message.into(),
        time_ms: time,
    })
}

fn mark() -> Action {
    Action::MarkCounted {
        namespace: "pie".into(),
        pod: "mount-x-123".into(),
    }
}

fn delete_job() -> Action {
    Action::DeleteJob {
        namespace: "pie".into(),
        job: "mount-x-123j".into(),
    }
}

/// Every non-zero series after applying the steps' updates to a fresh store, as
/// `name{labels...}=value` (histograms as `name{...}count/sum`).
fn run(machine: &mut Machine, steps: Vec<(Observation, i64)>) -> (Vec<String>, Vec<Action>) {
    let store = Store::new();
    let mut actions = Vec::new();
    for (obs, now) in steps {
        let (updates, out_actions) = machine.observe(obs, now).flatten();
        let (_, errors) = store.apply(updates);
        assert!(errors.is_empty(), "{errors:?}");
        // Status outcomes have their own test.
        actions.extend(
            out_actions
                .into_iter()
                .filter(|a| !matches!(a, Action::RecordOutcome { .. })),
        );
    }
    let mut series = Vec::new();
    for f in store.families() {
        for (labels, value) in f.series {
            let v = match value {
                Value::Scalar(0.0) => continue,
                Value::Scalar(v) => format!("{v}"),
                Value::Histogram { counts, sum } => {
                    format!("{}/{sum}", counts.iter().sum::<u64>())
                }
            };
            series.push(format!("{}{{{}}}={v}", f.family.name, labels.join(",")));
        }
    }
    series.sort();
    (series, actions)
}

struct Case {
    name: &'static str,
    steps: Vec<(Observation, i64)>,
    series: Vec<&'static str>,
    actions: Vec<Action>,
}

fn mount(p: PodObs) -> Observation {
    Observation::Pod(p)
}

#[test]
fn table() {
    let m = ProbeKind::Mount;
    let cases = vec![
        Case {
            name: "fast start",
            steps: vec![
                (mount(pod(m)), C + 100),
                (mount(started(pod(m), C + 2_000)), C + 2_100),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,true}=1",
                "pie_probe_start_duration_seconds{p,n1,sc,mount}=1/2",
            ],
            actions: vec![mark()],
        },
        Case {
            name: "slow start still within the threshold",
            steps: vec![
                (mount(pod(m)), C + 100),
                (mount(started(pod(m), C + 9_999)), C + 9_999),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,true}=1",
                "pie_probe_start_duration_seconds{p,n1,sc,mount}=1/9.999",
            ],
            actions: vec![mark()],
        },
        Case {
            name: "start exactly at the threshold is late",
            steps: vec![(mount(pod(m)), C), (mount(started(pod(m), C + T)), C + T)],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,timeout}=1",
                "pie_probe_start_duration_seconds{p,n1,sc,mount}=1/10",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "never starts: false once, at the threshold, Job deleted",
            steps: vec![
                (mount(pod(m)), C + 100),
                (Observation::Tick, C + 5_000),
                (Observation::Tick, C + T),
                (Observation::Tick, C + 2 * T),
                (mount(pod(m)), C + 3 * T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,timeout}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "waiting for a provisioner that never answers outranks the scheduler's waiting",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "waiting for the ephemeral volume controller",
                        C + 200,
                    ),
                    C + 200,
                ),
                (
                    event(
                        "PersistentVolumeClaim",
                        "pvc-1",
                        "ExternalProvisioning",
                        "Waiting for a volume to be created by the external provisioner",
                        C + 1_000,
                    ),
                    C + 1_000,
                ),
                // Later, the scheduler says it again: still the provisioner's fault.
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "running PreBind plugin VolumeBinding",
                        C + 8_000,
                    ),
                    C + 8_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,ExternalProvisioning}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "a provisioning failure outranks the waiting Events around it",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    event(
                        "PersistentVolumeClaim",
                        "pvc-1",
                        "ProvisioningFailed",
                        "backend full",
                        C + 2_000,
                    ),
                    C + 2_000,
                ),
                (
                    event(
                        "PersistentVolumeClaim",
                        "pvc-1",
                        "ExternalProvisioning",
                        "Waiting for a volume",
                        C + 3_000,
                    ),
                    C + 3_000,
                ),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "unbound PersistentVolumeClaims",
                        C + 4_000,
                    ),
                    C + 4_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,ProvisioningFailed}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "among failures, the latest wins (a mount failure after a healed provisioning one)",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    event(
                        "PersistentVolumeClaim",
                        "pvc-1",
                        "ProvisioningFailed",
                        "transient",
                        C + 1_000,
                    ),
                    C + 1_000,
                ),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedMount",
                        "MountVolume.SetUp failed",
                        C + 5_000,
                    ),
                    C + 5_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,FailedMount}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "image pull failure from the container status",
            steps: vec![
                (
                    mount(PodObs {
                        waiting_reason: Some("ImagePullBackOff".into()),
                        ..pod(m)
                    }),
                    C + 3_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,ImagePull}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "image pull failure from an Event",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "Failed",
                        "Failed to pull image \"x\"",
                        C + 2_000,
                    ),
                    C + 2_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,ImagePull}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "FailedMount",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    event("Pod", "mount-x-123", "FailedMount", "timed out", C + 4_000),
                    C + 4_000,
                ),
                (Observation::Tick, C + T + 1),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,FailedMount}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "provisioning failure on the PVC, unscheduled provision Pod",
            steps: vec![
                (
                    mount(PodObs {
                        node: String::new(),
                        ..pod(ProbeKind::Provision)
                    }),
                    C + 100,
                ),
                (
                    event(
                        "PersistentVolumeClaim",
                        "pvc-1",
                        "ProvisioningFailed",
                        "no space",
                        C + 500,
                    ),
                    C + 500,
                ),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "unbound PVC",
                        C + 400,
                    ),
                    C + 600,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_probe_failures_total{p,,sc,provision,ProvisioningFailed}=1",
                "pie_provision_probe_total{p,sc,false}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "duplicate and out-of-order Pod updates count once",
            steps: vec![
                (mount(started(pod(m), C + 1_000)), C + 1_500),
                (mount(pod(m)), C + 1_600),
                (mount(started(pod(m), C + 1_000)), C + 1_700),
                (Observation::Tick, C + 3 * T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,true}=1",
                "pie_probe_start_duration_seconds{p,n1,sc,mount}=1/1",
            ],
            actions: vec![mark()],
        },
        Case {
            name: "Event before its Pod is kept",
            steps: vec![
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "0/3 nodes",
                        C + 50,
                    ),
                    C + 60,
                ),
                (mount(pod(m)), C + 100),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,FailedScheduling}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "Pod deleted before start and before the threshold: nothing",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    Observation::PodGone {
                        uid: "uid-1".into(),
                    },
                    C + 3_000,
                ),
                (Observation::Tick, C + 2 * T),
            ],
            series: vec![],
            actions: vec![],
        },
        Case {
            name: "Pod gone unstarted after its threshold (no tick seen): false, no action",
            steps: vec![
                (mount(pod(m)), C + 100),
                (
                    Observation::PodGone {
                        uid: "uid-1".into(),
                    },
                    C + 2 * T,
                ),
            ],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,false}=1",
                "pie_probe_failures_total{p,n1,sc,mount,timeout}=1",
            ],
            actions: vec![],
        },
        Case {
            name: "restart mid-flight with the counted mark: never counted again",
            steps: vec![
                (
                    mount(PodObs {
                        counted: true,
                        ..started(pod(m), C + 20_000)
                    }),
                    C + 30_000,
                ),
                (Observation::Tick, C + 3 * T),
            ],
            series: vec![],
            actions: vec![],
        },
        Case {
            name: "restart mid-flight without the mark: counted once",
            steps: vec![(mount(started(pod(m), C + 1_000)), C + 30_000)],
            series: vec![
                "pie_mount_probe_total{p,n1,sc,true}=1",
                "pie_probe_start_duration_seconds{p,n1,sc,mount}=1/1",
            ],
            actions: vec![mark()],
        },
        Case {
            name: "ineligible node: Job deleted, no failure",
            steps: vec![
                (
                    mount(PodObs {
                        node_eligible: false,
                        ..pod(m)
                    }),
                    C,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "provision probe while no node of its PieProbe is eligible: no failure",
            steps: vec![
                (
                    mount(PodObs {
                        node_eligible: false,
                        node: String::new(),
                        ..pod(ProbeKind::Provision)
                    }),
                    C,
                ),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "0/3 nodes are available",
                        C + 1_000,
                    ),
                    C + 1_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![],
            actions: vec![mark(), delete_job()],
        },
        Case {
            name: "provision probe that cannot be scheduled while nodes are eligible: a failure",
            steps: vec![
                (
                    mount(PodObs {
                        node: String::new(),
                        ..pod(ProbeKind::Provision)
                    }),
                    C,
                ),
                (
                    event(
                        "Pod",
                        "mount-x-123",
                        "FailedScheduling",
                        "node(s) did not have enough free storage",
                        C + 1_000,
                    ),
                    C + 1_000,
                ),
                (Observation::Tick, C + T),
            ],
            series: vec![
                "pie_probe_failures_total{p,,sc,provision,FailedScheduling}=1",
                "pie_provision_probe_total{p,sc,false}=1",
            ],
            actions: vec![mark(), delete_job()],
        },
    ];
    for case in cases {
        let (series, actions) = run(&mut Machine::new(), case.steps);
        assert_eq!(series, case.series, "{}", case.name);
        assert_eq!(actions, case.actions, "{}", case.name);
    }
}

fn unbound_pvc(deleted: Option<i64>) -> Observation {
    pvc(deleted, false)
}

fn pvc(deleted: Option<i64>, bound: bool) -> Observation {
    Observation::Pvc(PvcObs {
        namespace: "pie".into(),
        name: "prov-pod-vol".into(),
        pie_probe_name: "p".into(),
        storage_class: "sc".into(),
        created_ms: C,
        bound,
        volume: bound.then(|| "pv-1".into()),
        deleted_ms: deleted,
        threshold_ms: T,
    })
}

#[test]
fn volume_lifecycle() {
    let pv_gone = || Observation::PvGone {
        name: "pv-1".into(),
    };
    type Steps = Vec<(Observation, i64)>;
    let cases: Vec<(&str, Steps, Vec<&str>)> = vec![
        (
            "provisioned and deleted on time",
            vec![
                (pvc(None, false), C + 10),
                (pvc(None, true), C + 1_500),
                (pvc(Some(C + 5_000), true), C + 5_000),
                (pv_gone(), C + 7_000),
            ],
            vec![
                "pie_probe_volume_delete_seconds{p,sc}=1/2",
                "pie_probe_volume_delete_total{p,sc,true}=1",
                "pie_probe_volume_provision_seconds{p,sc}=1/1.5",
            ],
        ),
        (
            "deletion slow: false at the threshold, histogram when it ends",
            vec![
                (pvc(None, true), C + 10),
                (pvc(Some(C + 5_000), true), C + 5_000),
                (Observation::Tick, C + 5_000 + T),
                (
                    Observation::PvcGone {
                        namespace: "pie".into(),
                        name: "prov-pod-vol".into(),
                    },
                    C + 5_000 + T,
                ),
                (pv_gone(), C + 40_000),
            ],
            vec![
                "pie_probe_volume_delete_seconds{p,sc}=1/35",
                "pie_probe_volume_delete_total{p,sc,false}=1",
            ],
        ),
        (
            "deletion never finishing is still counted, once",
            vec![
                (pvc(None, true), C + 10),
                (pvc(Some(C + 5_000), true), C + 5_000),
                (Observation::Tick, C + 5_000 + T),
                (Observation::Tick, C + 5_000 + 5 * T),
            ],
            vec!["pie_probe_volume_delete_total{p,sc,false}=1"],
        ),
        (
            "a claim never provisioned has no deletion to time",
            vec![
                (unbound_pvc(None), C + 10),
                (unbound_pvc(Some(C + 25_000)), C + 25_000),
                (Observation::Tick, C + 25_000 + T),
                (
                    Observation::PvcGone {
                        namespace: "pie".into(),
                        name: "prov-pod-vol".into(),
                    },
                    C + 26_000,
                ),
                (Observation::Tick, C + 25_000 + 5 * T),
            ],
            vec![],
        ),
    ];
    for (name, steps, want) in cases {
        let (series, actions) = run(&mut Machine::new(), steps);
        assert_eq!(series, want, "{name}");
        assert!(actions.is_empty(), "{name}");
    }
}

#[test]
fn zero_series_for_both_on_time_values() {
    let store = Store::new();
    store.apply(zero_updates(ProbeKind::Mount, "p", "n1", "sc", 1));
    store.apply(zero_updates(ProbeKind::Provision, "p", "", "sc", 1));
    for v in ["true", "false"] {
        assert_eq!(
            store.get(&catalogue::MOUNT_TOTAL, &["p", "n1", "sc", v]),
            Some(Value::Scalar(0.0))
        );
        assert_eq!(
            store.get(&catalogue::PROVISION_TOTAL, &["p", "sc", v]),
            Some(Value::Scalar(0.0))
        );
    }
}

#[test]
fn reasons_map_to_the_documented_set() {
    for (reason, message, want) in [
        ("FailedScheduling", "", Some("FailedScheduling")),
        ("FailedAttachVolume", "", Some("FailedAttachVolume")),
        ("FailedMount", "", Some("FailedMount")),
        ("ProvisioningFailed", "", Some("ProvisioningFailed")),
        ("ExternalProvisioning", "", Some("ExternalProvisioning")),
        ("ErrImagePull", "", Some("ImagePull")),
        ("BackOff", "Back-off pulling image \"x\"", Some("ImagePull")),
        ("BackOff", "Back-off restarting failed container", None),
        ("Scheduled", "", None),
    ] {
        let got = event_reason(reason, message);
        assert_eq!(got, want, "{reason}");
        if let Some(r) = got {
            assert!(REASONS.contains(&r));
        }
    }
}

#[test]
fn outcomes_for_the_status() {
    let outcome = |obs: Vec<(Observation, i64)>| {
        let mut m = Machine::new();
        let mut found = Vec::new();
        for (o, now) in obs {
            for a in m.observe(o, now).flatten().1 {
                if let Action::RecordOutcome {
                    kind,
                    time_ms,
                    node,
                    result,
                    started_after_ms,
                    reason,
                    ..
                } = a
                {
                    found.push((kind, time_ms, node, result, started_after_ms, reason));
                }
            }
        }
        found
    };
    assert_eq!(
        outcome(vec![(
            Observation::Pod(started(pod(ProbeKind::Mount), C + 2_500)),
            C + 3_000
        )]),
        [(
            ProbeKind::Mount,
            C + 2_500,
            Some("n1".to_owned()),
            "OnTime",
            Some(2_500),
            None
        )]
    );
    assert_eq!(
        outcome(vec![(
            Observation::Pod(started(pod(ProbeKind::Provision), C + T + 1_000)),
            C + T + 2_000
        )])[0]
            .3,
        "Late"
    );
    let mut unscheduled = pod(ProbeKind::Provision);
    unscheduled.node = String::new();
    let never = outcome(vec![
        (Observation::Pod(unscheduled), C),
        (
            event(
                "Pod",
                "mount-x-123",
                "FailedScheduling",
                "0/3 nodes",
                C + 10,
            ),
            C + 10,
        ),
        (Observation::Tick, C + T),
    ]);
    assert_eq!(never.len(), 1, "decided once");
    let (kind, time, node, result, started_after, reason) = &never[0];
    assert_eq!(*kind, ProbeKind::Provision);
    assert_eq!(*time, C + T);
    assert_eq!(*node, None, "never scheduled");
    assert_eq!(*result, "NotStarted");
    assert_eq!(*started_after, None);
    assert_eq!(*reason, Some("FailedScheduling"));
    // A probe of a node that became ineligible has no outcome.
    let mut ineligible = pod(ProbeKind::Mount);
    ineligible.node_eligible = false;
    assert!(outcome(vec![(Observation::Pod(ineligible), C + T)]).is_empty());
}
