//! `run` mode's metrics side: the receiver (TokenReview auth, only probes this controller
//! manages), `/metrics`, the periodic push, and the store kept in step with the PieProbes:
//! `pie_node_eligible` from the plan, both `on_time`/`succeed` values at 0 for every probe, and
//! the series of deleted PieProbes and nodes removed with a stale marker each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use pie_api::ProbeKey;

use crate::auth::TokenReviewAuth;
use crate::health::{Health, parse_addr};
use crate::outcome::machine::{ProbeKind, zero_updates};
use crate::plan::NodeEligibility;
use crate::push::{PushArgs, Pusher, now_ms};
use crate::receive::{ListenArgs, ReceiveError, serve_metrics};
use crate::receiver::{self, Receiver, Targets};
use crate::run::Handles;
use crate::store::{self, Family, Op, Store, Update};

/// The mount probes of the PieProbes this replica reconciles.
#[derive(Debug, Clone)]
pub struct ManagedTargets {
    handles: Handles,
    health: Arc<Health>,
}

impl Targets for ManagedTargets {
    fn contains(&self, triple: &ProbeKey) -> bool {
        self.handles.node_eligibility().iter().any(|e| {
            e.pie_probe == triple.pie_probe_name
                && e.node == triple.node
                && e.storage_class == triple.storage_class
        })
    }

    fn ready(&self) -> bool {
        self.health.ready()
    }
}

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

/// Starts the receiver, `/metrics`, the periodic push and the store sync for `run`; returns the
/// pusher (for outcomes and reconcile counts).
pub async fn start(
    listen: &ListenArgs,
    push: &PushArgs,
    client: kube::Client,
    handles: Handles,
    health: Arc<Health>,
) -> Result<Pusher, ReceiveError> {
    let pusher = Pusher::new(push, Arc::new(Store::new()))?;
    serve_metrics(listen.metrics_addr.as_deref(), &pusher).await?;
    let addr = parse_addr(&listen.listen).map_err(|source| ReceiveError::Addr {
        flag: "--listen",
        addr: listen.listen.clone(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ReceiveError::Io {
            what: "binding the receiver on",
            addr,
            source,
        })?;
    info!(%addr, "receiving results");
    let receiver = Receiver {
        pusher: pusher.clone(),
        auth: Arc::new(TokenReviewAuth::new(client)),
        targets: Arc::new(ManagedTargets {
            handles: handles.clone(),
            health: health.clone(),
        }),
    };
    tokio::spawn(async move {
        if let Err(e) = receiver::serve(listener, receiver, std::future::pending()).await {
            tracing::error!(error = %e, "results receiver stopped");
        }
    });
    tokio::spawn(sync_loop(
        pusher.clone(),
        handles,
        health,
        push.push_interval,
    ));
    Ok(pusher)
}

async fn sync_loop(pusher: Pusher, handles: Handles, health: Arc<Health>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let leader = health.ready();
        if leader {
            let eligibility = handles.node_eligibility();
            pusher.record(sync_updates(&eligibility, true, now_ms()));
            let removed = pusher.remove(keep(&eligibility));
            if removed > 0 {
                info!(
                    series = removed,
                    "removed series of deleted PieProbes or nodes"
                );
            }
        } else {
            pusher.record(sync_updates(&[], false, now_ms()));
        }
        pusher.push_all(now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Ineligible;
    use crate::store::Value;

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
}
