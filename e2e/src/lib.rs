//! Harness for tests that talk to real external programs.
//!
//! Every program is started on a free loopback port with its own temporary directory and is
//! stopped (killed and reaped) when its handle is dropped, also when a test panics. A program
//! that is not installed makes the test fail with a message that says how to install it: CI
//! installs all of them (`task deps`), so these tests never silently skip there.

pub mod cluster;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

/// GETs a `/metrics` URL and returns its text; panics unless it answers 2xx.
pub async fn scrape(url: &str) -> String {
    let resp = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.text().await.expect("/metrics body")
}

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

    /// Sends SIGTERM and returns at once; see [`Process::wait_exit`].
    pub fn terminate(&self) {
        if let Err(e) = self.send_term() {
            panic!("SIGTERM to {}: {e}", self.name);
        }
    }

    /// Sends SIGTERM to the process, if it was not stopped yet.
    fn send_term(&self) -> std::io::Result<()> {
        let Some(child) = self.child.as_ref() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| std::io::Error::other(format!("invalid pid {}", child.id())))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own and returns its exit status,
    /// or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
    pub fn terminate_within(&mut self, timeout: Duration) -> bool {
        // An error means it is gone already; the loop below reaps it.
        let _ = self.send_term();
        let Some(mut child) = self.child.take() else {
            return true;
        };
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

    /// Stops VictoriaMetrics with SIGTERM and waits for it to exit, so that everything it
    /// acknowledged is on disk (SIGKILL may lose the last second of acknowledged samples);
    /// [`VictoriaMetrics::restart`] brings it back.
    pub async fn stop_gracefully(&mut self) {
        self.process.terminate();
        let status = self.process.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.is_some(),
            "victoria-metrics did not exit within 30 s of SIGTERM; log:\n{}",
            self.log_tail()
        );
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
        let clean = self.process.terminate_within(Duration::from_secs(30));
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
    /// one entry per series (sorted by labels) with its samples in timestamp order.
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
        // With reduce_mem_usage a series stored in several parts (e.g. across a restart)
        // comes as several lines: merge them, keeping every sample (duplicates included).
        let mut merged: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let part: ExportedSeries =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("export line {line}: {e}"));
            merged
                .entry(part.metric)
                .or_default()
                .extend(part.timestamps.into_iter().zip(part.values));
        }
        merged
            .into_iter()
            .map(|(metric, mut samples)| {
                samples.sort_by_key(|(t, _)| *t);
                ExportedSeries {
                    metric,
                    timestamps: samples.iter().map(|(t, _)| *t).collect(),
                    values: samples.into_iter().map(|(_, v)| v).collect(),
                }
            })
            .collect()
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

/// `<target>` of the running test binary (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_owned()
}

/// `pie-controller` and `pie-agent`, built for the tests.
#[derive(Debug)]
pub struct PieBinaries {
    /// The `pie-controller` binary.
    pub controller: PathBuf,
    /// The `pie-agent` binary.
    pub agent: PathBuf,
}

/// Builds `pie-controller` and `pie-agent` (debug) into the running test's target dir, once
/// per test binary, and returns their paths.
pub fn pie_binaries() -> &'static PieBinaries {
    static BINARIES: OnceLock<PieBinaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let target = target_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "-p", "pie-controller", "-p", "pie-agent"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Cargo gives the test process the package's variables; a build script that reruns
        // when one of them changes (ring: CARGO_MANIFEST_DIR) would otherwise be rebuilt here
        // and again by the next `cargo test`, with everything that depends on it.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                command.env_remove(name.as_ref());
            }
        }
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        let bin = target.join("debug");
        PieBinaries {
            controller: bin.join("pie-controller"),
            agent: bin.join("pie-agent"),
        }
    })
}

