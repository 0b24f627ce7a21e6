//! Desired state as pure functions: (PieProbe, Nodes, StorageClass present?, config) -> the
//! objects to apply, the per-node eligibility, and which existing objects to delete.
//!
//! No Kubernetes I/O happens here; the reconciler and `pie-controller plan` share this code.

pub mod eligibility;
mod existing;
pub mod node_selector;
pub mod objects;

use pie_api::labels;
use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::str::FromStr;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Resource;
use pie_api::names;
use sha1::{Digest, Sha1};

use crate::crd::PieProbe;
use crate::domain::node_facts::NodeFacts;
pub use eligibility::Ineligible;
pub use existing::Existing;

/// Controller settings that shape the probe objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Image of `pie-agent`, run by every probe Pod.
    pub agent_image: String,
    /// URL mount probes post their results to.
    pub controller_url: String,
    /// ServiceAccount of probe Pods (`None`: the namespace's default).
    pub probe_service_account: Option<String>,
    /// Image pull secrets of probe Pods.
    pub image_pull_secrets: Vec<String>,
}

/// Why nothing can be planned for a PieProbe. Each maps to a `Ready=False` condition reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// The spec is invalid (the reason is the message).
    #[error("{0}")]
    InvalidSpec(String),
    /// The monitored StorageClass does not exist.
    #[error("StorageClass {0} not found")]
    StorageClassNotFound(String),
}

impl Blocked {
    /// The condition reason: `InvalidSpec` or `StorageClassNotFound`.
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::InvalidSpec(_) => "InvalidSpec",
            Blocked::StorageClassNotFound(_) => "StorageClassNotFound",
        }
    }
}

/// Per-PieProbe node eligibility, keyed by (namespace, name): the last plan of every PieProbe,
/// kept by the reconciler, read by the results API and the periodic sync.
pub type EligibilityMap = std::collections::BTreeMap<(String, String), Vec<NodeEligibility>>;

/// A selected node and whether it can run a mount probe now. Plain data, also exported as the
/// `pie_node_eligible{pie_probe_name,node,storage_class}` gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEligibility {
    /// PieProbe name.
    pub pie_probe: String,
    /// PieProbe namespace.
    pub namespace: String,
    /// Node name.
    pub node: String,
    /// StorageClass name.
    pub storage_class: String,
    /// `None` when eligible, else the reason its mount CronJob is suspended.
    pub ineligible: Option<Ineligible>,
}

impl NodeEligibility {
    /// 1 when eligible, 0 when not: the value of `pie_node_eligible`.
    pub fn gauge(&self) -> f64 {
        if self.ineligible.is_none() { 1.0 } else { 0.0 }
    }
}

/// One mount probe of a plan: its node and whether its CronJob is suspended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountProbe {
    /// Node name.
    pub node: String,
    /// The node is ineligible: the CronJob exists but is suspended.
    pub suspend: bool,
}

/// Everything one PieProbe should have in the cluster, decided but not built: objects are built
/// only when asked for ([`Desired::build`]), so a steady-state reconcile that compares
/// [`Desired::hash`] with the cached objects' annotation costs names and hashes, not objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    probe: PieProbe,
    config: Config,
    provision: bool,
    /// No selected node is eligible: the provision CronJob is suspended (its Pods could not be
    /// scheduled, which says nothing about storage).
    provision_suspend: bool,
    mounts: Vec<MountProbe>,
    /// sha1 of everything the objects are built from except the node and suspend flag.
    inputs: [u8; 20],
    /// Every selected node, by name, with its eligibility (empty when mount probes are disabled).
    pub nodes: Vec<NodeEligibility>,
}

/// One desired object: its name, its desired-hash, and how to build it.
pub struct Desired<'a, K> {
    /// Object name.
    pub name: String,
    /// The [`labels::ANNOTATION_DESIRED_HASH`] value: a hash of the inputs the object is built
    /// from (the PieProbe's identity and spec, the controller config, the node and its suspend
    /// flag, and the object-building code itself).
    pub hash: String,
    build: Box<dyn Fn() -> K + Send + Sync + 'a>,
}

impl<K> std::fmt::Debug for Desired<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl<K: Resource> Desired<'_, K> {
    /// The full object, with its desired-hash annotation.
    pub fn build(&self) -> K {
        let mut object = (self.build)();
        object
            .meta_mut()
            .annotations
            .get_or_insert_default()
            .insert(
                labels::ANNOTATION_DESIRED_HASH.to_owned(),
                self.hash.clone(),
            );
        object
    }
}

/// The source of everything that shapes the objects: a change to it changes every hash, so an
/// upgraded controller re-applies what it would now build differently.
const OBJECT_CODE: [&str; 4] = [
    env!("CARGO_PKG_VERSION"),
    include_str!("objects.rs"),
    pie_api::names::SOURCE,
    pie_api::labels::SOURCE,
];

