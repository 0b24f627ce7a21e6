//! The durable remote-write buffer of `pie-controller receive`, with real processes:
//!
//! - crash: results accepted while VictoriaMetrics is down are buffered on disk; the
//!   controller is killed with SIGKILL, started again on the same buffer directory, and once
//!   VictoriaMetrics is back every accepted result is in it exactly once;
//! - cap: during a long outage a small `--remote-write-buffer-max-bytes` keeps the disk (and
//!   memory) bounded, the drop is counted in the self-metrics, and what survives is the newest.
//!
//! Both once per VictoriaMetrics release (Debian's 1.79, the current one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    MOUNT_RESULT_GAUGES, Process, VictoriaMetrics, VmRelease, assert_results_exactly_once,
    build_pie_controller, dir_bytes, free_port, http_client, probe_result_json, rss_bytes,
    scrape_value, target_dir, test_each_vm,
};

/// Samples one successful result puts in the store: the gauges and both `succeed` counters.
const SAMPLES_PER_RESULT: u64 = MOUNT_RESULT_GAUGES.len() as u64 + 2;

struct Controller {
    process: Process,
    port: u16,
    metrics_url: String,
}

impl Controller {
    /// Starts `pie-controller receive` on loopback with the given extra arguments and
    /// environment, and waits for `/metrics`.
    async fn start(
        bin: &Path,
        log: PathBuf,
        args: &[String],
        env: &[(&str, String)],
    ) -> Controller {
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = Command::new(bin);
        cmd.arg("receive")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            // Only the results themselves are pushed: no periodic re-send during the test.
            .args(["--push-interval", "1h"])
            .args(args)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = Process::spawn("pie-controller", cmd, log);
        let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
        process
            .wait_ready(&metrics_url, Duration::from_secs(60))
            .await;
        Controller {
            process,
            port,
            metrics_url,
        }
    }

    async fn metrics(&self) -> String {
        e2e::scrape(&self.metrics_url).await
    }