/// The shipped plain rule file, `deploy/alerts/pie.rules.yml`.
pub fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy/alerts/pie.rules.yml")
}

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
        let mut process = Process::spawn(
            "pie-controller receive",
            command,
            dir.path().join("controller.log"),
        );
        process
            .wait_ready(
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

/// One alert as vmalert's `/api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmalertAlert {
    /// The alert name.
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    /// The expression's value, as text.
    pub value: String,
    /// All labels, including `alertname` and `alertgroup`.
    pub labels: BTreeMap<String, String>,
    /// The rendered annotations.
    pub annotations: BTreeMap<String, String>,
}

/// One rule as vmalert's `/api/v1/rules` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmalertRule {
    /// Alert name or recorded metric name.
    pub name: String,
    /// `alerting` or `recording`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ok` or `err`.
    pub health: String,
    /// The last evaluation's error, empty if none.
    #[serde(rename = "lastError", default)]
    pub last_error: String,
    /// When the rule was last evaluated (RFC 3339); `0001-01-01...` before the first time.
    #[serde(rename = "lastEvaluation", default)]
    pub last_evaluation: String,
}

/// vmalert on a free loopback port, evaluating `rules` against a VictoriaMetrics, writing
/// recording rules and `ALERTS` back to it, and sending alerts to `notifier_url`.
#[derive(Debug)]
pub struct Vmalert {
    process: Process,
    port: u16,
    _dir: TempDir,
}

impl Vmalert {
    /// Starts vmalert with the rule file `rules`, evaluated every `interval` (e.g. `1s`)
    /// against `vm`, and waits until it answers.
    pub async fn start(
        rules: &Path,
        vm: &VictoriaMetrics,
        notifier_url: &str,
        interval: &str,
    ) -> Vmalert {
        let binary = require_binary("vmalert", "victoria-metrics");
        let dir = tempfile::tempdir().expect("create a vmalert dir");
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .arg(format!("-rule={}", rules.display()))
            .arg(format!("-datasource.url={}", vm.base_url()))
            .arg(format!("-remoteWrite.url={}", vm.base_url()))
            .arg(format!("-notifier.url={notifier_url}"))
            .arg(format!("-evaluationInterval={interval}"))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-external.url=http://127.0.0.1:{port}"))
            .arg("-loggerLevel=WARN");
        let mut process = Process::spawn("vmalert", command, dir.path().join("vmalert.log"));
        process
            .wait_ready(
                &format!("http://127.0.0.1:{port}/health"),
                Duration::from_secs(30),
            )
            .await;
        Vmalert {
            process,
            port,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let url = format!("{}{path}", self.base_url());
        let resp = http_client().get(&url).send().await.expect("vmalert API");
        let status = resp.status();
        let body = resp.text().await.expect("vmalert API body");
        assert!(status.is_success(), "{url}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
    }

    /// The active (pending or firing) alerts, sorted by labels.
    pub async fn alerts(&self) -> Vec<VmalertAlert> {
        #[derive(Deserialize)]
        struct Resp {
            data: Data,
        }
        #[derive(Deserialize)]
        struct Data {
            // `null` when there is none.
            alerts: Option<Vec<VmalertAlert>>,
        }
        let mut alerts = self
            .get::<Resp>("/api/v1/alerts")
            .await
            .data
            .alerts
            .unwrap_or_default();
        alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
        alerts
    }

    /// Every rule of every group.
    pub async fn rules(&self) -> Vec<VmalertRule> {
        #[derive(Deserialize)]
        struct Resp {
            data: Data,
        }
        #[derive(Deserialize)]
        struct Data {
            groups: Vec<Group>,
        }
        #[derive(Deserialize)]
        struct Group {
            rules: Vec<VmalertRule>,
        }
        self.get::<Resp>("/api/v1/rules")
            .await
            .data
            .groups
            .into_iter()
            .flat_map(|g| g.rules)
            .collect()
    }

    /// Polls [`Vmalert::alerts`] until `done` holds or `timeout` passes; returns the last
    /// answer either way.
    pub async fn alerts_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[VmalertAlert]) -> bool,
    ) -> Vec<VmalertAlert> {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.alerts().await;
            if done(&alerts) || Instant::now() > deadline {
                return alerts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
