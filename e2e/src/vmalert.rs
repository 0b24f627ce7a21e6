//! vmalert evaluating the rules as they ship (`deploy/alerts/`) against a VictoriaMetrics, so the
//! alert tests test the shipped file and not a copy of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;

use crate::http::ok_body;
use crate::time::poll_until;
use crate::{Process, VictoriaMetrics, VmRelease, free_port, http_client, repo_root};

/// The shipped plain rule file, `deploy/alerts/pie.rules.yml`.
pub fn shipped_rules() -> PathBuf {
    repo_root().join("deploy/alerts/pie.rules.yml")
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
    /// Starts vmalert of `vm`'s release with the rule file `rules`, evaluated every `interval`
    /// (e.g. `1s`) against `vm`, and waits until it answers.
    pub async fn start(
        rules: &Path,
        vm: &VictoriaMetrics,
        notifier_url: &str,
        interval: &str,
    ) -> Vmalert {
        let binary = vm.release().binary("vmalert");
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
        if vm.release() == VmRelease::Current {
            // Newer vmalert evaluates at now - `-rule.evalDelay` (30 s by default), which
            // VictoriaMetrics' docs pair with its `-search.latencyOffset`: the harness runs
            // VictoriaMetrics with 0s, so vmalert gets 0s too (1.79 has no such flag).
            command.arg("-rule.evalDelay=0s");
        }
        let process = Process::spawn_ready(
            "vmalert",
            command,
            dir.path().join("vmalert.log"),
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
        let body = ok_body(http_client().get(&url), &url).await;
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
        poll_until(
            timeout,
            Duration::from_millis(200),
            || self.alerts(),
            |alerts| done(alerts),
        )
        .await
    }

    /// The log tail, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// An Alertmanager stand-in on a free loopback port: records every alert vmalert posts to
/// `/api/v2/alerts` (Alertmanager's API), so a test can check what would have paged.
#[derive(Debug)]
pub struct Notifier {
    url: String,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// Starts it (on the current tokio runtime).
    pub async fn start() -> Notifier {
        use axum::extract::State;
        let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/api/v2/alerts",
                axum::routing::post(
                    |State(seen): State<Arc<Mutex<Vec<serde_json::Value>>>>,
                     axum::Json(alerts): axum::Json<Vec<serde_json::Value>>| async move {
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(alerts);
                    },
                ),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the notifier");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("notifier address")
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Notifier {
            url,
            received,
            server,
        }
    }

    /// Its URL, for `-notifier.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every alert received so far, as vmalert sent it (`labels`, `annotations`, ...).
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.server.abort();
    }
}
