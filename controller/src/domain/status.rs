//! The PieProbe status the controller writes, computed from a plan (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{NodeCounts, PieProbe, PieProbeStatus, SkippedNode};
use crate::domain::plan::{Blocked, Plan};

/// Condition type: the probe objects are in place.
pub const READY: &str = "Ready";
/// Condition type: some selected nodes cannot run mount probes (their CronJobs are suspended).
pub const DEGRADED: &str = "Degraded";
/// At most this many skipped nodes are listed in the status.
pub const MAX_SKIPPED_LISTED: usize = 20;

/// The status for `probe` given its plan, keeping fields the reconciler does not own (the last
/// outcomes) and each condition's lastTransitionTime while its status does not change.
pub fn desired(probe: &PieProbe, plan: &Result<Plan, Blocked>, now: &Time) -> PieProbeStatus {
    let current = probe.status.clone().unwrap_or_default();
    let generation = probe.metadata.generation;
    let (ready, degraded, nodes, skipped_nodes) = match plan {
        Err(blocked) => (
            (false, blocked.reason(), blocked.to_string()),
            (
                "Unknown",
                blocked.reason(),
                "no probe objects are planned".to_owned(),
            ),
            None,
            Vec::new(),
        ),
        Ok(plan) => {
            let skipped: Vec<SkippedNode> = plan
                .nodes
                .iter()
                .filter_map(|n| {
                    Some(SkippedNode {
                        name: n.node.clone(),
                        reason: n.ineligible.as_ref()?.to_string(),
                    })
                })
                .collect();
            let selected = plan.nodes.len();
            let counts = NodeCounts {
                selected: count(selected),
                probed: count(selected - skipped.len()),
                skipped: count(skipped.len()),
            };
            let ready_message = format!(
                "{} CronJobs and {} PVCs in place; {} of {selected} selected nodes probed",
                plan.cron_job_count(),
                plan.pvc_count(),
                selected - skipped.len()
            );
            let degraded = if skipped.is_empty() {
                ("False", "AllNodesEligible", String::new())
            } else {
                let listed: Vec<String> = skipped
                    .iter()
                    .take(5)
                    .map(|s| format!("{} ({})", s.name, s.reason))
                    .collect();
                let more = if skipped.len() > 5 { ", ..." } else { "" };
                (
                    "True",
                    "NodesSkipped",
                    format!(
                        "{} of {selected} selected nodes skipped: {}{more}",
                        skipped.len(),
                        listed.join(", ")
                    ),
                )
            };
            let mut listed = skipped;
            listed.truncate(MAX_SKIPPED_LISTED);
            (
                (true, "Reconciled", ready_message),
                degraded,
                Some(counts),
                listed,
            )
        }
    };
    let ready_status = if ready.0 { "True" } else { "False" };
    let conditions = vec![
        condition(
            &current.conditions,
            READY,
            ready_status,
            ready.1,
            ready.2,
            generation,
            now,
        ),
        condition(
            &current.conditions,
            DEGRADED,
            degraded.0,
            degraded.1,
            degraded.2,
            generation,
            now,
        ),
    ];
    PieProbeStatus {
        conditions,
        observed_generation: generation,
        nodes,
        skipped_nodes,
        ..current
    }
}

