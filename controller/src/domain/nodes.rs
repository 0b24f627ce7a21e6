//! Nodes as planning sees them, and which PieProbes a Node or StorageClass change concerns.
//!
//! Nodes are large (image lists, managedFields, addresses, capacity): the controller keeps of
//! each only [`NodeFacts`], the few facts planning reads, and [`NodeChanges`] passes on a node
//! only when one of them changed, so kubelet heartbeats do not trigger reconciles.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::PieProbe;
use crate::domain::node_facts::NodeFacts;
use crate::domain::plan::EligibilityMap;
use crate::domain::plan::node_selector;
use crate::domain::relist::Relist;

/// A watch event of Nodes as the events of their [`NodeFacts`].
pub fn facts_event(event: watcher::Event<Node>) -> watcher::Event<NodeFacts> {
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
    match event {
        Apply(n) => Apply(n.into()),
        Delete(n) => Delete(n.into()),
        InitApply(n) => InitApply(n.into()),
        Init => Init,
        InitDone => InitDone,
    }
}

/// Hash of what planning depends on: all of [`NodeFacts`].
pub fn fingerprint(node: &NodeFacts) -> u64 {
    let mut h = DefaultHasher::new();
    node.hash(&mut h);
    h.finish()
}

/// Remembers each node's [`fingerprint`] and passes on only nodes that appeared, disappeared or
/// changed in a way planning sees. A re-list reports nodes deleted meanwhile.
#[derive(Debug, Default)]
pub struct NodeChanges {
    seen: Relist<String, u64>,
}

impl NodeChanges {
    /// The nodes in `event` that matter, including deleted ones (their last known state; a
    /// node gone during a re-list as a Node with only its name).
    pub fn observe(&mut self, event: &watcher::Event<NodeFacts>) -> Vec<NodeFacts> {
        match event {
            watcher::Event::Init => {
                self.seen.init();
                Vec::new()
            }
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
                let fp = fingerprint(node);
                let previous = self.seen.apply(node.name().to_owned(), fp);
                (previous != Some(fp))
                    .then(|| node.clone())
                    .into_iter()
                    .collect()
            }
            watcher::Event::Delete(node) => {
                self.seen.delete(&node.name().to_owned());
                vec![node.clone()]
            }
            watcher::Event::InitDone => self
                .seen
                .init_done()
                .into_iter()
                .map(|name| NodeFacts::named(&name))
                .collect(),
        }
    }
}

