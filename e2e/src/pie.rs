//! pie under test: `pie-controller receive` with its shared token, `pie-agent mount-probe`
//! against it, and the result an agent posts, for tests that post results themselves.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use tempfile::TempDir;

use crate::time::now_nanos;
use crate::{
    ExportedSeries, Process, free_port, http_client, pie_binaries, samples_by_key, scrape,
};

/// `pie-controller receive` on a free loopback port, with a shared token, `/metrics` on another
/// free loopback port, and remote write to the given URL.
#[derive(Debug)]
pub struct PieReceive {
    process: Process,
    port: u16,
    metrics_port: u16,
    token: String,
    dir: TempDir,
}

impl PieReceive {
    /// Starts `pie-controller receive` pushing to `write_url` with `cluster=<cluster>`, plus
    /// `extra_args`, and waits until `/metrics` answers.
    pub async fn start(write_url: &str, cluster: &str, extra_args: &[&str]) -> PieReceive {
        let binaries = pie_binaries();
        let dir = tempfile::tempdir().expect("create a pie-controller dir");
        let token = format!("e2e-token-{}", now_nanos());
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");
        let (port, metrics_port) = (free_port(), free_port());
        let mut command = Command::new(&binaries.controller);
        command
            .arg("receive")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--auth-token-file")
            .arg(&token_file)
            .args(["--remote-write-url", write_url])
            .args(["--external-label", &format!("cluster={cluster}")])
            .args(extra_args)
            .env("RUST_LOG", "info");
        let process = Process::spawn_ready(
            "pie-controller receive",
            command,
            dir.path().join("controller.log"),
            &format!("http://127.0.0.1:{metrics_port}/metrics"),
            Duration::from_secs(30),
        )
        .await;
        PieReceive {
            process,
            port,
            metrics_port,
            token,
            dir,
        }
    }

    /// `http://127.0.0.1:<port>`, what agents get as `--controller-url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The receiver's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `URL/api/v1/results`.
    pub fn results_url(&self) -> String {
        format!("{}/api/v1/results", self.url())
    }

    /// The shared token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The file holding the shared token, for `pie-agent --token-file`.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// `/metrics` in the Prometheus text format.
    pub async fn metrics(&self) -> String {
        scrape(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await
    }

    /// POSTs `result` as JSON with the shared token; returns the status code.
    pub async fn post(&self, result: &serde_json::Value) -> u16 {
        http_client()
            .post(self.results_url())
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(result).expect("serialize a result"))
            .send()
            .await
            .expect("POST a result")
            .status()
            .as_u16()
    }

    /// POSTs [`probe_result_json`]`(probe, node, storage_class, value)` and fails the test
    /// (with the receiver's log) unless it is accepted.
    pub async fn post_probe_result(
        &self,
        probe: &str,
        node: &str,
        storage_class: &str,
        value: f64,
    ) {
        let body: serde_json::Value =
            serde_json::from_str(&probe_result_json(probe, node, storage_class, value))
                .expect("probe_result_json is JSON");
        let status = self.post(&body).await;
        assert_eq!(status, 200, "result of {node}; log:\n{}", self.log_tail());
    }

    /// Runs `pie-agent mount-probe` (real fio, 8 MiB) on `path` against this receiver.
    pub fn mount_probe(&self, path: &Path, node: &str, storage_class: &str, probe: &str) -> Output {
        Command::new(&pie_binaries().agent)
            .arg("mount-probe")
            .args(["--controller-url", &self.url()])
            .arg("--path")
            .arg(path)
            .args(["--node-name", node])
            .args(["--storage-class", storage_class])
            .args(["--pie-probe-name", probe])
            .arg("--token-file")
            .arg(self.token_file())
            .args(["--size", "8M"])
            .output()
            .expect("run pie-agent")
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.process.has_exited()
    }