    /// Polls `/metrics` until `done` holds; panics with the log after `timeout`.
    async fn metrics_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; /metrics:\n{}\nlog:\n{}",
                text.lines()
                    .filter(|l| l.contains("pie_remote_write") && !l.contains("_bucket"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts one result; returns the HTTP status.
    async fn post(&self, client: &reqwest::Client, body: String) -> u16 {
        client
            .post(format!("http://127.0.0.1:{}/api/v1/results", self.port))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}

/// A remote-write self-metric of `url` (0 when absent).
fn rw(text: &str, name: &str, url: &str) -> f64 {
    scrape_value(text, name, &[("url", url)]).unwrap_or(0.0)
}

fn dropped(text: &str, url: &str, reason: &str) -> f64 {
    scrape_value(
        text,
        "pie_remote_write_samples_dropped_total",
        &[("url", url), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// Bytes of the buffer's segment files (`*.seg`) under `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += segment_bytes(&path);
        } else if path.extension().is_some_and(|e| e == "seg") {
            total += entry.metadata().map_or(0, |m| m.len());
        }
    }
    total
}

/// VictoriaMetrics must keep a sample sent twice twice (no `-dedup.minScrapeInterval`), or
/// the exactly-once checks below could not see a duplicate.
async fn assert_duplicates_are_visible(vm: &VictoriaMetrics) {
    let ts = e2e::now_millis() - 60_000;
    let line = format!("pie_e2e_duplicate_check{{cluster=\"selfcheck\"}} 1 {ts}\n");
    vm.import_prometheus(&line).await;
    vm.import_prometheus(&line).await;
    let got = vm
        .export_until(
            r#"{__name__="pie_e2e_duplicate_check"}"#,
            Duration::from_secs(10),
            |s| s.first().is_some_and(|s| s.timestamps.len() >= 2),
        )
        .await;
    assert_eq!(
        got.first().map(|s| s.timestamps.clone()),
        Some(vec![ts, ts]),
        "VictoriaMetrics deduplicates; the duplicate checks would be blind"
    );
}

test_each_vm!(
    results_buffered_before_a_kill_9_reach_victoria_metrics_exactly_once,
    a_small_buffer_cap_bounds_the_disk_in_a_long_outage_and_counts_the_drop,
);

async fn results_buffered_before_a_kill_9_reach_victoria_metrics_exactly_once(release: VmRelease) {
    const RESULTS: usize = 60;
    let bin = build_pie_controller(&target_dir());
    let mut vm = VictoriaMetrics::start_release(release, &[]).await;
    let url = vm.write_url();
    // VictoriaMetrics is down from the start: nothing can be delivered.
    vm.stop();
    let dir = tempfile::tempdir_in(target_dir()).expect("a work dir on a real filesystem");
    let buffer = dir.path().join("buffer");
    let args = vec![
        "--remote-write-url".to_owned(),
        url.clone(),
        "--external-label".into(),
        "cluster=crash".into(),
        "--remote-write-buffer-dir".into(),
        buffer.display().to_string(),
    ];
    let mut first = Controller::start(&bin, dir.path().join("first.log"), &args, &[]).await;

    let client = http_client();
    let posted_from = e2e::now_millis();
    for i in 0..RESULTS {
        let body = probe_result_json("crash", &format!("node-{i:03}"), "sc", (i + 1) as f64);
        let status = first.post(&client, body).await;
        assert_eq!(
            status,
            200,
            "result {i}; log:\n{}",
            first.process.log_tail()
        );
    }
    let posted_to = e2e::now_millis();

    // Every accepted result leaves memory for the disk buffer (the queue is moved to disk at
    // each flush interval while the endpoint fails); nothing is dropped.
    let expected = RESULTS as f64 * SAMPLES_PER_RESULT as f64;
    let before_kill = first
        .metrics_until("the results to be on disk", Duration::from_secs(30), |m| {
            rw(m, "pie_remote_write_pending_samples", &url) == 0.0
                && rw(m, "pie_remote_write_buffer_samples", &url) >= expected
        })
        .await;
    for reason in [
        "queue_full",
        "buffer_full",
        "out_of_order",
        "invalid",
        "http_4xx",
    ] {
        assert_eq!(dropped(&before_kill, &url, reason), 0.0, "{reason}");
    }
    assert_eq!(
        rw(&before_kill, "pie_remote_write_samples_total", &url),
        0.0
    );
    let records = rw(&before_kill, "pie_remote_write_buffer_records", &url);
    let buffered_samples = rw(&before_kill, "pie_remote_write_buffer_samples", &url);
    let written = rw(
        &before_kill,
        "pie_remote_write_buffer_records_written_total",
        &url,
    );
    assert!(records >= 1.0 && written >= records, "{records} {written}");

    eprintln!(
        "crash: {RESULTS} results accepted, {records} records / {buffered_samples} samples on disk; kill -9"
    );
    first.process.stop(); // SIGKILL: no shutdown, no flush
    // What the gauge said is what is on disk.
    assert_eq!(
        segment_bytes(&buffer) as f64,
        rw(&before_kill, "pie_remote_write_buffer_bytes", &url),
        "segment files in {}",
        buffer.display()
    );

    // Started again on the same directory (given through the env var this time), while
    // VictoriaMetrics is still down: the buffer is found intact.
    let second = Controller::start(
        &bin,
        dir.path().join("second.log"),
        &args[..4],
        &[("PIE_REMOTE_WRITE_BUFFER_DIR", buffer.display().to_string())],
    )
    .await;
    // (The second process' own first samples may join the buffer behind the old records.)
    let reopened = second.metrics().await;
    assert!(
        rw(&reopened, "pie_remote_write_buffer_records", &url) >= records,
        "every record survives the kill"
    );
    assert!(rw(&reopened, "pie_remote_write_buffer_samples", &url) >= buffered_samples);
    assert_eq!(
        rw(
            &reopened,
            "pie_remote_write_buffer_records_corrupted_total",
            &url
        ),
        0.0
    );

    vm.restart().await;
    let delivered = second
        .metrics_until("the buffer to be replayed", Duration::from_secs(60), |m| {
            rw(m, "pie_remote_write_buffer_records", &url) == 0.0
                && rw(m, "pie_remote_write_pending_samples", &url) == 0.0
        })
        .await;
    assert!(
        rw(
            &delivered,
            "pie_remote_write_buffer_records_replayed_total",
            &url
        ) >= records,
        "the records left by the first process are replayed"
    );
    assert_eq!(
        rw(
            &delivered,
            "pie_remote_write_buffer_records_corrupted_total",
            &url
        ),
        0.0
    );
    for reason in ["queue_full", "buffer_full", "http_4xx"] {
        assert_eq!(dropped(&delivered, &url, reason), 0.0, "{reason}");
    }

    assert_duplicates_are_visible(&vm).await;
    let exported = vm.export(r#"{__name__=~"pie_.*",cluster="crash"}"#).await;
    let results: Vec<(String, f64)> = (0..RESULTS)
        .map(|i| (format!("node-{i:03}"), (i + 1) as f64))
        .collect();
    assert_results_exactly_once(&exported, &results, posted_from..=posted_to + 1000);
    // The receiver's own counter went 0 (pushed first, as every counter born of an increment),
    // 1, 2, ..., RESULTS: each value once.
    let mut requests: Vec<f64> = exported
        .iter()
        .filter(|s| {
            s.metric["__name__"] == "pie_receiver_requests_total" && s.metric["code"] == "200"
        })
        .flat_map(|s| s.values.clone())
        .collect();
    // (An export may split a series over several lines.)
    requests.sort_by(f64::total_cmp);
    let want: Vec<f64> = (0..=RESULTS).map(|n| n as f64).collect();
    assert_eq!(requests, want);
}

async fn a_small_buffer_cap_bounds_the_disk_in_a_long_outage_and_counts_the_drop(
    release: VmRelease,
) {
    const RESULTS: usize = 1500;
    const CAP: u64 = 64 * 1024;
    let bin = build_pie_controller(&target_dir());
    let mut vm = VictoriaMetrics::start_release(release, &[]).await;
    let url = vm.write_url();
    vm.stop();
    let dir = tempfile::tempdir_in(target_dir()).expect("a work dir on a real filesystem");
    let buffer = dir.path().join("buffer");
    let controller = Controller::start(
        &bin,
        dir.path().join("cap.log"),
        &[
            "--remote-write-url".to_owned(),
            url.clone(),
            "--external-label".into(),
            "cluster=cap".into(),
        ],
        &[
            ("PIE_REMOTE_WRITE_BUFFER_DIR", buffer.display().to_string()),
            ("PIE_REMOTE_WRITE_BUFFER_MAX_BYTES", "64Ki".to_owned()),
        ],
    )
    .await;

    // Watch the directory and the process while results pour in.
    let stop = Arc::new(AtomicBool::new(false));
    let max_disk = Arc::new(AtomicU64::new(0));
    let max_rss = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, max_disk, max_rss) = (stop.clone(), max_disk.clone(), max_rss.clone());
        let buffer = buffer.clone();
        let pid = controller.process.pid();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max_disk.fetch_max(dir_bytes(&buffer), Ordering::Relaxed);
                max_rss.fetch_max(rss_bytes(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let client = http_client();
    let controller = Arc::new(controller);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (client, controller) = (client.clone(), controller.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in (worker..RESULTS).step_by(4) {
                let body = probe_result_json("cap", &format!("node-{i:04}"), "sc", 1.0);
                let status = controller.post(&client, body).await;
                if status != 200 {
                    failed.push((i, status));
                }
            }
            failed
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Vec::<(usize, u16)>::new());
    }
    // The last result, posted after all others were accepted, is the newest.
    let last = probe_result_json("cap", "node-last", "sc", 1.0);
    assert_eq!(controller.post(&client, last).await, 200);

    let full = controller
        .metrics_until(
            "the results to be on disk or dropped by the cap",
            Duration::from_secs(30),
            |m| {
                rw(m, "pie_remote_write_pending_samples", &url) == 0.0
                    && rw(m, "pie_remote_write_buffer_records_dropped_total", &url) > 0.0
            },
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    let cap_dropped = dropped(&full, &url, "buffer_full");
    let buffered = rw(&full, "pie_remote_write_buffer_samples", &url);
    assert!(cap_dropped > 0.0, "samples dropped by the cap are counted");
    assert_eq!(dropped(&full, &url, "queue_full"), 0.0);
    // What was accepted is either still on disk or counted as dropped by the cap.
    let accepted = (RESULTS as f64 + 1.0) * SAMPLES_PER_RESULT as f64;
    assert!(
        buffered + cap_dropped >= accepted,
        "{buffered} buffered + {cap_dropped} dropped < {accepted} accepted"
    );
    assert!(buffered < accepted, "the cap kept only part");
    let bytes = rw(&full, "pie_remote_write_buffer_bytes", &url);
    assert!(bytes > 0.0 && bytes <= CAP as f64, "buffer_bytes {bytes}");
    // Segments stay under the cap; the bookkeeping files (url, lock, ack) are a few bytes.
    let max_disk = max_disk.load(Ordering::Relaxed);
    assert!(
        max_disk <= CAP + 1024,
        "the buffer directory reached {max_disk} bytes (cap {CAP})"
    );
    let max_rss = max_rss.load(Ordering::Relaxed);
    eprintln!(
        "cap: {buffered} samples buffered, {cap_dropped} dropped by the cap, buffer {bytes} bytes, \
         directory peak {max_disk} bytes, peak RSS {max_rss} bytes"
    );
    assert!(
        max_rss > 0 && max_rss < 128 << 20,
        "peak RSS {max_rss} bytes (the Deployment's limit is 512Mi)"
    );

    // When VictoriaMetrics returns, what the cap kept arrives: the newest results, not the
    // oldest.
    vm.restart().await;
    controller
        .metrics_until("the buffer to be replayed", Duration::from_secs(60), |m| {
            rw(m, "pie_remote_write_buffer_records", &url) == 0.0
                && rw(m, "pie_remote_write_pending_samples", &url) == 0.0
        })
        .await;
    let exported = vm
        .export(r#"{__name__="pie_io_write_latency_on_mount_probe_seconds",cluster="cap"}"#)
        .await;
    let nodes: BTreeSet<&str> = exported.iter().map(|s| s.metric["node"].as_str()).collect();
    assert!(nodes.contains("node-last"), "the newest result survives");
    assert!(
        !nodes.contains("node-0000"),
        "the oldest segment went first"
    );
    assert!(
        nodes.len() < RESULTS,
        "{} of {RESULTS} results arrived despite the cap",
        nodes.len()
    );
    eprintln!("cap: {} of {RESULTS} results arrived", nodes.len());
    let by_key = e2e::samples_by_key(&exported);
    assert!(
        by_key.values().all(|v| v.len() == 1),
        "duplicates after replay"
    );
}
