//! The `pie.topolvm.io/v1alpha1` `PieProbe` custom resource.
//!
//! The spec is field-for-field compatible with topolvm/pie's (names, types, defaults, ranges and
//! CEL immutability rules), so manifests written for pie apply unchanged. `tolerations` and
//! `priorityClassName` are optional additions; the status is new (pie's is empty).

use k8s_openapi::api::core::v1::{NodeSelector, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the PieProbe resource.
pub const GROUP: &str = "pie.topolvm.io";
/// API version of the PieProbe resource.
pub const VERSION: &str = "v1alpha1";

/// Desired state of a PieProbe: which StorageClass to probe, on which nodes, and how often.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats keys such as type_ by design"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pie.topolvm.io",
    version = "v1alpha1",
    kind = "PieProbe",
    namespaced,
    status = "PieProbeStatus",
    shortname = "pp",
    category = "pie",
    doc = "PieProbe periodically provisions and mounts volumes of one StorageClass to verify it works end to end.",
    derive = "PartialEq",
    printcolumn(
        name = "StorageClass",
        type_ = "string",
        json_path = ".spec.monitoringStorageClass",
        description = "the StorageClass being probed"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes.probed",
        description = "nodes whose mount probe is active"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "whether the probe objects are in place"
    ),
    printcolumn(
        name = "Provision",
        type_ = "string",
        json_path = ".status.lastProvisionOutcome.result",
        description = "the last provision probe's outcome (OnTime, Late, NotStarted)"
    ),
    printcolumn(
        name = "Mount",
        type_ = "string",
        json_path = ".status.lastMountOutcome.result",
        description = "the last mount probe's outcome, on any node (OnTime, Late, NotStarted)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PieProbeSpec {
    /// Name of the StorageClass to probe. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("monitoringStorageClass is immutable"))]
    pub monitoring_storage_class: String,

    /// Nodes on which mount probes run, and where provision probe Pods may be scheduled.
    /// Terms are ORed, expressions within a term ANDed. Absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<NodeSelector>,

    /// Minutes between two probes of the same kind on the same node (1..59).
    #[serde(default = "default_probe_period")]
    #[schemars(range(min = 1, max = 59))]
    pub probe_period: i32,

    /// How long a probe Pod may take from creation to its container starting before the probe
    /// counts as late, as a Go duration string ("10s", "1m"). Must be shorter than probePeriod.
    #[serde(default = "default_probe_threshold")]
    pub probe_threshold: String,

    /// Size of every probe volume. Immutable.
    #[serde(default = "default_pvc_capacity")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("pvcCapacity is immutable"))]
    pub pvc_capacity: Quantity,

    /// Do not run the provision probe. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("disableProvisionProbe is immutable"))]
    pub disable_provision_probe: bool,

    /// Do not run mount probes. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("disableMountProbes is immutable"))]
    pub disable_mount_probes: bool,

    /// Resources of the probe containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Tolerations of the probe Pods (an addition to pie's fields). A node with a NoSchedule or
    /// NoExecute taint these do not tolerate is not eligible for mount probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// PriorityClass of the probe Pods (an addition to pie's fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

fn default_probe_period() -> i32 {
    1
}

fn default_probe_threshold() -> String {
    "1m".to_owned()
}

fn default_pvc_capacity() -> Quantity {
    Quantity("100Mi".to_owned())
}

/// Observed state of a PieProbe, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PieProbeStatus {
    /// `Ready` (probe objects in place) and `Degraded` (some selected nodes cannot be probed),
    /// each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Node counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,

    /// Selected nodes whose mount probe is suspended, with the reason (at most 20 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_nodes: Vec<SkippedNode>,

    /// The last outcome of the provision probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_provision_outcome: Option<ProbeOutcome>,

    /// The last outcome of any mount probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_mount_outcome: Option<ProbeOutcome>,
}

/// How many nodes the node selector matches, and how many of those are probed or skipped.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes matched by the node selector.
    pub selected: i32,
    /// Selected nodes with an active mount probe.
    pub probed: i32,
    /// Selected nodes whose mount probe is suspended (not eligible).
    pub skipped: i32,
}

/// A selected node whose mount probe is suspended.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedNode {
    /// Node name.
    pub name: String,
    /// Why it is not eligible, e.g. `NotReady`, `Unschedulable`, `Taint node.kubernetes.io/disk-pressure:NoSchedule`.
    pub reason: String,
}

