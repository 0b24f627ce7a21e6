//! Scenario 4, I/O broken: volumes that mount but are read-only (EROFS), or full (ENOSPC). The
//! mount probe Pods start on time, fio fails, the agent reports `succeed="false"` (its Pod exits
//! 1 and its log says why), and `PieMountProbeIOErrors` fires for the node and StorageClass.

use std::time::Duration;

use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "io-broken").await;
    let node = &env.group("shared")[2];
    let cases = [
        (
            "readonly",
            "pie-e2e-readonly",
            "read-only",
            "Read-only file system",
        ),
        ("full", "pie-e2e-full", "full", "No space left on device"),
    ];
    for (probe, sc, fault, _) in cases {
        s.create_storage_class(sc, &[("faults.pie.test/io", fault)]);
        s.create_probe(
            probe,
            serde_json::json!({
                "monitoringStorageClass": sc, "probePeriod": 59, "probeThreshold": "30s",
                "disableProvisionProbe": true, "nodeSelector": group_selector("shared"),
            }),
        )
        .await;
    }
    for (probe, sc, _, _) in cases {
        let cron_job = names::mount_cronjob(probe, node, sc);
        s.wait(
            &format!("CronJob {cron_job}"),
            Duration::from_secs(60),
            || async { s.cron_jobs(probe).await.contains_key(&cron_job) },
        )
        .await;
        s.run_now(&cron_job);
        s.run_now(&cron_job);
    }
    for (probe, sc, _, says) in cases {
        let labels = format!(
            r#"pie_probe_name="{probe}",node="{node}",storage_class="{sc}",cluster="io-broken""#
        );
        s.wait_increase(
            &format!(r#"pie_performance_on_mount_probe_total{{{labels},succeed="false"}}"#),
            2.0,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(
            s.increase(&format!(
                r#"pie_performance_on_mount_probe_total{{{labels},succeed="true"}}"#
            ))
            .await,
            0.0
        );
        // The Pods started: an I/O failure is not a late probe.
        assert!(
            s.increase(&format!(
                r#"pie_mount_probe_total{{{labels},on_time="true"}}"#
            ))
            .await
                >= 2.0
        );
        // The failed Job's Pod is kept (failedJobsHistoryLimit) with the agent's reason.
        s.wait(
            &format!("{probe}: a failed probe's log saying {says:?}"),
            Duration::from_secs(30),
            || async {
                s.pods(probe).await.keys().any(|pod| {
                    let out = s
                        .cluster
                        .kubectl(&["-n", &s.namespace, "logs", "--tail=50", pod]);
                    String::from_utf8_lossy(&out.stdout).contains(says)
                })
            },
        )
        .await;
        let alert = s
            .wait_firing(
                "PieMountProbeIOErrors",
                &[("node", node.as_str()), ("storage_class", sc)],
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(alert.labels["severity"], "critical");
        assert_eq!(alert.value, "2", "two failed probes in the window");
    }
    note(
        "io-broken",
        "both faults reported as succeed=false, the I/O alert fires",
    );
    s.finish().await;
}
