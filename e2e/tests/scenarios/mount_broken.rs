//! Scenario 3, mounts broken on one node: the process kubelet fails every mount of a
//! PersistentVolumeClaim on one node (FailedMount Events). That node's mount probes are counted
//! `on_time="false"` with the reason `FailedMount`, `PieMountProbeFailingOnNode` fires for that
//! node (after its `for: 10m`), and the other nodes of the PieProbe stay on time and quiet.

use std::time::Duration;

use e2e::cluster::LOCAL_STORAGE_CLASS;
use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

const PROBE: &str = "mountfault";

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "mount-broken").await;
    let nodes = env.group("mountfault");
    let broken = &nodes[1];
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 59, "probeThreshold": "20s",
            "nodeSelector": group_selector("mountfault"),
        }),
    )
    .await;
    s.wait("the mount CronJobs", Duration::from_secs(60), || async {
        s.cron_jobs(PROBE).await.len() == 1 + nodes.len()
    })
    .await;
    s.mount_probes_on_time(PROBE, nodes, sc).await;

    s.cluster
        .kubectl_ok(&["annotate", "node", broken, "faults.pie.test/mount=fail"]);
    for _ in 0..2 {
        s.run_now(&names::mount_cronjob(PROBE, broken, sc));
    }
    for node in nodes.iter().filter(|n| *n != broken) {
        s.run_now(&names::mount_cronjob(PROBE, node, sc));
    }
    s.wait_increase(
        &format!(
            r#"pie_mount_probe_total{{pie_probe_name="{PROBE}",node="{broken}",on_time="false"}}"#
        ),
        2.0,
        Duration::from_secs(120),
    )
    .await;
    let reasons: Vec<(String, String, f64)> = s
        .series(&format!(
            r#"pie_probe_failures_total{{pie_probe_name="{PROBE}"}}"#
        ))
        .await
        .iter()
        .map(|x| {
            (
                x.label("node").to_owned(),
                x.label("reason").to_owned(),
                x.counter_increase(),
            )
        })
        .filter(|(_, _, n)| *n > 0.0)
        .collect();
    assert_eq!(
        reasons,
        vec![(broken.clone(), "FailedMount".to_owned(), 2.0)],
        "only the broken node fails, with FailedMount"
    );
    for node in nodes.iter().filter(|n| *n != broken) {
        s.wait_increase(
            &format!(
                r#"pie_mount_probe_total{{pie_probe_name="{PROBE}",node="{node}",on_time="true"}}"#
            ),
            2.0,
            Duration::from_secs(90),
        )
        .await;
    }
    note(
        "mount-broken",
        "the broken node's probes are late with FailedMount",
    );

    let alert = s
        .wait_firing(
            "PieMountProbeFailingOnNode",
            &[("node", broken.as_str()), ("storage_class", sc)],
            Duration::from_secs(13 * 60),
        )
        .await;
    assert_eq!(alert.labels["severity"], "warning");
    let active = s.storage_alerts().await;
    assert!(
        active.iter().all(|a| a.name == "PieMountProbeFailingOnNode"
            && a.labels.get("node") == Some(broken)),
        "only the one-node alert, for the broken node: {active:#?}"
    );
    s.cluster
        .kubectl_ok(&["annotate", "node", broken, "faults.pie.test/mount-"]);
    s.finish().await;
}
