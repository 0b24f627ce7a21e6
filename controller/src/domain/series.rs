//! The series the plan implies (`run` only): `pie_node_eligible` from the plan, both
//! `on_time`/`succeed` values at 0 for every probe (so `increase()` sees the first failure),
//! `pie_controller_leader`, and which series go (with a stale marker each) when their PieProbe
//! or node does. Pure: `apps::run` applies them to the store before every periodic push.

use std::collections::BTreeSet;

use crate::domain::outcome::machine::{ProbeKind, zero_updates};
use crate::domain::plan::NodeEligibility;
use crate::metrics::catalogue::{self, Family, Op, Probe, Update};

/// One existing PieProbe, as far as its series go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedProbe {
    /// Its name (`pie_probe_name`).
    pub name: String,
    /// Its StorageClass.
    pub storage_class: String,
    /// Its provision probe is enabled.
    pub provision: bool,
    /// The reconciler has planned it in this term of leadership: its nodes in
    /// [`Planned::nodes`] are known. Until then the series naming its nodes stay (a new leader
    /// counts the probes it finds before its first reconcile, and those counters must not be
    /// ended with a staleness marker a moment after they were recorded).
    pub nodes_known: bool,
}

/// What the sync knows: every existing PieProbe, and the nodes of those with mount probes.
/// A PieProbe without mount probes has no nodes but keeps its provision series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Planned {
    /// Every existing PieProbe.
    pub probes: Vec<PlannedProbe>,
    /// Per-node eligibility of the mount probes.
    pub nodes: Vec<NodeEligibility>,
}

/// The updates that keep the store in step with the plan: eligibility gauges, zero series,
/// and the leader gauge. Made one at a time as the store applies them: at 5,000 nodes x 3
/// PieProbes they are 75,000, and building them all first held about 12 MB of labels every
/// push interval, on top of what the store keeps (heap profile, docs/benchmarks.md).
pub fn sync_updates(
    planned: &Planned,
    leader: bool,
    now_ms: i64,
) -> impl Iterator<Item = Update> + '_ {
    let mounts = planned.nodes.iter().flat_map(move |e| {
        let probe = Probe::mount(&e.pie_probe, &e.node, &e.storage_class);
        let eligible = catalogue::probe_gauge(&catalogue::NODE_ELIGIBLE, probe, e.gauge(), now_ms);
        let zeros = zero_updates(
            ProbeKind::Mount,
            &e.pie_probe,
            &e.node,
            &e.storage_class,
            now_ms,
        );
        let performance = [true, false]
            .map(|succeed| catalogue::performance_total(probe, succeed, Op::Ensure, now_ms));
        std::iter::once(eligible).chain(zeros).chain(performance)
    });
    let provisions = planned
        .probes
        .iter()
        .filter(|p| p.provision)
        .flat_map(move |p| {
            let (probe, sc) = (p.name.as_str(), p.storage_class.as_str());
            let deletes = [true, false].map(|on_time| {
                catalogue::volume_delete_total(
                    Probe::provision(probe, sc),
                    on_time,
                    Op::Ensure,
                    now_ms,
                )
            });
            zero_updates(ProbeKind::Provision, probe, "", sc, now_ms)
                .into_iter()
                .chain(deletes)
        });
    std::iter::once(catalogue::leader(leader, now_ms))
        .chain(mounts)
        .chain(provisions)
}

