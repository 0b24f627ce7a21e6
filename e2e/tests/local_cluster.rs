//! The local Kubernetes itself (`e2e/cluster`, docs/testing.md): its faults do what the tests of
//! pie will rely on, it listens on loopback only, and each bad input gets one readable line, a
//! non-zero exit and nothing left running. Skipped, saying so, only on a machine without Go.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::cluster::{SHELL_IMAGE, TestCluster, build_pie_cluster, eventually, test_cluster};
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

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

    let scheduler = std::fs::read_to_string(dir.join("pids/kube-scheduler")).unwrap();
    let pid = scheduler.split_whitespace().next().unwrap();
    assert!(
        Command::new("kill")
            .args(["-KILL", pid])
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
