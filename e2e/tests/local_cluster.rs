//! The local Kubernetes itself (`e2e/cluster`, docs/testing.md): its faults do what the tests of
//! pie will rely on, it listens on loopback only, and each bad input gets one readable line, a
//! non-zero exit and nothing left running. Skipped, saying so, only on a machine without Go.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::cluster::{
    SHELL_IMAGE, TestCluster, TokenOptions, build_pie_cluster, eventually, own_local_cluster,
    test_cluster,
};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use kube::Client;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};

fn cluster_or_skip() -> Option<&'static TestCluster> {
    test_cluster().filter(|c| c.is_local())
}

/// Sets (`Some`) or removes (`None`) a fault annotation on a cluster-scoped object.
async fn set_fault<K>(api: &Api<K>, name: &str, fault: &str, value: Option<&str>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {"annotations": {
        format!("faults.pie.test/{fault}"): value
    }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("annotate {name} with {fault}: {e}"));
}

/// A Pod of the shell stand-in running `script`, on `node` (through the scheduler, so a
/// WaitForFirstConsumer claim gets its node), with an ephemeral volume of `storage_class` at
/// /data when one is given.
fn shell_pod(name: &str, node: &str, storage_class: Option<&str>, script: &str) -> Pod {
    let mut spec = serde_json::json!({
        "restartPolicy": "Never",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{"name": "sh", "image": SHELL_IMAGE, "command": ["/bin/sh", "-c", script]}],
    });
    if let Some(sc) = storage_class {
        spec["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "data", "mountPath": "/data"}]);
        spec["volumes"] = serde_json::json!([{"name": "data", "ephemeral": {"volumeClaimTemplate": {
            "spec": {"storageClassName": sc, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Mi"}}}}}}]);
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// `reason: message` of the Events about `object` in `namespace`.
async fn events(client: &Client, namespace: &str, object: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={object}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

async fn wait_event(client: &Client, namespace: &str, object: &str, reason: &str, says: &str) {
    let start = Instant::now();
    loop {
        let all = events(client, namespace, object).await;
        if all
            .iter()
            .any(|e| e.starts_with(&format!("{reason}:")) && e.contains(says))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {reason} Event saying {says:?} about {object}; its Events: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pod_phase(pods: &Api<Pod>, name: &str) -> String {
    pods.get(name)
        .await
        .ok()
        .and_then(|p| p.status)
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

async fn node_ready(nodes: &Api<Node>, name: &str) -> String {
    nodes
        .get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_faults_break_pods_and_nodes_as_asked_and_heal_when_removed() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("faults-node").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    let post = PostParams::default();

    // An image the image map does not know: ErrImagePull, like a missing image.
    let mut unknown = shell_pod("unknown-image", "pie-node-1", None, "true");
    unknown.spec.as_mut().unwrap().containers[0].image = Some("example.invalid/nope:1".into());
    pods.create(&post, &unknown).await.unwrap();
    wait_event(&client, &ns.name, "unknown-image", "Failed", "ErrImagePull").await;

    // image-pull=fail: every pull on that node fails, the shell image too.
    set_fault(&nodes, "pie-node-1", "image-pull", Some("fail")).await;
    pods.create(&post, &shell_pod("pull-fails", "pie-node-1", None, "true"))
        .await
        .unwrap();
    wait_event(&client, &ns.name, "pull-fails", "Failed", "ErrImagePull").await;
    set_fault(&nodes, "pie-node-1", "image-pull", None).await;

    // start-delay: the container starts that much after the Pod was created.
    set_fault(&nodes, "pie-node-2", "start-delay", Some("5s")).await;
    pods.create(&post, &shell_pod("slow-start", "pie-node-2", None, "true"))
        .await
        .unwrap();
    eventually("slow-start to succeed", Duration::from_secs(60), || async {
        pod_phase(&pods, "slow-start").await == "Succeeded"
    })
    .await;
    let pod = pods.get("slow-start").await.unwrap();
    let created = pod.metadata.creation_timestamp.clone().unwrap().0;
    let started = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap()
        .started_at
        .unwrap()
        .0;
    let took = started.as_second() - created.as_second();
    assert!(took >= 5, "started {took} s after creation, want >= 5");
    set_fault(&nodes, "pie-node-2", "start-delay", None).await;

    // mount=fail on the node: FailedMount for its PVC-backed volumes, no container start.
    set_fault(&nodes, "pie-node-3", "mount", Some("fail")).await;
    pods.create(
        &post,
        &shell_pod("mount-fails", "pie-node-3", Some("pie-local"), "true"),
    )
    .await
    .unwrap();
    wait_event(
        &client,
        &ns.name,
        "mount-fails",
        "FailedMount",
        "MountVolume.SetUp failed",
    )
    .await;
    assert_eq!(pod_phase(&pods, "mount-fails").await, "Pending");
    set_fault(&nodes, "pie-node-3", "mount", None).await;
    eventually(
        "mount-fails to run once healed",
        Duration::from_secs(60),
        || async { pod_phase(&pods, "mount-fails").await == "Succeeded" },
    )
    .await;

    // ready=false: NotReady with heartbeats; heartbeat=stop: the node lifecycle controller
    // marks it Unknown after the grace period. Both heal.
    set_fault(&nodes, "pie-node-3", "ready", Some("false")).await;
    eventually("pie-node-3 NotReady", Duration::from_secs(30), || async {
        node_ready(&nodes, "pie-node-3").await == "False"
    })
    .await;
    set_fault(&nodes, "pie-node-3", "ready", None).await;
    eventually(
        "pie-node-3 Ready again",
        Duration::from_secs(30),
        || async { node_ready(&nodes, "pie-node-3").await == "True" },
    )
    .await;
    set_fault(&nodes, "pie-node-3", "heartbeat", Some("stop")).await;
    eventually("pie-node-3 Unknown", Duration::from_secs(90), || async {
        node_ready(&nodes, "pie-node-3").await == "Unknown"
    })
    .await;
    set_fault(&nodes, "pie-node-3", "heartbeat", None).await;
    eventually(
        "pie-node-3 Ready and untainted again",
        Duration::from_secs(60),
        || async {
            let node = nodes.get("pie-node-3").await.unwrap();
            node_ready(&nodes, "pie-node-3").await == "True"
                && node
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .is_empty()
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_break_provisioning_deletion_and_io_as_asked() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("faults-storage").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let post = PostParams::default();
    // StorageClasses of this test only, one per fault, on the test provisioner.
    let class = |name: &str, fault: &str, value: &str| {
        cluster.apply(
            &serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {format!("faults.pie.test/{fault}"): value}},
            "provisioner": "hostpath.pie.test", "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"}),
        );
    };
    class("faults-fail", "provision", "fail");
    class("faults-slow", "provision", "delay=5s");
    class("faults-hang", "provision", "hang");
    class("faults-stuck", "delete", "stuck");
    class("faults-ro", "io", "read-only");
    class("faults-full", "io", "full");
    for (pod, sc, script) in [
        ("fail", "faults-fail", "true"),
        ("slow", "faults-slow", "true"),
        ("hang", "faults-hang", "true"),
        ("stuck", "faults-stuck", "true"),
        ("ro", "faults-ro", "echo x > /data/f"),
        ("full", "faults-full", "head -c 65536 /dev/zero > /data/f"),
    ] {
        pods.create(&post, &shell_pod(pod, "pie-node-1", Some(sc), script))
            .await
            .unwrap();
    }
    wait_event(
        &client,
        &ns.name,
        "fail-data",
        "ProvisioningFailed",
        "fault injected by faults.pie.test/provision",
    )
    .await;

    // I/O faults: the container sees a read-only or a full file system.
    for (pod, says) in [
        ("ro", "Read-only file system"),
        ("full", "No space left on device"),
    ] {
        eventually(
            &format!("{pod} to fail"),
            Duration::from_secs(60),
            || async { pod_phase(&pods, pod).await == "Failed" },
        )
        .await;
        let logs = cluster.kubectl_ok(&["-n", &ns.name, "logs", pod]);
        assert!(logs.contains(says), "{pod}: {logs}");
    }

    // delay: provisioned, but not before the delay.
    let slow_created = pvcs
        .get("slow-data")
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .unwrap()
        .0;
    eventually("slow-data to be Bound", Duration::from_secs(60), || async {
        pvcs.get("slow-data")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Bound")
    })
    .await;
    let pv = pvs
        .get(
            &pvcs
                .get("slow-data")
                .await
                .unwrap()
                .spec
                .unwrap()
                .volume_name
                .unwrap(),
        )
        .await
        .unwrap();
    let took = pv.metadata.creation_timestamp.unwrap().0.as_second() - slow_created.as_second();
    assert!(took >= 5, "provisioned {took} s after the claim, want >= 5");

    // hang: no answer at all, the claim stays Pending (and the Pod unscheduled, not failed).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hang = pvcs.get("hang-data").await.unwrap();
    assert_eq!(
        hang.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    let hang_events = events(&client, &ns.name, "hang-data").await;
    assert!(
        hang_events.iter().any(|e| e.starts_with("Provisioning:"))
            && !hang_events
                .iter()
                .any(|e| e.starts_with("ProvisioningSucceeded:")
                    || e.starts_with("ProvisioningFailed:")),
        "a hanging provisioner starts but neither succeeds nor fails: {hang_events:#?}"
    );

    // stuck deletion: the released PV stays until the fault is removed.
    eventually("stuck to succeed", Duration::from_secs(60), || async {
        pod_phase(&pods, "stuck").await == "Succeeded"
    })
    .await;
    let stuck_pv = pvcs
        .get("stuck-data")
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_name
        .unwrap();
    pods.delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    eventually("stuck-data to be gone", Duration::from_secs(60), || async {
        pvcs.get_opt("stuck-data").await.unwrap().is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        pvs.get_opt(&stuck_pv).await.unwrap().is_some(),
        "the PV of a stuck deletion must stay"
    );
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    set_fault(&classes, "faults-stuck", "delete", None).await;
    eventually(
        "the stuck PV to be deleted once healed",
        Duration::from_secs(60),
        || async { pvs.get_opt(&stuck_pv).await.unwrap().is_none() },
    )
    .await;
    for sc in [
        "faults-fail",
        "faults-slow",
        "faults-hang",
        "faults-stuck",
        "faults-ro",
        "faults-full",
    ] {
        let _ = classes.delete(sc, &DeleteParams::default()).await;
    }
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_cluster_listens_beyond_loopback() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let dir = cluster.dir().unwrap();
    let pids: Vec<u32> = recorded_pids(dir).into_iter().map(|(_, pid)| pid).collect();
    assert!(pids.len() >= 6, "pids/ lists the components: {pids:?}");
    let listening = listening_addresses(&pids);
    assert!(!listening.is_empty());
    let wide: Vec<&String> = listening
        .iter()
        .filter(|a| !a.starts_with("127.0.0.1:") && !a.starts_with("[::1]:"))
        .collect();
    assert!(wide.is_empty(), "listening beyond loopback: {wide:?}");
}

/// `ip:port` of the listening TCP sockets of `pids`, from /proc.
fn listening_addresses(pids: &[u32]) -> BTreeSet<String> {
    let mut inodes = BTreeSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                out.insert(decode_address(f[1], v6));
            }
        }
    }
    out
}

fn decode_address(hex: &str, v6: bool) -> String {
    let (ip, port) = hex.split_once(':').unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    if v6 {
        if ip == "00000000000000000000000001000000" {
            return format!("[::1]:{port}");
        }
        return format!("[{ip}]:{port}");
    }
    let n = u32::from_str_radix(ip, 16).unwrap();
    let b = n.to_le_bytes();
    format!("{}.{}.{}.{}:{port}", b[0], b[1], b[2], b[3])
}

// --- bad input: one line, non-zero exit, nothing left running -----------------------------

fn pie_cluster(args: &[&str]) -> Output {
    Command::new(build_pie_cluster())
        .args(args)
        .output()
        .expect("run pie-cluster")
}

fn one_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(text.lines().count(), 1, "one line on stderr, got: {text}");
    text
}

/// `(component, pid)` of every process the supervisor recorded in `<dir>/pids/` ("PID START").
fn recorded_pids(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_dir(dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let pid = text.split_whitespace().next()?.parse().ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect()
}

/// The recorded processes that still run, as `component (pid)`.
fn running_pids(dir: &Path) -> Vec<String> {
    recorded_pids(dir)
        .into_iter()
        .filter(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists())
        .map(|(name, pid)| format!("{name} ({pid})"))
        .collect()
}

fn temp_state_dir() -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cluster");
    (parent, dir)
}

#[test]
fn a_port_in_use_gets_one_line_and_starts_nothing() {
    if cluster_or_skip().is_none() {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (_keep, dir) = temp_state_dir();
    let out = pie_cluster(&[
        "up",
        "--nodes",
        "1",
        "--apiserver-port",
        &port,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out);
    assert!(
        line.contains(&format!("127.0.0.1:{port} is in use")) && line.contains("--apiserver-port"),
        "{line}"
    );
    assert!(running_pids(&dir).is_empty());
}

#[test]
fn a_crashed_component_stops_everything_and_says_where_its_log_is() {
    if cluster_or_skip().is_none() {
        return;
    }
    let (_keep, dir) = temp_state_dir();
    let d = dir.to_str().unwrap();
    let up = pie_cluster(&["up", "--nodes", "1", "--dir", d]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // A second `up` on a running cluster's dir is refused and changes nothing.
    let again = pie_cluster(&["up", "--nodes", "1", "--dir", d]);
    assert_eq!(again.status.code(), Some(1));
    assert!(one_line(&again).contains("already running"));

    // A component stopped and started on request (here by the background supervisor) is
    // supervised again: its crash stops everything like any other's.
    let scheduler_pid = || {
        let text = std::fs::read_to_string(dir.join("pids/kube-scheduler")).unwrap();
        text.split_whitespace().next().unwrap().to_owned()
    };
    let first = scheduler_pid();
    for command in ["stop-component", "start-component"] {
        let out = pie_cluster(&[command, "--dir", d, "kube-scheduler"]);
        assert!(out.status.success(), "{command}: {out:?}");
    }
    let pid = scheduler_pid();
    assert_ne!(pid, first, "the scheduler was started again");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    while !dir.join("failed").exists() || dir.join("supervisor.pid").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the supervisor did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let why = std::fs::read_to_string(dir.join("failed")).unwrap();
    assert!(
        why.contains("kube-scheduler exited unexpectedly (signal: killed)")
            && why.contains(&format!("its log: {d}/logs/kube-scheduler.log")),
        "{why}"
    );
    assert!(
        running_pids(&dir).is_empty(),
        "left running: {:?}",
        running_pids(&dir)
    );
    let stopped = pie_cluster(&["stop-component", "--dir", d, "kubelet"]);
    assert_eq!(stopped.status.code(), Some(1));
    assert!(
        one_line(&stopped).contains(&format!(
            "no local cluster is running in {d}; it had stopped: kube-scheduler exited unexpectedly"
        )),
        "{stopped:?}"
    );
    let down = pie_cluster(&["down", "--dir", d]);
    assert!(down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stdout)
            .contains("it had stopped: kube-scheduler exited unexpectedly")
    );

    // The stale state is cleared by the next `up`, which says so.
    let up = pie_cluster(&["up", "--nodes", "1", "--dir", d]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(one_line(&up).contains(&format!("cleared the stale cluster state in {d}")));
    // `down` stops a restarted component and one stopped on request with the rest.
    for command in ["stop-component", "start-component"] {
        let out = pie_cluster(&[command, "--dir", d, "kube-controller-manager"]);
        assert!(out.status.success(), "{command}: {out:?}");
    }
    assert!(
        pie_cluster(&["stop-component", "--dir", d, "provisioner"])
            .status
            .success()
    );
    assert!(pie_cluster(&["down", "--dir", d]).status.success());
    assert!(running_pids(&dir).is_empty());
}

#[test]
fn a_directory_that_is_not_a_clusters_is_refused() {
    if cluster_or_skip().is_none() {
        return;
    }
    let (_keep, dir) = temp_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("precious.txt"), "mine").unwrap();
    let out = pie_cluster(&["up", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("is not a pie-cluster state directory"));
    assert_eq!(
        std::fs::read_to_string(dir.join("precious.txt")).unwrap(),
        "mine"
    );
    let other = dir.with_file_name("other");
    let other = other.to_str().unwrap();
    for (args, says) in [
        (
            vec!["up", "--dir", other, "--nodes", "0"],
            "--nodes must be at least 1",
        ),
        (
            vec!["up", "--dir", other, "--image", "no-binary"],
            "expected REFERENCE=BINARY",
        ),
    ] {
        let out = pie_cluster(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(one_line(&out).contains(says), "{args:?}");
    }
}

#[test]
fn building_without_go_says_so_in_one_line() {
    if cluster_or_skip().is_none() {
        return;
    }
    // A PATH with bash and the core tools but no go.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["bash", "dirname", "sed", "cut", "mkdir", "ln"] {
        let path = which(tool);
        std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
    }
    let out = Command::new(bin.path().join("bash"))
        .arg(e2e::cluster::repo_root().join("scripts/build-cluster.sh"))
        .env("PATH", bin.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("the Go toolchain (go) is not on PATH"));
}

fn which(tool: &str) -> PathBuf {
    e2e::find_binary(tool).unwrap_or_else(|| panic!("{tool} not found"))
}

// --- components stopped and started on request, etcd compaction, minted tokens ------------

/// The components besides the API server, in start order.
const OTHER_COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-controller-manager",
    "kube-scheduler",
    "provisioner",
    "kubelet",
];

/// Says a measured figure on stderr, where it shows for passing tests too.
fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Creates a Pod, retrying while the API server is not ready again (after a restart of etcd).
async fn create_pod(pods: &Api<Pod>, pod: &Pod) {
    let start = Instant::now();
    loop {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 => return,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "create pod {:?}: {e}",
                pod.metadata.name
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_restart_on_request_and_the_cluster_works_afterwards() {
    let Some(cluster) = own_local_cluster(2) else {
        return;
    };
    let dir = cluster.dir().unwrap().to_owned();
    let d = dir.to_str().unwrap();
    let pid = |name: &str| cluster.component_pid(name);
    let others: Vec<(&str, u32)> = OTHER_COMPONENTS
        .iter()
        .map(|name| (*name, pid(name).unwrap_or_else(|| panic!("{name} runs"))))
        .collect();
    let client = cluster.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let started = Instant::now();
    cluster.stop_component("kube-apiserver");
    let stopped_in = started.elapsed();
    assert_eq!(pid("kube-apiserver"), None);
    assert!(
        nodes.list(&ListParams::default()).await.is_err(),
        "nothing answers on the API server's port"
    );
    let again = pie_cluster(&["stop-component", "--dir", d, "kube-apiserver"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(one_line(&again).contains("kube-apiserver is already stopped"));
    // The others run on without it, and the supervisor does not stop them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, before) in &others {
        assert_eq!(pid(name), Some(*before), "{name} must survive the outage");
    }
    assert!(!dir.join("failed").exists() && dir.join("supervisor.pid").exists());

    let started = Instant::now();
    cluster.start_component("kube-apiserver");
    let ready_in = started.elapsed();
    report(&format!(
        "kube-apiserver: stopped (SIGTERM) in {:.1} s, started and /readyz ok in {:.1} s",
        stopped_in.as_secs_f64(),
        ready_in.as_secs_f64()
    ));
    // Same port and certificates: the kubeconfig and client from before work.
    nodes.list(&ListParams::default()).await.unwrap();
    let again = pie_cluster(&["start-component", "--dir", d, "kube-apiserver"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(one_line(&again).contains("kube-apiserver is already running"));
    for (name, before) in &others {
        assert_eq!(pid(name), Some(*before), "{name} must survive the restart");
    }
    // A Pod created after the restart is scheduled and run.
    create_pod(
        &pods,
        &shell_pod("after-apiserver", "pie-node-1", None, "true"),
    )
    .await;
    eventually(
        "after-apiserver to succeed",
        Duration::from_secs(60),
        || async { pod_phase(&pods, "after-apiserver").await == "Succeeded" },
    )
    .await;

    // Every other component restarts too, as a new process.
    for (name, before) in &others {
        let started = Instant::now();
        cluster.stop_component(name);
        assert_eq!(pid(name), None, "{name} stopped");
        cluster.start_component(name);
        let now = pid(name).unwrap_or_else(|| panic!("{name} runs again"));
        assert_ne!(now, *before, "{name} is a new process");
        report(&format!(
            "{name}: stopped and healthy again in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    // Then a Pod with a provisioned ephemeral volume runs on the other node: the scheduler, the
    // controller manager's volume controllers, the provisioner and the kubelet all work.
    create_pod(
        &pods,
        &shell_pod(
            "after-all",
            "pie-node-2",
            Some("pie-local"),
            "echo ok > /data/f",
        ),
    )
    .await;
    eventually("after-all to succeed", Duration::from_secs(90), || async {
        pod_phase(&pods, "after-all").await == "Succeeded"
    })
    .await;

    // Dropping the cluster (its supervisor's stdin ends) stops everything: the restarted
    // components and one stopped on request.
    cluster.stop_component("kube-scheduler");
    let running: Vec<(String, u32)> = recorded_pids(&dir)
        .into_iter()
        .filter(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(running.len() >= 5, "{running:?}");
    drop(cluster);
    let left: Vec<&(String, u32)> = running
        .iter()
        .filter(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    if std::env::var_os("PIE_E2E_KEEP_CLUSTER").is_none() {
        assert!(!dir.exists(), "{} is removed", dir.display());
    }
}

/// `kubectl get --raw` of a watch of the ConfigMaps of `default` from `version`, for a second.
fn raw_watch(cluster: &TestCluster, version: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={version}\
             &timeoutSeconds=1"
        ),
    ])
}

/// The resourceVersion of a list of the ConfigMaps of `default`.
async fn list_version(maps: &Api<ConfigMap>) -> String {
    maps.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

async fn create_config_map(maps: &Api<ConfigMap>, name: &str) {
    let map: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_an_apiserver_restart_make_old_watches_410_gone() {
    let Some(cluster) = own_local_cluster(1) else {
        return;
    };
    let client = cluster.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    create_config_map(&maps, "before").await;
    let old = list_version(&maps).await;
    create_config_map(&maps, "a").await;
    create_config_map(&maps, "b").await;
    let replayed = raw_watch(&cluster, &old);
    assert!(
        replayed.contains(r#""name":"a""#) && !replayed.contains("ERROR"),
        "a watch from {old} replays what came after: {replayed}"
    );

    let revision = cluster.compact_etcd();
    let old_number: u64 = old.parse().unwrap();
    assert!(revision >= old_number + 2, "compacted at {revision}");
    assert!(cluster.etcd_url().unwrap().starts_with("http://127.0.0.1:"));
    // etcd no longer has the old version: an exact list there is 410 Gone, once the API
    // server's cache has dropped its snapshots before the compaction (it reads the compacted
    // revision every 15 s) ...
    let compacted = Instant::now();
    let exact = format!(
        "/api/v1/namespaces/default/configmaps?resourceVersion={old}&resourceVersionMatch=Exact"
    );
    let mut said = String::new();
    let gone = e2e::cluster::within(Duration::from_secs(40), || {
        let list = cluster.kubectl(&["get", "--raw", &exact]);
        said = String::from_utf8_lossy(&list.stderr).trim().to_owned();
        let gone = !list.status.success()
            && said.contains("(Expired)")
            && said.contains("The resourceVersion for the provided list is too old");
        async move { gone }
    })
    .await;
    assert!(gone, "exact list at {old} after compaction: {said}");
    report(&format!(
        "an exact list at a compacted version: {said:?} after {:.0} s",
        compacted.elapsed().as_secs_f64()
    ));
    // ... but the API server's watch cache still serves watches from it.
    let replayed = raw_watch(&cluster, &old);
    assert!(
        replayed.contains(r#""name":"a""#) && !replayed.contains("ERROR"),
        "compaction alone leaves watches from the cache: {replayed}"
    );

    cluster.stop_component("kube-apiserver");
    cluster.start_component("kube-apiserver");
    // After the restart the watch cache starts at the current revision: the old version is
    // gone, in the stream's only event.
    let expired = raw_watch(&cluster, &old);
    let lines: Vec<&str> = expired.lines().collect();
    assert_eq!(lines.len(), 1, "one event: {expired}");
    let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(event["type"], "ERROR", "{event}");
    assert_eq!(event["object"]["code"], 410, "{event}");
    assert_eq!(event["object"]["reason"], "Expired", "{event}");
    let message = event["object"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("too old resource version: {old} (")),
        "{message}"
    );
    report(&format!(
        "watch from {old} after compaction at {revision} and a restart: {}",
        lines[0]
    ));
    // kube-rs sees the same: an Error event with code 410 (its watcher then lists again).
    let mut stream = maps
        .watch(&WatchParams::default().timeout(1), &old)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("kube-rs watch from {old}: {other:?}"),
    }
    // A watch from a version after the restart works.
    let now = list_version(&maps).await;
    create_config_map(&maps, "c").await;
    let fresh = raw_watch(&cluster, &now);
    assert!(
        fresh.contains(r#""name":"c""#) && !fresh.contains("ERROR"),
        "a watch from {now}: {fresh}"
    );
}

/// The claims of a JWT (its payload, base64url without padding), unverified.
fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let mut bits = 0u32;
    let mut len = 0;
    let mut bytes = Vec::new();
    for c in payload.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {payload}"),
        };
        bits = (bits << 6) | u32::from(value);
        len += 6;
        if len >= 8 {
            len -= 8;
            bytes.push((bits >> len) as u8);
        }
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT payload: {e}"))
}

/// What the real TokenReview says of a token for `audience`: `Ok(extra)` when authenticated
/// (the user's extra), `Err(its error)` otherwise.
async fn review(
    client: &Client,
    token: &str,
    audience: Option<&str>,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let review: TokenReview = serde_json::from_value(serde_json::json!({
        "spec": {"token": token, "audiences": audience.map(|a| vec![a])}
    }))
    .unwrap();
    let status = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    if status.authenticated == Some(true) {
        Ok(status.user.unwrap().extra.unwrap_or_default())
    } else {
        Err(status.error.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_are_judged_by_the_real_token_review() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let client = cluster.client().await;
    let ns = cluster.namespace("tokens").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "agent"}})).unwrap();
    let account = accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut probe = shell_pod("probe", "pie-node-2", None, "sleep 600");
    probe.spec.as_mut().unwrap().service_account_name = Some("agent".into());
    pods.create(&PostParams::default(), &probe).await.unwrap();
    eventually("probe to run", Duration::from_secs(60), || async {
        pod_phase(&pods, "probe").await == "Running"
    })
    .await;
    let pod_uid = pods.get("probe").await.unwrap().metadata.uid.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node_uid = nodes.get("pie-node-2").await.unwrap().metadata.uid.unwrap();

    let bound = TokenOptions {
        pod: Some("probe".into()),
        audiences: vec!["pie-e2e".into()],
        ..TokenOptions::new(&ns.name, "agent")
    };
    let fresh = cluster.mint_token(&bound);
    let extra = review(&client, &fresh, Some("pie-e2e"))
        .await
        .unwrap_or_else(|e| panic!("a fresh token for the right audience is accepted: {e}"));
    for (key, want) in [
        ("authentication.kubernetes.io/pod-name", "probe"),
        ("authentication.kubernetes.io/pod-uid", pod_uid.as_str()),
        ("authentication.kubernetes.io/node-name", "pie-node-2"),
        ("authentication.kubernetes.io/node-uid", node_uid.as_str()),
    ] {
        assert_eq!(
            extra.get(key),
            Some(&vec![want.to_owned()]),
            "{key}: {extra:?}"
        );
    }
    let expired = cluster.mint_token(&TokenOptions {
        expired: true,
        ..bound.clone()
    });
    let error = review(&client, &expired, Some("pie-e2e"))
        .await
        .unwrap_err();
    assert!(
        error.contains("service account token has expired"),
        "{error}"
    );
    report(&format!("TokenReview of an expired minted token: {error}"));
    let claims = jwt_claims(&expired);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp + 60 < now && claims["iat"].as_u64().unwrap() < exp,
        "{claims}"
    );
    let other = cluster.mint_token(&TokenOptions {
        audiences: vec!["another".into()],
        ..bound.clone()
    });
    let error = review(&client, &other, Some("pie-e2e")).await.unwrap_err();
    assert!(error.contains("audience"), "{error}");
    report(&format!(
        "TokenReview of a token for another audience: {error}"
    ));
    // Forged bindings TokenRequest refuses to make, which TokenReview takes as they are: the
    // node of the pod claims is not checked, nor the Pod's ServiceAccount.
    let elsewhere = cluster.mint_token(&TokenOptions {
        node: Some("pie-node-1".into()),
        ..bound.clone()
    });
    let extra = review(&client, &elsewhere, Some("pie-e2e")).await.unwrap();
    let node_name = "authentication.kubernetes.io/node-name";
    assert_eq!(extra[node_name], vec!["pie-node-1".to_owned()], "{extra:?}");
    let other_account = cluster.mint_token(&TokenOptions {
        service_account: "default".into(),
        ..bound.clone()
    });
    let extra = review(&client, &other_account, Some("pie-e2e"))
        .await
        .unwrap();
    let pod_name = "authentication.kubernetes.io/pod-name";
    assert_eq!(extra[pod_name], vec!["probe".to_owned()], "{extra:?}");
    // Without audiences: the API server's own, which a review without audiences expects.
    let plain = cluster.mint_token(&TokenOptions::new(&ns.name, "agent"));
    review(&client, &plain, None).await.unwrap();

    // The claims are TokenRequest's own for the same binding: the same names, UIDs, issuer,
    // subject and audience, the same keys, the same lifetime.
    let request: TokenRequest = serde_json::from_value(serde_json::json!({"spec": {
        "audiences": ["pie-e2e"], "expirationSeconds": 3600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "probe"}}}))
    .unwrap();
    let requested = accounts
        .create_token_request("agent", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let (mine, theirs) = (jwt_claims(&fresh), jwt_claims(&requested));
    let keys =
        |c: &serde_json::Value| -> Vec<String> { c.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&mine), keys(&theirs), "{mine} vs {theirs}");
    for claim in ["iss", "sub", "aud", "kubernetes.io"] {
        assert_eq!(mine[claim], theirs[claim], "{claim}: {mine} vs {theirs}");
    }
    let lifetime = |c: &serde_json::Value| c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert_eq!(lifetime(&mine), lifetime(&theirs));
    assert_eq!(
        mine["kubernetes.io"]["serviceaccount"]["uid"],
        serde_json::json!(account.metadata.uid)
    );

    // Bound to the Pod: once it is gone, the token is refused.
    pods.delete("probe", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("probe to be gone", Duration::from_secs(60), || async {
        pods.get_opt("probe").await.unwrap().is_none()
    })
    .await;
    // (The API server caches a successful review for 10 s.)
    let deleted = Instant::now();
    let error = loop {
        match review(&client, &fresh, Some("pie-e2e")).await {
            Err(error) => break error,
            Ok(_) => assert!(
                deleted.elapsed() < Duration::from_secs(30),
                "the token of a deleted Pod is still accepted"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(error.contains("invalidated"), "{error}");
    report(&format!(
        "a minted token of a deleted Pod: refused after {:.1} s: {error}",
        deleted.elapsed().as_secs_f64()
    ));

    // A ServiceAccount that does not exist: one line.
    let dir = cluster.dir().unwrap().to_str().unwrap();
    let out = pie_cluster(&[
        "token",
        "--dir",
        dir,
        "--namespace",
        &ns.name,
        "--service-account",
        "nobody",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        one_line(&out).contains(&format!("serviceaccount {}/nobody not found", ns.name)),
        "{out:?}"
    );
    ns.delete().await;
}

#[test]
fn cluster_commands_refuse_bad_input_in_one_line() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let d = cluster.dir().unwrap().to_str().unwrap();
    let (_keep, nothing) = temp_state_dir();
    std::fs::create_dir_all(&nothing).unwrap();
    let nothing = nothing.to_str().unwrap();
    let no_cluster = format!("no local cluster in {nothing}");
    let running = format!("kube-scheduler is already running in {d} (pid ");
    let unknown = "unknown component \"kube-nope\": one of etcd, kube-apiserver, \
                   kube-controller-manager, kube-scheduler, provisioner, kubelet";
    // `token` for the ServiceAccount default/default, then more flags.
    let token = |dir: &str, more: &[&'static str]| -> Vec<String> {
        let mut args = vec!["token", "--dir", dir, "--namespace", "default"];
        args.extend(["--service-account", "default"]);
        args.extend(more);
        args.into_iter().map(str::to_owned).collect()
    };
    let own = |args: &[&str]| -> Vec<String> { args.iter().map(|a| (*a).to_owned()).collect() };
    for (args, code, says) in [
        (
            own(&["stop-component", "--dir", d, "kube-nope"]),
            1,
            unknown,
        ),
        (
            own(&["start-component", "--dir", d, "kube-scheduler"]),
            1,
            &running,
        ),
        (
            own(&["stop-component", "--dir", d]),
            2,
            "expected one component NAME, got 0",
        ),
        (
            own(&["start-component", "--bogus", "kubelet"]),
            2,
            "flag provided but not defined: -bogus",
        ),
        (
            own(&["stop-component", "--dir", nothing, "kube-apiserver"]),
            1,
            &no_cluster,
        ),
        (
            own(&["start-component", "--dir", nothing, "kube-apiserver"]),
            1,
            &no_cluster,
        ),
        (own(&["compact", "--dir", nothing]), 1, &no_cluster),
        (token(nothing, &[]), 1, &no_cluster),
        (
            own(&["token", "--dir", d, "--service-account", "default"]),
            2,
            "--namespace and --service-account are required",
        ),
        (
            token(d, &["--expires-in", "0s"]),
            1,
            "--expires-in must be positive",
        ),
        (
            token(d, &["--pod", "nope"]),
            1,
            "pod default/nope not found",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = pie_cluster(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let line = one_line(&out);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    // None of that stopped a component of the shared cluster.
    for name in ["kube-apiserver", "kube-scheduler", "kubelet"] {
        assert!(cluster.component_pid(name).is_some(), "{name} runs");
    }
}