    /// The log tail, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// The gauges every successful mount-probe result sets, one series each. Such a result also
/// increments `pie_performance_on_mount_probe_total` twice: its read and its write series.
pub const MOUNT_RESULT_GAUGES: [&str; 9] = [
    "pie_io_write_latency_on_mount_probe_seconds",
    "pie_io_read_latency_on_mount_probe_seconds",
    "pie_io_read_iops_on_mount_probe",
    "pie_io_write_iops_on_mount_probe",
    "pie_io_read_bytes_per_second_on_mount_probe",
    "pie_io_write_bytes_per_second_on_mount_probe",
    "pie_io_read_latency_p99_on_mount_probe_seconds",
    "pie_io_write_latency_p99_on_mount_probe_seconds",
    "pie_mount_probe_last_success_timestamp_seconds",
];

/// A successful mount-probe result as `pie-agent` posts it, with every fio extra set from
/// `value` (so each result is recognisable in VictoriaMetrics by its values).
pub fn probe_result_json(probe: &str, node: &str, storage_class: &str, value: f64) -> String {
    serde_json::json!({
        "pie_probe_name": probe,
        "node": node,
        "storage_class": storage_class,
        "write_latency": value,
        "read_latency": value,
        "performance_probe_succeed": true,
        "read_iops": value,
        "write_iops": value,
        "read_bytes_per_second": value,
        "write_bytes_per_second": value,
        "read_latency_p99": value,
        "write_latency_p99": value,
    })
    .to_string()
}

/// Checks that `exported` holds every result `(node, value)` posted as
/// [`probe_result_json`]`(_, node, _, value)` exactly once: no series has two samples at one
/// timestamp, and each node has the gauges and both `succeed` counters, one sample each, stamped
/// within `posted` (ms), with the result's values; the `succeed="true"` counter, born of the
/// result's increment, has its 0 a millisecond before (docs/design.md, "Counters show their
/// resets").
pub fn assert_results_exactly_once(
    exported: &[ExportedSeries],
    results: &[(String, f64)],
    posted: RangeInclusive<i64>,
) {
    let duplicates: Vec<_> = samples_by_key(exported)
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    for (node, value) in results {
        let of_node: Vec<&ExportedSeries> = exported
            .iter()
            .filter(|s| s.metric.get("node") == Some(node))
            .collect();
        assert_eq!(
            of_node.len(),
            MOUNT_RESULT_GAUGES.len() + 2,
            "{node}: {of_node:?}"
        );
        for s in of_node {
            let name = s.metric["__name__"].as_str();
            let incremented =
                name == "pie_performance_on_mount_probe_total" && s.metric["succeed"] == "true";
            let s = &if incremented {
                assert_eq!(s.values.len(), 2, "{name} of {node}: {s:?}");
                assert_eq!(s.values[0], 0.0, "{name} of {node}: {s:?}");
                assert_eq!(
                    s.timestamps[0],
                    s.timestamps[1] - 1,
                    "{name} of {node}: {s:?}"
                );
                ExportedSeries {
                    metric: s.metric.clone(),
                    values: s.values[1..].to_vec(),
                    timestamps: s.timestamps[1..].to_vec(),
                }
            } else {
                (*s).clone()
            };
            assert_eq!(s.timestamps.len(), 1, "{name} of {node}: {s:?}");
            assert!(posted.contains(&s.timestamps[0]), "{name} of {node}: {s:?}");
            let want = match name {
                "pie_performance_on_mount_probe_total" if s.metric["succeed"] == "true" => 1.0,
                "pie_performance_on_mount_probe_total" => 0.0,
                "pie_mount_probe_last_success_timestamp_seconds" => s.timestamps[0] as f64 / 1e3,
                _ => *value,
            };
            // VictoriaMetrics keeps about 12 significant digits (Unix seconds with ms).
            assert!((s.values[0] - want).abs() < 0.01, "{name} of {node}: {s:?}");
        }
    }
}