/// The PieProbes a node change concerns: those whose selector matches the node now, and those
/// whose last plan included it (so a node that stops matching, or is deleted, is cleaned up).
pub fn probes_for_node(
    probes: &[Arc<PieProbe>],
    planned: &EligibilityMap,
    node: &NodeFacts,
) -> Vec<ObjectRef<PieProbe>> {
    let name = node.name();
    probes
        .iter()
        .filter(|p| {
            let key = (p.namespace().unwrap_or_default(), p.name_any());
            node_selector::matches(p.spec.node_selector.as_ref(), node)
                || planned
                    .get(&key)
                    .is_some_and(|ns| ns.iter().any(|n| n.node == name))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The PieProbes that monitor the StorageClass `name`.
pub fn probes_for_storage_class(probes: &[Arc<PieProbe>], name: &str) -> Vec<ObjectRef<PieProbe>> {
    probes
        .iter()
        .filter(|p| p.spec.monitoring_storage_class == name)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::node_facts::NodeTaint;
    use crate::domain::plan::NodeEligibility;
    use crate::fixtures::{NodeBuilder, PieProbeBuilder};
    use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn heavy(name: &str) -> Node {
        let mut node = NodeBuilder::new(name)
            .label("role", "compute")
            .label("zone", "a")
            .taint("soft", None, "PreferNoSchedule")
            .taint("disk", Some("slow"), "NoSchedule")
            .node();
        node.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubelet".into()),
            ..Default::default()
        }]);
        node.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
        let status = node.status.as_mut().unwrap();
        status.images = Some(vec![ContainerImage {
            names: Some(vec!["img".into()]),
            size_bytes: Some(1),
        }]);
        // Ready is not the first condition on a real node.
        status.conditions.as_mut().unwrap().insert(
            0,
            NodeCondition {
                type_: "MemoryPressure".into(),
                status: "False".into(),
                ..Default::default()
            },
        );
        node
    }

    #[test]
    fn facts_keep_what_planning_reads() {
        let node = heavy("n1");
        let facts = NodeFacts::from(&node);
        assert_eq!(facts.name(), "n1");
        assert_eq!(
            [
                facts.label("kubernetes.io/hostname"),
                facts.label("role"),
                facts.label("zone"),
                facts.label("missing"),
            ],
            [Some("n1"), Some("compute"), Some("a"), None]
        );
        assert!(facts.is_ready() && !facts.unschedulable());
        assert_eq!(
            facts.taints(),
            [NodeTaint {
                key: "disk".into(),
                value: Some("slow".into()),
                effect: "NoSchedule".into(),
            }],
            "PreferNoSchedule taints do not keep probe Pods off"
        );
        let mut cordoned = node.clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert!(NodeFacts::from(&cordoned).unschedulable());
        let mut not_ready = node.clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[1]
            .status = "Unknown".into();
        assert!(!NodeFacts::from(&not_ready).is_ready());
        let mut no_status = node;
        no_status.status = None;
        assert!(!NodeFacts::from(&no_status).is_ready());
        // The cache keys a node by its name, as kube keys a Node.
        use kube::runtime::reflector::Lookup as _;
        assert_eq!(
            facts.to_object_ref(()).erase(),
            ObjectRef::<Node>::new("n1").erase()
        );
    }

    #[test]
    fn heartbeats_are_filtered_but_scheduling_changes_pass() {
        let mut changes = NodeChanges::default();
        let mut observe = |event: watcher::Event<Node>| changes.observe(&facts_event(event)).len();
        let node = NodeBuilder::new("n1").node();
        assert_eq!(observe(watcher::Event::Apply(node.clone())), 1, "new node");
        let mut heartbeat = node.clone();
        heartbeat
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        heartbeat.metadata.resource_version = Some("2".into());
        assert_eq!(observe(watcher::Event::Apply(heartbeat)), 0, "heartbeat");
        for changed in [
            NodeBuilder::new("n1").label("x", "y").node(),
            NodeBuilder::new("n1").ready(false).node(),
            NodeBuilder::new("n1").unschedulable().node(),
            NodeBuilder::new("n1").taint("k", None, "NoSchedule").node(),
        ] {
            assert_eq!(observe(watcher::Event::Apply(changed)), 1);
        }
        assert_eq!(observe(watcher::Event::Delete(node)), 1, "deleted");
    }

    #[test]
    fn relist_reports_nodes_deleted_while_disconnected() {
        let mut changes = NodeChanges::default();
        for n in ["a", "b"] {
            changes.observe(&watcher::Event::Apply(NodeBuilder::new(n).build()));
        }
        assert!(changes.observe(&watcher::Event::Init).is_empty());
        assert!(
            changes
                .observe(&watcher::Event::InitApply(NodeBuilder::new("a").build()))
                .is_empty()
        );
        let gone: Vec<_> = changes
            .observe(&watcher::Event::InitDone)
            .iter()
            .map(|n| n.name().to_owned())
            .collect();
        assert_eq!(gone, ["b"]);
    }

    #[test]
    fn node_changes_map_to_matching_and_previously_planned_probes() {
        let compute = Arc::new(
            PieProbeBuilder::new("compute", "sc")
                .selector_in("role", &["compute"])
                .build(),
        );
        let storage = Arc::new(
            PieProbeBuilder::new("storage", "sc")
                .selector_in("role", &["storage"])
                .build(),
        );
        let probes = vec![compute, storage];
        let node = NodeBuilder::new("n1").label("role", "compute").build();
        let names =
            |refs: Vec<ObjectRef<PieProbe>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(
            names(probes_for_node(&probes, &EligibilityMap::new(), &node)),
            ["compute"]
        );
        // n1 was planned by "storage" before its label changed: that probe must clean up.
        let mut planned = EligibilityMap::new();
        planned.insert(
            ("pie".into(), "storage".into()),
            vec![NodeEligibility {
                pie_probe: "storage".into(),
                namespace: "pie".into(),
                node: "n1".into(),
                storage_class: "sc".into(),
                ineligible: None,
            }],
        );
        assert_eq!(
            names(probes_for_node(&probes, &planned, &node)),
            ["compute", "storage"]
        );
        assert_eq!(
            names(probes_for_storage_class(&probes, "sc")),
            ["compute", "storage"]
        );
        assert!(probes_for_storage_class(&probes, "other").is_empty());
    }
}
