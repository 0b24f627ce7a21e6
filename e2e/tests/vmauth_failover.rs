//! vmauth as the load balancer in front of two insert nodes, one of which is killed (SIGKILL)
//! while `pie-controller receive` pushes a result every 50 ms: every result arrives exactly
//! once.
//!
//! The insert nodes are vmauth processes proxying to one VictoriaMetrics: like vminsert they keep
//! nothing and answer a request only once the store has answered it (VictoriaMetrics' cluster
//! release line, whose vminsert this stands in for, is not available here: docs/testing.md). The
//! front vmauth balances over both (`least_loaded`, the default) and runs with
//! `-maxRequestBodySizeToRetry=0`, so it never retries a request on the other node itself: the
//! requests that meet the dead node are answered 503, and it is pie's retry that delivers them,
//! as it is for pie's requests larger than vmauth's default retry buffer (16 KiB: the periodic
//! re-send of a large store).
//! VictoriaMetrics runs with `-dedup.minScrapeInterval=1ms`, as vmselect does with replication,
//! and keeps one copy of a sample sent twice.
//!
//! The current release only: Debian's vmauth 1.79 has no `-maxRequestBodySizeToRetry`.

use std::time::Duration;

use e2e::{
    PieReceive, VictoriaMetrics, VmRelease, Vmauth, assert_results_exactly_once, now_millis,
    scrape, scrape_sum, scrape_value, series_count,
};

const RESULTS: usize = 100;
const KILL_AFTER: usize = 30;

/// Requests a vmauth with an `unauthorized_user` has proxied.
async fn proxied(vmauth: &Vmauth) -> f64 {
    let text = scrape(&format!("{}/metrics", vmauth.base_url())).await;
    scrape_value(&text, "vmauth_unauthorized_user_requests_total", &[]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_insert_nodes_behind_vmauth_loses_nothing() {
    let release = VmRelease::Current;
    let vm = VictoriaMetrics::start_release(release, &["-dedup.minScrapeInterval=1ms"]).await;
    let node_config = format!("unauthorized_user:\n  url_prefix: \"{}\"\n", vm.origin());
    let (mut doomed, survivor) = tokio::join!(
        Vmauth::start_release(release, &node_config, &[]),
        Vmauth::start_release(release, &node_config, &[])
    );
    let front_config = format!(
        "unauthorized_user:\n  url_prefix:\n  - \"{}\"\n  - \"{}\"\n",
        doomed.base_url(),
        survivor.base_url()
    );
    let front =
        Vmauth::start_release(release, &front_config, &["-maxRequestBodySizeToRetry=0"]).await;
    let controller = PieReceive::start(
        &format!("{}/api/v1/write", front.base_url()),
        "e2e-failover",
        &["--push-interval", "1h"],
    )
    .await;

    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let posted_from = now_millis();
    for i in 0..RESULTS {
        ticker.tick().await;
        if i == KILL_AFTER {
            let served = proxied(&doomed).await;
            assert!(served > 0.0, "the node to kill served nothing yet");
            doomed.kill();
        }
        controller
            .post_probe_result("failover", &format!("node-{i:03}"), "sc", (i + 1) as f64)
            .await;
    }
    let posted_to = now_millis();

    let selector = r#"{__name__=~"pie_.*",cluster="e2e-failover",pie_probe_name="failover"}"#;
    let exported = vm
        .export_until(selector, Duration::from_secs(60), |s| {
            series_count(s, "pie_io_read_iops_on_mount_probe") == RESULTS
        })
        .await;
    let results: Vec<(String, f64)> = (0..RESULTS)
        .map(|i| (format!("node-{i:03}"), (i + 1) as f64))
        .collect();
    assert_results_exactly_once(&exported, &results, posted_from..=posted_to + 1000);

    // The dead node cost pie requests answered 5xx (vmauth 1.153 says 503) that pie retried,
    // and the survivor took the rest.
    let metrics = controller.metrics().await;
    let answered_5xx = scrape_sum(&metrics, "pie_remote_write_requests_total", &["code=\"5"]);
    assert!(
        answered_5xx >= 1.0,
        "no request met the dead node:\n{metrics}\nfront vmauth log:\n{}",
        front.log_tail()
    );
    let dropped = scrape_sum(&metrics, "pie_remote_write_samples_dropped_total", &[]);
    assert_eq!(dropped, 0.0, "{metrics}");
    assert!(proxied(&survivor).await > 0.0);
}
