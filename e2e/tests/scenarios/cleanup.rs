//! Scenario 11, cleanup: changing a PieProbe's `nodeSelector` moves its probes (the CronJob and
//! PVC of the node it leaves are deleted, its series end with a staleness marker in
//! VictoriaMetrics); a CronJob deleted by hand is re-created at once; while the controller is
//! down probe Pods come and go freely (no finalizers, nothing left Terminating); deleting the
//! PieProbe removes its CronJobs and PVCs (garbage collection) and its series (staleness
//! markers reach VictoriaMetrics).

use std::time::Duration;

use e2e::ExportedSeries;
use e2e::cluster::LOCAL_STORAGE_CLASS;
use e2e::scenario::{Scenario, note};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use pie_api::names;

use crate::Env;

const PROBE: &str = "cleanup";

fn on_nodes(nodes: &[&String]) -> serde_json::Value {
    serde_json::json!({"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": nodes}
    ]}]})
}

/// Whether every series ends with a staleness marker (and there is at least one).
fn all_stale(series: &[ExportedSeries]) -> bool {
    !series.is_empty() && series.iter().all(ends_stale)
}

fn ends_stale(series: &ExportedSeries) -> bool {
    series.values.last().is_some_and(|v| v.is_nan())
}

/// Waits until every series pie pushed matching `selector` since `since_ms` ends with a
/// staleness marker (what vmalert's recording rules write back, `pie:...`, goes on over their
/// window); on timeout panics naming the ones that do not, with their last samples.
async fn wait_all_stale(s: &Scenario, selector: &str, since_ms: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let series: Vec<ExportedSeries> = s
            .series(selector)
            .await
            .into_iter()
            .filter(|x| x.label("__name__").starts_with("pie_"))
            .filter(|x| x.timestamps.iter().any(|t| *t > since_ms))
            .collect();
        if all_stale(&series) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let live: Vec<String> = series
                .iter()
                .filter(|x| !ends_stale(x))
                .map(|x| {
                    let n = x.values.len();
                    let tail: Vec<_> = x.timestamps[n.saturating_sub(3)..]
                        .iter()
                        .zip(&x.values[n.saturating_sub(3)..])
                        .collect();
                    format!("{:?}: {tail:?}", x.metric)
                })
                .collect();
            panic!(
                "[cleanup] series of {selector} without a staleness marker after 90 s \
                 ({} series in all):\n{}\n{}",
                series.len(),
                live.join("\n"),
                s.diagnostics().await
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn run(env: &'static Env) {
    let mut s = Scenario::start(env.cluster, "cleanup").await;
    let (n1, n2) = (&env.group("spare")[0], &env.group("spare")[1]);
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 59, "probeThreshold": "30s",
            "nodeSelector": on_nodes(&[n1, n2]),
        }),
    )
    .await;
    let mount_of = |n: &str| names::mount_cronjob(PROBE, n, sc);
    s.wait(
        "the CronJobs of both nodes",
        Duration::from_secs(60),
        || async {
            let c = s.cron_jobs(PROBE).await;
            c.contains_key(&mount_of(n1)) && c.contains_key(&mount_of(n2))
        },
    )
    .await;
    s.run_now(&mount_of(n1));
    s.run_now(&mount_of(n2));
    for n in [n1, n2] {
        s.wait_increase(
            &format!(r#"pie_performance_on_mount_probe_total{{node="{n}",succeed="true"}}"#),
            1.0,
            Duration::from_secs(90),
        )
        .await;
    }

    // Move the probe to n2 only: n1's CronJob and PVC go, and so do its series.
    s.api::<pie_controller::crd::PieProbe>()
        .patch(
            PROBE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"nodeSelector": on_nodes(&[n2])}})),
        )
        .await
        .expect("change the node selector");
    s.wait(
        &format!("{n1}'s CronJob and PVC deleted"),
        Duration::from_secs(60),
        || async {
            !s.cron_jobs(PROBE).await.contains_key(&mount_of(n1))
                && !s.pvcs(PROBE).await.contains_key(&names::pvc(PROBE, n1, sc))
                && s.cron_jobs(PROBE).await.contains_key(&mount_of(n2))
        },
    )
    .await;
    let of_n1 = format!(r#"{{pie_probe_name="{PROBE}",node="{n1}"}}"#);
    wait_all_stale(&s, &of_n1, 0).await;
    assert!(
        s.series(&format!(r#"{{pie_probe_name="{PROBE}",node="{n2}"}}"#))
            .await
            .iter()
            .filter(|x| x.label("__name__").starts_with("pie_"))
            .all(|x| !ends_stale(x)),
        "{n2}'s series stay"
    );
    note(
        "cleanup",
        "moving the node selector moved the probes and ended the old series",
    );

    // A CronJob deleted by someone else comes back at once: its delete event reconciles the
    // PieProbe, although nothing a reconcile fingerprints changed. Kube's predicate filter
    // dropped such events, and the CronJob came back with the PieProbe's next reconcile for
    // another reason: its status written (here 28 s later) or the 300 s requeue.
    let before = s.cron_jobs(PROBE).await[&mount_of(n2)].uid();
    let deleted_at = std::time::Instant::now();
    s.kubectl(&["delete", "cronjob", &mount_of(n2), "--wait=true"]);
    s.wait(
        &format!("{n2}'s CronJob, deleted by hand, re-created"),
        Duration::from_secs(10),
        || async {
            s.cron_jobs(PROBE)
                .await
                .get(&mount_of(n2))
                .is_some_and(|c| c.uid() != before)
        },
    )
    .await;
    note(
        "cleanup",
        &format!(
            "a CronJob deleted by hand was re-created {:.1} s after the delete",
            deleted_at.elapsed().as_secs_f64()
        ),
    );

    // The controller is down: probe Pods still run and go, none is held Terminating.
    assert!(s.controller.terminate(), "the controller stops on SIGTERM");
    let job = s.run_now(&mount_of(n2));
    let pods = s.api::<Pod>();
    s.wait(
        "the probe Pod of a Job made while the controller is down",
        Duration::from_secs(60),
        || async {
            s.pods(PROBE)
                .await
                .values()
                .any(|p| p.labels().get("job-name") == Some(&job))
        },
    )
    .await;
    for pod in s.pods(PROBE).await.values() {
        assert!(
            pod.finalizers()
                .iter()
                .all(|f| f == "batch.kubernetes.io/job-tracking"),
            "{}: {:?}",
            pod.name_any(),
            pod.finalizers()
        );
    }
    s.kubectl(&["delete", "job", &job, "--wait=false"]);
    s.wait(
        "its Pod gone without the controller",
        Duration::from_secs(60),
        || async {
            !s.pods(PROBE)
                .await
                .values()
                .any(|p| p.labels().get("job-name") == Some(&job))
        },
    )
    .await;
    drop(pods);

    // Deleting the PieProbe (controller up again, its plan pushed and a probe run): its objects
    // and every series this controller pushed go. A controller knows the series of its own
    // process (its plan, the results it received); what only an earlier process pushed, and
    // the series of a PieProbe deleted while no controller ran, end by VictoriaMetrics'
    // staleness lookback instead (docs/design.md).
    let restarted_at = e2e::now_millis();
    s.controller.restart().await;
    s.run_now(&mount_of(n2));
    let last_success = format!(
        r#"pie_mount_probe_last_success_timestamp_seconds{{pie_probe_name="{PROBE}",node="{n2}"}}"#
    );
    let eligible_n2 = format!(r#"pie_node_eligible{{pie_probe_name="{PROBE}",node="{n2}"}}"#);
    s.wait(
        "the restarted controller's plan and a new result in VictoriaMetrics",
        Duration::from_secs(90),
        || async {
            s.last(&last_success)
                .await
                .is_some_and(|t| t * 1000.0 > restarted_at as f64)
                && s.series(&eligible_n2)
                    .await
                    .iter()
                    .any(|x| x.timestamps.iter().any(|t| *t > restarted_at))
        },
    )
    .await;
    s.api::<pie_controller::crd::PieProbe>()
        .delete(PROBE, &DeleteParams::background())
        .await
        .expect("delete the PieProbe");
    s.wait(
        "the PieProbe's CronJobs, PVCs, Jobs and Pods gone",
        Duration::from_secs(120),
        || async {
            s.cron_jobs(PROBE).await.is_empty()
                && s.pvcs(PROBE).await.is_empty()
                && s.jobs(PROBE).await.is_empty()
                && s.pods(PROBE).await.is_empty()
        },
    )
    .await;
    let of_probe = format!(r#"{{pie_probe_name="{PROBE}"}}"#);
    wait_all_stale(&s, &of_probe, restarted_at).await;
    s.finish().await;
}
