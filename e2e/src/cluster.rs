//! The Kubernetes of the cluster tests: the local control plane of `e2e/cluster` (`pie-cluster`,
//! docs/testing.md), started once per test binary and shared by its tests, or any cluster named
//! by `PIE_E2E_KUBECONFIG` (kind: `task e2e:kind`).
//!
//! The local cluster runs in the foreground of a child process whose stdin this process holds:
//! when the test binary exits, however it exits, the pipe closes and the supervisor stops every
//! component and deletes the cluster's temp dir. Set `PIE_E2E_KEEP_CLUSTER=1` to keep the dir
//! (logs, audit log) after the run; its path is printed.
//!
//! A test that breaks its cluster on purpose (stops the API server, compacts etcd) takes one of
//! its own, [`own_local_cluster`], stopped when it is dropped.

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
    /// Set once [`TestCluster::install_pie`] has installed `deploy/`'s base into this cluster.
    pie_installed: tokio::sync::OnceCell<()>,
}

#[derive(Debug)]
struct LocalCluster {
    dir: PathBuf,
    // Held open while the cluster is used (the shared one: for the whole test binary): its end
    // stops the cluster.
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl Drop for LocalCluster {
    /// Closes the supervisor's stdin and waits (up to 90 s) until it has stopped every
    /// component and removed the dir. Only clusters of [`own_local_cluster`] are dropped; the
    /// shared one lives until the test binary exits.
    fn drop(&mut self) {
        self.stop();
    }
}

impl LocalCluster {
    /// What dropping it does; a second call returns at once.
    fn stop(&self) {
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = writeln!(
            std::io::stderr(),
            "the local cluster in {} did not stop within 90 s",
            self.dir.display()
        );
    }
}

/// Whether `PIE_E2E_KEEP_CLUSTER` asks to keep the cluster's and the controller's dirs.
fn keep_after_run() -> bool {
    std::env::var_os("PIE_E2E_KEEP_CLUSTER").is_some()
}

/// The cluster of this test binary, started on first use with [`NODES`] nodes. `None` (after
/// printing why on stderr) only when neither `PIE_E2E_KUBECONFIG` is set nor Go is installed; a
/// cluster that fails to start fails the test.
pub fn test_cluster() -> Option<&'static TestCluster> {
    test_cluster_of(NODES)
}

/// [`test_cluster`] with `nodes` nodes (the local cluster's; another cluster is what it is).
/// Every caller in one test binary must ask for the same number.
pub fn test_cluster_of(nodes: usize) -> Option<&'static TestCluster> {
    static CLUSTER: OnceLock<(usize, Option<TestCluster>)> = OnceLock::new();
    let (started, cluster) = CLUSTER.get_or_init(|| (nodes, start_cluster(nodes)));
    assert_eq!(
        *started, nodes,
        "this test binary's cluster was started with {started} nodes, not {nodes}"
    );
    cluster.as_ref()
}

/// The cluster `PIE_E2E_KUBECONFIG` names, else the local cluster with `nodes` nodes, else
/// (no Go) `None` after saying so.
fn start_cluster(nodes: usize) -> Option<TestCluster> {
    if let Ok(path) = std::env::var("PIE_E2E_KUBECONFIG") {
        return Some(TestCluster {
            kubeconfig: PathBuf::from(path),
            kubectl: PathBuf::from("kubectl"),
            local: None,
            pie_installed: tokio::sync::OnceCell::new(),
        });
    }
    if !go_installed() {
        return None;
    }
    Some(start_local(&LocalClusterOptions::new(nodes)))
}

/// A local cluster of `nodes` nodes for one test alone, for tests that stop its components or
/// compact its etcd; dropping it stops it (every component, also one stopped or restarted on
/// request) and removes its dir. `None`, after printing why on stderr, where the local cluster
/// cannot run: with `PIE_E2E_KUBECONFIG` set, or without Go.
pub fn own_local_cluster(nodes: usize) -> Option<TestCluster> {
    own_local_cluster_with(&LocalClusterOptions::new(nodes))
}

