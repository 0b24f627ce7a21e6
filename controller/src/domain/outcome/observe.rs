//! Kubernetes objects and watch events turned into the state machine's [`Observation`]s (pure).
//!
//! Only probe objects become observations: Pods and PVCs labelled
//! `app.kubernetes.io/managed-by=pie-controller` whose PieProbe is known, and Events whose
//! involved object is named like a probe Pod or probe PVC. A watch that re-lists (after a
//! disconnect) reports the objects deleted meanwhile as gone: [`Known`] remembers what each
//! watch has seen.

use std::hash::Hash;

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;

use crate::domain::relist::Relist;

use super::machine::{EventObs, Observation, PodObs, ProbeKind, PvcObs};
use pie_api::labels::{
    COMPONENT_MOUNT, COMPONENT_PROVISION, CONTAINER_NAME, LABEL_COMPONENT, LABEL_MANAGED_BY,
    LABEL_NODE, LABEL_PIE_PROBE, LABEL_STORAGE_CLASS, MANAGER,
};

pub use pie_api::labels::ANNOTATION_COUNTED;
use pie_api::names::is_probe_object;

/// What the observations need to know about PieProbes and the plan.
pub trait ProbeIndex {
    /// The probeThreshold of PieProbe `namespace/name` in ms, if it exists and is valid.
    fn threshold_ms(&self, namespace: &str, name: &str) -> Option<i64>;
    /// Whether `node` is an eligible mount-probe node of PieProbe `namespace/name` for
    /// `storage_class` (false when the plan no longer selects it).
    fn node_eligible(&self, namespace: &str, name: &str, node: &str, storage_class: &str) -> bool;
    /// Whether PieProbe `namespace/name`'s provision probe can run: some node it selects is
    /// eligible (true when unknown).
    fn provision_runnable(&self, namespace: &str, name: &str) -> bool;
    /// The namespaces holding PieProbes (whose Events are watched).
    fn namespaces(&self) -> std::collections::BTreeSet<String>;
}

/// Parses a probeThreshold (`"1m"`, `"30s"`, ...) to ms; `None` unless positive.
pub fn parse_threshold_ms(threshold: &str) -> Option<i64> {
    let d: kube::core::Duration = threshold.parse().ok()?;
    if d.is_negative() {
        return None;
    }
    let d: std::time::Duration = d.into();
    let ms = i64::try_from(d.as_millis()).ok()?;
    (ms > 0).then_some(ms)
}

fn label<'a>(
    labels: Option<&'a std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    labels?.get(key).map(String::as_str)
}

fn ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_millisecond()
}

/// A probe Pod as the state machine sees it; `None` for other Pods and for Pods whose PieProbe
/// is unknown.
pub fn pod(pod: &Pod, index: &impl ProbeIndex) -> Option<PodObs> {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    if label(labels, LABEL_MANAGED_BY) != Some(MANAGER) {
        return None;
    }
    let kind = match label(labels, LABEL_COMPONENT)? {
        COMPONENT_MOUNT => ProbeKind::Mount,
        COMPONENT_PROVISION => ProbeKind::Provision,
        _ => return None,
    };
    let pie_probe_name = label(labels, LABEL_PIE_PROBE)?;
    let storage_class = label(labels, LABEL_STORAGE_CLASS)?;
    let namespace = meta.namespace.as_deref()?;
    let name = meta.name.as_deref()?;
    let threshold_ms = index.threshold_ms(namespace, pie_probe_name)?;
    let spec = pod.spec.as_ref();
    // An unscheduled mount probe still belongs to its node.
    let node = spec
        .and_then(|s| s.node_name.clone())
        .or_else(|| match kind {
            ProbeKind::Mount => label(labels, LABEL_NODE).map(str::to_owned),
            ProbeKind::Provision => None,
        })
        .unwrap_or_default();
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER_NAME));
    let state = status.and_then(|s| s.state.as_ref());
    let started_ms = state.and_then(|s| {
        s.running
            .as_ref()
            .and_then(|r| r.started_at.as_ref())
            .or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.as_ref()))
            .map(ms)
    });
    let waiting_reason = state
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    let pvcs = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some(claim.claim_name.clone())
            } else {
                v.ephemeral.as_ref().map(|_| format!("{name}-{}", v.name))
            }
        })
        .collect();
    let node_eligible = match kind {
        ProbeKind::Provision => index.provision_runnable(namespace, pie_probe_name),
        ProbeKind::Mount => index.node_eligible(namespace, pie_probe_name, &node, storage_class),
    };
    Some(PodObs {
        uid: meta.uid.clone()?,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        job: meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.kind == "Job")
            .map(|r| r.name.clone()),
        kind,
        pie_probe_name: pie_probe_name.to_owned(),
        storage_class: storage_class.to_owned(),
        node,
        created_ms: ms(meta.creation_timestamp.as_ref()?),
        started_ms,
        threshold_ms,
        counted: meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_COUNTED)),
        waiting_reason,
        pvcs,
        node_eligible,
    })
}

