//! The Kubernetes of the cluster tests: the local control plane of `e2e/cluster` (`pie-cluster`,
//! docs/testing.md), started once per test binary and shared by its tests, or any cluster named
//! by `PIE_E2E_KUBECONFIG` (kind: `task e2e:kind`).
//!
//! The local cluster runs in the foreground of a child process whose stdin this process holds:
//! when the test binary exits, however it exits, the pipe closes and the supervisor stops every
//! component and deletes the cluster's temp dir. Set `PIE_E2E_KEEP_CLUSTER=1` to keep the dir
//! (logs, audit log) after the run; its path is printed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;

use crate::builds::go_build;
pub use crate::builds::repo_root;
use crate::process::file_tail;
use crate::time::poll_until;
use crate::{PieBinaries, Process, free_port, pie_binaries};

/// The agent image the tests' PieProbes use: `deploy/`'s tag, mapped to the `pie-agent` built
/// for the tests.
pub const AGENT_IMAGE: &str = "ghcr.io/pie-rs/pie-agent:0.1.0";
/// The local cluster's default StorageClass (the test provisioner).
pub const LOCAL_STORAGE_CLASS: &str = "pie-local";
/// The local cluster's StorageClass whose provisioner does not exist.
pub const NO_PROVISIONER_STORAGE_CLASS: &str = "pie-no-provisioner";
/// The image the process kubelet runs as a plain `/bin/sh` (the shell stand-in).
pub const SHELL_IMAGE: &str = "pie.test/shell";
/// Nodes of the local cluster.
pub const NODES: usize = 3;

/// The cluster the tests of this binary run on.
#[derive(Debug)]
pub struct TestCluster {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The `kubectl` the tests run (the local cluster's own, else the one on PATH).
    pub kubectl: PathBuf,
    local: Option<LocalCluster>,
}

#[derive(Debug)]
struct LocalCluster {
    dir: PathBuf,
    // Held open for the whole test binary: its end stops the cluster.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

/// Whether `PIE_E2E_KEEP_CLUSTER` asks to keep the cluster's and the controller's dirs.
fn keep_after_run() -> bool {
    std::env::var_os("PIE_E2E_KEEP_CLUSTER").is_some()
}

/// The cluster of this test binary, started on first use. `None` (after printing why on
/// stderr) only when neither `PIE_E2E_KUBECONFIG` is set nor Go is installed; a cluster that
/// fails to start fails the test.
pub fn test_cluster() -> Option<&'static TestCluster> {
    static CLUSTER: OnceLock<Option<TestCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            if let Ok(path) = std::env::var("PIE_E2E_KUBECONFIG") {
                return Some(TestCluster {
                    kubeconfig: PathBuf::from(path),
                    kubectl: PathBuf::from("kubectl"),
                    local: None,
                });
            }
            if crate::find_binary("go").is_none() {
                // Straight to stderr, not eprintln!: the test harness captures the macros'
                // output of a passing test, and the skip must show in every `cargo test` run.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping cluster e2e: Go is not installed, so the local cluster (e2e/cluster) \
                     cannot be built; install Go >= 1.26 or set PIE_E2E_KUBECONFIG"
                );
                return None;
            }
            Some(start_local())
        })
        .as_ref()
}

/// Builds `pie-cluster` (Go; the build cache makes a rebuild take seconds) into the tests'
/// target dir and returns its path.
pub fn build_pie_cluster() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            go_build(
                "build-cluster.sh",
                "the local cluster",
                "pie-cluster/pie-cluster",
            )
        })
        .clone()
}

/// Builds real Helm (`e2e/helm`, Go, scripts/build-helm.sh; the build cache makes a rebuild take
/// seconds) into the tests' target dir and returns its path.
pub fn build_helm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| go_build("build-helm.sh", "Helm", "helm/helm"))
        .clone()
}

