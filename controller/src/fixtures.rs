//! Test fixtures: builders for Nodes and PieProbes.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Taint};
use kube::api::ObjectMeta;

use crate::crd::{PieProbe, PieProbeSpec};
use crate::plan::Config;

/// Builds a Node that is Ready, schedulable and untainted unless told otherwise.
#[derive(Debug)]
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("kubernetes.io/hostname".to_owned(), name.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        Self { node }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.node
            .metadata
            .labels
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        let status = if ready { "True" } else { "False" };
        self.node
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = status.into();
        self
    }

    pub fn no_status(mut self) -> Self {
        self.node.status = None;
        self
    }

    pub fn unschedulable(mut self) -> Self {
        self.node.spec.as_mut().unwrap().unschedulable = Some(true);
        self
    }

    pub fn taint(mut self, key: &str, value: Option<&str>, effect: &str) -> Self {
        self.node
            .spec
            .as_mut()
            .unwrap()
            .taints
            .get_or_insert_default()
            .push(Taint {
                key: key.into(),
                value: value.map(Into::into),
                effect: effect.into(),
                time_added: None,
            });
        self
    }

    pub fn build(self) -> Node {
        self.node
    }
}

/// Builds a PieProbe in namespace `pie` with pie's defaults.
#[derive(Debug)]
pub struct PieProbeBuilder {
    probe: PieProbe,
}

impl PieProbeBuilder {
    pub fn new(name: &str, storage_class: &str) -> Self {
        let spec: PieProbeSpec =
            serde_json::from_value(serde_json::json!({ "monitoringStorageClass": storage_class }))
                .unwrap();
        let mut probe = PieProbe::new(name, spec);
        probe.metadata.namespace = Some("pie".into());
        probe.metadata.uid = Some(format!("uid-{name}"));
        probe.metadata.generation = Some(1);
        Self { probe }
    }

    pub fn spec(mut self, f: impl FnOnce(&mut PieProbeSpec)) -> Self {
        f(&mut self.probe.spec);
        self
    }

    pub fn selector_in(self, key: &str, values: &[&str]) -> Self {
        let selector = serde_json::from_value(serde_json::json!({
            "nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": "In", "values": values}]}]
        }))
        .unwrap();
        self.spec(|s| s.node_selector = Some(selector))
    }

    pub fn build(self) -> PieProbe {
        self.probe
    }
}

/// A controller configuration for tests.
pub fn config() -> Config {
    Config {
        agent_image: "ghcr.io/pie-rs/pie-agent:test".into(),
        controller_url: "http://pie-controller.pie.svc:8082".into(),
        probe_service_account: Some("pie-probe".into()),
        image_pull_secrets: vec!["regcred".into()],
    }
}
