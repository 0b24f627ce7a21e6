//! What the probe CronJobs and PVCs look like.
//!
//! Kept from pie: names, schedules, labels, `concurrencyPolicy: Forbid`,
//! `successfulJobsHistoryLimit: 0`, container `probe`, uid/gid/fsGroup 1001, `restartPolicy:
//! Never`, `terminationGracePeriodSeconds: 5`, a controller ownerReference to the PieProbe.
//! Changed: mount Pods pinned by `matchFields` on `metadata.name`; `backoffLimit: 0` and an
//! `activeDeadlineSeconds`; no finalizers; tolerations and priorityClass from the spec; a
//! projected ServiceAccount token for the agent; hardened container security contexts.

use std::collections::BTreeMap;

use crate::domain::outcome::observe::parse_threshold_ms;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EphemeralVolumeSource,
    LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimTemplate,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Resource;
use kube::api::ObjectMeta;

use pie_api::labels::{
    COMPONENT_MOUNT, COMPONENT_PROVISION, CONTAINER_NAME, LABEL_COMPONENT, LABEL_MANAGED_BY,
    LABEL_NODE, LABEL_PIE_PROBE, LABEL_STORAGE_CLASS, MANAGER, TOKEN_AUDIENCE,
};
use pie_api::names;

use super::{Config, node_selector};
use crate::crd::PieProbe;

/// Where the probe volume is mounted (pie's).
pub const MOUNT_PATH: &str = "/mounted";
/// Directory of the projected ServiceAccount token.
pub const TOKEN_DIR: &str = "/var/run/secrets/pie";
/// File of the projected ServiceAccount token.
pub const TOKEN_PATH: &str = "/var/run/secrets/pie/token";
/// Lifetime of the projected token (the kubelet rotates it at 80%).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// uid, gid and fsGroup of probe Pods (pie's).
pub const PROBE_UID: i64 = 1001;

/// Labels on a probe object and its Pod template. `node` is `None` for the provision probe.
pub fn labels(probe: &str, storage_class: &str, node: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_STORAGE_CLASS.to_owned(), storage_class.to_owned()),
        (LABEL_PIE_PROBE.to_owned(), probe.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (
            LABEL_COMPONENT.to_owned(),
            if node.is_some() {
                COMPONENT_MOUNT
            } else {
                COMPONENT_PROVISION
            }
            .to_owned(),
        ),
    ]);
    if let Some(node) = node {
        labels.insert(LABEL_NODE.to_owned(), node.to_owned());
    }
    labels
}

/// Seconds a probe Job may run: ends stuck probes before the next one is due, but never before
/// the probe's threshold has decided it (plus 15 s for the controller to count it). A Pod the
/// deadline removed before its threshold passed was never counted: at the defaults
/// (`probePeriod: 1`, `probeThreshold: 1m`, a 50 s deadline) no failure to start was ever
/// counted (found by the cluster bench's detect phase). A failing probe whose deadline outlasts
/// the period makes the next run skip (`concurrencyPolicy: Forbid`); a healthy one ends in
/// seconds.
pub fn active_deadline_seconds(period_minutes: i32, threshold: std::time::Duration) -> i64 {
    let before_next = (i64::from(period_minutes) * 60 - 10).max(30);
    before_next.max(threshold.as_secs() as i64 + 15)
}

fn meta(probe: &PieProbe, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: probe.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: probe.controller_owner_ref(&()).map(|mut r| {
            r.block_owner_deletion = Some(true);
            vec![r]
        }),
        ..Default::default()
    }
}

fn claim_spec(probe: &PieProbe) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        storage_class_name: Some(probe.spec.monitoring_storage_class.clone()),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_owned(),
                probe.spec.pvc_capacity.clone(),
            )])),
            limits: None,
        }),
        ..Default::default()
    }
}

