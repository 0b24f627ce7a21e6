//! The store kept in step with the PieProbes (`run` only): `pie_node_eligible` from the plan,
//! both `on_time`/`succeed` values at 0 for every probe (so `increase()` sees the first
//! failure), the series of deleted PieProbes and nodes removed with a stale marker each, and
//! `pie_controller_leader`.

use std::collections::BTreeSet;

use tracing::info;

use crate::domain::outcome::machine::{ProbeKind, zero_updates};
use crate::domain::plan::NodeEligibility;
use crate::metrics::push::{Pusher, now_ms};
use crate::metrics::store::{self, Family, Op, Update};

/// The updates that keep the store in step with the plan: eligibility gauges, zero series,
/// and the leader gauge.
pub fn sync_updates(eligibility: &[NodeEligibility], leader: bool, now_ms: i64) -> Vec<Update> {
    let mut updates = vec![Update::new(
        &store::LEADER,
        Vec::<String>::new(),
        Op::Set(if leader { 1.0 } else { 0.0 }),
        now_ms,
    )];
    let mut probes = BTreeSet::new();
    for e in eligibility {
        let probe = [e.pie_probe.as_str(), &e.node, &e.storage_class];
        updates.push(Update::new(
            &store::NODE_ELIGIBLE,
            probe,
            Op::Set(e.gauge()),
            now_ms,
        ));
        updates.extend(zero_updates(
            ProbeKind::Mount,
            &e.pie_probe,
            &e.node,
            &e.storage_class,
            now_ms,
        ));
        for succeed in ["true", "false"] {
            updates.push(Update::new(
                &store::PERFORMANCE_TOTAL,
                [probe[0], probe[1], probe[2], succeed],
                Op::Ensure,
                now_ms,
            ));
        }
        probes.insert((e.pie_probe.as_str(), e.storage_class.as_str()));
    }
    for (probe, sc) in probes {
        updates.extend(zero_updates(ProbeKind::Provision, probe, "", sc, now_ms));
        for on_time in ["true", "false"] {
            updates.push(Update::new(
                &store::VOLUME_DELETE_TOTAL,
                [probe, sc, on_time],
                Op::Ensure,
                now_ms,
            ));
        }
    }
    updates
}

/// Whether a series stays: series without `pie_probe_name` always do; the others while their
/// PieProbe exists, and, when they name a node, while that node is selected by it (provision
/// probes' node labels only need the PieProbe).
pub fn keep(eligibility: &[NodeEligibility]) -> impl Fn(&Family, &[(&str, &str)]) -> bool + '_ {
    move |_, labels| {
        let get = |name: &str| labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let Some(probe) = get("pie_probe_name") else {
            return true;
        };
        let sc = get("storage_class").unwrap_or_default();
        let node = get("node").unwrap_or_default();
        let provision = get("probe") == Some("provision");
        eligibility.iter().any(|e| {
            e.pie_probe == probe
                && e.storage_class == sc
                && (node.is_empty() || provision || e.node == node)
        })
    }
}

/// One periodic sync before the whole store is pushed. `leader`: this replica holds the Lease
/// (the `pie_controller_leader` gauge). `eligibility`: the plan, once this replica leads with
/// synced caches; `None` before (an unsynced plan would look like every PieProbe deleted),
/// and then nothing but the leader gauge changes.
pub fn sync(pusher: &Pusher, leader: bool, eligibility: Option<&[NodeEligibility]>) {
    let now = now_ms();
    let Some(eligibility) = eligibility else {
        pusher.record(sync_updates(&[], leader, now));
        return;
    };
    pusher.record(sync_updates(eligibility, leader, now));
    let removed = pusher.remove(keep(eligibility));
    if removed > 0 {
        info!(
            series = removed,
            "removed series of deleted PieProbes or nodes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::Ineligible;
    use crate::metrics::store::{Store, Value};

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
        let (_, errors) = store.apply(sync_updates(&plan, true, 1));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            store.get(&store::NODE_ELIGIBLE, &["p", "n1", "sc"]),
            Some(Value::Scalar(1.0))
        );
        assert_eq!(
            store.get(&store::NODE_ELIGIBLE, &["p", "n2", "sc"]),
            Some(Value::Scalar(0.0))
        );
        for v in ["true", "false"] {
            assert!(
                store
                    .get(&store::MOUNT_TOTAL, &["p", "n2", "sc", v])
                    .is_some()
            );
            assert!(
                store
                    .get(&store::PROVISION_TOTAL, &["p", "sc", v])
                    .is_some()
            );
            assert!(
                store
                    .get(&store::PERFORMANCE_TOTAL, &["p", "n1", "sc", v])
                    .is_some()
            );
            assert!(
                store
                    .get(&store::VOLUME_DELETE_TOTAL, &["p", "sc", v])
                    .is_some()
            );
        }
        assert_eq!(store.get(&store::LEADER, &[]), Some(Value::Scalar(1.0)));
    }

    #[test]
    fn series_of_deleted_nodes_and_probes_go_stale() {
        let store = Store::new();
        let before = [elig("n1", None), elig("n2", None)];
        store.apply(sync_updates(&before, true, 1));
        store.apply([Update::new(
            &store::FAILURES_TOTAL,
            ["p", "n9", "sc", "provision", "timeout"],
            Op::Inc(1.0),
            1,
        )]);
        let after = [elig("n1", None)];
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
                    &store::FAILURES_TOTAL,
                    &["p", "n9", "sc", "provision", "timeout"]
                )
                .is_some(),
            "provision series keep their node"
        );
        let stale = store.retain(3, keep(&[]));
        assert!(stale.len() > 5);
        assert_eq!(store.len(), 1, "only the leader gauge is left");
    }

    #[test]
    fn the_leader_gauge_follows_the_lease_before_caches_sync() {
        let pusher = Pusher::without_client(std::sync::Arc::new(Store::new()));
        let plan = [elig("n1", None)];
        sync(&pusher, true, Some(&plan));
        assert!(pusher.store().len() > 1);
        // Leading, caches not synced yet: the gauge says leader, nothing is removed.
        let before = pusher.store().len();
        sync(&pusher, true, None);
        assert_eq!(pusher.store().len(), before);
        assert_eq!(
            pusher.store().get(&store::LEADER, &[]),
            Some(Value::Scalar(1.0))
        );
        // The Lease is lost.
        sync(&pusher, false, None);
        assert_eq!(
            pusher.store().get(&store::LEADER, &[]),
            Some(Value::Scalar(0.0))
        );
    }
}