/// The outcome of one probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeOutcome {
    /// When the outcome was decided.
    pub time: Time,
    /// Node of a mount probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Machine-readable result, e.g. `OnTime`, `Late`, `Failed`.
    pub result: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The CustomResourceDefinition as YAML, exactly as committed in `deploy/crd/`.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&PieProbe::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = include_str!("../../deploy/crd/pie.topolvm.io_pieprobes.yaml");

    #[test]
    fn committed_crd_matches_generated() {
        let generated = crd_yaml().unwrap();
        assert!(
            generated == COMMITTED,
            "deploy/crd/pie.topolvm.io_pieprobes.yaml is stale: run \
             `cargo run -p pie-controller -- crd > deploy/crd/pie.topolvm.io_pieprobes.yaml`"
        );
    }

    fn spec_schema() -> serde_json::Value {
        let crd = serde_json::to_value(PieProbe::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn schema_keeps_pies_defaults_ranges_and_immutability() {
        let spec = spec_schema();
        let p = &spec["properties"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["monitoringStorageClass"])
        );
        assert_eq!(p["probePeriod"]["default"], 1);
        assert_eq!(p["probePeriod"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(p["probePeriod"]["maximum"].as_f64(), Some(59.0));
        assert_eq!(p["probeThreshold"]["default"], "1m");
        assert_eq!(p["probeThreshold"]["type"], "string");
        assert_eq!(p["pvcCapacity"]["default"], "100Mi");
        assert_eq!(p["pvcCapacity"]["x-kubernetes-int-or-string"], true);
        assert_eq!(p["disableProvisionProbe"]["default"], false);
        assert_eq!(p["disableMountProbes"]["default"], false);
        for (field, message) in [
            (
                "monitoringStorageClass",
                "monitoringStorageClass is immutable",
            ),
            ("pvcCapacity", "pvcCapacity is immutable"),
            (
                "disableProvisionProbe",
                "disableProvisionProbe is immutable",
            ),
            ("disableMountProbes", "disableMountProbes is immutable"),
        ] {
            assert_eq!(
                p[field]["x-kubernetes-validations"],
                serde_json::json!([{"rule": "self == oldSelf", "message": message}]),
                "{field}"
            );
        }
        for field in [
            "nodeSelector",
            "resources",
            "tolerations",
            "priorityClassName",
        ] {
            assert!(p[field].is_object(), "{field} missing from the schema");
        }
    }

    #[test]
    fn pies_readme_example_deserializes_with_defaults() {
        let yaml = r#"
apiVersion: pie.topolvm.io/v1alpha1
kind: PieProbe
metadata: {name: test-pie-probe, namespace: pie}
spec:
  monitoringStorageClass: topolvm-provisioner
  probePeriod: 5
  probeThreshold: 10s
  nodeSelector:
    nodeSelectorTerms:
    - matchExpressions:
      - {key: node-role.kubernetes.io/role, operator: In, values: [compute]}
"#;
        let p: PieProbe = serde_norway::from_str(yaml).unwrap();
        assert_eq!(p.spec.monitoring_storage_class, "topolvm-provisioner");
        assert_eq!(p.spec.probe_period, 5);
        assert_eq!(p.spec.probe_threshold, "10s");
        assert_eq!(p.spec.pvc_capacity, Quantity("100Mi".into()));
        assert!(!p.spec.disable_mount_probes && !p.spec.disable_provision_probe);
        assert_eq!(p.spec.node_selector.unwrap().node_selector_terms.len(), 1);

        let minimal: PieProbe = serde_norway::from_str(
            "apiVersion: pie.topolvm.io/v1alpha1\nkind: PieProbe\nmetadata: {name: a}\nspec: {monitoringStorageClass: sc}\n",
        )
        .unwrap();
        assert_eq!(minimal.spec.probe_period, 1);
        assert_eq!(minimal.spec.probe_threshold, "1m");
    }

    #[test]
    fn printer_columns_and_short_name() {
        let crd = PieProbe::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["pp".to_owned()]));
        let cols: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            cols,
            [
                "StorageClass",
                "Nodes",
                "Ready",
                "Provision",
                "Mount",
                "Age"
            ]
        );
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
    }

    /// The CRD's CEL rules, evaluated locally with kube's `cel` feature (kube-cel): pie's
    /// immutability rules reject changes; mutable fields may change.
    #[test]
    fn cel_immutability_rules() {
        use kube::core::cel::validate_cel_update;
        let old: PieProbe = serde_norway::from_str(
            "apiVersion: pie.topolvm.io/v1alpha1\nkind: PieProbe\nmetadata: {name: a, namespace: pie}\n\
             spec: {monitoringStorageClass: sc, probePeriod: 5, probeThreshold: 10s}\n",
        )
        .unwrap();
        assert!(validate_cel_update(&old, &old).is_ok());
        type Change = fn(&mut PieProbeSpec);
        let cases: [(&str, Change, Option<&str>); 6] = [
            ("probePeriod", |s| s.probe_period = 10, None),
            ("probeThreshold", |s| s.probe_threshold = "20s".into(), None),
            (
                "monitoringStorageClass",
                |s| s.monitoring_storage_class = "other".into(),
                Some("monitoringStorageClass is immutable"),
            ),
            (
                "pvcCapacity",
                |s| s.pvc_capacity = Quantity("1Gi".into()),
                Some("pvcCapacity is immutable"),
            ),
            (
                "disableProvisionProbe",
                |s| s.disable_provision_probe = true,
                Some("disableProvisionProbe is immutable"),
            ),
            (
                "disableMountProbes",
                |s| s.disable_mount_probes = true,
                Some("disableMountProbes is immutable"),
            ),
        ];
        for (field, change, want) in cases {
            let mut new = old.clone();
            change(&mut new.spec);
            let got = validate_cel_update(&new, &old).err().map(|errors| {
                errors
                    .into_vec()
                    .into_iter()
                    .map(|e| e.message)
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            assert_eq!(got.as_deref(), want, "{field}");
        }
    }
}