fn start_local() -> TestCluster {
    let PieBinaries { agent, controller } = pie_binaries();
    let binary = build_pie_cluster();
    let dir = tempfile::Builder::new()
        .prefix("pie-cluster-")
        .tempdir()
        .expect("temp dir for the local cluster")
        .keep();
    let keep = keep_after_run();
    let out = std::fs::File::create(dir.with_extension("out")).expect("cluster output file");
    let mut command = Command::new(&binary);
    command
        .args(["up", "--foreground", "--stop-on-stdin-eof", "--dir"])
        .arg(&dir)
        .args(["--nodes", &NODES.to_string()])
        .arg("--image")
        // The agent image's USER (Dockerfile); probe Pods set runAsUser themselves.
        .arg(format!(
            "ghcr.io/pie-rs/pie-agent={},user=1001:1001",
            agent.display()
        ))
        // The controller image, as the Dockerfile builds it (ENTRYPOINT pie-controller, USER
        // 65532): the Helm chart's Deployment runs on the process kubelet (e2e/tests/helm.rs).
        .arg("--image")
        .arg(format!(
            "ghcr.io/pie-rs/pie-controller={},user=65532:65532",
            controller.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out));
    if !keep {
        command.arg("--remove-dir-on-stop");
    }
    let mut child = command.spawn().expect("start pie-cluster up");
    let stdin = child.stdin.take().expect("piped stdin");
    let started = Instant::now();
    let ready = dir.join("ready");
    loop {
        if ready.exists() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(dir.with_extension("out")).unwrap_or_default();
            panic!(
                "the local cluster did not start ({status}): {}",
                said.trim()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the local cluster was not ready within 240 s; logs in {}",
            dir.join("logs").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(dir.with_extension("out"));
    let _ = writeln!(
        std::io::stderr(),
        "local cluster ready in {:.1} s in {}{}",
        started.elapsed().as_secs_f64(),
        dir.display(),
        if keep { " (kept after the run)" } else { "" }
    );
    TestCluster {
        kubeconfig: dir.join("kubeconfig"),
        kubectl: binary.with_file_name("kubectl"),
        local: Some(LocalCluster {
            dir,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        }),
    }
}

impl TestCluster {
    /// Whether this is the local cluster (with its test provisioner, faults and audit log).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The local cluster's state directory (logs/, the kubeconfig).
    pub fn dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.dir.as_path())
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// Runs this cluster's `kubectl` as admin and returns its output.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo_root())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.kubectl.display()))
    }

    /// Runs `kubectl` as admin and panics with its stderr when it fails; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies one object (server-side, field manager `pie-e2e`) as admin.
    pub fn apply(&self, object: &serde_json::Value) {
        let file = tempfile::Builder::new()
            .suffix(".json")
            .tempfile()
            .expect("temp file");
        std::fs::write(file.path(), serde_json::to_vec(object).unwrap()).expect("write object");
        let path = file.path().to_str().expect("utf-8 temp path");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=pie-e2e",
            "-f",
            path,
        ]);
    }

    /// Installs what `deploy/` installs before the controller runs: the namespace `pie`, the
    /// CRD (established) and the RBAC of `deploy/base/rbac.yaml`, by server-side apply. Once
    /// per test binary.
    pub async fn install_pie(&self) {
        static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        INSTALLED
            .get_or_init(|| async {
                self.kubectl_ok(&[
                    "apply",
                    "--server-side",
                    "--field-manager=pie-e2e",
                    "-f",
                    "deploy/base/namespace.yaml",
                    "-f",
                    "deploy/base/rbac.yaml",
                    "-f",
                    "deploy/crd/pie.topolvm.io_pieprobes.yaml",
                ]);
                self.kubectl_ok(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/pieprobes.pie.topolvm.io",
                ]);
            })
            .await;
    }

    /// A namespace of its own for one test: `<prefix>-<pid>`.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{}", std::process::id());
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace { name, api }
    }

    /// A kubeconfig that authenticates as the ServiceAccount `namespace/name` with a token from
    /// TokenRequest (one hour), written into `dir`.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .expect("TokenRequest status")
            .token;
        let admin = Kubeconfig::read_from(&self.kubeconfig).expect("read the admin kubeconfig");
        let cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .expect("the admin kubeconfig names a cluster");
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": cluster.server,
                "certificate-authority-data": cluster.certificate_authority_data,
                "certificate-authority": cluster.certificate_authority,
                "insecure-skip-tls-verify": cluster.insecure_skip_tls_verify,
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user, "namespace": namespace}}],
            "current-context": "e2e",
        });
        let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap())
            .expect("write the ServiceAccount kubeconfig");
        path
    }

    /// Requests of `user` that the API server refused with 403, from the local cluster's audit
    /// log (`verb resource namespace/name: reason`). Empty on other clusters (no audit log).
    pub fn denied_requests(&self, user: &str) -> Vec<String> {
        let Some(dir) = self.dir() else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(dir.join("logs/audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
            .filter(|e| {
                e.stage == "ResponseComplete"
                    && e.user.username == user
                    && e.response_status.as_ref().and_then(|s| s.code) == Some(403)
            })
            .map(|e| {
                let o = e.object_ref.unwrap_or_default();
                let resource = match o.subresource {
                    Some(sub) => format!("{}/{sub}", o.resource.unwrap_or_default()),
                    None => o.resource.unwrap_or_default(),
                };
                format!(
                    "{} {resource} {}/{} ({})",
                    e.verb,
                    o.namespace.unwrap_or_default(),
                    o.name.unwrap_or_default(),
                    e.request_uri
                )
            })
            .collect()
    }

    /// The last `lines` lines of a local cluster component's log (`kubelet`,
    /// `kube-controller-manager`, ...), for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let Some(dir) = self.dir() else {
            return String::new();
        };
        file_tail(&dir.join("logs").join(format!("{component}.log")), lines)
    }
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// A test's namespace; [`TestNamespace::delete`] removes it (the local cluster is thrown away
/// with everything in it anyway).
#[derive(Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    api: Api<Namespace>,
}