fn inputs_hash(probe: &PieProbe, config: &Config) -> [u8; 20] {
    let mut h = Sha1::new();
    for code in OBJECT_CODE {
        h.update(code.as_bytes());
        h.update([0]);
    }
    let meta = probe.meta();
    for part in [&meta.name, &meta.namespace, &meta.uid] {
        h.update(part.as_deref().unwrap_or_default().as_bytes());
        h.update([0]);
    }
    h.update(serde_json::to_vec(&probe.spec).unwrap_or_default());
    h.update([0]);
    h.update(format!("{config:?}").as_bytes());
    h.finalize().into()
}

impl Plan {
    /// The desired-hash of the object `kind` for `node` (`None`: the provision CronJob) with
    /// its `suspend` flag (only hashed with a node).
    fn hash(&self, kind: &str, node: Option<&str>, suspend: bool) -> String {
        let mut h = Sha1::new();
        h.update(self.inputs);
        h.update(kind.as_bytes());
        if let Some(node) = node {
            h.update([0]);
            h.update(node.as_bytes());
            h.update([0, u8::from(suspend)]);
        }
        hex(&h.finalize())
    }

    fn name(&self) -> &str {
        self.probe.meta().name.as_deref().unwrap_or_default()
    }

    fn storage_class(&self) -> &str {
        &self.probe.spec.monitoring_storage_class
    }

    /// The desired CronJobs, in a stable order (provision first, then by node name).
    pub fn desired_cron_jobs(&self) -> impl Iterator<Item = Desired<'_, CronJob>> + '_ {
        let provision = self.provision.then(|| Desired {
            name: names::provision_cronjob(self.name(), self.storage_class()),
            hash: self.hash(
                if self.provision_suspend {
                    "provision-cronjob-suspended"
                } else {
                    "provision-cronjob"
                },
                None,
                false,
            ),
            build: Box::new(|| {
                objects::provision_cron_job(&self.probe, self.provision_suspend, &self.config)
            }),
        });
        provision
            .into_iter()
            .chain(self.mounts.iter().map(move |m| Desired {
                name: names::mount_cronjob(self.name(), &m.node, self.storage_class()),
                hash: self.hash("mount-cronjob", Some(&m.node), m.suspend),
                build: Box::new(move || {
                    objects::mount_cron_job(&self.probe, &m.node, m.suspend, &self.config)
                }),
            }))
    }

    /// The desired mount probe PVCs, by node name.
    pub fn desired_pvcs(&self) -> impl Iterator<Item = Desired<'_, PersistentVolumeClaim>> + '_ {
        self.mounts.iter().map(move |m| Desired {
            name: names::pvc(self.name(), &m.node, self.storage_class()),
            // A PVC does not depend on the suspend flag.
            hash: self.hash("mount-pvc", Some(&m.node), false),
            build: Box::new(move || objects::mount_pvc(&self.probe, &m.node)),
        })
    }

    /// Every desired CronJob, built.
    pub fn cron_jobs(&self) -> Vec<CronJob> {
        self.desired_cron_jobs().map(|d| d.build()).collect()
    }

    /// Every desired PVC, built.
    pub fn pvcs(&self) -> Vec<PersistentVolumeClaim> {
        self.desired_pvcs().map(|d| d.build()).collect()
    }

    /// How many CronJobs the plan has.
    pub fn cron_job_count(&self) -> usize {
        usize::from(self.provision) + self.mounts.len()
    }

    /// How many PVCs the plan has.
    pub fn pvc_count(&self) -> usize {
        self.mounts.len()
    }

    /// Whether the provision probe runs: it is enabled and some selected node is eligible.
    pub fn provision_runnable(&self) -> bool {
        self.provision && !self.provision_suspend
    }

    /// The mount probes, by node name.
    pub fn mounts(&self) -> &[MountProbe] {
        &self.mounts
    }