/// Whether a series stays: series without `pie_probe_name` always do; the others while their
/// PieProbe exists, and, when they name a node of a mount probe, while that node is selected
/// by it or the PieProbe is not planned yet (provision probes' node labels only need the
/// PieProbe).
pub fn keep(planned: &Planned) -> impl Fn(&Family, &[(&str, &str)]) -> bool + '_ {
    let probes: BTreeSet<(&str, &str)> = planned
        .probes
        .iter()
        .map(|p| (p.name.as_str(), p.storage_class.as_str()))
        .collect();
    let unplanned: BTreeSet<(&str, &str)> = planned
        .probes
        .iter()
        .filter(|p| !p.nodes_known)
        .map(|p| (p.name.as_str(), p.storage_class.as_str()))
        .collect();
    move |_, labels| {
        let get = |name: &str| labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let Some(probe) = get("pie_probe_name") else {
            return true;
        };
        let sc = get("storage_class").unwrap_or_default();
        if !probes.contains(&(probe, sc)) {
            return false;
        }
        let node = get("node").unwrap_or_default();
        let provision = get("probe") == Some("provision");
        node.is_empty()
            || provision
            || unplanned.contains(&(probe, sc))
            || planned
                .nodes
                .iter()
                .any(|e| e.pie_probe == probe && e.storage_class == sc && e.node == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::Ineligible;
    use crate::metrics::store::{Store, Value};

    fn planned(nodes: &[NodeEligibility]) -> Planned {
        Planned {
            probes: vec![PlannedProbe {
                name: "p".into(),
                storage_class: "sc".into(),
                provision: true,
                nodes_known: true,
            }],
            nodes: nodes.to_vec(),
        }
    }

    fn elig(node: &str, ineligible: Option<Ineligible>) -> NodeEligibility {
        NodeEligibility {
            pie_probe: "p".into(),
            namespace: "pie".into(),
            node: node.into(),
            storage_class: "sc".into(),
            ineligible,
        }
    }

    #[test]
    fn sync_exports_eligibility_and_zero_series() {
        let store = Store::new();
        let plan = [elig("n1", None), elig("n2", Some(Ineligible::NotReady))];
        let (_, errors) = store.apply(sync_updates(&planned(&plan), true, 1));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            store.get(&catalogue::NODE_ELIGIBLE, &["p", "n1", "sc"]),
            Some(Value::Scalar(1.0))
        );
        assert_eq!(
            store.get(&catalogue::NODE_ELIGIBLE, &["p", "n2", "sc"]),
            Some(Value::Scalar(0.0))
        );
        for v in ["true", "false"] {
            assert!(
                store
                    .get(&catalogue::MOUNT_TOTAL, &["p", "n2", "sc", v])
                    .is_some()
            );
            assert!(
                store
                    .get(&catalogue::PROVISION_TOTAL, &["p", "sc", v])
                    .is_some()
            );
            assert!(
                store
                    .get(&catalogue::PERFORMANCE_TOTAL, &["p", "n1", "sc", v])
                    .is_some()
            );
            assert!(
                store
                    .get(&catalogue::VOLUME_DELETE_TOTAL, &["p", "sc", v])
                    .is_some()
            );
        }
        assert_eq!(store.get(&catalogue::LEADER, &[]), Some(Value::Scalar(1.0)));
    }

    #[test]
    fn series_of_deleted_nodes_and_probes_go_stale() {
        let store = Store::new();
        let before = [elig("n1", None), elig("n2", None)];
        store.apply(sync_updates(&planned(&before), true, 1));
        store.apply([Update::new(
            &catalogue::FAILURES_TOTAL,
            ["p", "n9", "sc", "provision", "timeout"],
            Op::Inc(1.0),
            1,
        )]);
        let after = planned(&[elig("n1", None)]);
        let stale = store.retain(2, keep(&after));
        let names: BTreeSet<String> = stale.iter().map(|(s, _)| s.to_string()).collect();
        assert!(
            names.iter().all(|s| s.contains(r#"node="n2""#)),
            "{names:?}"
        );
        // n2's gauge, its two mount counters and its two performance counters.
        assert_eq!(stale.len(), 5, "{names:?}");
        assert!(
            store
                .get(
                    &catalogue::FAILURES_TOTAL,
                    &["p", "n9", "sc", "provision", "timeout"]
                )
                .is_some(),
            "provision series keep their node"
        );
        let stale = store.retain(3, keep(&Planned::default()));
        assert!(stale.len() > 5);
        assert_eq!(store.len(), 1, "only the leader gauge is left");
    }

    /// A PieProbe with mount probes disabled has no nodes: its provision series must stay. The
    /// real cluster showed them marked stale at every periodic push.
    #[test]
    fn a_pieprobe_without_mount_probes_keeps_its_provision_series() {
        let store = Store::new();
        let only_provision = planned(&[]);
        store.apply(sync_updates(&only_provision, true, 1));
        store.apply([Update::new(
            &catalogue::PROVISION_TOTAL,
            ["p", "sc", "false"],
            Op::Inc(1.0),
            2,
        )]);
        assert!(store.retain(3, keep(&only_provision)).is_empty());
        assert_eq!(
            store.get(&catalogue::PROVISION_TOTAL, &["p", "sc", "false"]),
            Some(Value::Scalar(1.0))
        );
        // A PieProbe not planned yet in this term keeps the series of its nodes.
        let store = Store::new();
        store.apply([Update::new(
            &catalogue::MOUNT_TOTAL,
            ["p", "n1", "sc", "true"],
            Op::Inc(1.0),
            1,
        )]);
        let mut unplanned = planned(&[]);
        unplanned.probes[0].nodes_known = false;
        assert!(store.retain(2, keep(&unplanned)).is_empty());
        assert_eq!(store.retain(3, keep(&planned(&[]))).len(), 1);
        // A PieProbe with its provision probe disabled gets no zero provision series.
        let store = Store::new();
        let mut no_provision = planned(&[elig("n1", None)]);
        no_provision.probes[0].provision = false;
        store.apply(sync_updates(&no_provision, true, 1));
        assert_eq!(
            store.get(&catalogue::PROVISION_TOTAL, &["p", "sc", "true"]),
            None
        );
    }
}
