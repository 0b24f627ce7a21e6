//! Table tests of the whole plan: objects, eligibility, disable flags, validation, deletions.

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use pie_api::labels;

use super::*;
use crate::fixtures::{NodeBuilder, PieProbeBuilder, config};

fn three_nodes() -> Vec<NodeFacts> {
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

fn pod(cj: &CronJob) -> &PodSpec {
    cj.spec
        .as_ref()
        .unwrap()
        .job_template
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn pod_labels(cj: &CronJob) -> &std::collections::BTreeMap<String, String> {
    let spec = cj
        .spec
        .as_ref()
        .unwrap()
        .job_template
        .spec
        .as_ref()
        .unwrap();
    spec.template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap()
}

#[test]
fn plans_provision_and_a_mount_probe_per_matching_node() {
    let probe = PieProbeBuilder::new("probe", "standard")
        .selector_in("role", &["compute"])
        .build();
    let p = plan(&probe, &three_nodes(), true, &config()).unwrap();
    let names: Vec<_> = p
        .cron_jobs()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            names::provision_cronjob("probe", "standard"),
            names::mount_cronjob("probe", "worker-1", "standard"),
            names::mount_cronjob("probe", "worker-2", "standard"),
        ]
    );
    let pvcs: Vec<_> = p
        .pvcs()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        pvcs,
        [
            names::pvc("probe", "worker-1", "standard"),
            names::pvc("probe", "worker-2", "standard")
        ]
    );
    assert_eq!(p.nodes.len(), 2);
    assert!(
        p.nodes
            .iter()
            .all(|n| n.ineligible.is_none() && n.gauge() == 1.0)
    );
}

#[test]
fn mount_cron_job_content() {
    let probe = PieProbeBuilder::new("probe", "standard")
        .spec(|s| {
            s.probe_period = 7;
            s.resources = Some(ResourceRequirements {
                limits: Some([("memory".to_owned(), Quantity("64Mi".into()))].into()),
                ..Default::default()
            });
            s.tolerations = Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]);
            s.priority_class_name = Some("system-node-critical".into());
        })
        .build();
    let cj = objects::mount_cron_job(&probe, "10.0.0.1", false, &config());
    let spec = cj.spec.as_ref().unwrap();
    assert_eq!(
        spec.schedule,
        names::schedule("probe", "standard", "10.0.0.1", 7)
    );
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(spec.successful_jobs_history_limit, Some(0));
    assert_eq!(spec.suspend, Some(false));
    let job = spec.job_template.spec.as_ref().unwrap();
    assert_eq!(job.backoff_limit, Some(0));
    assert_eq!(job.active_deadline_seconds, Some(7 * 60 - 10));
    // The deadline never ends a probe before its threshold decides it: at the defaults
    // (period 1, threshold 1m) the 50 s deadline removed every never-starting Pod uncounted.
    use super::objects::active_deadline_seconds;
    let secs = std::time::Duration::from_secs;
    assert_eq!(active_deadline_seconds(1, secs(60)), 75);
    assert_eq!(active_deadline_seconds(1, secs(20)), 50);
    assert_eq!(active_deadline_seconds(5, secs(60)), 290);
    assert_eq!(active_deadline_seconds(1, secs(1)), 50);

    let labels = pod_labels(&cj);
    for (k, v) in [
        ("storage-class", "standard"),
        ("pie-probe", "probe"),
        ("node", "10.0.0.1"),
        ("app.kubernetes.io/managed-by", "pie-controller"),
        ("app.kubernetes.io/component", "mount-probe"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(cj.metadata.labels.as_ref(), Some(labels));

    let pod = pod(&cj);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.termination_grace_period_seconds, Some(5));
    assert_eq!(pod.service_account_name.as_deref(), Some("pie-probe"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.tolerations, probe.spec.tolerations);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.run_as_user, psc.run_as_group, psc.fs_group),
        (Some(1001), Some(1001), Some(1001))
    );
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    let affinity = pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap();
    let term = &affinity
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0];
    assert!(
        term.match_expressions.is_none(),
        "must not pin by the hostname label"
    );
    let field = &term.match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (field.key.as_str(), field.operator.as_str()),
        ("metadata.name", "In")
    );
    assert_eq!(field.values.as_deref(), Some(&["10.0.0.1".to_owned()][..]));

    let c = &pod.containers[0];
    assert_eq!(c.name, "probe");
    assert_eq!(c.image.as_deref(), Some("ghcr.io/pie-rs/pie-agent:test"));
    assert_eq!(
        c.args.as_deref().unwrap(),
        [
            "mount-probe",
            "--controller-url",
            "http://pie-controller.pie.svc:8082",
            "--path",
            "/mounted",
            "--node-name",
            "10.0.0.1",
            "--storage-class",
            "standard",
            "--pie-probe-name",
            "probe",
            "--token-file",
            "/var/run/secrets/pie/token"
        ]
    );
    assert_eq!(c.resources, probe.spec.resources);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/mounted") && mounts.contains(&"/var/run/secrets/pie"));

    let volumes = pod.volumes.as_ref().unwrap();
    let pvc = volumes
        .iter()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .unwrap();
    assert_eq!(pvc.claim_name, names::pvc("probe", "10.0.0.1", "standard"));
    let token = volumes
        .iter()
        .find_map(|v| v.projected.as_ref())
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("pie-controller"));
    assert_eq!(token.path, "token");

    let owner = &cj.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("PieProbe", "probe", "uid-probe")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(cj.metadata.namespace.as_deref(), Some("pie"));
    assert!(cj.metadata.finalizers.is_none());
}

