//! VictoriaMetrics is down for 60 s while probes keep reporting to `pie-controller receive`
//! every second: afterwards every sample of every result is in VictoriaMetrics exactly once,
//! in order, with the time it was received. Two routes, run side by side:
//!
//! - straight to VictoriaMetrics, which refuses connections while down; the remote-write
//!   client's in-memory queue holds the samples (no disk buffer);
//! - through vmauth, which stays up and answers 5xx while its backend is down (what a
//!   load balancer in front of vminsert does when every vminsert is down), with pie's disk
//!   buffer on (`--remote-write-buffer-dir`): the samples go to disk and are replayed.
//!
//! `--push-interval 1h` keeps the periodic re-send of the whole store out of the window, so the
//! samples VictoriaMetrics must hold are exactly the ones the results produced and the
//! comparison is exact. VictoriaMetrics keeps duplicate samples (no `-dedup.minScrapeInterval`),
//! so a batch sent twice would show. Once per VictoriaMetrics release (Debian's 1.79, the current
//! one: VictoriaMetrics and vmauth of that release).

use std::time::Duration;

use e2e::{
    ExportedSeries, PieReceive, VictoriaMetrics, VmRelease, Vmauth, now_millis, scrape_sum,
    target_dir, test_each_vm,
};
use serde_json::json;

const BEFORE: usize = 5;
const DURING: usize = 60;
const AFTER: usize = 5;

/// The value a series must have for the i-th result.
type ValueOf = fn(usize) -> f64;

/// The i-th result (1-based): every value differs from the others.
fn result(i: usize) -> serde_json::Value {
    json!({
        "pie_probe_name": "outage-probe",
        "node": "outage-node",
        "storage_class": "outage-sc",
        "write_latency": i as f64 / 1000.0,
        "read_latency": i as f64 / 2000.0,
        "performance_probe_succeed": true,
        "read_iops": 1000.0 + i as f64,
    })
}

fn one<'a>(
    series: &'a [ExportedSeries],
    name: &str,
    extra: Option<(&str, &str)>,
) -> &'a ExportedSeries {
    let found: Vec<&ExportedSeries> = series
        .iter()
        .filter(|s| s.metric["__name__"] == name)
        .filter(|s| extra.is_none_or(|(k, v)| s.metric.get(k).map(String::as_str) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {extra:?}: {found:?}");
    found[0]
}

/// Value of the first sample line of `name` with all `labels` in a text exposition.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

test_each_vm!(sixty_seconds_without_victoria_metrics_lose_and_duplicate_nothing);

async fn sixty_seconds_without_victoria_metrics_lose_and_duplicate_nothing(release: VmRelease) {
    // Each route has its own VictoriaMetrics; both wait out their outage at the same time.
    tokio::join!(
        outage(release, Route::Direct),
        outage(release, Route::VmauthWithDiskBuffer)
    );
}

/// How pie reaches VictoriaMetrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `--remote-write-url` is VictoriaMetrics itself; no disk buffer.
    Direct,
    /// `--remote-write-url` is a vmauth in front of VictoriaMetrics (bearer token), and
    /// `--remote-write-buffer-dir` is set.
    VmauthWithDiskBuffer,
}

