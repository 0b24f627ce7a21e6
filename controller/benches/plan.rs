//! Benchmarks of the controller's planning and Node cache (a plain bench binary: it prints
//! figures instead of asserting them; see docs/benchmarks.md).
//!
//! `cargo bench -p pie-controller --bench plan` runs both; `-- plan` or `-- cache [--whole-nodes]`
//! runs one. Memory figures are the process's resident set (VmRSS/VmHWM from /proc/self/status).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector;
use kube::runtime::watcher;
use pie_controller::crd::PieProbe;
use pie_controller::domain::node_facts::NodeFacts;
use pie_controller::domain::plan::{self, Config};
use serde_json::{Value, json};

const NODES: usize = 5_000;
const IMAGES_PER_NODE: usize = 50;

/// A Node as a real cluster's API server returns it: ~50 images, managedFields, addresses,
/// capacity, nodeInfo, five conditions, labels and annotations.
fn realistic_node_json(i: usize) -> String {
    let name = format!(
        "ip-10-{}-{}-{}.eu-west-1.compute.internal",
        i / 65536,
        (i / 256) % 256,
        i % 256
    );
    let images: Vec<Value> = (0..IMAGES_PER_NODE)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", i * 1000 + k),
                    format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}")
                ],
                "sizeBytes": 50_000_000 + k * 1000
            })
        })
        .collect();
    let fields = |n: usize| -> Value {
        let mut m = serde_json::Map::new();
        for k in 0..n {
            m.insert(
                format!("f:field-{k}"),
                json!({"f:type": {}, "f:status": {}, "f:reason": {}, "f:message": {}}),
            );
        }
        Value::Object(m)
    };
    let condition = |t: &str, s: &str| {
        json!({"type": t, "status": s, "lastHeartbeatTime": "2026-11-23T10:00:00Z",
               "lastTransitionTime": "2026-11-01T10:00:00Z", "reason": format!("Kubelet{t}"),
               "message": format!("kubelet reports {t} = {s}")})
    };
    let role = ["compute", "storage", "infra"][i % 3];
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, i),
            "resourceVersion": format!("{}", 1_000_000 + i),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": "eu-west-1a",
                "topology.ebs.csi.aws.com/zone": "eu-west-1a", "node-role.kubernetes.io/role": role,
                "eks.amazonaws.com/nodegroup": "ng-1", "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "topology.topolvm.io/node": name
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "csi.volume.kubernetes.io/nodeid": format!("{{\"ebs.csi.aws.com\":\"i-{i:017x}\",\"topolvm.io\":\"{name}\"}}"),
                "capacity.topolvm.io/00default": "1099511627776"
            },
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-23T10:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:status": fields(40)}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                 "time": "2026-11-23T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": fields(10)}},
                {"manager": "aws-node", "operation": "Update", "apiVersion": "v1", "time": "2026-11-23T10:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": fields(10)}}
            ]
        },
        "spec": {
            "providerID": format!("aws:///eu-west-1a/i-{i:017x}"),
            "podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"],
            "taints": if i.is_multiple_of(50) { json!([{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]) } else { json!([]) }
        },
        "status": {
            "capacity": {"cpu": "8", "memory": "32386452Ki", "pods": "58", "ephemeral-storage": "104845292Ki"},
            "allocatable": {"cpu": "7910m", "memory": "31369620Ki", "pods": "58", "ephemeral-storage": "95551679490"},
            "conditions": [
                condition("MemoryPressure", "False"), condition("DiskPressure", "False"),
                condition("PIDPressure", "False"), condition("NetworkUnavailable", "False"),
                condition("Ready", if i.is_multiple_of(100) { "False" } else { "True" })
            ],
            "addresses": [
                {"type": "InternalIP", "address": format!("10.0.{}.{}", (i / 256) % 256, i % 256)},
                {"type": "Hostname", "address": name}, {"type": "InternalDNS", "address": name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{i:032x}"), "systemUUID": format!("ec2{i:029x}"), "bootID": format!("{i:032x}"),
                "kernelVersion": "6.1.112-124.190.amzn2023.x86_64", "osImage": "Amazon Linux 2023",
                "containerRuntimeVersion": "containerd://1.7.22", "kubeletVersion": "v1.33.1",
                "kubeProxyVersion": "v1.33.1", "operatingSystem": "linux", "architecture": "amd64"
            },
            "images": images
        }
    })
    .to_string()
}

