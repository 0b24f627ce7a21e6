//! Scenario 7, slow deletion: the provisioner takes longer than probeThreshold to delete a
//! released volume. The provision probes are on time, but each deletion is counted
//! `pie_probe_volume_delete_total{on_time="false"}` once it is overdue, its duration lands in the
//! deletion histogram when the PV is finally gone, and `PieVolumeDeletionStuck` fires.

use std::time::Duration;

use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

const PROBE: &str = "slowdelete";
const SC: &str = "pie-e2e-slowdelete";

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "slow-delete").await;
    s.create_storage_class(SC, &[("faults.pie.test/delete", "delay=45s")]);
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": SC, "probePeriod": 59, "probeThreshold": "20s",
            "disableMountProbes": true, "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    let cron_job = names::provision_cronjob(PROBE, SC);
    s.wait("the provision CronJob", Duration::from_secs(60), || async {
        s.cron_jobs(PROBE).await.contains_key(&cron_job)
    })
    .await;
    s.run_now(&cron_job);
    s.run_now(&cron_job);
    let labels = format!(r#"pie_probe_name="{PROBE}",storage_class="{SC}",cluster="slow-delete""#);
    s.wait_increase(
        &format!(r#"pie_provision_probe_total{{{labels},on_time="true"}}"#),
        2.0,
        Duration::from_secs(90),
    )
    .await;
    // Overdue at deletion + 20 s, long before the PV goes at deletion + 45 s.
    s.wait_increase(
        &format!(r#"pie_probe_volume_delete_total{{{labels},on_time="false"}}"#),
        2.0,
        Duration::from_secs(120),
    )
    .await;
    // Counted at the threshold, not when the volumes finally go: a deletion that never ends is
    // counted all the same.
    let count = format!(r#"pie_probe_volume_delete_seconds_count{{{labels}}}"#);
    assert!(
        s.last(&count).await.unwrap_or_default() < 2.0,
        "both deletions counted late only once their volumes were gone"
    );
    note(
        "slow-delete",
        "both deletions counted late, while their volumes still exist",
    );
    let alert = s
        .wait_firing(
            "PieVolumeDeletionStuck",
            &[("storage_class", SC)],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(alert.labels["severity"], "warning");
    // When the PVs are finally gone, the histogram has their real deletion times.
    s.wait(
        "the deletion times in the histogram",
        Duration::from_secs(120),
        || async { s.last(&count).await == Some(2.0) },
    )
    .await;
    let sum = s
        .last(&format!(
            r#"pie_probe_volume_delete_seconds_sum{{{labels}}}"#
        ))
        .await
        .unwrap_or_default();
    assert!(
        (80.0..150.0).contains(&sum),
        "two deletions of about 45 s each: {sum} s"
    );
    assert_eq!(
        s.increase(&format!(
            r#"pie_probe_volume_delete_total{{{labels},on_time="true"}}"#
        ))
        .await,
        0.0,
        "a late deletion is not counted again when it finishes"
    );
    s.finish().await;
}