impl TestNamespace {
    /// Deletes the namespace (in the background; its objects go with it).
    pub async fn delete(self) {
        let _ = self
            .api
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}

/// Polls `check` every second until it is true; panics after `timeout` naming `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if !within(timeout, check).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Polls `check` every second until it is true (`true`) or `timeout` passes (`false`).
pub async fn within<F, Fut>(timeout: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(timeout, Duration::from_secs(1), check, |ok| *ok).await
}

/// `pie-controller run`, the real binary, as `deploy/base/deployment.yaml` runs it (same flags
/// and environment, loopback addresses instead of `:PORT`), authenticated as the ServiceAccount
/// `pie/pie-controller` and reconciling one namespace.
#[derive(Debug)]
pub struct PieController {
    process: Process,
    /// Port of the results receiver (`--listen`).
    pub results_port: u16,
    /// Port of `/healthz` and `/readyz`.
    pub health_port: u16,
    /// Port of `/metrics`.
    pub metrics_port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl PieController {
    /// Starts the controller for `namespace`, pushing to `remote_write_url`, and waits until it
    /// is ready (leader with synced caches). `extra` flags go last.
    pub async fn start(
        cluster: &TestCluster,
        namespace: &str,
        remote_write_url: &str,
        extra: &[&str],
    ) -> PieController {
        cluster.install_pie().await;
        let dir = tempfile::Builder::new()
            .prefix("pie-controller-")
            .tempdir()
            .expect("temp dir");
        // With PIE_E2E_KEEP_CLUSTER the controller's log is kept too.
        let (dir, path) = if keep_after_run() {
            let path = dir.keep();
            (None, path)
        } else {
            let path = dir.path().to_owned();
            (Some(dir), path)
        };
        let kubeconfig = cluster
            .service_account_kubeconfig("pie", "pie-controller", &path)
            .await;
        let (results_port, health_port, metrics_port) = (free_port(), free_port(), free_port());
        let mut command = Command::new(&pie_binaries().controller);
        command
            .arg("run")
            .arg(format!("--remote-write-url={remote_write_url}"))
            .arg("--external-label=cluster=e2e")
            .arg(format!("--listen=127.0.0.1:{results_port}"))
            .arg(format!("--health-addr=127.0.0.1:{health_port}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg("--probe-service-account=pie-probe")
            .arg(format!(
                "--remote-write-buffer-dir={}",
                path.join("remote-write-buffer").display()
            ))
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .env("PIE_AGENT_IMAGE", AGENT_IMAGE)
            // Probe Pods are local processes: the receiver is on this host's loopback.
            .env(
                "PIE_CONTROLLER_URL",
                format!("http://127.0.0.1:{results_port}"),
            )
            .env("PIE_POD_NAME", format!("pie-e2e-{}", std::process::id()))
            .env("PIE_LEASE_NAMESPACE", "pie")
            .env("PIE_NAMESPACES", namespace)
            .env(
                "RUST_LOG",
                std::env::var("PIE_E2E_CONTROLLER_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            );
        let process = Process::spawn_ready(
            "pie-controller run",
            command,
            path.join("controller.log"),
            &format!("http://127.0.0.1:{health_port}/readyz"),
            Duration::from_secs(90),
        )
        .await;
        PieController {
            process,
            results_port,
            health_port,
            metrics_port,
            _dir: dir,
        }
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::scrape(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await
    }

    /// Polls `/metrics` every second until `done` holds for it or `timeout` passes; returns
    /// the last text either way.
    pub async fn metrics_until(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        poll_until(
            timeout,
            Duration::from_secs(1),
            || self.metrics(),
            |text| done(text),
        )
        .await
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        self.process.has_exited()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    stage: String,
    verb: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    user: AuditUser,
    object_ref: Option<AuditObject>,
    response_status: Option<AuditStatus>,
}

#[derive(Debug, Deserialize)]
struct AuditUser {
    #[serde(default)]
    username: String,
}

#[derive(Debug, Default, Deserialize)]
struct AuditObject {
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuditStatus {
    code: Option<u16>,
}