/// `status` with `Ready=False`, reason `ApplyFailed`, when the API server refused some of the
/// planned objects: `failures` names each (`CronJob x: message`), the first three in the message.
pub fn with_apply_failures(
    mut status: PieProbeStatus,
    failures: &[String],
    generation: Option<i64>,
    now: &Time,
) -> PieProbeStatus {
    if failures.is_empty() {
        return status;
    }
    let mut message = failures
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if failures.len() > 3 {
        message.push_str(&format!("; and {} more", failures.len() - 3));
    }
    let ready = condition(
        &status.conditions,
        READY,
        "False",
        "ApplyFailed",
        message,
        generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, ready);
    status
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The Ready condition of a status, if any.
pub fn ready_condition(status: Option<&PieProbeStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == READY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::plan;
    use crate::fixtures::{NodeBuilder, PieProbeBuilder, config};
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn ready_and_degraded_from_a_plan() {
        let probe = PieProbeBuilder::new("p", "sc").build();
        let nodes = vec![
            NodeBuilder::new("a").build(),
            NodeBuilder::new("b").ready(false).build(),
        ];
        let s = desired(&probe, &plan(&probe, &nodes, true, &config()), &at(100));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(
            s.nodes,
            Some(NodeCounts {
                selected: 2,
                probed: 1,
                skipped: 1
            })
        );
        assert_eq!(
            s.skipped_nodes,
            [SkippedNode {
                name: "b".into(),
                reason: "NotReady".into()
            }]
        );
        let (r, d) = (&s.conditions[0], &s.conditions[1]);
        assert_eq!(
            (r.type_.as_str(), r.status.as_str(), r.reason.as_str()),
            ("Ready", "True", "Reconciled")
        );
        assert_eq!(
            r.message,
            "3 CronJobs and 2 PVCs in place; 1 of 2 selected nodes probed"
        );
        assert_eq!(
            (d.type_.as_str(), d.status.as_str(), d.reason.as_str()),
            ("Degraded", "True", "NodesSkipped")
        );
        assert_eq!(d.message, "1 of 2 selected nodes skipped: b (NotReady)");
    }

    #[test]
    fn blocked_plans_give_ready_false_with_the_reason() {
        let probe = PieProbeBuilder::new("p", "sc")
            .spec(|s| s.probe_threshold = "2m".into())
            .build();
        let s = desired(
            &probe,
            &plan(
                &probe,
                &[] as &[crate::domain::node_facts::NodeFacts],
                true,
                &config(),
            ),
            &at(100),
        );
        let r = &s.conditions[0];
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(
            r.message,
            "probePeriod (1m) must not be shorter than probeThreshold (2m)"
        );
        assert_eq!(s.nodes, None);

        let probe = PieProbeBuilder::new("p", "gone").build();
        let s = desired(
            &probe,
            &plan(
                &probe,
                &[] as &[crate::domain::node_facts::NodeFacts],
                false,
                &config(),
            ),
            &at(100),
        );
        assert_eq!(s.conditions[0].reason, "StorageClassNotFound");
        assert_eq!(s.conditions[0].message, "StorageClass gone not found");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut probe = PieProbeBuilder::new("p", "sc").build();
        let nodes = vec![NodeBuilder::new("a").build()];
        let first = desired(&probe, &plan(&probe, &nodes, true, &config()), &at(100));
        probe.status = Some(first.clone());
        // Same inputs later: identical status, so nothing needs writing.
        let again = desired(&probe, &plan(&probe, &nodes, true, &config()), &at(200));
        assert_eq!(first, again);
        // Ready flips to False: its transition time moves.
        let blocked = desired(&probe, &plan(&probe, &nodes, false, &config()), &at(300));
        assert_eq!(blocked.conditions[0].last_transition_time, at(300));
        // A new message with the same status keeps the time.
        probe.status = Some(blocked);
        let nodes2 = vec![NodeBuilder::new("a").build(), NodeBuilder::new("b").build()];
        let back = desired(&probe, &plan(&probe, &nodes2, true, &config()), &at(400));
        assert_eq!(back.conditions[0].last_transition_time, at(400));
        probe.status = Some(back);
        let more = desired(&probe, &plan(&probe, &nodes, true, &config()), &at(500));
        assert_eq!(more.conditions[0].last_transition_time, at(400));
        assert_ne!(
            more.conditions[0].message,
            probe.status.as_ref().unwrap().conditions[0].message
        );
    }

    #[test]
    fn outcomes_written_by_others_are_kept() {
        let mut probe = PieProbeBuilder::new("p", "sc").build();
        let outcome = crate::crd::ProbeOutcome {
            time: at(1),
            node: None,
            result: "OnTime".into(),
            message: String::new(),
        };
        probe.status = Some(PieProbeStatus {
            last_provision_outcome: Some(outcome.clone()),
            ..Default::default()
        });
        let s = desired(
            &probe,
            &plan(
                &probe,
                &[] as &[crate::domain::node_facts::NodeFacts],
                true,
                &config(),
            ),
            &at(2),
        );
        assert_eq!(s.last_provision_outcome, Some(outcome));
    }
}
