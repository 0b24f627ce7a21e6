//! Scenario 2, provisioning broken: a StorageClass whose provisioner starts failing after the
//! mount probes' volumes exist (ProvisioningFailed Events from the test provisioner), and
//! separately the StorageClass whose provisioner does not exist. Each provision probe is counted
//! `on_time="false"` with the reason, its late Job is deleted, the PieProbe's status says why,
//! and `PieProvisionProbeFailing` fires in vmalert for that StorageClass; the mount probes of the
//! first, whose volumes were provisioned before the fault, stay on time and no mount alert fires.

use std::time::Duration;

use e2e::cluster::NO_PROVISIONER_STORAGE_CLASS;
use e2e::scenario::{Scenario, group_selector, note};
use pie_api::names;

use crate::Env;

const FAILING: &str = "provfail";
const FAILING_SC: &str = "pie-e2e-provfail";
const MISSING: &str = "noprov";

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "provisioning").await;
    let nodes = env.group("shared");
    s.create_storage_class(FAILING_SC, &[]);
    s.create_probe(
        FAILING,
        serde_json::json!({
            "monitoringStorageClass": FAILING_SC, "probePeriod": 59, "probeThreshold": "20s",
            "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    s.create_probe(
        MISSING,
        serde_json::json!({
            "monitoringStorageClass": NO_PROVISIONER_STORAGE_CLASS, "probePeriod": 59,
            "probeThreshold": "20s", "disableMountProbes": true,
            "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    s.wait("the CronJobs", Duration::from_secs(60), || async {
        s.cron_jobs(FAILING).await.len() == 1 + nodes.len() && s.cron_jobs(MISSING).await.len() == 1
    })
    .await;

    // While the provisioner works, the mount probes get their volumes and run on time.
    s.mount_probes_on_time(FAILING, nodes, FAILING_SC).await;

    // Then it fails every new volume; the StorageClass without a provisioner never had one.
    s.cluster.kubectl_ok(&[
        "annotate",
        "storageclass",
        FAILING_SC,
        "faults.pie.test/provision=fail",
    ]);
    let mut late_jobs = Vec::new();
    for _ in 0..2 {
        late_jobs.push(s.run_now(&names::provision_cronjob(FAILING, FAILING_SC)));
        late_jobs.push(s.run_now(&names::provision_cronjob(
            MISSING,
            NO_PROVISIONER_STORAGE_CLASS,
        )));
    }
    // Mount probes on the volumes provisioned before the fault keep working.
    for node in nodes {
        s.run_now(&names::mount_cronjob(FAILING, node, FAILING_SC));
    }

    for (probe, sc, reason) in [
        (FAILING, FAILING_SC, "ProvisioningFailed"),
        (
            MISSING,
            NO_PROVISIONER_STORAGE_CLASS,
            "ExternalProvisioning",
        ),
    ] {
        s.wait_increase(
            &format!(
                r#"pie_provision_probe_total{{pie_probe_name="{probe}",storage_class="{sc}",on_time="false"}}"#
            ),
            2.0,
            Duration::from_secs(120),
        )
        .await;
        let reasons = s
            .series(&format!(
                r#"pie_probe_failures_total{{pie_probe_name="{probe}",probe="provision"}}"#
            ))
            .await;
        let by_reason: Vec<(String, f64)> = reasons
            .iter()
            .map(|x| (x.label("reason").to_owned(), x.counter_increase()))
            .filter(|(_, n)| *n > 0.0)
            .collect();
        assert_eq!(
            by_reason,
            vec![(reason.to_owned(), 2.0)],
            "{probe}: the failure reason of both late provision probes"
        );
        let status = s.probe(probe).await.status.unwrap_or_default();
        let outcome = status
            .last_provision_outcome
            .expect("the last provision outcome is in the status");
        assert_eq!(outcome.result, "NotStarted", "{probe}: {outcome:?}");
        assert!(
            outcome.message.contains(reason) && outcome.message.contains("20.0s"),
            "{probe}: the status says why: {outcome:?}"
        );
    }
    note(
        "provisioning",
        "both StorageClasses' provision probes are late, with their reasons",
    );
    s.wait(
        "the late provision Jobs to be deleted",
        Duration::from_secs(60),
        || async {
            let jobs = s.jobs(FAILING).await;
            let more = s.jobs(MISSING).await;
            late_jobs
                .iter()
                .all(|j| !jobs.contains_key(j) && !more.contains_key(j))
        },
    )
    .await;
    assert_eq!(
        s.increase(&format!(
            r#"pie_mount_probe_total{{pie_probe_name="{FAILING}",on_time="false"}}"#
        ))
        .await,
        0.0,
        "mount probes on existing volumes are not late"
    );
    assert!(
        s.increase(&format!(
            r#"pie_mount_probe_total{{pie_probe_name="{FAILING}",on_time="true"}}"#
        ))
        .await
            >= 2.0 * nodes.len() as f64
    );

    // PieProvisionProbeFailing (for: 5m) fires for both StorageClasses; no mount alert does.
    for sc in [FAILING_SC, NO_PROVISIONER_STORAGE_CLASS] {
        let alert = s
            .wait_firing(
                "PieProvisionProbeFailing",
                &[("storage_class", sc), ("cluster", "provisioning")],
                Duration::from_secs(9 * 60),
            )
            .await;
        assert_eq!(alert.labels["severity"], "critical");
    }
    let others: Vec<_> = s
        .storage_alerts()
        .await
        .into_iter()
        .filter(|a| a.name != "PieProvisionProbeFailing")
        .collect();
    assert!(others.is_empty(), "only the provision alert: {others:#?}");
    s.cluster.kubectl_ok(&[
        "annotate",
        "storageclass",
        FAILING_SC,
        "faults.pie.test/provision-",
    ]);
    s.finish().await;
}