#[test]
fn provision_cron_job_content() {
    let probe = PieProbeBuilder::new("probe", "standard")
        .selector_in("role", &["compute"])
        .spec(|s| s.pvc_capacity = Quantity("1Gi".into()))
        .build();
    let cj = objects::provision_cron_job(&probe, false, &config());
    assert_eq!(cj.spec.as_ref().unwrap().suspend, Some(false));
    assert_eq!(
        cj.metadata.name.as_deref(),
        Some(names::provision_cronjob("probe", "standard").as_str())
    );
    assert_eq!(
        cj.spec.as_ref().unwrap().schedule,
        names::schedule("probe", "standard", "", 1)
    );
    let labels = pod_labels(&cj);
    assert!(!labels.contains_key("node"));
    assert_eq!(labels["app.kubernetes.io/component"], "provision-probe");
    let pod = pod(&cj);
    let eph = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.ephemeral.as_ref())
        .unwrap();
    let claim = &eph.volume_claim_template.as_ref().unwrap().spec;
    assert_eq!(claim.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        claim.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_owned()][..])
    );
    assert_eq!(
        claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
        Quantity("1Gi".into())
    );
    let affinity = pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap();
    assert_eq!(
        affinity.required_during_scheduling_ignored_during_execution,
        probe.spec.node_selector
    );
    assert_eq!(
        pod.containers[0].args.as_deref().unwrap(),
        [
            "provision-probe",
            "--path",
            "/mounted",
            "--controller-url",
            &config().controller_url,
            "--pie-probe-name",
            "probe",
            "--storage-class",
            "standard",
            "--token-file",
            "/var/run/secrets/pie/token"
        ]
    );
    // The token it reports with, mounted like the mount probes'.
    assert!(
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .any(|v| v.name == "pie-token" && v.projected.is_some())
    );
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(1001));
    // Without a selector the provision Pod may run anywhere: no affinity at all.
    let anywhere = objects::provision_cron_job(
        &PieProbeBuilder::new("probe", "standard").build(),
        true,
        &config(),
    );
    assert!(pod_labels(&anywhere).contains_key("pie-probe"));
    assert!(self::pod(&anywhere).affinity.is_none());
    assert_eq!(anywhere.spec.as_ref().unwrap().suspend, Some(true));

    // A selector listing node names: the API server takes a Pod's `matchFields` on
    // metadata.name with one value only ("must be only one value when `operator` is 'In' or
    // 'NotIn' for node field selector"), so the Pod gets one term per name. Copying the
    // selector, as this test once asserted, made the real API server refuse the CronJob.
    let by_name = PieProbeBuilder::new("probe", "standard")
        .spec(|s| {
            s.node_selector = Some(
                serde_json::from_value(serde_json::json!({
                    "nodeSelectorTerms": [{"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": ["n1", "n2"]}]}]
                }))
                .unwrap(),
            )
        })
        .build();
    let cj = objects::provision_cron_job(&by_name, false, &config());
    let required = self::pod(&cj)
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap();
    let names: Vec<Vec<String>> = required
        .node_selector_terms
        .iter()
        .map(|t| {
            t.match_fields
                .iter()
                .flatten()
                .flat_map(|f| f.values.clone().unwrap_or_default())
                .collect()
        })
        .collect();
    assert_eq!(names, [["n1"], ["n2"]]);
}

