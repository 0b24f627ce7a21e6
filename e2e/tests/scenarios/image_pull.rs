//! Scenario 6, the agent image cannot be pulled (a registry outage, a wrong tag): the probe Pods
//! never start and are counted late with the reason `ImagePull`; only the non-paging
//! `PieProbeImagePullFailing` (severity info) fires, and no storage alert becomes even pending.

use std::time::{Duration, Instant};

use e2e::cluster::LOCAL_STORAGE_CLASS;
use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

const PROBE: &str = "pull";
/// An image the process kubelet cannot pull (it is not in its image map).
const MISSING_IMAGE: &str = "ghcr.io/pie-rs/pie-agent-does-not-exist:0.1.0";

pub async fn run(env: &'static Env) {
    let s = Scenario::start_with(env.cluster, "image-pull", |o| {
        o.agent_image = MISSING_IMAGE.into();
    })
    .await;
    let node = &env.group("shared")[0];
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 59, "probeThreshold": "20s",
            "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    let mount = names::mount_cronjob(PROBE, node, sc);
    let provision = names::provision_cronjob(PROBE, sc);
    s.wait("the CronJobs", Duration::from_secs(60), || async {
        let cron_jobs = s.cron_jobs(PROBE).await;
        cron_jobs.contains_key(&mount) && cron_jobs.contains_key(&provision)
    })
    .await;
    let started = Instant::now();
    for _ in 0..2 {
        s.run_now(&mount);
        s.run_now(&provision);
    }
    for (probe, total) in [
        ("mount", "pie_mount_probe_total"),
        ("provision", "pie_provision_probe_total"),
    ] {
        s.wait_increase(
            &format!(r#"{total}{{pie_probe_name="{PROBE}",on_time="false"}}"#),
            2.0,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(
            s.increase(&format!(
                r#"pie_probe_failures_total{{pie_probe_name="{PROBE}",probe="{probe}",reason="ImagePull"}}"#
            ))
            .await,
            2.0,
            "both late {probe} probes are image pull failures\n{}",
            s.diagnostics().await
        );
    }
    note(
        "image-pull",
        "late probes counted with the reason ImagePull",
    );

    // PieProbeImagePullFailing has `for: 10m`; all the while no storage alert is active.
    let alert = loop {
        let active = s.alerts().await;
        let storage: Vec<_> = active
            .iter()
            .filter(|a| e2e::scenario::STORAGE_ALERTS.contains(&a.name.as_str()))
            .collect();
        assert!(
            storage.is_empty(),
            "an image pull problem raised {storage:#?}"
        );
        if let Some(a) = active
            .iter()
            .find(|a| a.name == "PieProbeImagePullFailing" && a.state == "firing")
        {
            break a.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(13 * 60),
            "PieProbeImagePullFailing did not fire: {active:#?}\n{}",
            s.diagnostics().await
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    assert_eq!(alert.labels["severity"], "info");
    assert_eq!(alert.labels["pie_probe_name"], PROBE);
    let paged: Vec<_> = s
        .notifier
        .received()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] != "PieProbeImagePullFailing")
        .collect();
    assert!(paged.is_empty(), "only the info alert was sent: {paged:#?}");
    s.finish().await;
}