async fn outage(release: VmRelease, route: Route) {
    let mut vm = VictoriaMetrics::start_release(release, &[]).await;
    let dir = tempfile::tempdir_in(target_dir()).expect("a work dir on a real filesystem");
    let (write_url, extra_args, _vmauth) = match route {
        Route::Direct => (vm.write_url(), Vec::new(), None),
        Route::VmauthWithDiskBuffer => {
            let config = format!(
                "users:\n- bearer_token: \"outage-token\"\n  url_prefix: \"{}\"\n",
                vm.origin()
            );
            let vmauth = Vmauth::start_release(release, &config, &[]).await;
            let token = dir.path().join("token");
            std::fs::write(&token, "outage-token\n").unwrap();
            let args = vec![
                "--remote-write-bearer-token-file".to_owned(),
                token.display().to_string(),
                "--remote-write-buffer-dir".to_owned(),
                dir.path().join("buffer").display().to_string(),
            ];
            (
                format!("{}/api/v1/write", vmauth.base_url()),
                args,
                Some(vmauth),
            )
        }
    };
    let mut args = vec!["--push-interval", "1h"];
    args.extend(extra_args.iter().map(String::as_str));
    let controller = PieReceive::start(&write_url, "e2e-outage", &args).await;
    let total = BEFORE + DURING + AFTER;
    // (sent, answered) in ms for each result.
    let mut windows: Vec<(i64, i64)> = Vec::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut post = async |i: usize, windows: &mut Vec<(i64, i64)>| {
        ticker.tick().await;
        let sent = now_millis();
        let status = controller.post(&result(i)).await;
        windows.push((sent, now_millis()));
        assert_eq!(status, 200, "result {i}; log:\n{}", controller.log_tail());
    };

    for i in 1..=BEFORE {
        post(i, &mut windows).await;
    }
    let selector = r#"{__name__=~"pie_.*",pie_probe_name="outage-probe"}"#;
    let delivered = |n: usize| {
        move |s: &[ExportedSeries]| {
            s.iter().any(|s| {
                s.metric["__name__"] == "pie_performance_on_mount_probe_total"
                    && s.metric["succeed"] == "true"
                    && s.values.len() >= n
            })
        }
    };
    let before = vm
        .export_until(selector, Duration::from_secs(10), delivered(BEFORE))
        .await;
    assert!(delivered(BEFORE)(&before), "{before:?}");

    vm.stop_gracefully().await;
    for i in BEFORE + 1..=BEFORE + DURING {
        post(i, &mut windows).await;
    }
    let metrics = controller.metrics().await;
    let pending = metric(&metrics, "pie_remote_write_pending_samples", &[]).unwrap_or(0.0);
    let on_disk = metric(&metrics, "pie_remote_write_buffer_samples", &[]).unwrap_or(0.0);
    match route {
        Route::Direct => assert!(
            pending > 0.0 && on_disk == 0.0,
            "{route:?}: nothing pending in memory after 60 s without VictoriaMetrics:\n{metrics}"
        ),
        Route::VmauthWithDiskBuffer => {
            assert!(
                on_disk > 0.0,
                "{route:?}: nothing in the disk buffer after 60 s without VictoriaMetrics:\n{metrics}"
            );
            // vmauth answered, with a 5xx (a 4xx would have been dropped).
            let answered_5xx =
                scrape_sum(&metrics, "pie_remote_write_requests_total", &["code=\"5"]);
            assert!(
                answered_5xx > 0.0,
                "{route:?}: no 5xx from vmauth:\n{metrics}"
            );
        }
    }
    vm.restart().await;
    for i in BEFORE + DURING + 1..=total {
        post(i, &mut windows).await;
    }

    // The sender backs off up to 30 s between attempts.
    let series = vm
        .export_until(selector, Duration::from_secs(60), delivered(total))
        .await;
    let counter = one(
        &series,
        "pie_performance_on_mount_probe_total",
        Some(("succeed", "true")),
    );
    // A counter born of an increment pushes its 0 first, a millisecond before (docs/design.md,
    // "Counters show their resets"); after it, one sample per result.
    let expected_counts: Vec<f64> = (0..=total).map(|i| i as f64).collect();
    assert_eq!(
        counter.values,
        expected_counts,
        "controller log:\n{}",
        controller.log_tail()
    );
    assert_eq!(
        counter.timestamps[0],
        counter.timestamps[1] - 1,
        "{counter:?}"
    );
    let stamps = &counter.timestamps[1..];
    let exact: [(&str, ValueOf); 3] = [
        ("pie_io_write_latency_on_mount_probe_seconds", |i| {
            i as f64 / 1000.0
        }),
        ("pie_io_read_latency_on_mount_probe_seconds", |i| {
            i as f64 / 2000.0
        }),
        ("pie_io_read_iops_on_mount_probe", |i| 1000.0 + i as f64),
    ];
    for (name, value) in exact {
        let s = one(&series, name, None);
        let want: Vec<f64> = (1..=total).map(value).collect();
        assert_eq!(s.values, want, "{name}");
        assert_eq!(
            s.timestamps, stamps,
            "{name}: one sample per result, stamped alike"
        );
    }
    // Each sample carries the time its result was received, in order.
    for (i, (ts, (sent, answered))) in stamps.iter().zip(&windows).enumerate() {
        assert!(
            sent <= ts && ts <= answered,
            "result {}: {ts} not in [{sent}, {answered}]",
            i + 1
        );
    }
    let last_success = one(
        &series,
        "pie_mount_probe_last_success_timestamp_seconds",
        None,
    );
    assert_eq!(last_success.timestamps, stamps);
    for (v, ts) in last_success.values.iter().zip(&last_success.timestamps) {
        assert_eq!((v * 1000.0).round() as i64, *ts);
    }
    // The other succeed value exists from the first result at 0, once.
    let failed = one(
        &series,
        "pie_performance_on_mount_probe_total",
        Some(("succeed", "false")),
    );
    assert_eq!(failed.values, [0.0]);
    assert_eq!(failed.timestamps, [stamps[0]]);
    assert_eq!(series.len(), 2 + exact.len() + 1, "{series:#?}");

    // The receiver's own counter went through the same queue.
    let requests = vm
        .export(r#"pie_receiver_requests_total{code="200",cluster="e2e-outage"}"#)
        .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].values, expected_counts);

    // The client felt the outage and dropped nothing.
    let metrics = controller.metrics().await;
    let retried = metric(&metrics, "pie_remote_write_samples_retried_total", &[]).unwrap_or(0.0);
    assert!(retried > 0.0, "no retries recorded:\n{metrics}");
    let dropped = scrape_sum(&metrics, "pie_remote_write_samples_dropped_total", &[]);
    assert_eq!(dropped, 0.0, "{metrics}");
}