#[test]
fn the_provision_probe_is_suspended_while_no_selected_node_is_eligible() {
    let probe = PieProbeBuilder::new("probe", "standard")
        .selector_in("role", &["compute"])
        .build();
    let compute = |name: &str| NodeBuilder::new(name).label("role", "compute");
    let all_down = [
        compute("n1").ready(false).build(),
        compute("n2").unschedulable().build(),
        NodeBuilder::new("other").build(),
    ];
    let down = plan(&probe, &all_down, true, &config()).unwrap();
    assert!(!down.provision_runnable());
    let cron_jobs = down.cron_jobs();
    let provision = cron_jobs
        .iter()
        .find(|c| {
            c.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("provision-")
        })
        .unwrap();
    assert_eq!(provision.spec.as_ref().unwrap().suspend, Some(true));
    // One eligible node is enough; the suspension changes the desired hash, so it is applied.
    let one_up = [compute("n1").build(), compute("n2").unschedulable().build()];
    let running = plan(&probe, &one_up, true, &config()).unwrap();
    assert!(running.provision_runnable());
    let hash = |p: &Plan| {
        p.desired_cron_jobs()
            .find(|d| d.name.starts_with("provision-"))
            .unwrap()
            .hash
    };
    assert_ne!(hash(&down), hash(&running));
    // With mount probes disabled the provision probe still follows the nodes.
    let no_mounts = PieProbeBuilder::new("probe", "standard")
        .selector_in("role", &["compute"])
        .spec(|s| s.disable_mount_probes = true)
        .build();
    assert!(
        !plan(&no_mounts, &all_down, true, &config())
            .unwrap()
            .provision_runnable()
    );
}

#[test]
fn pvc_content() {
    let probe = PieProbeBuilder::new("probe", "standard").build();
    let pvc = objects::mount_pvc(&probe, "worker-1");
    let spec = pvc.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_owned()][..])
    );
    assert_eq!(
        spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
        Quantity("100Mi".into())
    );
    assert_eq!(pvc.metadata.labels.as_ref().unwrap()["node"], "worker-1");
    assert_eq!(
        pvc.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );
}

#[test]
fn ineligible_nodes_keep_their_pvc_and_get_a_suspended_cron_job() {
    let probe = PieProbeBuilder::new("probe", "sc").build();
    let nodes = vec![
        NodeBuilder::new("a").build(),
        NodeBuilder::new("b").ready(false).build(),
        NodeBuilder::new("c").unschedulable().build(),
        NodeBuilder::new("d")
            .taint("maint", None, "NoExecute")
            .build(),
    ];
    let p = plan(&probe, &nodes, true, &config()).unwrap();
    assert_eq!(p.pvcs().len(), 4);
    let suspended: Vec<_> = p.cron_jobs()[1..]
        .iter()
        .map(|c| c.spec.as_ref().unwrap().suspend)
        .collect();
    assert_eq!(suspended, [Some(false), Some(true), Some(true), Some(true)]);
    let reasons: Vec<_> = p
        .nodes
        .iter()
        .map(|n| n.ineligible.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            Some("NotReady".into()),
            Some("Unschedulable".into()),
            Some("Taint maint:NoExecute".into())
        ]
    );
    assert_eq!(p.nodes[1].gauge(), 0.0);
    // Tolerating the taint makes the node eligible again.
    let tolerant = PieProbeBuilder::new("probe", "sc")
        .spec(|s| {
            s.tolerations = Some(vec![Toleration {
                key: Some("maint".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }])
        })
        .build();
    let p = plan(&tolerant, &nodes, true, &config()).unwrap();
    assert!(p.nodes[3].ineligible.is_none());
}

