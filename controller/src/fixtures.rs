//! Test fixtures: builders for Nodes and PieProbes, and a `ProbeIndex` over plain maps.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Taint};
use kube::api::ObjectMeta;

use crate::crd::{PieProbe, PieProbeSpec};
use crate::domain::node_facts::NodeFacts;
use crate::domain::plan::Config;

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

    /// The node as the controller keeps it.
    pub fn build(self) -> NodeFacts {
        NodeFacts::from(&self.node)
    }

    /// The Node object as the API server has it.
    pub fn node(self) -> Node {
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

/// A fake API server for reconciler tests: each `expect` takes the next request the client
/// sent, asserts its method and path+query, answers `response` (or echoes the request body when
/// `response` is null, as the API server does for an apply or a create), and returns the body.
pub struct ApiServerVerifier(
    /// The raw handle, for tests that answer concurrent requests themselves.
    pub  tower_test::mock::Handle<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >,
);

impl std::fmt::Debug for ApiServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiServerVerifier")
    }
}

impl ApiServerVerifier {
    /// A mock client and the verifier that answers for it.
    pub fn new() -> (kube::Client, Self) {
        let (service, handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        (kube::Client::new(service, "default"), Self(handle))
    }

    /// Takes the next request; asserts method and path (with query); answers `response`, or
    /// the request body itself when `response` is null.
    pub async fn expect(
        &mut self,
        method: http::Method,
        path_and_query: &str,
        response: serde_json::Value,
    ) -> serde_json::Value {
        self.expect_status(method, path_and_query, 200, response)
            .await
    }

    /// Like [`Self::expect`], answering with HTTP status `status`.
    pub async fn expect_status(
        &mut self,
        method: http::Method,
        path_and_query: &str,
        status: u16,
        response: serde_json::Value,
    ) -> serde_json::Value {
        let (request, send) =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {method} {path_and_query}"))
                .expect("client dropped");
        assert_eq!(request.method(), method, "method of {}", request.uri());
        assert_eq!(
            request.uri().path_and_query().unwrap().as_str(),
            path_and_query
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let body = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let response =
            serde_json::to_vec(if response.is_null() { &body } else { &response }).unwrap();
        send.send_response(
            http::Response::builder()
                .status(status)
                .body(kube::client::Body::from(response))
                .unwrap(),
        );
        body
    }
}

/// A [`ProbeIndex`] over plain maps, for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticIndex {
    /// (namespace, PieProbe) -> probeThreshold in ms.
    pub thresholds: std::collections::HashMap<(String, String), i64>,
    /// (namespace, PieProbe, node, StorageClass) of ineligible mount-probe nodes.
    pub ineligible: std::collections::HashSet<(String, String, String, String)>,
    /// (namespace, PieProbe) whose provision probe cannot run (no eligible node).
    pub provision_blocked: std::collections::HashSet<(String, String)>,
}

impl crate::domain::outcome::observe::ProbeIndex for StaticIndex {
    fn threshold_ms(&self, namespace: &str, name: &str) -> Option<i64> {
        self.thresholds
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    fn node_eligible(&self, namespace: &str, name: &str, node: &str, storage_class: &str) -> bool {
        !self.ineligible.contains(&(
            namespace.to_owned(),
            name.to_owned(),
            node.to_owned(),
            storage_class.to_owned(),
        ))
    }

    fn provision_runnable(&self, namespace: &str, name: &str) -> bool {
        !self
            .provision_blocked
            .contains(&(namespace.to_owned(), name.to_owned()))
    }

    fn namespaces(&self) -> std::collections::BTreeSet<String> {
        self.thresholds.keys().map(|(ns, _)| ns.clone()).collect()
    }
}