/// How [`own_local_cluster_with`] starts the local cluster: its size and its scale mode.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Nodes.
    pub nodes: usize,
    /// The nodes' Lease renewal interval (`pie-cluster up --node-heartbeat`); `None`:
    /// kubelet's 10 s. Thousands of nodes need a longer one on a small machine.
    pub node_heartbeat: Option<Duration>,
    /// Whether probe Pods run a recorded fio (`pie-cluster` as `/usr/local/bin/fio`, printing
    /// `agent/tests/fixtures/fio-3.33-ok.json`) instead of the real one: the API server, not the
    /// disk, is what a scale bench loads.
    pub recorded_fio: bool,
    /// kube-controller-manager controllers not to run (`--disable-controller`).
    pub disabled_controllers: Vec<String>,
    /// How long the cluster may take to be ready.
    pub ready_timeout: Duration,
}

impl LocalClusterOptions {
    /// `nodes` nodes, as the tests run them.
    pub fn new(nodes: usize) -> LocalClusterOptions {
        LocalClusterOptions {
            nodes,
            node_heartbeat: None,
            recorded_fio: false,
            disabled_controllers: Vec::new(),
            ready_timeout: Duration::from_secs(240),
        }
    }
}

/// [`own_local_cluster`] with `options`.
pub fn own_local_cluster_with(options: &LocalClusterOptions) -> Option<TestCluster> {
    if std::env::var_os("PIE_E2E_KUBECONFIG").is_some() {
        let _ = writeln!(
            std::io::stderr(),
            "skipping: this test needs a local cluster of its own (PIE_E2E_KUBECONFIG is set)"
        );
        return None;
    }
    if !go_installed() {
        return None;
    }
    Some(start_local(options))
}

