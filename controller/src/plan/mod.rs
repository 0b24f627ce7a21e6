//! Desired state as pure functions: (PieProbe, Nodes, StorageClass present?, config) -> the
//! objects to apply, the per-node eligibility, and which existing objects to delete.
//!
//! No Kubernetes I/O happens here; the reconciler and `pie-controller plan` share this code.

pub mod eligibility;
pub mod names;
pub mod node_selector;
pub mod objects;

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::str::FromStr;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::Resource;
use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::crd::PieProbe;
pub use eligibility::Ineligible;

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

/// Everything one PieProbe should have in the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Provision and mount CronJobs, in a stable order (provision first, then by node name).
    pub cron_jobs: Vec<CronJob>,
    /// Mount probe PVCs, by node name.
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// Every selected node, by name, with its eligibility (empty when mount probes are disabled).
    pub nodes: Vec<NodeEligibility>,
}

impl Plan {
    /// Names of the desired CronJobs.
    pub fn cron_job_names(&self) -> BTreeSet<&str> {
        self.cron_jobs
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect()
    }

    /// Names of the desired PVCs.
    pub fn pvc_names(&self) -> BTreeSet<&str> {
        self.pvcs
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect()
    }
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
pub fn plan<N: Borrow<Node>>(
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
    let mut plan = Plan::default();
    if !spec.disable_provision_probe {
        plan.cron_jobs
            .push(objects::provision_cron_job(probe, config));
    }
    if spec.disable_mount_probes {
        return Ok(plan);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut selected: Vec<(&str, &Node)> = nodes
        .iter()
        .map(Borrow::borrow)
        .filter(|n| node_selector::matches(spec.node_selector.as_ref(), n))
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    selected.sort_unstable_by_key(|(name, _)| *name);
    selected.dedup_by_key(|(name, _)| *name);
    for (name, node) in selected {
        let ineligible = eligibility::check(node, tolerations).err();
        plan.pvcs.push(objects::mount_pvc(probe, name));
        plan.cron_jobs.push(objects::mount_cron_job(
            probe,
            name,
            ineligible.is_some(),
            config,
        ));
        plan.nodes.push(NodeEligibility {
            pie_probe: probe.meta().name.clone().unwrap_or_default(),
            namespace: probe.meta().namespace.clone().unwrap_or_default(),
            node: name.to_owned(),
            storage_class: spec.monitoring_storage_class.clone(),
            ineligible,
        });
    }
    Ok(plan)
}

/// An object that exists in the cluster, as far as deciding on its deletion needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Object name.
    pub name: String,
    /// UID, sent as a delete precondition.
    pub uid: Option<String>,
    /// resourceVersion, sent as a delete precondition.
    pub resource_version: Option<String>,
    /// UID of its controller ownerReference.
    pub controller_uid: Option<String>,
}

impl Existing {
    /// Reads the fields from any object's metadata.
    pub fn from_meta(meta: &kube::api::ObjectMeta) -> Self {
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            controller_uid: meta
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| r.uid.clone()),
        }
    }
}

/// The objects among `existing` that `probe` controls but no longer wants. Objects controlled by
/// something else are never deleted. With a blocked plan nothing is deleted.
pub fn stale<'a>(
    probe: &PieProbe,
    desired: &BTreeSet<&str>,
    existing: &'a [Existing],
) -> Vec<&'a Existing> {
    let Some(uid) = probe.meta().uid.as_deref() else {
        return Vec::new();
    };
    existing
        .iter()
        .filter(|e| e.controller_uid.as_deref() == Some(uid) && !desired.contains(e.name.as_str()))
        .collect()
}

/// Hex sha1 of an object's JSON: stored in [`objects::ANNOTATION_DESIRED_HASH`] so an object
/// whose desired form did not change is not applied again.
pub fn desired_hash<T: Serialize>(object: &T) -> String {
    let json = serde_json::to_vec(object).unwrap_or_default();
    Sha1::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sets [`objects::ANNOTATION_DESIRED_HASH`] on a desired object (hash of the object without it).
pub fn with_desired_hash<K: Resource + Serialize>(mut object: K) -> K {
    object
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .remove(objects::ANNOTATION_DESIRED_HASH);
    let hash = desired_hash(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(objects::ANNOTATION_DESIRED_HASH.to_owned(), hash);
    object
}

#[cfg(test)]
mod tests;