fn proc_status(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn rss_mib() -> f64 {
    proc_status("VmRSS:")
}

fn peak_mib() -> f64 {
    proc_status("VmHWM:")
}

/// Fills a reflector store the way `run` does: each Node decoded from API JSON, turned into
/// what the controller keeps (`keep`), then cached. Returns the store (the originals are
/// dropped one by one).
fn fill_cache<K>(keep: impl Fn(Node) -> K) -> reflector::Store<K>
where
    K: reflector::Lookup<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for i in 0..NODES {
        let node: Node = serde_json::from_str(&realistic_node_json(i)).expect("node json");
        writer.apply_watcher_event(&watcher::Event::InitApply(keep(node)));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    std::mem::forget(writer); // keep the store alive without a live watch
    store
}

fn cache_bench(whole: bool) {
    let before = rss_mib();
    let cached = if whole {
        fill_cache(|node| node).len()
    } else {
        fill_cache(NodeFacts::from).len()
    };
    let after = rss_mib();
    println!(
        "node cache: {NODES} realistic nodes ({IMAGES_PER_NODE} images + managedFields each), {}: \
         RSS grew {:.1} MiB ({cached} nodes cached)",
        if whole {
            "whole Node objects"
        } else {
            "as NodeFacts (as run caches them)"
        },
        after - before,
    );
}

fn probes() -> Vec<PieProbe> {
    ["compute", "storage", "infra"]
        .iter()
        .map(|role| {
            serde_json::from_value(json!({
                "apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
                "metadata": {"name": format!("probe-{role}"), "namespace": "pie", "uid": format!("uid-{role}")},
                "spec": {"monitoringStorageClass": "topolvm-provisioner", "probeThreshold": "30s",
                         "nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "node-role.kubernetes.io/role", "operator": "Exists"}]}]}}
            }))
            .expect("probe")
        })
        .collect()
}

fn plan_bench() {
    let before_cache = rss_mib();
    let store = fill_cache(NodeFacts::from);
    let nodes: Vec<Arc<NodeFacts>> = store.state();
    let cache = rss_mib() - before_cache;
    let probes = probes();
    let config = Config {
        agent_image: "ghcr.io/pie-rs/pie-agent:0.1.0".into(),
        controller_url: "http://pie-controller.pie.svc:8082".into(),
        probe_service_account: Some("pie-probe".into()),
        image_pull_secrets: vec![],
    };
    let runs = 5;
    // What each pass does, as the reconciler does it: one PieProbe at a time, its plan dropped
    // afterwards.
    type Pass = fn(&plan::Plan) -> usize;
    let passes: [(&str, Pass); 3] = [
        ("plan (decide objects and eligibility)", |p| {
            p.cron_job_count() + p.pvc_count()
        }),
        (
            "plan + name and desired-hash of every object (a steady-state reconcile pass)",
            |p| {
                p.desired_cron_jobs()
                    .map(|d| d.name.len() + d.hash.len())
                    .chain(p.desired_pvcs().map(|d| d.name.len() + d.hash.len()))
                    .filter(|n| *n > 0)
                    .count()
            },
        ),
        (
            "plan + build every object in full (a first reconcile, or `pie-controller plan`)",
            |p| {
                p.desired_cron_jobs()
                    .map(|d| usize::from(d.build().metadata.annotations.is_some()))
                    .chain(
                        p.desired_pvcs()
                            .map(|d| usize::from(d.build().metadata.annotations.is_some())),
                    )
                    .sum()
            },
        ),
    ];
    for (i, (what, pass)) in passes.iter().enumerate() {
        let mut best = f64::INFINITY;
        let mut objects = 0;
        for _ in 0..runs {
            let start = Instant::now();
            objects = 0;
            for p in &probes {
                let planned = plan::plan(p, &nodes, true, &config).expect("plan");
                objects += pass(&planned);
            }
            best = best.min(start.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "{what}: {NODES} nodes x {} PieProbes -> {objects} objects: best of {runs} {best:.1} ms",
            probes.len(),
        );
        if i == 1 {
            println!(
                "plan: process peak RSS after the steady-state passes {:.1} MiB, of which the node cache {cache:.1} MiB",
                peak_mib()
            );
        }
    }
    println!(
        "plan: process peak RSS after building every object {:.1} MiB",
        peak_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let whole = args.iter().any(|a| a == "--whole-nodes");
    let which: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if which.is_empty() || which.contains(&"cache") {
        cache_bench(whole);
    }
    if which.is_empty() || which.contains(&"plan") {
        plan_bench();
    }
}
