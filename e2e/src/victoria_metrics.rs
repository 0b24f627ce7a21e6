//! A single-node VictoriaMetrics, the store pie writes to, of either [`VmRelease`], and how the
//! tests read it back: `/api/v1/export` returns the raw samples (a query would evaluate them),
//! which is what the exactly-once and value checks compare.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

use crate::http::ok_body;
use crate::time::now_nanos;
use crate::time::poll_until;
use crate::{Process, VmRelease, free_port, http_client, now_millis};

/// One series as VictoriaMetrics' `/api/v1/export` returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExportedSeries {
    /// All labels including `__name__`.
    pub metric: BTreeMap<String, String>,
    /// Sample values, in timestamp order; a staleness marker (exported as `null`) is NaN.
    #[serde(deserialize_with = "values_with_markers")]
    pub values: Vec<f64>,
    /// Sample timestamps in milliseconds.
    pub timestamps: Vec<i64>,
}

/// An export line with the staleness markers VictoriaMetrics writes as a bare `NaN` (not JSON)
/// in its `values` array turned into `null` (which it also writes for them).
fn markers_as_null(line: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = line.find("\"values\":[") else {
        return line.into();
    };
    let Some(len) = line[start..].find(']') else {
        return line.into();
    };
    let values = &line[start..start + len];
    if !values.contains("NaN") {
        return line.into();
    }
    format!(
        "{}{}{}",
        &line[..start],
        values.replace("NaN", "null"),
        &line[start + len..]
    )
    .into()
}

/// Export values, where VictoriaMetrics writes a staleness marker as `null`.
fn values_with_markers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let values: Vec<Option<f64>> = Vec::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// Every sample of `series` as `(labels, timestamp) -> values`; more than one value under a key
/// is a duplicate.
pub fn samples_by_key(series: &[ExportedSeries]) -> BTreeMap<(String, i64), Vec<f64>> {
    let mut out: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for s in series {
        let key = format!("{:?}", s.metric);
        for (t, v) in s.timestamps.iter().zip(&s.values) {
            out.entry((key.clone(), *t)).or_default().push(*v);
        }
    }
    out
}

/// How many of `series` are named `name`: e.g. whether every result arrived, each result
/// making one series of a gauge.
pub fn series_count(series: &[ExportedSeries], name: &str) -> usize {
    series
        .iter()
        .filter(|s| s.metric["__name__"] == name)
        .count()
}

/// A single-node VictoriaMetrics on a free loopback port with a temporary data directory.
#[derive(Debug)]
pub struct VictoriaMetrics {
    release: VmRelease,
    process: Process,
    port: u16,
    path_prefix: String,
    extra_args: Vec<String>,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Starts Debian's VictoriaMetrics and waits until it is healthy.
    pub async fn start() -> VictoriaMetrics {
        VictoriaMetrics::start_release(VmRelease::Debian, &[]).await
    }

    /// Starts Debian's VictoriaMetrics with extra command-line flags (e.g.
    /// `-http.pathPrefix=/x`).
    pub async fn start_with(extra_args: &[&str]) -> VictoriaMetrics {
        VictoriaMetrics::start_release(VmRelease::Debian, extra_args).await
    }

    /// Starts VictoriaMetrics of `release` with extra command-line flags and waits until it is
    /// healthy.
    pub async fn start_release(release: VmRelease, extra_args: &[&str]) -> VictoriaMetrics {
        let dir = tempfile::tempdir().expect("create a VictoriaMetrics data dir");
        let port = free_port();
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let path_prefix = extra_args
            .iter()
            .find_map(|a| a.strip_prefix("-http.pathPrefix="))
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        let process = Self::spawn(release, dir.path(), port, &extra_args);
        let mut vm = VictoriaMetrics {
            release,
            process,
            port,
            path_prefix,
            extra_args,
            dir,
        };
        vm.wait_ready().await;
        vm
    }

