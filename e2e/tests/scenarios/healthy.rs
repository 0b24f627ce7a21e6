//! Scenario 1, healthy: a PieProbe on the test StorageClass over 3 nodes. The CronJobs run on
//! their real schedule (no Job is created by hand here): provision and mount probes are on time
//! per node, every mount-probe gauge arrives with the right labels and `cluster`, the
//! start-duration and volume provision/delete histograms have samples, the PieProbe's status and
//! printer columns show the last outcomes, and no storage alert becomes even pending while the
//! probes run for longer than the longest `for:` of the provision alert.

use std::time::{Duration, Instant};

use e2e::MOUNT_RESULT_GAUGES;
use e2e::cluster::LOCAL_STORAGE_CLASS;
use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

const PROBE: &str = "healthy";

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "healthy").await;
    let nodes = env.group("shared");
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 1, "probeThreshold": "30s",
            "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    let started = Instant::now();

    // The objects: one provision CronJob, a mount CronJob and a PVC per node.
    let mut want_cron_jobs: Vec<String> = nodes
        .iter()
        .map(|n| names::mount_cronjob(PROBE, n, sc))
        .chain([names::provision_cronjob(PROBE, sc)])
        .collect();
    want_cron_jobs.sort();
    let mut want_pvcs: Vec<String> = nodes.iter().map(|n| names::pvc(PROBE, n, sc)).collect();
    want_pvcs.sort();
    s.wait("the CronJobs and PVCs", Duration::from_secs(60), || async {
        s.cron_jobs(PROBE).await.into_keys().collect::<Vec<_>>() == want_cron_jobs
            && s.pvcs(PROBE)
                .await
                .into_keys()
                .filter(|n| n.starts_with("pie-pvc-"))
                .collect::<Vec<_>>()
                == want_pvcs
    })
    .await;

    // The real schedule: every CronJob runs within about a minute, and each run is on time.
    for node in nodes {
        s.wait_increase(
            &format!(
                r#"pie_mount_probe_total{{pie_probe_name="{PROBE}",node="{node}",storage_class="{sc}",on_time="true",cluster="healthy"}}"#
            ),
            1.0,
            Duration::from_secs(180),
        )
        .await;
    }
    s.wait_increase(
        &format!(
            r#"pie_provision_probe_total{{pie_probe_name="{PROBE}",storage_class="{sc}",on_time="true",cluster="healthy"}}"#
        ),
        1.0,
        Duration::from_secs(120),
    )
    .await;
    s.wait(
        "every CronJob's scheduled Job to succeed",
        Duration::from_secs(90),
        || async {
            s.cron_jobs(PROBE).await.values().all(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|st| st.last_successful_time.is_some())
            })
        },
    )
    .await;
    note("healthy", "every CronJob ran on its schedule, on time");

    // Every mount-probe gauge, per node, with exactly pie's labels and the cluster label.
    for node in nodes {
        for gauge in MOUNT_RESULT_GAUGES {
            let series = s.series(&format!(r#"{gauge}{{node="{node}"}}"#)).await;
            let labels: Vec<_> = series.iter().map(|x| x.metric.clone()).collect();
            let want = [
                ("__name__", gauge),
                ("cluster", "healthy"),
                ("node", node.as_str()),
                ("pie_probe_name", PROBE),
                ("storage_class", sc),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            assert_eq!(labels, vec![want], "{gauge} of {node}");
            let value = series[0].values.iter().rev().find(|v| !v.is_nan());
            assert!(
                value.is_some_and(|v| *v > 0.0),
                "{gauge} of {node} has a positive value: {series:?}"
            );
        }
        assert!(
            s.increase(&format!(
                r#"pie_performance_on_mount_probe_total{{node="{node}",succeed="true"}}"#
            ))
            .await
                >= 1.0
        );
        assert_eq!(
            s.last(&format!(r#"pie_node_eligible{{node="{node}"}}"#))
                .await,
            Some(1.0),
            "{node} is eligible"
        );
    }

    // The histograms: start durations of both probes, volume provisioning and deletion.
    for (histogram, extra) in [
        (
            "pie_probe_start_duration_seconds_count",
            r#",probe="mount""#,
        ),
        (
            "pie_probe_start_duration_seconds_count",
            r#",probe="provision""#,
        ),
        ("pie_probe_volume_provision_seconds_count", ""),
        ("pie_probe_volume_delete_seconds_count", ""),
    ] {
        let selector = format!(r#"{histogram}{{pie_probe_name="{PROBE}"{extra}}}"#);
        s.wait(
            &format!("samples of {selector}"),
            Duration::from_secs(120),
            || async {
                s.series(&selector)
                    .await
                    .iter()
                    .any(|x| x.values.iter().any(|v| *v >= 1.0))
            },
        )
        .await;
    }
    assert!(
        s.increase(&format!(
            r#"pie_probe_volume_delete_total{{pie_probe_name="{PROBE}",on_time="false"}}"#
        ))
        .await
            == 0.0,
        "the test provisioner deletes volumes at once"
    );

    // The status and the printer columns show the last outcomes.
    s.wait(
        "the last outcomes in the status",
        Duration::from_secs(60),
        || async {
            let status = s.probe(PROBE).await.status.unwrap_or_default();
            status
                .last_provision_outcome
                .is_some_and(|o| o.result == "OnTime")
                && status
                    .last_mount_outcome
                    .is_some_and(|o| o.result == "OnTime" && o.node.is_some())
        },
    )
    .await;
    let status = s.probe(PROBE).await.status.unwrap_or_default();
    let counts = status.nodes.clone().expect("node counts");
    assert_eq!((counts.selected, counts.probed, counts.skipped), (3, 3, 0));
    let table = s.kubectl(&["get", "pieprobe", PROBE]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STORAGECLASS",
            "NODES",
            "READY",
            "PROVISION",
            "MOUNT",
            "AGE"
        ],
        "{table}"
    );
    assert_eq!(
        &row[..6],
        [PROBE, sc, "3", "True", "OnTime", "OnTime"],
        "{table}"
    );

    // Nothing fires, nothing is even pending, while the probes keep running for longer than
    // the provision alert's `for: 5m` would need.
    while started.elapsed() < Duration::from_secs(7 * 60) {
        let active = s.storage_alerts().await;
        assert!(
            active.is_empty(),
            "a healthy StorageClass raised {active:#?}\n{}",
            s.diagnostics().await
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    let late = s
        .increase(&format!(
            r#"pie_mount_probe_total{{pie_probe_name="{PROBE}",on_time="false"}}"#
        ))
        .await
        + s.increase(&format!(
            r#"pie_provision_probe_total{{pie_probe_name="{PROBE}",on_time="false"}}"#
        ))
        .await;
    assert_eq!(
        late,
        0.0,
        "no healthy probe was late\n{}",
        s.diagnostics().await
    );
    let on_time = s
        .increase(&format!(
            r#"pie_mount_probe_total{{pie_probe_name="{PROBE}",on_time="true"}}"#
        ))
        .await;
    assert!(
        on_time >= 3.0 * 5.0,
        "every node probed every minute: {on_time} mount probes in 7 minutes"
    );
    let notified = s.notifier.received();
    assert!(notified.is_empty(), "vmalert notified {notified:#?}");
    s.finish().await;
}