/// Whether Go is there to build the local cluster; if not, says that the test skips.
fn go_installed() -> bool {
    if crate::find_binary("go").is_some() {
        return true;
    }
    // Straight to stderr, not eprintln!: the test harness captures the macros' output of a
    // passing test, and the skip must show in every `cargo test` run.
    let _ = writeln!(
        std::io::stderr(),
        "skipping cluster e2e: Go is not installed, so the local cluster (e2e/cluster) cannot be \
         built; install Go >= 1.26 or set PIE_E2E_KUBECONFIG"
    );
    false
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

fn start_local(options: &LocalClusterOptions) -> TestCluster {
    let PieBinaries { agent, controller } = pie_binaries();
    let binary = build_pie_cluster();
    let mut agent_image = format!(
        "ghcr.io/pie-rs/pie-agent={},user=1001:1001",
        agent.display()
    );
    if options.recorded_fio {
        // PATH finds /usr/local/bin/fio before the host's /usr/bin/fio.
        let recording = repo_root().join("agent/tests/fixtures/fio-3.33-ok.json");
        agent_image.push_str(&format!(
            ",file=/usr/local/bin/fio:{},file=/usr/local/share/pie-cluster/fio.json:{},\
             env=PIE_CLUSTER_FIO_OUTPUT=/usr/local/share/pie-cluster/fio.json",
            binary.display(),
            recording.display()
        ));
    }
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
        .args(["--nodes", &options.nodes.to_string()])
        .args([
            "--timeout",
            &format!("{}s", options.ready_timeout.as_secs()),
        ])
        .arg("--image")
        // The agent image's USER (Dockerfile); probe Pods set runAsUser themselves.
        .arg(agent_image)
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
    if let Some(heartbeat) = options.node_heartbeat {
        command.args(["--node-heartbeat", &format!("{}s", heartbeat.as_secs())]);
    }
    for name in &options.disabled_controllers {
        command.args(["--disable-controller", name]);
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
        // pie-cluster gives up after --timeout and says why; this is for a hung one.
        assert!(
            started.elapsed() < options.ready_timeout + Duration::from_secs(60),
            "the local cluster was not ready within {:?}; logs in {}",
            options.ready_timeout,
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
            stdin: Mutex::new(Some(stdin)),
            child: Mutex::new(child),
        }),
        pie_installed: tokio::sync::OnceCell::new(),
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
    /// per cluster (a bench starts several clusters in one process: once per process left the
    /// second without the namespace `pie`).
    pub async fn install_pie(&self) {
        self.pie_installed
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
        self.audit_events()
            .into_iter()
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

    /// The resources `user` sent `verb` requests for at or after `since_ms` (Unix ms), from the
    /// local cluster's audit log (one entry per request, with subresources as `pods/status`).
    /// Empty on other clusters.
    pub fn requests_since(&self, user: &str, verb: &str, since_ms: i64) -> Vec<String> {
        self.audit_events()
            .into_iter()
            .filter(|e| e.stage == "ResponseComplete" && e.user.username == user && e.verb == verb)
            .filter(|e| {
                e.stage_timestamp
                    .as_deref()
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .is_some_and(|t| t.as_millisecond() >= since_ms)
            })
            .map(|e| {
                let o = e.object_ref.unwrap_or_default();
                match o.subresource {
                    Some(sub) => format!("{}/{sub}", o.resource.unwrap_or_default()),
                    None => o.resource.unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Every request of `user` the API server answered in `[from_ms, to_ms)` (Unix ms, by the
    /// time of the answer), from the local cluster's audit log. Empty on other clusters.
    pub fn audit_requests(&self, user: &str, from_ms: i64, to_ms: i64) -> Vec<AuditRequest> {
        self.audit_events()
            .into_iter()
            .filter(|e| e.stage == "ResponseComplete" && e.user.username == user)
            .filter_map(|e| {
                let at_ms = e
                    .stage_timestamp
                    .as_deref()
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())?
                    .as_millisecond();
                let o = e.object_ref.unwrap_or_default();
                let resource = match o.subresource {
                    Some(sub) => format!("{}/{sub}", o.resource.unwrap_or_default()),
                    None => o.resource.unwrap_or_default(),
                };
                (from_ms..to_ms).contains(&at_ms).then(|| AuditRequest {
                    verb: e.verb,
                    resource,
                    name: o.name,
                    code: e.response_status.and_then(|s| s.code),
                    at_ms,
                })
            })
            .collect()
    }

    /// Stops the local cluster now, as dropping it would (for a `&'static` one).
    pub fn stop(&self) {
        if let Some(local) = &self.local {
            local.stop();
        }
    }

    fn audit_events(&self) -> Vec<AuditEvent> {
        let Some(dir) = self.dir() else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(dir.join("logs/audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
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

    /// Stops one component of the local cluster (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler`, `provisioner`, `kubelet`) with SIGTERM
    /// (SIGKILL after 15 s) and returns once it has exited; the rest of the cluster runs on.
    /// Panics with `pie-cluster`'s stderr when that fails, and on a cluster other than the local
    /// one (`is_local()`).
    pub fn stop_component(&self, name: &str) {
        self.pie_cluster(&["stop-component", name]);
    }

    /// Like [`TestCluster::stop_component`], with SIGKILL at once (a crash).
    pub fn kill_component(&self, name: &str) {
        self.pie_cluster(&["stop-component", "--kill", name]);
    }

    /// Starts a component stopped by [`TestCluster::stop_component`] again, with the same
    /// arguments, ports, certificates and identity, and returns once it is healthy (the API
    /// server: `/readyz` on the same port). Panics like `stop_component`.
    pub fn start_component(&self, name: &str) {
        self.pie_cluster(&["start-component", name]);
    }

    /// Compacts the local cluster's etcd to its current revision (as kube-apiserver's compactor
    /// does) and returns that revision. Panics like `stop_component`.
    pub fn compact_etcd(&self) -> u64 {
        let out = self.pie_cluster(&["compact"]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("pie-cluster compact printed {out:?}: {e}"))
    }

    /// A service-account token signed with the local cluster's key and issuer, with the claims
    /// TokenRequest would put in it, and what TokenRequest cannot make (`expired`, lifetimes
    /// under 10 minutes, a Pod of another ServiceAccount). Panics like `stop_component`.
    pub fn mint_token(&self, opts: &TokenOptions) -> String {
        let mut args = vec![
            "token".to_owned(),
            "--namespace".to_owned(),
            opts.namespace.clone(),
            "--service-account".to_owned(),
            opts.service_account.clone(),
        ];
        for (flag, value) in [("--pod", &opts.pod), ("--node", &opts.node)] {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value.clone()]);
            }
        }
        for audience in &opts.audiences {
            args.extend(["--audience".to_owned(), audience.clone()]);
        }
        if let Some(lifetime) = opts.expires_in {
            args.extend([
                "--expires-in".to_owned(),
                format!("{}ms", lifetime.as_millis()),
            ]);
        }
        if opts.expired {
            args.push("--expired".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.pie_cluster(&args).trim().to_owned()
    }

    /// The local cluster's etcd client URL (`http://127.0.0.1:PORT`, from `cluster.json`);
    /// `None` on other clusters.
    pub fn etcd_url(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Info {
            etcd: String,
        }
        let path = self.dir()?.join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let info: Info =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some(info.etcd)
    }

    /// The PID of a component of the local cluster (`pids/<name>`), if it runs; `None` on
    /// other clusters.
    pub fn component_pid(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir()?.join("pids").join(name)).ok()?;
        let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Runs `pie-cluster ARGS --dir DIR` on the local cluster; returns stdout, panics with
    /// stderr when it fails.
    fn pie_cluster(&self, args: &[&str]) -> String {
        let dir = self.dir().unwrap_or_else(|| {
            panic!(
                "pie-cluster {} needs the local cluster, not PIE_E2E_KUBECONFIG's: skip this \
                 test unless cluster.is_local()",
                args[0]
            )
        });
        let out = Command::new(build_pie_cluster())
            .args(args)
            .arg("--dir")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("run pie-cluster {}: {e}", args[0]));
        assert!(
            out.status.success(),
            "pie-cluster {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// What [`TestCluster::mint_token`] puts in a token (`pie-cluster token`'s flags).
#[derive(Debug, Clone, Default)]
pub struct TokenOptions {
    /// Namespace of the ServiceAccount (and of the Pod).
    pub namespace: String,
    /// The ServiceAccount; it must exist (its UID goes into the token).
    pub service_account: String,
    /// Binds the token to this Pod of the namespace: pod and node claims, as TokenRequest's
    /// `boundObjectRef` does. The Pod may run as another ServiceAccount.
    pub pod: Option<String>,
    /// Binds the token to this Node; with `pod`, names the node of the pod claims instead of
    /// the Pod's own.
    pub node: Option<String>,
    /// Audiences; empty: the API server's own (its issuer URL).
    pub audiences: Vec<String>,
    /// Lifetime; `None`: one hour.
    pub expires_in: Option<Duration>,
    /// Expired 5 minutes ago (beyond the API server's minute of leeway), issued `expires_in`
    /// before that.
    pub expired: bool,
}

impl TokenOptions {
    /// A token of `namespace/service_account`, for the API server's audience, one hour.
    pub fn new(namespace: &str, service_account: &str) -> TokenOptions {
        TokenOptions {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            ..TokenOptions::default()
        }
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

/// How a test runs `pie-controller run`: what `deploy/base/deployment.yaml` leaves to the
/// installation (the remote-write URL, the `cluster` label, the agent image) and what lets several
/// controllers share one cluster (each reconciles its own namespace and competes for its own Lease
/// in `pie`).
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The namespace whose PieProbes it reconciles (`PIE_NAMESPACES`).
    pub namespace: String,
    /// Where it pushes (`--remote-write-url`).
    pub remote_write_url: String,
    /// The `cluster` external label (`--external-label=cluster=...`).
    pub cluster_label: String,
    /// The Lease it competes for in the namespace `pie` (`PIE_LEASE_NAME`).
    pub lease_name: String,
    /// Its identity in the Lease (`PIE_POD_NAME`).
    pub identity: String,
    /// The image of probe Pods (`PIE_AGENT_IMAGE`).
    pub agent_image: String,
    /// The URL probe Pods post their results to (`PIE_CONTROLLER_URL`); `None`: this
    /// controller's own receiver.
    pub controller_url: Option<String>,
    /// Flags given after deployment.yaml's.
    pub extra_args: Vec<String>,
    /// `RUST_LOG`; `None`: `PIE_E2E_CONTROLLER_LOG`, else deployment.yaml's `info,kube=warn`.
    pub log: Option<String>,
}

impl ControllerOptions {
    /// deployment.yaml's settings for a controller of `namespace` pushing to `remote_write_url`,
    /// with `cluster="e2e"`, the default Lease name and [`AGENT_IMAGE`].
    pub fn new(namespace: &str, remote_write_url: &str) -> ControllerOptions {
        ControllerOptions {
            namespace: namespace.to_owned(),
            remote_write_url: remote_write_url.to_owned(),
            cluster_label: "e2e".into(),
            lease_name: "pie-controller".into(),
            identity: format!("pie-e2e-{}", std::process::id()),
            agent_image: AGENT_IMAGE.into(),
            controller_url: None,
            extra_args: Vec::new(),
            log: None,
        }
    }
}

/// `pie-controller run`, the real binary, as `deploy/base/deployment.yaml` runs it (same flags
/// and environment, loopback addresses instead of `:PORT`), authenticated as the ServiceAccount
/// `pie/pie-controller` and reconciling one namespace.
///
/// Its state directory (kubeconfig, remote-write disk buffer, logs) outlives the process, so a
/// test can kill it ([`PieController::kill`]) and start it again on the same ports and buffer
/// ([`PieController::restart`]), as Kubernetes restarts a container.
#[derive(Debug)]
pub struct PieController {
    process: Process,
    options: ControllerOptions,
    /// Port of the results receiver (`--listen`).
    pub results_port: u16,
    /// Port of `/healthz` and `/readyz`.
    pub health_port: u16,
    /// Port of `/metrics`.
    pub metrics_port: u16,
    path: PathBuf,
    kubeconfig: PathBuf,
    starts: u32,
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
        let mut options = ControllerOptions::new(namespace, remote_write_url);
        options.extra_args = extra.iter().map(|s| s.to_string()).collect();
        PieController::start_with(cluster, options).await
    }

    /// Starts a controller with `options` and waits until it is ready (leader with synced
    /// caches).
    pub async fn start_with(cluster: &TestCluster, options: ControllerOptions) -> PieController {
        let mut controller = PieController::spawn(cluster, options).await;
        controller.wait_ready().await;
        controller
    }

    /// Starts a controller with `options` and waits only until it is alive (`/healthz`): a
    /// replica that does not hold the Lease never becomes ready.
    pub async fn start_follower(
        cluster: &TestCluster,
        options: ControllerOptions,
    ) -> PieController {
        let mut controller = PieController::spawn(cluster, options).await;
        let url = format!("http://127.0.0.1:{}/healthz", controller.health_port);
        controller
            .process
            .wait_ready(&url, Duration::from_secs(30))
            .await;
        controller
    }

    async fn spawn(cluster: &TestCluster, options: ControllerOptions) -> PieController {
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
        let process = controller_process(
            &options,
            [results_port, health_port, metrics_port],
            &path,
            &kubeconfig,
            1,
        );
        PieController {
            process,
            options,
            results_port,
            health_port,
            metrics_port,
            path,
            kubeconfig,
            starts: 1,
            _dir: dir,
        }
    }

    async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.health_port);
        self.process.wait_ready(&url, Duration::from_secs(90)).await;
    }

    /// Kills the process with SIGKILL (a crash, or `kill -9`): nothing is flushed, the Lease is
    /// not released.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Stops the process with SIGTERM (as Kubernetes stops a Pod) and waits up to 30 s.
    /// Returns whether it exited by itself in time.
    pub fn terminate(&mut self) -> bool {
        self.process.terminate_within(Duration::from_secs(30))
    }

    /// Starts the process again (after [`PieController::kill`] or [`PieController::terminate`])
    /// with the same flags, ports and state directory, and waits until it is ready.
    pub async fn restart(&mut self) {
        self.process.stop();
        self.starts += 1;
        self.process = controller_process(
            &self.options,
            [self.results_port, self.health_port, self.metrics_port],
            &self.path,
            &self.kubeconfig,
            self.starts,
        );
        self.wait_ready().await;
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.health_port);
        matches!(crate::http_client().get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// The options it runs with.
    pub fn options(&self) -> &ControllerOptions {
        &self.options
    }

    /// The URL of its results receiver.
    pub fn results_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.results_port)
    }

    /// It as a backend of a [`crate::ReadyService`].
    pub fn backend(&self) -> crate::Backend {
        crate::Backend {
            readyz: format!("http://127.0.0.1:{}/readyz", self.health_port),
            base: self.results_url(),
        }
    }

    /// The operating-system process id of the running process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
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

    /// The last lines of its log (of the current process).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Everything it has logged, over all its starts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.path.join(format!("controller-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        self.process.has_exited()
    }
}

/// glibc's `MALLOC_ARENA_MAX` in the controller image (Dockerfile): two malloc arenas instead
/// of eight per core, so memory freed by one tokio worker is reused by the other instead of
/// staying resident in its own arena. `scripts/check-deploy.sh` checks the two agree.
const MALLOC_ARENA_MAX: &str = "2";

/// The `pie-controller run` process of `options` (its `start`-th start; the log is
/// `controller-<start>.log` in `path`), on the ports `[results, health, metrics]`.
fn controller_process(
    o: &ControllerOptions,
    [results_port, health_port, metrics_port]: [u16; 3],
    path: &Path,
    kubeconfig: &Path,
    start: u32,
) -> Process {
    // PIE_E2E_CONTROLLER_WRAPPER: a profiler to run the controller under, e.g. `heaptrack -o
    // /tmp/pie-controller` (split at whitespace; the environment below is cleared for it too).
    let wrapper = std::env::var("PIE_E2E_CONTROLLER_WRAPPER").unwrap_or_default();
    let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&pie_binaries().controller);
            command
        }
        None => Command::new(&pie_binaries().controller),
    };
    command
        .arg("run")
        .arg(format!("--remote-write-url={}", o.remote_write_url))
        .arg(format!("--external-label=cluster={}", o.cluster_label))
        .arg(format!("--listen=127.0.0.1:{}", results_port))
        .arg(format!("--health-addr=127.0.0.1:{}", health_port))
        .arg(format!("--metrics-addr=127.0.0.1:{}", metrics_port))
        .arg("--probe-service-account=pie-probe")
        .arg(format!(
            "--remote-write-buffer-dir={}",
            path.join("remote-write-buffer").display()
        ))
        .args(&o.extra_args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", kubeconfig)
        .env("PIE_AGENT_IMAGE", &o.agent_image)
        // Probe Pods are local processes: the receiver is on this host's loopback.
        .env(
            "PIE_CONTROLLER_URL",
            o.controller_url
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", results_port)),
        )
        .env("PIE_POD_NAME", &o.identity)
        .env("PIE_LEASE_NAMESPACE", "pie")
        .env("PIE_LEASE_NAME", &o.lease_name)
        .env("PIE_NAMESPACES", &o.namespace)
        // As the controller image sets it (Dockerfile); the test's own value, if it has one.
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| MALLOC_ARENA_MAX.into()),
        )
        .env(
            "RUST_LOG",
            o.log.clone().unwrap_or_else(|| {
                std::env::var("PIE_E2E_CONTROLLER_LOG").unwrap_or_else(|_| "info,kube=warn".into())
            }),
        );
    Process::spawn(
        "pie-controller run",
        command,
        path.join(format!("controller-{}.log", start)),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    stage: String,
    verb: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    stage_timestamp: Option<String>,
    user: AuditUser,
    object_ref: Option<AuditObject>,
    response_status: Option<AuditStatus>,
}

/// One request in the API server's audit log ([`TestCluster::audit_requests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The resource, with a subresource as `pods/status`.
    pub resource: String,
    /// The object's name (none for a LIST or a WATCH).
    pub name: Option<String>,
    /// The HTTP status of the answer.
    pub code: Option<u16>,
    /// When it was answered (Unix ms).
    pub at_ms: i64,
}

impl AuditRequest {
    /// Whether it changes something (any verb but `get`, `list` and `watch`).
    pub fn is_write(&self) -> bool {
        !matches!(self.verb.as_str(), "get" | "list" | "watch")
    }
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