#[test]
fn disable_flags() {
    let nodes = three_nodes();
    let no_provision = PieProbeBuilder::new("p", "sc")
        .spec(|s| s.disable_provision_probe = true)
        .build();
    let p = plan(&no_provision, &nodes, true, &config()).unwrap();
    assert_eq!((p.cron_jobs().len(), p.pvcs().len()), (3, 3));
    assert!(
        p.cron_jobs()
            .iter()
            .all(|c| c.metadata.name.as_deref().unwrap().starts_with("mount-"))
    );

    let no_mount = PieProbeBuilder::new("p", "sc")
        .spec(|s| s.disable_mount_probes = true)
        .build();
    let p = plan(&no_mount, &nodes, true, &config()).unwrap();
    assert_eq!(
        (p.cron_jobs().len(), p.pvcs().len(), p.nodes.len()),
        (1, 0, 0)
    );

    let neither = PieProbeBuilder::new("p", "sc")
        .spec(|s| {
            s.disable_mount_probes = true;
            s.disable_provision_probe = true;
        })
        .build();
    let p = plan(&neither, &nodes, true, &config()).unwrap();
    assert_eq!(
        (p.cron_job_count(), p.pvc_count(), p.nodes.len()),
        (0, 0, 0)
    );
    assert!(p.cron_job_names().is_empty() && p.pvc_names().is_empty());
}

#[test]
fn validation_table() {
    let cases: &[(i32, &str, Option<&str>)] = &[
        (1, "10s", None),
        (1, "59s", None),
        (5, "4m59s", None),
        (1, "1m", None),
        (
            1,
            "61s",
            Some("probePeriod (1m) must not be shorter than probeThreshold (61s)"),
        ),
        (
            1,
            "2m",
            Some("probePeriod (1m) must not be shorter than probeThreshold (2m)"),
        ),
        (1, "0s", Some("probeThreshold (0s) must be positive")),
        (1, "-5s", Some("probeThreshold (-5s) must be positive")),
        (
            0,
            "10s",
            Some("probePeriod (0) must be between 1 and 59 minutes"),
        ),
        (
            60,
            "10s",
            Some("probePeriod (60) must be between 1 and 59 minutes"),
        ),
    ];
    for (period, threshold, want) in cases {
        let probe = PieProbeBuilder::new("p", "sc")
            .spec(|s| {
                s.probe_period = *period;
                s.probe_threshold = (*threshold).into();
            })
            .build();
        let got = validate(&probe).err().map(|b| b.to_string());
        assert_eq!(got.as_deref(), *want, "{period} {threshold}");
    }
    let garbage = PieProbeBuilder::new("p", "sc")
        .spec(|s| s.probe_threshold = "soon".into())
        .build();
    let err = plan(&garbage, &[] as &[NodeFacts], true, &config()).unwrap_err();
    assert_eq!(err.reason(), "InvalidSpec");
    assert!(
        err.to_string()
            .starts_with("probeThreshold (soon) is not a duration")
    );
}

#[test]
fn missing_storage_class_blocks_everything() {
    let probe = PieProbeBuilder::new("p", "gone").build();
    let err = plan(&probe, &three_nodes(), false, &config()).unwrap_err();
    assert_eq!(err, Blocked::StorageClassNotFound("gone".into()));
    assert_eq!(err.reason(), "StorageClassNotFound");
}