    /// Names of the desired CronJobs.
    pub fn cron_job_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .mounts
            .iter()
            .map(|m| names::mount_cronjob(self.name(), &m.node, self.storage_class()))
            .collect();
        if self.provision {
            names.insert(names::provision_cronjob(self.name(), self.storage_class()));
        }
        names
    }

    /// Names of the desired PVCs.
    pub fn pvc_names(&self) -> BTreeSet<String> {
        self.mounts
            .iter()
            .map(|m| names::pvc(self.name(), &m.node, self.storage_class()))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Checks what the CRD schema cannot: the probe threshold parses, is positive and is not longer
/// than the probe period (equal is valid: pie's defaults are 1 minute and "1m"); the period is in
/// 1..=59 (the schema enforces it on the server too).
pub fn validate(probe: &PieProbe) -> Result<(), Blocked> {
    let spec = &probe.spec;
    if !(1..=59).contains(&spec.probe_period) {
        return Err(Blocked::InvalidSpec(format!(
            "probePeriod ({}) must be between 1 and 59 minutes",
            spec.probe_period
        )));
    }
    if spec.monitoring_storage_class.is_empty() {
        return Err(Blocked::InvalidSpec(
            "monitoringStorageClass must not be empty".into(),
        ));
    }
    let threshold = kube::core::Duration::from_str(&spec.probe_threshold).map_err(|e| {
        Blocked::InvalidSpec(format!(
            "probeThreshold ({}) is not a duration: {e}",
            spec.probe_threshold
        ))
    })?;
    let negative = threshold.is_negative();
    let threshold: std::time::Duration = threshold.into();
    if negative || threshold.is_zero() {
        return Err(Blocked::InvalidSpec(format!(
            "probeThreshold ({}) must be positive",
            spec.probe_threshold
        )));
    }
    let period = std::time::Duration::from_secs(u64::from(spec.probe_period.unsigned_abs()) * 60);
    if period < threshold {
        return Err(Blocked::InvalidSpec(format!(
            "probePeriod ({}m) must not be shorter than probeThreshold ({})",
            spec.probe_period, spec.probe_threshold
        )));
    }
    Ok(())
}

/// The desired objects for `probe`, given every Node (owned, or `Arc`s from a watch cache) and
/// whether its StorageClass exists.
pub fn plan<N: Borrow<NodeFacts>>(
    probe: &PieProbe,
    nodes: &[N],
    storage_class_exists: bool,
    config: &Config,
) -> Result<Plan, Blocked> {
    validate(probe)?;
    let spec = &probe.spec;
    if !storage_class_exists {
        return Err(Blocked::StorageClassNotFound(
            spec.monitoring_storage_class.clone(),
        ));
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut selected: Vec<(&str, &NodeFacts)> = nodes
        .iter()
        .map(Borrow::borrow)
        .filter(|n| !n.name().is_empty())
        .filter(|n| node_selector::matches(spec.node_selector.as_ref(), n))
        .map(|n| (n.name(), n))
        .collect();
    selected.sort_unstable_by_key(|(name, _)| *name);
    selected.dedup_by_key(|(name, _)| *name);
    let eligibility: Vec<Option<Ineligible>> = selected
        .iter()
        .map(|(_, node)| eligibility::check(node, tolerations).err())
        .collect();
    let mut plan = Plan {
        probe: probe.clone(),
        config: config.clone(),
        provision: !spec.disable_provision_probe,
        provision_suspend: !eligibility.iter().any(Option::is_none),
        mounts: Vec::new(),
        inputs: inputs_hash(probe, config),
        nodes: Vec::new(),
    };
    if spec.disable_mount_probes {
        return Ok(plan);
    }
    plan.mounts.reserve(selected.len());
    plan.nodes.reserve(selected.len());
    let pie_probe = probe.meta().name.clone().unwrap_or_default();
    let namespace = probe.meta().namespace.clone().unwrap_or_default();
    for ((name, _), ineligible) in selected.into_iter().zip(eligibility) {
        plan.mounts.push(MountProbe {
            node: name.to_owned(),
            suspend: ineligible.is_some(),
        });
        plan.nodes.push(NodeEligibility {
            pie_probe: pie_probe.clone(),
            namespace: namespace.clone(),
            node: name.to_owned(),
            storage_class: spec.monitoring_storage_class.clone(),
            ineligible,
        });
    }
    Ok(plan)
}

/// Whether `node` is selected by `probe` and can run its probes now (what [`plan`] decides per
/// node).
pub fn eligible_for(probe: &PieProbe, node: &NodeFacts) -> bool {
    let tolerations = probe.spec.tolerations.as_deref().unwrap_or_default();
    selects(probe, node) && eligibility::check(node, tolerations).is_ok()
}

/// Whether `probe`'s nodeSelector selects `node` (eligible or not).
pub fn selects(probe: &PieProbe, node: &NodeFacts) -> bool {
    node_selector::matches(probe.spec.node_selector.as_ref(), node)
}

/// The objects among `existing` that `probe` controls but no longer wants. Objects controlled by
/// something else are never deleted. With a blocked plan nothing is deleted.
pub fn stale<'a, K: 'a>(
    probe: &PieProbe,
    desired: &BTreeSet<String>,
    existing: impl IntoIterator<Item = &'a Existing<K>>,
) -> Vec<&'a Existing<K>> {
    let Some(uid) = probe.meta().uid.as_deref() else {
        return Vec::new();
    };
    existing
        .into_iter()
        .filter(|e| e.controller_uid.as_deref() == Some(uid) && !desired.contains(&*e.name))
        .collect()
}

#[cfg(test)]
mod tests;