    fn spawn(release: VmRelease, dir: &Path, port: u16, extra_args: &[String]) -> Process {
        let binary = release.binary("victoria-metrics");
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

    /// The release this VictoriaMetrics is of; vmalert and vmauth next to it use the same.
    pub fn release(&self) -> VmRelease {
        self.release
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
        self.process = Self::spawn(self.release, self.dir.path(), self.port, &self.extra_args);
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
        self.process = Self::spawn(self.release, self.dir.path(), self.port, &self.extra_args);
        self.wait_ready().await;
        down.elapsed()
    }

    /// Imports samples in the Prometheus text format with millisecond timestamps
    /// (`name{labels} value timestamp_ms` lines) through `/api/v1/import/prometheus`.
    pub async fn import_prometheus(&self, text: &str) {
        let url = format!("{}/api/v1/import/prometheus", self.base_url());
        ok_body(http_client().post(&url).body(text.to_owned()), "import").await;
    }

    /// Makes recently ingested samples searchable at once.
    pub async fn force_flush(&self) {
        let url = format!("{}/internal/force_flush", self.base_url());
        ok_body(http_client().get(&url), "force_flush").await;
    }

    /// Every series matching the series selector `selector`, as `/api/v1/export` returns it,
    /// one entry per series (sorted by labels) with its samples in timestamp order.
    pub async fn export(&self, selector: &str) -> Vec<ExportedSeries> {
        self.force_flush().await;
        let url = format!("{}/api/v1/export", self.base_url());
        // VictoriaMetrics 1.79 ends exports a little before "now" unless told otherwise;
        // samples stamped "now" must be included.
        let request = http_client().post(&url).form(&[
            ("match[]", selector),
            ("reduce_mem_usage", "1"),
            ("end", &(now_millis() / 1000 + 3600).to_string()),
        ]);
        let body = ok_body(request, &format!("export {selector}")).await;
        // With reduce_mem_usage a series stored in several parts (e.g. across a restart)
        // comes as several lines: merge them, keeping every sample (duplicates included).
        let mut merged: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let line = markers_as_null(line);
            let part: ExportedSeries =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("export line {line}: {e}"));
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
        poll_until(
            timeout,
            Duration::from_millis(100),
            || self.export(selector),
            |series| done(series),
        )
        .await
    }

    /// Instant query `q` now: `labels -> value` per series, sorted by labels.
    pub async fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
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
            value: (f64, String),
        }
        self.force_flush().await;
        let url = format!("{}/api/v1/query", self.base_url());
        let body = ok_body(http_client().post(&url).form(&[("query", q)]), q).await;
        let parsed: Resp =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"));
        let mut out: Vec<_> = parsed
            .data
            .result
            .into_iter()
            .map(|i| (i.metric, i.value.1.parse().unwrap_or(f64::NAN)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The log tail, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

impl ExportedSeries {
    /// How much this counter grew over all its samples, counting across resets as
    /// MetricsQL's `increase` does over a window holding the series' whole life: its first
    /// value (a series starts at 0), every rise, and after a drop (a restarted process) the
    /// whole new value. Staleness markers (NaN) are skipped.
    pub fn counter_increase(&self) -> f64 {
        self.counter_increase_until(i64::MAX)
    }

    /// [`ExportedSeries::counter_increase`] over the samples at or before `until_ms`.
    pub fn counter_increase_until(&self, until_ms: i64) -> f64 {
        let mut total = 0.0;
        let mut last: Option<f64> = None;
        let samples = self.timestamps.iter().zip(&self.values);
        for (_, &v) in samples.filter(|(t, v)| **t <= until_ms && !v.is_nan()) {
            match last {
                Some(prev) if v >= prev => total += v - prev,
                _ => total += v,
            }
            last = Some(v);
        }
        total
    }

    /// The value of the label `name` (empty if absent).
    pub fn label(&self, name: &str) -> &str {
        self.metric.get(name).map_or("", String::as_str)
    }
}
