//! Harness for tests that talk to real external programs.
//!
//! Every program is started on a free loopback port with its own temporary directory and is
//! stopped (killed and reaped) when its handle is dropped, also when a test panics. A program
//! that is not installed makes the test fail with a message that says how to install it: CI
//! installs all of them (`task deps`), so these tests never silently skip there.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

/// Returns the full path of `binary`, or panics saying which Debian package provides it.
pub fn require_binary(binary: &str, debian_package: &str) -> PathBuf {
    find_binary(binary).unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed: install it with `apt-get install {debian_package}` \
             (or run `task deps`, which installs every program the tests need)"
        )
    })
}

/// Looks `binary` up on `PATH`.
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral loopback port")
}

/// An HTTP client for tests (plain HTTP on loopback, short timeouts).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build the test HTTP client")
}

/// A child process that is killed and reaped on drop. Its output goes to a log file that is
/// printed when the process fails to become ready.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command`, sending stdout and stderr to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Process {
        let out = File::create(&log).expect("create the process log");
        let err = out.try_clone().expect("clone the process log handle");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The last lines of the process log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Kills the process and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to `timeout` for it to exit, then kills
    /// it. Returns whether it exited by itself in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Polls `url` until it answers 200, panicking with the log tail after `timeout`.
    pub async fn wait_ready(&mut self, url: &str, timeout: Duration) {
        let client = http_client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = client.get(url).send().await
                && resp.status().is_success()
            {
                return;
            }
            if self.has_exited() || Instant::now() > deadline {
                panic!(
                    "{} did not become ready at {url}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One series as VictoriaMetrics' `/api/v1/export` returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExportedSeries {
    /// All labels including `__name__`.
    pub metric: BTreeMap<String, String>,
    /// Sample values, in timestamp order.
    pub values: Vec<f64>,
    /// Sample timestamps in milliseconds.
    pub timestamps: Vec<i64>,
}

/// A single-node VictoriaMetrics on a free loopback port with a temporary data directory.
#[derive(Debug)]
pub struct VictoriaMetrics {
    process: Process,
    port: u16,
    path_prefix: String,
    extra_args: Vec<String>,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics and waits until it is healthy.
    pub async fn start() -> VictoriaMetrics {
        VictoriaMetrics::start_with(&[]).await
    }

    /// Starts VictoriaMetrics with extra command-line flags (e.g. `-http.pathPrefix=/x`).
    pub async fn start_with(extra_args: &[&str]) -> VictoriaMetrics {
        let dir = tempfile::tempdir().expect("create a VictoriaMetrics data dir");
        let port = free_port();
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let path_prefix = extra_args
            .iter()
            .find_map(|a| a.strip_prefix("-http.pathPrefix="))
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        let process = Self::spawn(dir.path(), port, &extra_args);
        let mut vm = VictoriaMetrics {
            process,
            port,
            path_prefix,
            extra_args,
            dir,
        };
        vm.wait_ready().await;
        vm
    }

    fn spawn(dir: &Path, port: u16, extra_args: &[String]) -> Process {
        let binary = require_binary("victoria-metrics", "victoria-metrics");
        let mut command = Command::new(binary);
        command
            .arg(format!("-storageDataPath={}", dir.join("data").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            .arg("-search.disableCache")
            .arg("-search.latencyOffset=0s")
            .arg("-loggerLevel=WARN")
            .args(extra_args);
        Process::spawn(
            "victoria-metrics",
            command,
            dir.join(format!("victoria-metrics-{}.log", now_nanos())),
        )
    }

    async fn wait_ready(&mut self) {
        let url = format!("{}/health", self.base_url());
        self.process.wait_ready(&url, Duration::from_secs(30)).await;
    }

    /// `http://127.0.0.1:<port>` plus the configured `-http.pathPrefix`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path_prefix)
    }

    /// `http://127.0.0.1:<port>` without any path prefix.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The operating-system process id of VictoriaMetrics.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The port VictoriaMetrics listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Prometheus remote-write URL.
    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.base_url())
    }

    /// The vmui URL.
    pub fn vmui_url(&self) -> String {
        format!("{}/vmui/", self.base_url())
    }

    /// Stops VictoriaMetrics (SIGKILL); [`VictoriaMetrics::restart`] brings it back on the same
    /// port with the same data.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts VictoriaMetrics again on the same port and data directory and waits until healthy.
    pub async fn restart(&mut self) {
        self.process.stop();
        self.process = Self::spawn(self.dir.path(), self.port, &self.extra_args);
        self.wait_ready().await;
    }

    /// Stops VictoriaMetrics cleanly (SIGTERM, so everything it acknowledged is on disk;
    /// SIGKILL after 30 s) and starts it again on the same port and data directory. Returns
    /// how long it was not listening.
    pub async fn restart_gracefully(&mut self) -> Duration {
        let down = Instant::now();
        let clean = self.process.terminate(Duration::from_secs(30));
        assert!(
            clean,
            "victoria-metrics did not stop within 30 s of SIGTERM"
        );
        self.process = Self::spawn(self.dir.path(), self.port, &self.extra_args);
        self.wait_ready().await;
        down.elapsed()
    }

    /// Imports samples in the Prometheus text format with millisecond timestamps
    /// (`name{labels} value timestamp_ms` lines) through `/api/v1/import/prometheus`.
    pub async fn import_prometheus(&self, text: &str) {
        let url = format!("{}/api/v1/import/prometheus", self.base_url());
        let resp = http_client()
            .post(&url)
            .body(text.to_owned())
            .send()
            .await
            .expect("import request");
        let status = resp.status();
        assert!(status.is_success(), "import: {status}");
    }

    /// Makes recently ingested samples searchable at once.
    pub async fn force_flush(&self) {
        let url = format!("{}/internal/force_flush", self.base_url());
        let resp = http_client().get(&url).send().await.expect("force_flush");
        assert!(resp.status().is_success(), "force_flush: {}", resp.status());
    }

    /// Every series matching the series selector `selector`, as `/api/v1/export` returns it,
    /// sorted by labels.
    pub async fn export(&self, selector: &str) -> Vec<ExportedSeries> {
        self.force_flush().await;
        let url = format!("{}/api/v1/export", self.base_url());
        let resp = http_client()
            .post(&url)
            // VictoriaMetrics 1.79 ends exports a little before "now" unless told otherwise;
            // samples stamped "now" must be included.
            .form(&[
                ("match[]", selector),
                ("reduce_mem_usage", "1"),
                ("end", &(now_millis() / 1000 + 3600).to_string()),
            ])
            .send()
            .await
            .expect("export request");
        let status = resp.status();
        let body = resp.text().await.expect("export body");
        assert!(status.is_success(), "export {selector}: {status}: {body}");
        let mut series: Vec<ExportedSeries> = body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("export line {l}: {e}")))
            .collect();
        series.sort_by(|a, b| a.metric.cmp(&b.metric));
        series
    }

    /// Polls [`VictoriaMetrics::export`] until `done` holds for its answer or `timeout` passes;
    /// returns the last answer either way.
    pub async fn export_until(
        &self,
        selector: &str,
        timeout: Duration,
        done: impl Fn(&[ExportedSeries]) -> bool,
    ) -> Vec<ExportedSeries> {
        let deadline = Instant::now() + timeout;
        loop {
            let series = self.export(selector).await;
            if done(&series) || Instant::now() > deadline {
                return series;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The log tail, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// `vmauth` on a free loopback port with the given auth config.
#[derive(Debug)]
pub struct Vmauth {
    _process: Process,
    port: u16,
    _dir: TempDir,
}

impl Vmauth {
    /// Starts vmauth with `config` (YAML) and waits until it answers.
    pub async fn start(config: &str) -> Vmauth {
        let binary = require_binary("vmauth", "victoria-metrics");
        let dir = tempfile::tempdir().expect("create a vmauth dir");
        let config_path = dir.path().join("auth.yml");
        std::fs::write(&config_path, config).expect("write the vmauth config");
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .arg(format!("-auth.config={}", config_path.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-loggerLevel=WARN");
        let mut process = Process::spawn("vmauth", command, dir.path().join("vmauth.log"));
        process
            .wait_ready(
                &format!("http://127.0.0.1:{port}/health"),
                Duration::from_secs(30),
            )
            .await;
        Vmauth {
            _process: process,
            port,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Prometheus with `--web.enable-remote-write-receiver` on a free loopback port.
#[derive(Debug)]
pub struct Prometheus {
    _process: Process,
    port: u16,
    _dir: TempDir,
}

/// One series as Prometheus' `/api/v1/query` returns a range-vector selector.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSeries {
    /// All labels including `__name__`.
    pub metric: BTreeMap<String, String>,
    /// `(timestamp in ms, value)` pairs.
    pub samples: Vec<(i64, f64)>,
}

impl Prometheus {
    /// Starts Prometheus as a remote-write receiver and waits until it is ready.
    pub async fn start() -> Prometheus {
        let binary = require_binary("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("create a Prometheus dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("write prometheus.yml");
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--log.level=warn");
        let mut process = Process::spawn("prometheus", command, dir.path().join("prometheus.log"));
        process
            .wait_ready(
                &format!("http://127.0.0.1:{port}/-/ready"),
                Duration::from_secs(60),
            )
            .await;
        Prometheus {
            _process: process,
            port,
            _dir: dir,
        }
    }

    /// The remote-write receiver URL.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// Evaluates a range-vector `query` (e.g. `up[1h]`) at `time_s` and returns every series.
    pub async fn query_range_vector(&self, query: &str, time_s: f64) -> Vec<PromSeries> {
        #[derive(Deserialize)]
        struct Resp {
            data: Data,
        }
        #[derive(Deserialize)]
        struct Data {
            result: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            metric: BTreeMap<String, String>,
            values: Vec<(f64, String)>,
        }
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let resp = http_client()
            .post(&url)
            .form(&[("query", query), ("time", &format!("{time_s:.3}"))])
            .send()
            .await
            .expect("prometheus query");
        let status = resp.status();
        let body = resp.text().await.expect("prometheus query body");
        assert!(status.is_success(), "query {query}: {status}: {body}");
        let parsed: Resp = serde_json::from_str(&body).expect("prometheus query JSON");
        let mut out: Vec<PromSeries> = parsed
            .data
            .result
            .into_iter()
            .map(|item| PromSeries {
                metric: item.metric,
                samples: item
                    .values
                    .into_iter()
                    .map(|(t, v)| ((t * 1000.0).round() as i64, v.parse().unwrap_or(f64::NAN)))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.metric.cmp(&b.metric));
        out
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, where `labels` are
/// all of the series' labels (in any order).
pub fn scrape_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (n, rest) = key.split_once('{').unwrap_or((key, "}"));
            if n != name {
                return None;
            }
            let inner = rest.strip_suffix('}')?;
            let mut got: Vec<(&str, &str)> = if inner.is_empty() {
                Vec::new()
            } else {
                inner
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap_or((pair, ""));
                        (k, v.trim_end_matches('"'))
                    })
                    .collect()
            };
            got.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            (got == want).then(|| value.parse().ok()).flatten()
        })
}

/// The resident set size of process `pid` in bytes (Linux `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The total size in bytes of the regular files under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Builds the `pie-controller` binary (debug) into `target` (the tests' own target
/// directory, `<target>/<profile>/deps/<test>` three levels up from the test binary) and
/// returns its path.
pub fn build_pie_controller(target: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "pie-controller", "--bin", "pie-controller"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of pie-controller failed");
    target.join("debug").join("pie-controller")
}

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
