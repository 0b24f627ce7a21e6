//! Whether a selected node can run a mount probe now.
//!
//! pie raised false alarms on nodes that could not run its Pods. A node that is NotReady,
//! cordoned, or carries a NoSchedule/NoExecute taint the probe Pods do not tolerate keeps its PVC
//! but gets its mount CronJob suspended until it is eligible again.

use std::fmt;

use k8s_openapi::api::core::v1::Toleration;

use crate::domain::node_facts::{NodeFacts, NodeTaint};

/// Why a node cannot run mount probes now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// The node's `Ready` condition is not `True` (or missing).
    NotReady,
    /// The node is cordoned (`spec.unschedulable`).
    Unschedulable,
    /// A NoSchedule/NoExecute taint that the probe Pods do not tolerate.
    Taint {
        /// Taint key.
        key: String,
        /// Taint effect.
        effect: String,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::NotReady => f.write_str("NotReady"),
            Ineligible::Unschedulable => f.write_str("Unschedulable"),
            Ineligible::Taint { key, effect } => write!(f, "Taint {key}:{effect}"),
        }
    }
}

/// Whether `node` is eligible for probe Pods carrying `tolerations`; the first reason if not.
pub fn check(node: &NodeFacts, tolerations: &[Toleration]) -> Result<(), Ineligible> {
    if !node.is_ready() {
        return Err(Ineligible::NotReady);
    }
    if node.unschedulable() {
        return Err(Ineligible::Unschedulable);
    }
    // NodeFacts keeps only the NoSchedule and NoExecute taints: each one blocks.
    for taint in node.taints() {
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err(Ineligible::Taint {
                key: taint.key.to_string(),
                effect: taint.effect.to_string(),
            });
        }
    }
    Ok(())
}

/// Kubernetes toleration matching: effect (empty = all), key (empty with `Exists` = all keys),
/// operator `Exists` or `Equal` (default) on the value.
pub fn tolerates(toleration: &Toleration, taint: &NodeTaint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != &*taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != &*taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::NodeBuilder;

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    type Case = (
        &'static str,
        NodeFacts,
        Vec<Toleration>,
        Result<(), Ineligible>,
    );

    #[test]
    fn eligibility_table() {
        let disk = tol(
            Some("disk"),
            Some("Equal"),
            Some("slow"),
            Some("NoSchedule"),
        );
        let cases: Vec<Case> = vec![
            ("ready", NodeBuilder::new("n").build(), vec![], Ok(())),
            (
                "not ready",
                NodeBuilder::new("n").ready(false).build(),
                vec![],
                Err(Ineligible::NotReady),
            ),
            (
                "no status",
                NodeBuilder::new("n").no_status().build(),
                vec![],
                Err(Ineligible::NotReady),
            ),
            (
                "cordoned",
                NodeBuilder::new("n").unschedulable().build(),
                vec![],
                Err(Ineligible::Unschedulable),
            ),
            (
                "not ready wins over cordon",
                NodeBuilder::new("n").ready(false).unschedulable().build(),
                vec![],
                Err(Ineligible::NotReady),
            ),
            (
                "NoSchedule taint",
                NodeBuilder::new("n")
                    .taint("disk", Some("slow"), "NoSchedule")
                    .build(),
                vec![],
                Err(Ineligible::Taint {
                    key: "disk".into(),
                    effect: "NoSchedule".into(),
                }),
            ),
            (
                "NoExecute taint",
                NodeBuilder::new("n")
                    .taint("maint", None, "NoExecute")
                    .build(),
                vec![],
                Err(Ineligible::Taint {
                    key: "maint".into(),
                    effect: "NoExecute".into(),
                }),
            ),
            (
                "PreferNoSchedule is ignored",
                NodeBuilder::new("n")
                    .taint("soft", None, "PreferNoSchedule")
                    .build(),
                vec![],
                Ok(()),
            ),
            (
                "tolerated by Equal",
                NodeBuilder::new("n")
                    .taint("disk", Some("slow"), "NoSchedule")
                    .build(),
                vec![disk.clone()],
                Ok(()),
            ),
            (
                "Equal with another value does not tolerate",
                NodeBuilder::new("n")
                    .taint("disk", Some("fast"), "NoSchedule")
                    .build(),
                vec![disk],
                Err(Ineligible::Taint {
                    key: "disk".into(),
                    effect: "NoSchedule".into(),
                }),
            ),
            (
                "Exists on the key",
                NodeBuilder::new("n")
                    .taint("disk", Some("any"), "NoExecute")
                    .build(),
                vec![tol(Some("disk"), Some("Exists"), None, None)],
                Ok(()),
            ),
            (
                "toleration for another effect",
                NodeBuilder::new("n")
                    .taint("disk", None, "NoExecute")
                    .build(),
                vec![tol(Some("disk"), Some("Exists"), None, Some("NoSchedule"))],
                Err(Ineligible::Taint {
                    key: "disk".into(),
                    effect: "NoExecute".into(),
                }),
            ),
            (
                "empty key with Exists tolerates everything",
                NodeBuilder::new("n")
                    .taint("a", None, "NoSchedule")
                    .taint("b", Some("x"), "NoExecute")
                    .build(),
                vec![tol(None, Some("Exists"), None, None)],
                Ok(()),
            ),
            (
                "second taint untolerated",
                NodeBuilder::new("n")
                    .taint("a", None, "NoSchedule")
                    .taint("b", None, "NoSchedule")
                    .build(),
                vec![tol(Some("a"), Some("Exists"), None, None)],
                Err(Ineligible::Taint {
                    key: "b".into(),
                    effect: "NoSchedule".into(),
                }),
            ),
        ];
        for (name, node, tolerations, want) in cases {
            assert_eq!(check(&node, &tolerations), want, "{name}");
        }
    }

    #[test]
    fn reasons_render_for_status() {
        assert_eq!(Ineligible::NotReady.to_string(), "NotReady");
        assert_eq!(
            Ineligible::Taint {
                key: "k".into(),
                effect: "NoExecute".into()
            }
            .to_string(),
            "Taint k:NoExecute"
        );
    }
}
