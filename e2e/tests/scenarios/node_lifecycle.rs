//! Scenario 5, nodes NotReady, cordoned, tainted: each node's mount CronJob is suspended,
//! `pie_node_eligible` is 0 and the PieProbe's status says why (skippedNodes), no failure is
//! counted and no alert becomes active; back to Ready, uncordoned, untainted, the CronJobs are
//! resumed and the next probes are on time.

use std::time::Duration;

use e2e::cluster::LOCAL_STORAGE_CLASS;
use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

const PROBE: &str = "lifecycle";

/// Whether `node`'s mount CronJob is suspended (`None`: it does not exist).
async fn suspended(s: &Scenario, node: &str) -> Option<bool> {
    let name = names::mount_cronjob(PROBE, node, LOCAL_STORAGE_CLASS);
    s.cron_jobs(PROBE)
        .await
        .get(&name)
        .and_then(|c| c.spec.as_ref())
        .map(|spec| spec.suspend == Some(true))
}

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "node-lifecycle").await;
    let nodes = env.group("lifecycle");
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 1, "probeThreshold": "20s",
            "nodeSelector": group_selector("lifecycle"),
        }),
    )
    .await;
    for node in nodes {
        s.wait(
            &format!("{node}'s mount CronJob, active"),
            Duration::from_secs(60),
            || async { suspended(&s, node).await == Some(false) },
        )
        .await;
        s.wait_increase(
            &format!(r#"pie_mount_probe_total{{node="{node}",on_time="true"}}"#),
            1.0,
            Duration::from_secs(150),
        )
        .await;
    }

    // One node NotReady (the kubelet reports Ready=False), one cordoned, one tainted.
    let (not_ready, cordoned, tainted) = (&nodes[0], &nodes[1], &nodes[2]);
    s.cluster
        .kubectl_ok(&["annotate", "node", not_ready, "faults.pie.test/ready=false"]);
    s.cluster.kubectl_ok(&["cordon", cordoned]);
    s.cluster.kubectl_ok(&[
        "taint",
        "node",
        tainted,
        "pie.test/maintenance=true:NoSchedule",
    ]);
    for node in nodes {
        s.wait(
            &format!("{node}'s mount CronJob, suspended"),
            Duration::from_secs(90),
            || async { suspended(&s, node).await == Some(true) },
        )
        .await;
        s.wait(
            &format!("pie_node_eligible of {node} at 0 in VictoriaMetrics"),
            Duration::from_secs(90),
            || async {
                s.last(&format!(r#"pie_node_eligible{{node="{node}"}}"#))
                    .await
                    == Some(0.0)
            },
        )
        .await;
    }
    // With no node to run on, the provision probe is suspended too: its Pods could not be
    // scheduled, which says nothing about the StorageClass.
    let provision = names::provision_cronjob(PROBE, sc);
    s.wait(
        "the provision CronJob, suspended",
        Duration::from_secs(60),
        || async {
            s.cron_jobs(PROBE)
                .await
                .get(&provision)
                .and_then(|c| c.spec.as_ref())
                .is_some_and(|spec| spec.suspend == Some(true))
        },
    )
    .await;
    let status = s.probe(PROBE).await.status.unwrap_or_default();
    let skipped: Vec<(String, String)> = status
        .skipped_nodes
        .iter()
        .map(|n| (n.name.clone(), n.reason.clone()))
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    let reason_of = |node: &str| {
        skipped
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(reason_of(not_ready).starts_with("NotReady"), "{skipped:?}");
    assert!(
        reason_of(cordoned).starts_with("Unschedulable"),
        "{skipped:?}"
    );
    assert!(
        reason_of(tainted).contains("pie.test/maintenance"),
        "{skipped:?}"
    );
    note(
        "node-lifecycle",
        "all three nodes suspended, with their reasons",
    );

    // Three scheduled minutes later: nothing counted as late, nothing active in vmalert.
    let late_before = s
        .increase(r#"pie_mount_probe_total{on_time="false"}"#)
        .await;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let active = s.alerts().await;
        assert!(active.is_empty(), "ineligible nodes raised {active:#?}");
    }
    assert_eq!(
        s.increase(r#"pie_mount_probe_total{on_time="false"}"#)
            .await,
        late_before,
        "no mount probe of an ineligible node is a failure"
    );
    assert_eq!(
        s.increase("pie_probe_failures_total").await,
        0.0,
        "no failure counted\n{}",
        s.diagnostics().await
    );

    // Back: Ready, uncordoned, untainted.
    s.cluster
        .kubectl_ok(&["annotate", "node", not_ready, "faults.pie.test/ready-"]);
    s.cluster.kubectl_ok(&["uncordon", cordoned]);
    s.cluster.kubectl_ok(&[
        "taint",
        "node",
        tainted,
        "pie.test/maintenance=true:NoSchedule-",
    ]);
    for node in nodes {
        s.wait(
            &format!("{node}'s mount CronJob, resumed"),
            Duration::from_secs(120),
            || async { suspended(&s, node).await == Some(false) },
        )
        .await;
    }
    let mut on_time_before = Vec::new();
    for node in nodes {
        on_time_before.push(
            s.increase(&format!(
                r#"pie_mount_probe_total{{node="{node}",on_time="true"}}"#
            ))
            .await,
        );
    }
    for (node, before) in nodes.iter().zip(on_time_before) {
        s.wait_increase(
            &format!(r#"pie_mount_probe_total{{node="{node}",on_time="true"}}"#),
            before + 1.0,
            Duration::from_secs(150),
        )
        .await;
        s.wait(
            &format!("pie_node_eligible of {node} back at 1"),
            Duration::from_secs(90),
            || async {
                s.last(&format!(r#"pie_node_eligible{{node="{node}"}}"#))
                    .await
                    == Some(1.0)
            },
        )
        .await;
    }
    assert!(
        s.probe(PROBE)
            .await
            .status
            .unwrap_or_default()
            .skipped_nodes
            .is_empty()
    );
    assert_eq!(s.increase("pie_probe_failures_total").await, 0.0);
    s.finish().await;
}
