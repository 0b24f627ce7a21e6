//! Scenario 9 of the end-to-end scenarios (docs/testing.md), in a test binary of its own because
//! it stops the API server of its cluster: kube-apiserver is stopped for 30 s while probes run,
//! after etcd was compacted, so every watch of pie-controller that resumes afterwards gets
//! `410 Gone` and re-lists. The controller rides it out without restarting (same process, same
//! Lease), `/readyz` reports the outage while it lasts and recovers after it, the probes of the
//! outage are counted once each (the test's own ledger against VictoriaMetrics' counters), and
//! probes after it run and are counted as before.

use std::time::{Duration, Instant};

use e2e::cluster::{LOCAL_STORAGE_CLASS, test_cluster};
use e2e::now_millis;
use e2e::scenario::{CONTROLLER_USER, PodLedger, Scenario, note};

const PROBE: &str = "outage";
const THRESHOLD_MS: i64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_rides_out_an_api_server_outage_and_expired_watches() {
    let Some(cluster) = test_cluster() else {
        return;
    };
    if !cluster.is_local() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipping: stopping the API server needs the local cluster\n",
        );
        return;
    }
    let mut s = Scenario::start_with(cluster, "apiserver-outage", |o| {
        // Every outcome counted and every request answered with a retry, for the failure message.
        o.log = Some(
            "info,kube=warn,pie_controller::k8s::tracker=debug,pie_controller::http=debug".into(),
        );
    })
    .await;
    let ledger = PodLedger::start(s.client.clone(), &s.namespace).await;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": LOCAL_STORAGE_CLASS, "probePeriod": 1,
            "probeThreshold": format!("{}s", THRESHOLD_MS / 1000),
        }),
    )
    .await;
    s.wait_increase(
        &format!(r#"pie_mount_probe_total{{pie_probe_name="{PROBE}",on_time="true"}}"#),
        3.0,
        Duration::from_secs(150),
    )
    .await;
    let pid = s.controller.pid();

    // A batch of probe Pods was just created (the minute turned): take the API server away
    // while they run.
    let deadline = Instant::now() + Duration::from_secs(90);
    let batch = loop {
        let newest = ledger.records().values().map(|r| r.created_ms).max();
        if let Some(t) = newest
            && now_millis() - t < 3_000
        {
            break t;
        }
        assert!(Instant::now() < deadline, "no new probe batch in 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    note(
        "apiserver-outage",
        &format!("a batch started {} ms ago", now_millis() - batch),
    );
    let revision = cluster.compact_etcd();
    let down = Instant::now();
    let down_ms = now_millis();
    cluster.stop_component("kube-apiserver");

    // /readyz says so within a few seconds, and keeps saying so.
    let mut went_unready = None;
    while down.elapsed() < Duration::from_secs(30) {
        let ready = s.controller.is_ready().await;
        if !ready && went_unready.is_none() {
            went_unready = Some(down.elapsed());
        }
        if went_unready.is_some() {
            assert!(!ready, "ready again while the API server is away");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let went_unready = went_unready.expect("/readyz reported the outage");
    assert!(
        went_unready < Duration::from_secs(10),
        "/readyz noticed the outage after {went_unready:?}"
    );
    cluster.start_component("kube-apiserver");
    let up = Instant::now();
    s.wait(
        "the controller to be ready again",
        Duration::from_secs(60),
        || async { s.controller.is_ready().await },
    )
    .await;
    let recovered = up.elapsed();
    assert!(!s.controller.has_exited(), "the controller kept running");
    assert_eq!(s.controller.pid(), pid, "the same process");
    note(
        "apiserver-outage",
        &format!(
            "etcd compacted at revision {revision}; API server down {:.1} s; /readyz 503 after {:.1} s; ready again {:.1} s after it returned",
            (up - down).as_secs_f64(),
            went_unready.as_secs_f64(),
            recovered.as_secs_f64()
        ),
    );

    // Its watches were re-listed after the restart (410 Gone: the watch cache starts anew).
    // Readiness comes back with the first renewal of the Lease; the watches re-list on their
    // own backoff, within seconds (maybe before the restart returned, so: since it went down).
    let relisted = || {
        let lists = cluster.requests_since(CONTROLLER_USER, "list", down_ms);
        ["pods", "cronjobs", "persistentvolumeclaims"]
            .iter()
            .all(|r| lists.iter().any(|l| l == r))
    };
    s.wait(
        "re-lists of pods, cronjobs and persistentvolumeclaims after the restart",
        Duration::from_secs(60),
        || async { relisted() },
    )
    .await;
    note(
        "apiserver-outage",
        &format!(
            "watches re-listed {:.1} s after the API server returned",
            up.elapsed().as_secs_f64()
        ),
    );

    // Two more scheduled minutes, then the ledger against the counters up to a quiet moment.
    let after = now_millis();
    let cut = ledger
        .quiet_cut(THRESHOLD_MS, after + 60_000, Duration::from_secs(240))
        .await;
    let mismatch = s
        .counted_against_ledger(&ledger, PROBE, THRESHOLD_MS, cut, false)
        .await;
    if let Some(mismatch) = mismatch {
        panic!(
            "{mismatch}\n{}\nthe controller's whole log:\n{}",
            s.diagnostics().await,
            s.controller.log()
        );
    }
    // Refusals while the API server started (RBAC not loaded yet) aside, nothing was denied.
    let denied: Vec<String> = cluster
        .denied_requests(CONTROLLER_USER)
        .into_iter()
        .filter(|d| !d.contains("leases"))
        .collect();
    assert!(denied.len() <= 5, "{denied:#?}");
    s.finish().await;
}