#[test]
fn stale_objects_are_those_we_control_but_no_longer_want() {
    let probe = PieProbeBuilder::new("p", "sc").build();
    let existing = |name: &str, owner: Option<&str>| {
        Existing::<CronJob>::from_meta(&ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("7".into()),
            owner_references: owner.map(|uid| {
                vec![OwnerReference {
                    controller: Some(true),
                    uid: uid.into(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        })
    };
    let objects = vec![
        existing("keep", Some("uid-p")),
        existing("old-node", Some("uid-p")),
        existing("someone-elses", Some("uid-other")),
        existing("orphan", None),
    ];
    let desired = BTreeSet::from(["keep".to_owned()]);
    let stale: Vec<_> = stale(&probe, &desired, &objects)
        .into_iter()
        .map(|e| &*e.name)
        .collect();
    assert_eq!(stale, ["old-node"]);
}

#[test]
fn desired_hashes_change_with_what_shapes_the_object_only() {
    let nodes = vec![NodeBuilder::new("a").build(), NodeBuilder::new("b").build()];
    let hashes = |probe: &PieProbe, nodes: &[NodeFacts], config: &Config| {
        let p = plan(probe, nodes, true, config).unwrap();
        let mut h: Vec<(String, String)> = p
            .desired_cron_jobs()
            .map(|d| (d.name, d.hash))
            .chain(p.desired_pvcs().map(|d| (d.name, d.hash)))
            .collect();
        h.sort();
        h
    };
    let probe = PieProbeBuilder::new("p", "sc").build();
    let base = hashes(&probe, &nodes, &config());
    assert_eq!(base.len(), 5);
    assert!(base.iter().all(|(_, h)| h.len() == 40));
    let distinct: BTreeSet<&String> = base.iter().map(|(_, h)| h).collect();
    assert_eq!(distinct.len(), 5, "every object has its own hash");
    assert_eq!(base, hashes(&probe, &nodes, &config()), "stable");

    // What does not shape the objects changes nothing: the status, a node label.
    let mut with_status = probe.clone();
    with_status.status = Some(Default::default());
    assert_eq!(base, hashes(&with_status, &nodes, &config()));
    let mut relabelled = nodes.clone();
    relabelled[0] = NodeBuilder::new("a").label("team", "x").build();
    assert_eq!(base, hashes(&probe, &relabelled, &config()));

    // The spec, the controller config, the owner's UID and the suspend flag do.
    let changed = |other: Vec<(String, String)>| {
        base.iter()
            .zip(&other)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0.clone())
            .collect::<Vec<_>>()
    };
    let capacity = PieProbeBuilder::new("p", "sc")
        .spec(|s| s.pvc_capacity = Quantity("200Mi".into()))
        .build();
    assert_eq!(changed(hashes(&capacity, &nodes, &config())).len(), 5);
    let mut image = config();
    image.agent_image = "other".into();
    assert_eq!(changed(hashes(&probe, &nodes, &image)).len(), 5);
    let mut recreated = probe.clone();
    recreated.metadata.uid = Some("another-uid".into());
    assert_eq!(changed(hashes(&recreated, &nodes, &config())).len(), 5);
    let cordoned = vec![
        NodeBuilder::new("a").unschedulable().build(),
        NodeBuilder::new("b").build(),
    ];
    assert_eq!(
        changed(hashes(&probe, &cordoned, &config())),
        [names::mount_cronjob("p", "a", "sc")],
        "only a's CronJob (suspended); its PVC stays"
    );

    // The built object carries its hash.
    let p = plan(&probe, &nodes, true, &config()).unwrap();
    let d = p.desired_cron_jobs().nth(1).unwrap();
    let built = d.build();
    assert_eq!(
        built.metadata.annotations.as_ref().unwrap()[labels::ANNOTATION_DESIRED_HASH],
        d.hash
    );
    assert_eq!(built.metadata.name.as_deref(), Some(d.name.as_str()));
}

#[test]
fn duplicate_and_unnamed_nodes_are_ignored() {
    let probe = PieProbeBuilder::new("p", "sc").build();
    let mut unnamed = NodeBuilder::new("x").node();
    unnamed.metadata.name = None;
    let unnamed = NodeFacts::from(&unnamed);
    let nodes = vec![
        NodeBuilder::new("b").build(),
        NodeBuilder::new("a").build(),
        NodeBuilder::new("a").build(),
        unnamed,
    ];
    let p = plan(&probe, &nodes, true, &config()).unwrap();
    let got: Vec<_> = p.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(got, ["a", "b"]);
}

#[test]
fn a_cached_object_keeps_what_the_reconciler_reads() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
    let probe = PieProbeBuilder::new("p", "sc").build();
    let p = plan(&probe, &[NodeBuilder::new("a").build()], true, &config()).unwrap();
    let desired = p.desired_cron_jobs().next().unwrap();
    let mut meta = desired.build().metadata;
    meta.uid = Some("uid-cj".into());
    meta.resource_version = Some("42".into());
    meta.generation = Some(3);
    let ours = Existing::<CronJob>::from_meta(&meta);
    assert_eq!(&*ours.name, meta.name.as_deref().unwrap());
    assert_eq!(ours.namespace.as_deref(), meta.namespace.as_deref());
    assert_eq!(ours.uid.as_deref(), Some("uid-cj"));
    assert_eq!(ours.resource_version.as_deref(), Some("42"));
    assert_eq!(ours.controller_uid.as_deref(), Some("uid-p"));
    assert_eq!(ours.controller_probe.as_deref(), Some("p"));
    assert!(ours.managed_by_pie);
    assert_eq!(
        ours.desired_hash.as_deref(),
        Some(desired.hash.as_str()),
        "a skipped apply sees the hash"
    );
    let owner = ours.owner().unwrap();
    assert_eq!(
        (owner.name.as_str(), owner.namespace),
        ("p", meta.namespace.clone())
    );

    // What a reconcile does not act on leaves the fingerprint as it was.
    let mut unread = meta.clone();
    unread.resource_version = Some("43".into());
    unread.finalizers = Some(vec!["example.com/keep".into()]);
    unread.annotations.get_or_insert_default().insert(
        "kubectl.kubernetes.io/last-applied-configuration".into(),
        "{}".into(),
    );
    unread
        .labels
        .get_or_insert_default()
        .insert("example.com/team".into(), "storage".into());
    unread.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kube-controller-manager".into()),
        operation: Some("Update".into()),
        fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {}}))),
        ..ManagedFieldsEntry::default()
    }]);
    assert_eq!(
        Existing::<CronJob>::from_meta(&unread).fingerprint,
        ours.fingerprint
    );
    // What it acts on changes it.
    let changed = |change: &dyn Fn(&mut ObjectMeta)| {
        let mut m = meta.clone();
        change(&mut m);
        Existing::<CronJob>::from_meta(&m).fingerprint
    };
    let generation = changed(&|m| m.generation = Some(4));
    let hash = changed(&|m| {
        m.annotations
            .get_or_insert_default()
            .insert(labels::ANNOTATION_DESIRED_HASH.into(), "other".into());
    });
    let deleting =
        changed(&|m| m.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)));
    let owners = changed(&|m| m.owner_references = None);
    let label = changed(&|m| {
        m.labels.as_mut().unwrap().remove(labels::LABEL_MANAGED_BY);
    });
    let all = BTreeSet::from([ours.fingerprint, generation, hash, deleting, owners, label]);
    assert_eq!(all.len(), 6, "each change has a fingerprint of its own");

    // topolvm/pie's objects: no managed-by label, a controller of the same kind.
    let mut theirs = meta.clone();
    theirs
        .labels
        .as_mut()
        .unwrap()
        .remove(labels::LABEL_MANAGED_BY);
    theirs.annotations = None;
    theirs.owner_references.get_or_insert_default().insert(
        0,
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "other".into(),
            uid: "uid-other".into(),
            ..Default::default()
        },
    );
    let theirs = Existing::<CronJob>::from_meta(&theirs);
    assert!(!theirs.managed_by_pie);
    assert_eq!(theirs.desired_hash, None);
    assert_eq!(
        theirs.controller_probe.as_deref(),
        Some("p"),
        "only the controller reference counts"
    );

    // A controller that is not a PieProbe triggers no reconcile.
    let mut foreign = meta.clone();
    foreign.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        name: "p".into(),
        uid: "uid-x".into(),
        controller: Some(true),
        ..Default::default()
    }]);
    let foreign = Existing::<CronJob>::from_meta(&foreign);
    assert_eq!(foreign.controller_uid.as_deref(), Some("uid-x"));
    assert_eq!(foreign.owner(), None);
}