fn container(probe: &PieProbe, config: &Config, args: Vec<String>, token: bool) -> Container {
    let mut mounts = vec![
        VolumeMount {
            name: "mounted".into(),
            mount_path: MOUNT_PATH.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if token {
        mounts.push(VolumeMount {
            name: "pie-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(config.agent_image.clone()),
        args: Some(args),
        resources: probe.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn pod_spec(
    probe: &PieProbe,
    config: &Config,
    container: Container,
    mut volumes: Vec<Volume>,
    affinity: Option<Affinity>,
) -> PodSpec {
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("16Mi".into())),
            medium: None,
        }),
        ..Default::default()
    });
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        affinity,
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(5),
        service_account_name: config.probe_service_account.clone(),
        automount_service_account_token: Some(false),
        image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
            config
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        tolerations: probe.spec.tolerations.clone(),
        priority_class_name: probe.spec.priority_class_name.clone(),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(PROBE_UID),
            run_as_group: Some(PROBE_UID),
            fs_group: Some(PROBE_UID),
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The PieProbe's probeThreshold (validated by the plan; 1m if it does not parse).
fn threshold(probe: &PieProbe) -> std::time::Duration {
    let ms = parse_threshold_ms(&probe.spec.probe_threshold).unwrap_or(60_000);
    std::time::Duration::from_millis(ms.unsigned_abs())
}

fn cron_job(
    probe: &PieProbe,
    name: String,
    labels: BTreeMap<String, String>,
    schedule: String,
    suspend: bool,
    pod: PodSpec,
) -> CronJob {
    CronJob {
        metadata: meta(probe, name, labels.clone()),
        spec: Some(CronJobSpec {
            schedule,
            suspend: Some(suspend),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(0),
            failed_jobs_history_limit: Some(1),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(0),
                    active_deadline_seconds: Some(active_deadline_seconds(
                        probe.spec.probe_period,
                        threshold(probe),
                    )),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels),
                            ..Default::default()
                        }),
                        spec: Some(pod),
                    },
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn probe_name(probe: &PieProbe) -> &str {
    probe.metadata.name.as_deref().unwrap_or("")
}

/// The provision probe CronJob: a Pod with a generic ephemeral volume of the StorageClass,
/// scheduled by the PieProbe's node selector, that checks the volume, reports its start and
/// exits 0 once the controller has counted it; `suspend` while none of the selected nodes is
/// eligible.
pub fn provision_cron_job(probe: &PieProbe, suspend: bool, config: &Config) -> CronJob {
    let name = probe_name(probe);
    let sc = &probe.spec.monitoring_storage_class;
    let labels = labels(name, sc, None);
    let volume = Volume {
        name: "mounted".into(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: claim_spec(probe),
            }),
        }),
        ..Default::default()
    };
    let affinity =
        (!node_selector::selects_all(probe.spec.node_selector.as_ref())).then(|| Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: probe
                    .spec
                    .node_selector
                    .as_ref()
                    .map(node_selector::pod_affinity),
                ..Default::default()
            }),
            ..Default::default()
        });
    // The probe reports its start and waits until the controller has counted it, so a Pod
    // that runs while no controller leads is not missed.
    let args = [
        "provision-probe",
        "--path",
        MOUNT_PATH,
        "--controller-url",
        &config.controller_url,
        "--pie-probe-name",
        name,
        "--storage-class",
        sc,
        "--token-file",
        TOKEN_PATH,
    ]
    .map(String::from)
    .to_vec();
    let pod = pod_spec(
        probe,
        config,
        container(probe, config, args, true),
        vec![volume, token_volume()],
        affinity,
    );
    cron_job(
        probe,
        names::provision_cronjob(name, sc),
        labels,
        names::schedule(name, sc, "", period(probe)),
        suspend,
        pod,
    )
}

/// The PVC a node's mount probe mounts.
pub fn mount_pvc(probe: &PieProbe, node: &str) -> PersistentVolumeClaim {
    let name = probe_name(probe);
    let sc = &probe.spec.monitoring_storage_class;
    PersistentVolumeClaim {
        metadata: meta(
            probe,
            names::pvc(name, node, sc),
            labels(name, sc, Some(node)),
        ),
        spec: Some(claim_spec(probe)),
        status: None,
    }
}

/// A node's mount probe CronJob, pinned to the node by `matchFields` on `metadata.name`;
/// `suspend` while the node is not eligible.
pub fn mount_cron_job(probe: &PieProbe, node: &str, suspend: bool, config: &Config) -> CronJob {
    let name = probe_name(probe);
    let sc = &probe.spec.monitoring_storage_class;
    let volumes = vec![
        Volume {
            name: "mounted".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::pvc(name, node, sc),
                read_only: None,
            }),
            ..Default::default()
        },
        token_volume(),
    ];
    let affinity = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let args = [
        "mount-probe",
        "--controller-url",
        &config.controller_url,
        "--path",
        MOUNT_PATH,
        "--node-name",
        node,
        "--storage-class",
        sc,
        "--pie-probe-name",
        name,
        "--token-file",
        TOKEN_PATH,
    ]
    .map(String::from)
    .to_vec();
    let pod = pod_spec(
        probe,
        config,
        container(probe, config, args, true),
        volumes,
        Some(affinity),
    );
    cron_job(
        probe,
        names::mount_cronjob(name, node, sc),
        labels(name, sc, Some(node)),
        names::schedule(name, sc, node, period(probe)),
        suspend,
        pod,
    )
}

/// The projected ServiceAccount token (audience [`TOKEN_AUDIENCE`]) a probe presents to the
/// controller, at [`TOKEN_PATH`].
fn token_volume() -> Volume {
    Volume {
        name: "pie-token".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            default_mode: None,
        }),
        ..Default::default()
    }
}

fn period(probe: &PieProbe) -> u32 {
    u32::try_from(probe.spec.probe_period.clamp(1, 59)).unwrap_or(1)
}
