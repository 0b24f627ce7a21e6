//! Nodes as planning sees them, and which PieProbes a Node or StorageClass change concerns.
//!
//! Nodes are large (image lists, managedFields, addresses, capacity): [`strip_node`] keeps only
//! what planning reads before a Node enters the cache, and [`NodeChanges`] passes on a node only
//! when something planning depends on changed (labels, taints, unschedulable, Ready), so kubelet
//! heartbeats do not trigger reconciles.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::PieProbe;
use crate::domain::plan::EligibilityMap;
use crate::domain::plan::{eligibility, node_selector};
use crate::domain::relist::Relist;

/// Drops everything planning does not read: managedFields, annotations, owner references, the
/// whole status except the Ready condition's status, and the spec except taints and
/// unschedulable.
pub fn strip_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    let spec = node.spec.take().unwrap_or_default();
    node.spec = Some(NodeSpec {
        taints: spec.taints.map(|ts| {
            ts.into_iter()
                .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
                .map(|mut t| {
                    t.time_added = None;
                    t
                })
                .collect()
        }),
        unschedulable: spec.unschedulable,
        ..NodeSpec::default()
    });
    let ready = node
        .status
        .take()
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .map(|mut c| {
            c.last_heartbeat_time = None;
            c.last_transition_time = None;
            c.message = None;
            c
        });
    node.status = Some(NodeStatus {
        conditions: ready.map(|c| vec![c]),
        ..NodeStatus::default()
    });
}

/// Hash of what planning depends on: name, labels, NoSchedule/NoExecute taints, unschedulable
/// and whether the node is Ready.
pub fn fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.name.hash(&mut h);
    node.metadata.labels.hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.unschedulable.unwrap_or(false).hash(&mut h);
        for t in spec.taints.iter().flatten() {
            if matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") {
                (&t.key, &t.value, &t.effect).hash(&mut h);
            }
        }
    }
    eligibility::is_ready(node).hash(&mut h);
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
    pub fn observe(&mut self, event: &watcher::Event<Node>) -> Vec<Node> {
        match event {
            watcher::Event::Init => {
                self.seen.init();
                Vec::new()
            }
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
                let fp = fingerprint(node);
                let previous = self.seen.apply(node.name_any(), fp);
                (previous != Some(fp))
                    .then(|| node.clone())
                    .into_iter()
                    .collect()
            }
            watcher::Event::Delete(node) => {
                self.seen.delete(&node.name_any());
                vec![node.clone()]
            }
            watcher::Event::InitDone => self
                .seen
                .init_done()
                .into_iter()
                .map(|name| {
                    let mut node = Node::default();
                    node.metadata.name = Some(name);
                    node
                })
                .collect(),
        }
    }
}

/// The PieProbes a node change concerns: those whose selector matches the node now, and those
/// whose last plan included it (so a node that stops matching, or is deleted, is cleaned up).
pub fn probes_for_node(
    probes: &[Arc<PieProbe>],
    planned: &EligibilityMap,
    node: &Node,
) -> Vec<ObjectRef<PieProbe>> {
    let name = node.name_any();
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
    use crate::domain::plan::NodeEligibility;
    use crate::fixtures::{NodeBuilder, PieProbeBuilder};
    use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn heavy(name: &str) -> Node {
        let mut node = NodeBuilder::new(name)
            .label("role", "compute")
            .taint("soft", None, "PreferNoSchedule")
            .build();
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
        status.conditions.as_mut().unwrap().push(NodeCondition {
            type_: "MemoryPressure".into(),
            status: "False".into(),
            ..Default::default()
        });
        node
    }

    #[test]
    fn strip_keeps_what_planning_reads() {
        let mut node = heavy("n1");
        let before = fingerprint(&node);
        strip_node(&mut node);
        assert!(node.metadata.managed_fields.is_none() && node.metadata.annotations.is_none());
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none());
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        assert!(eligibility::is_ready(&node));
        assert_eq!(node.labels()["role"], "compute");
        assert_eq!(
            fingerprint(&node),
            before,
            "stripping must not change what planning sees"
        );
        // Stripped and unstripped nodes plan the same.
        let probe = PieProbeBuilder::new("p", "sc")
            .selector_in("role", &["compute"])
            .build();
        let cfg = crate::fixtures::config();
        assert_eq!(
            crate::domain::plan::plan(&probe, &[node], true, &cfg),
            crate::domain::plan::plan(&probe, &[heavy("n1")], true, &cfg)
        );
    }

    #[test]
    fn heartbeats_are_filtered_but_scheduling_changes_pass() {
        let mut changes = NodeChanges::default();
        let node = NodeBuilder::new("n1").build();
        assert_eq!(
            changes.observe(&watcher::Event::Apply(node.clone())).len(),
            1,
            "new node"
        );
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
        assert!(
            changes
                .observe(&watcher::Event::Apply(heartbeat))
                .is_empty(),
            "heartbeat"
        );
        for changed in [
            NodeBuilder::new("n1").label("x", "y").build(),
            NodeBuilder::new("n1").ready(false).build(),
            NodeBuilder::new("n1").unschedulable().build(),
            NodeBuilder::new("n1")
                .taint("k", None, "NoSchedule")
                .build(),
        ] {
            assert_eq!(changes.observe(&watcher::Event::Apply(changed)).len(), 1);
        }
        assert_eq!(
            changes.observe(&watcher::Event::Delete(node)).len(),
            1,
            "deleted"
        );
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
            .map(|n| n.name_any())
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
