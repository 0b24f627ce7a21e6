//! What pie-controller keeps of each CronJob and PVC it watches: the few facts the reconciler
//! decides on, not the object's metadata.
//!
//! At 5,000 nodes x 3 PieProbes the controller watches 30,000 of these objects. Cached as
//! metadata (`PartialObjectMeta`) each cost about 1.15 KB in a heap profile even with
//! everything unread stripped: the `ObjectMeta` struct itself, a label map and an annotation map
//! (a `BTreeMap` allocates a whole node for a single entry), the ownerReference's four strings
//! and a store key with four more; kube's predicate filter kept a map of every object besides.
//! [`Existing`] keeps seven short strings, a flag and a fingerprint, and its store key two
//! strings.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use kube::Resource;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{Lookup, ObjectRef};
use pie_api::labels;

use crate::crd::PieProbe;

/// One CronJob or PVC (`K`) as the cluster has it, as far as the reconciler needs it: whether
/// its desired-hash matches the plan's, whether pie made it (topolvm/pie's are adopted), which
/// PieProbe controls it (to reconcile on its changes), and what a deletion sends as
/// preconditions.
#[derive(Debug)]
pub struct Existing<K> {
    /// Object name.
    pub name: Box<str>,
    /// Namespace.
    pub namespace: Option<Box<str>>,
    /// UID, sent as a delete precondition.
    pub uid: Option<Box<str>>,
    /// resourceVersion, sent as a delete precondition.
    pub resource_version: Option<Box<str>>,
    /// UID of its controller ownerReference.
    pub controller_uid: Option<Box<str>>,
    /// Name of the PieProbe its controller ownerReference points at (pie's objects and
    /// topolvm/pie's alike).
    pub controller_probe: Option<Box<str>>,
    /// Whether it carries pie-controller's managed-by label (topolvm/pie's objects do not).
    pub managed_by_pie: bool,
    /// Its desired-hash annotation: the hash of the plan it was applied from.
    pub desired_hash: Option<Box<str>>,
    /// Hash of what a reconcile acts on (generation, desired-hash, deletion, owners,
    /// managed-by); a change of anything else (a CronJob's `lastScheduleTime`, a PVC's phase)
    /// leaves it as it was and triggers nothing.
    pub fingerprint: u64,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Existing<K> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            resource_version: self.resource_version.clone(),
            controller_uid: self.controller_uid.clone(),
            controller_probe: self.controller_probe.clone(),
            managed_by_pie: self.managed_by_pie,
            desired_hash: self.desired_hash.clone(),
            fingerprint: self.fingerprint,
            kind: PhantomData,
        }
    }
}

impl<K> PartialEq for Existing<K> {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.name,
            &self.namespace,
            &self.uid,
            &self.resource_version,
            &self.controller_uid,
            &self.controller_probe,
            self.managed_by_pie,
            &self.desired_hash,
            self.fingerprint,
        ) == (
            &other.name,
            &other.namespace,
            &other.uid,
            &other.resource_version,
            &other.controller_uid,
            &other.controller_probe,
            other.managed_by_pie,
            &other.desired_hash,
            other.fingerprint,
        )
    }
}

impl<K> Eq for Existing<K> {}

fn boxed(s: &Option<String>) -> Option<Box<str>> {
    s.as_deref().map(Box::from)
}

impl<K> Existing<K> {
    /// Reads the facts from an object's metadata.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        let probe_api_version = <PieProbe as Resource>::api_version(&());
        let probe_kind = <PieProbe as Resource>::kind(&());
        let managed_by = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::LABEL_MANAGED_BY));
        let desired_hash = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::ANNOTATION_DESIRED_HASH));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        meta.generation.hash(&mut h);
        desired_hash.hash(&mut h);
        meta.deletion_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .hash(&mut h);
        meta.owner_references
            .iter()
            .flatten()
            .for_each(|r| r.uid.hash(&mut h));
        managed_by.hash(&mut h);
        Self {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: boxed(&meta.namespace),
            uid: boxed(&meta.uid),
            resource_version: boxed(&meta.resource_version),
            controller_uid: controller.map(|r| r.uid.as_str().into()),
            controller_probe: controller
                .filter(|r| r.api_version == probe_api_version && r.kind == probe_kind)
                .map(|r| r.name.as_str().into()),
            managed_by_pie: managed_by.is_some_and(|v| v == labels::MANAGER),
            desired_hash: desired_hash.map(|h| h.as_str().into()),
            fingerprint: h.finish(),
            kind: PhantomData,
        }
    }

    /// The PieProbe to reconcile when this object changes: its controller, if a PieProbe.
    pub fn owner(&self) -> Option<ObjectRef<PieProbe>> {
        let probe = ObjectRef::new(self.controller_probe.as_deref()?);
        Some(match self.namespace.as_deref() {
            Some(ns) => probe.within(ns),
            None => probe,
        })
    }
}

/// Keys the reflector's store by namespace and name, like any object; the store key carries no
/// uid or resourceVersion (kube's default copies both into every key).
impl<K: Resource<DynamicType = ()>> Lookup for Existing<K> {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }

    fn to_object_ref(&self, (): ()) -> ObjectRef<Self> {
        let key = ObjectRef::new(&self.name);
        match self.namespace.as_deref() {
            Some(ns) => key.within(ns),
            None => key,
        }
    }
}