/// An Event about a probe Pod or probe PVC; `None` for others.
pub fn event(event: &Event) -> Option<EventObs> {
    let involved = &event.involved_object;
    let kind = involved.kind.as_deref()?;
    let name = involved.name.as_deref()?;
    if !is_probe_object(kind, name) {
        return None;
    }
    let time_ms = event
        .last_timestamp
        .as_ref()
        .map(ms)
        .or_else(|| event.event_time.as_ref().map(|t| t.0.as_millisecond()))
        .or_else(|| event.first_timestamp.as_ref().map(ms))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(ms))?;
    Some(EventObs {
        namespace: involved
            .namespace
            .clone()
            .or_else(|| event.metadata.namespace.clone())?,
        involved_kind: kind.to_owned(),
        involved_name: name.to_owned(),
        reason: event.reason.clone()?,
        message: event.message.clone().unwrap_or_default(),
        time_ms,
    })
}

/// A provision probe's ephemeral PVC; `None` for other PVCs (mount probes' PVCs live as long
/// as their node is probed) and for PVCs whose PieProbe is unknown.
pub fn pvc(pvc: &PersistentVolumeClaim, index: &impl ProbeIndex) -> Option<PvcObs> {
    let meta = &pvc.metadata;
    let labels = meta.labels.as_ref();
    if label(labels, LABEL_MANAGED_BY) != Some(MANAGER)
        || label(labels, LABEL_COMPONENT) != Some(COMPONENT_PROVISION)
    {
        return None;
    }
    let pie_probe_name = label(labels, LABEL_PIE_PROBE)?;
    let namespace = meta.namespace.as_deref()?;
    Some(PvcObs {
        namespace: namespace.to_owned(),
        name: meta.name.clone()?,
        pie_probe_name: pie_probe_name.to_owned(),
        storage_class: label(labels, LABEL_STORAGE_CLASS)?.to_owned(),
        created_ms: ms(meta.creation_timestamp.as_ref()?),
        bound: pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Bound"),
        volume: pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
        deleted_ms: meta.deletion_timestamp.as_ref().map(ms),
        threshold_ms: index.threshold_ms(namespace, pie_probe_name)?,
    })
}

/// The keys of probe objects one watch has seen (see [`Relist`]).
pub type Known<K> = Relist<K>;

/// Applies one watch event of `K` to `known`: objects that exist become `seen(obj)`, deleted
/// ones (also those missing from a re-list) `gone(key)`.
fn observe<K, Key: Hash + Eq + Clone>(
    known: &mut Known<Key>,
    event: &watcher::Event<K>,
    key: impl Fn(&K) -> Option<Key>,
    seen: impl Fn(&K) -> Option<Observation>,
    gone: impl Fn(Key) -> Observation,
) -> Vec<Observation> {
    match event {
        watcher::Event::Init => {
            known.init();
            Vec::new()
        }
        watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
            if let Some(k) = key(obj) {
                known.apply(k, ());
            }
            seen(obj).into_iter().collect()
        }
        watcher::Event::Delete(obj) => match key(obj) {
            Some(k) if known.delete(&k).is_some() => vec![gone(k)],
            _ => Vec::new(),
        },
        watcher::Event::InitDone => known.init_done().into_iter().map(gone).collect(),
    }
}

/// Observations from one event of the probe-Pod watch (keyed by UID).
pub fn pod_events(
    known: &mut Known<String>,
    event: &watcher::Event<Pod>,
    index: &impl ProbeIndex,
) -> Vec<Observation> {
    observe(
        known,
        event,
        |p| p.metadata.uid.clone(),
        |p| pod(p, index).map(Observation::Pod),
        |uid| Observation::PodGone { uid },
    )
}

/// Observations from one event of the ephemeral-PVC watch (keyed by namespace and name).
pub fn pvc_events(
    known: &mut Known<(String, String)>,
    event: &watcher::Event<PersistentVolumeClaim>,
    index: &impl ProbeIndex,
) -> Vec<Observation> {
    observe(
        known,
        event,
        |p| Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?)),
        |p| pvc(p, index).map(Observation::Pvc),
        |(namespace, name)| Observation::PvcGone { namespace, name },
    )
}

/// Observations from one event of the PV watch (metadata only; only deletions matter).
pub fn pv_events(
    known: &mut Known<String>,
    event: &watcher::Event<PartialObjectMeta<PersistentVolume>>,
) -> Vec<Observation> {
    observe(
        known,
        event,
        |pv| pv.metadata.name.clone(),
        // A PV existing tells the machine nothing; only its disappearance does.
        |_| None,
        |name| Observation::PvGone { name },
    )
}

/// Observations from one event of an Event watch.
pub fn event_events(event: &watcher::Event<Event>) -> Vec<Observation> {
    match event {
        watcher::Event::InitApply(e) | watcher::Event::Apply(e) => {
            self::event(e).map(Observation::Event).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "observe_tests.rs"]
mod tests;
