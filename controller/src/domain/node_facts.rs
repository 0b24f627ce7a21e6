//! What pie-controller keeps of each Node: [`NodeFacts`], the few facts planning reads.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Node;
use kube::Resource;
use kube::runtime::reflector::Lookup;

/// What the controller keeps of a Node: its name, labels, the taints that keep Pods off it
/// (`NoSchedule`, `NoExecute`), whether it is cordoned and whether it is Ready; everything
/// planning reads and nothing else.
///
/// At 5,000 nodes a cache of `Node` objects, even stripped of everything unread, cost about
/// 2.6 KB a node in a heap profile: the `ObjectMeta`, `NodeSpec` and `NodeStatus` structs with
/// every optional field, a `BTreeMap` node for a few labels, the Ready condition, and a store
/// key with four strings. This keeps the labels as one sorted slice and its store key is the
/// name alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeFacts {
    name: Box<str>,
    /// Sorted by name, unique.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// `NoSchedule` and `NoExecute` taints only, in the Node's order.
    taints: Box<[NodeTaint]>,
    unschedulable: bool,
    ready: bool,
}

/// A taint that keeps Pods off a node unless they tolerate it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeTaint {
    /// Taint key.
    pub key: Box<str>,
    /// Taint value, if any.
    pub value: Option<Box<str>>,
    /// `NoSchedule` or `NoExecute`.
    pub effect: Box<str>,
}

impl NodeFacts {
    /// A node known by its name only: one deleted while the watch was re-listing.
    pub fn named(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            ..NodeFacts::default()
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of label `key`, if the node has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.labels[i].1)
    }

    /// Its `NoSchedule` and `NoExecute` taints.
    pub fn taints(&self) -> &[NodeTaint] {
        &self.taints
    }

    /// Whether it is cordoned (`spec.unschedulable`).
    pub fn unschedulable(&self) -> bool {
        self.unschedulable
    }

    /// Whether its `Ready` condition is `True` (false without one).
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

impl From<&Node> for NodeFacts {
    fn from(node: &Node) -> NodeFacts {
        let spec = node.spec.as_ref();
        NodeFacts {
            name: node.metadata.name.as_deref().unwrap_or_default().into(),
            // A BTreeMap iterates in key order: the slice is sorted.
            labels: node
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            taints: spec
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default()
                .iter()
                .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
                .map(|t| NodeTaint {
                    key: t.key.as_str().into(),
                    value: t.value.as_deref().map(Into::into),
                    effect: t.effect.as_str().into(),
                })
                .collect(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True"),
        }
    }
}

impl From<Node> for NodeFacts {
    fn from(node: Node) -> NodeFacts {
        NodeFacts::from(&node)
    }
}

/// Cached in kube's reflector store under its name (Nodes are cluster-scoped).
impl Lookup for NodeFacts {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Node as Resource>::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        <Node as Resource>::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        <Node as Resource>::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <Node as Resource>::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}
