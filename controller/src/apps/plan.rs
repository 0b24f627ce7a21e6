//! `pie-controller plan`: the reconciler's desired state computed from files, without a cluster.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::crd::PieProbe;
use crate::domain::node_facts::NodeFacts;
use crate::domain::plan::{self, Config};
use crate::error::{Error, Result};

/// Reads objects of one kind from YAML: multi-document, and/or `List`s with `items`
/// (as `kubectl get -o yaml` prints them). Documents of other kinds are ignored.
pub fn parse_objects<T: DeserializeOwned>(yaml: &str, kind: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc)?;
        collect(value, kind, &mut out)?;
    }
    Ok(out)
}

/// The Nodes in `yaml` (as [`parse_objects`] reads them), as the controller keeps them.
fn parse_nodes(yaml: &str) -> Result<Vec<NodeFacts>> {
    let nodes = parse_objects::<Node>(yaml, "Node")?;
    Ok(nodes.iter().map(NodeFacts::from).collect())
}

fn collect<T: DeserializeOwned>(
    value: serde_json::Value,
    kind: &str,
    out: &mut Vec<T>,
) -> Result<()> {
    match value.get("kind").and_then(|k| k.as_str()) {
        Some(k) if k == kind => out.push(serde_json::from_value(value)?),
        Some(k) if k == "List" || k.ends_with("List") => {
            if let Some(serde_json::Value::Array(items)) = value.get("items") {
                for item in items {
                    let mut item = item.clone();
                    // `kubectl get -o yaml` lists keep kind on each item; typed lists may not.
                    if item.get("kind").is_none() && k == format!("{kind}List") {
                        item["kind"] = kind.into();
                    }
                    collect(item, kind, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The plan for every PieProbe in `probes_yaml`, rendered as multi-document YAML: first a
/// comment block per PieProbe (skipped nodes with their reason, or why nothing is planned), then
/// the objects `run` would apply. `storage_classes_yaml`: `None` means every StorageClass exists.
/// Fails after rendering when any PieProbe is blocked (invalid spec, missing StorageClass).
pub fn render(
    probes_yaml: &str,
    nodes_yaml: &str,
    storage_classes_yaml: Option<&str>,
    config: &Config,
) -> Result<(String, Vec<String>)> {
    let mut probes: Vec<PieProbe> = parse_objects(probes_yaml, "PieProbe")?;
    if probes.is_empty() {
        return Err(Error::Input("no PieProbe in the input".into()));
    }
    let nodes = parse_nodes(nodes_yaml)?;
    let classes: Option<BTreeSet<String>> = storage_classes_yaml
        .map(|y| parse_objects::<StorageClass>(y, "StorageClass"))
        .transpose()?
        .map(|scs| scs.iter().map(|s| s.name_any()).collect());
    let mut out = String::new();
    let mut blocked = Vec::new();
    for probe in &mut probes {
        if probe.metadata.namespace.is_none() {
            probe.metadata.namespace = Some("default".into());
        }
        let id = format!(
            "{}/{}",
            probe.namespace().unwrap_or_default(),
            probe.name_any()
        );
        let sc_exists = classes
            .as_ref()
            .is_none_or(|c| c.contains(&probe.spec.monitoring_storage_class));
        match plan::plan(probe, &nodes, sc_exists, config) {
            Err(b) => {
                writeln!(out, "# PieProbe {id}: nothing planned: {}: {b}", b.reason()).ok();
                blocked.push(format!("{id}: {}: {b}", b.reason()));
            }
            Ok(p) => {
                let skipped: Vec<_> = p.nodes.iter().filter(|n| n.ineligible.is_some()).collect();
                writeln!(
                    out,
                    "# PieProbe {id}: {} nodes selected, {} probed, {} skipped",
                    p.nodes.len(),
                    p.nodes.len() - skipped.len(),
                    skipped.len()
                )
                .ok();
                for n in skipped {
                    let reason = n
                        .ineligible
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "#   skipped {} (mount CronJob suspended): {reason}",
                        n.node
                    )
                    .ok();
                }
                for cj in p.desired_cron_jobs() {
                    push_doc(&mut out, &cj.build())?;
                }
                for pvc in p.desired_pvcs() {
                    push_doc(&mut out, &pvc.build())?;
                }
            }
        }
    }
    Ok((out, blocked))
}

fn push_doc<T: serde::Serialize>(out: &mut String, value: &T) -> Result<()> {
    out.push_str("---\n");
    out.push_str(&serde_norway::to_string(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::config;
    use pie_api::names;

    const PROBE: &str = include_str!("../../examples/pieprobe.yaml");
    const NODES: &str = include_str!("../../examples/nodes.yaml");
    const CLASSES: &str = include_str!("../../examples/storageclasses.yaml");

    #[test]
    fn example_plan_lists_objects_and_skipped_nodes() {
        let (yaml, blocked) = render(PROBE, NODES, Some(CLASSES), &config()).unwrap();
        assert!(blocked.is_empty());
        assert!(
            yaml.starts_with(
                "# PieProbe pie/test-pie-probe: 2 nodes selected, 1 probed, 1 skipped\n"
            )
        );
        assert!(yaml.contains("#   skipped worker-2 (mount CronJob suspended): Unschedulable\n"));
        let cron_jobs: Vec<k8s_openapi::api::batch::v1::CronJob> =
            parse_objects(&yaml, "CronJob").unwrap();
        let pvcs: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            parse_objects(&yaml, "PersistentVolumeClaim").unwrap();
        let (p, sc) = ("test-pie-probe", "topolvm-provisioner");
        let cj_names: Vec<_> = cron_jobs.iter().map(|c| c.name_any()).collect();
        assert_eq!(
            cj_names,
            [
                names::provision_cronjob(p, sc),
                names::mount_cronjob(p, "worker-1", sc),
                names::mount_cronjob(p, "worker-2", sc)
            ]
        );
        assert_eq!(pvcs.len(), 2);
        // The printed objects are exactly what the reconciler applies, desired-hash included.
        let probe: PieProbe = parse_objects(PROBE, "PieProbe").unwrap().remove(0);
        let nodes = parse_nodes(NODES).unwrap();
        let plan = plan::plan(&probe, &nodes, true, &config()).unwrap();
        assert_eq!(cron_jobs[1], plan.cron_jobs()[1]);
    }

    #[test]
    fn nodes_as_list_single_or_multi_document() {
        let single = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n";
        let multi = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\n";
        let typed_list = "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: a}\n";
        for (yaml, want) in [(single, 1), (multi, 2), (typed_list, 1), (NODES, 3)] {
            assert_eq!(
                parse_objects::<Node>(yaml, "Node").unwrap().len(),
                want,
                "{yaml}"
            );
        }
    }

    #[test]
    fn blocked_probes_are_reported() {
        let (yaml, blocked) = render(PROBE, NODES, Some(""), &config()).unwrap();
        assert_eq!(
            blocked,
            [
                "pie/test-pie-probe: StorageClassNotFound: StorageClass topolvm-provisioner not found"
            ]
        );
        assert!(!yaml.contains("---"));
        let invalid = PROBE.replace("probeThreshold: 10s", "probeThreshold: 6m");
        let (_, blocked) = render(&invalid, NODES, None, &config()).unwrap();
        assert_eq!(
            blocked,
            [
                "pie/test-pie-probe: InvalidSpec: probePeriod (5m) must not be shorter than probeThreshold (6m)"
            ]
        );
        assert!(
            render(NODES, NODES, None, &config()).is_err(),
            "no PieProbe in the input"
        );
    }
}
