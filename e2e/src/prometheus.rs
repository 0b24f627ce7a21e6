//! Prometheus as a remote-write receiver: the second implementation pie's remote write is
//! checked against, next to VictoriaMetrics.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;

use crate::http::ok_body;
use crate::{Process, free_port, http_client, require_binary};

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
        let process = Process::spawn_ready(
            "prometheus",
            command,
            dir.path().join("prometheus.log"),
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
        let request = http_client()
            .post(&url)
            .form(&[("query", query), ("time", &format!("{time_s:.3}"))]);
        let body = ok_body(request, &format!("query {query}")).await;
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
