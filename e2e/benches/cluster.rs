//! pie at cluster scale, on the local cluster's real kube-apiserver in scale mode (many nodes,
//! probe Pods that run `pie-agent` with a recorded fio): what pie-controller asks of the API
//! server, its CPU and memory, and how long a broken StorageClass or node takes to be seen.
//! Every request is counted from the API server's audit log (user
//! `system:serviceaccount:pie:pie-controller`), never from pie's own idea of what it sends.
//!
//! Phases (each on a cluster of its own, stopped at its end):
//! - `steady`: N nodes x P PieProbes at `probePeriod: 1` for M minutes: requests per probe Pod
//!   by verb and resource, reads outside watch starts, writes per probe Pod, CPU per probe Pod,
//!   peak RSS.
//! - `size`: N nodes x P PieProbes, kube-controller-manager without its CronJob controller (no
//!   Job runs; this phase measures object management alone): time from the PieProbes' creation
//!   to every CronJob and PVC existing, peak RSS, the requests of a quiet window that spans the
//!   controller's periodic requeue, of a restart (a full resync), and of 1 % of the nodes
//!   flapping Ready/NotReady every 30 s.
//! - `detect`: F PieProbes, each on a StorageClass and a node of its own, at `probePeriod: 1`
//!   at each of the given thresholds (by default 5 s and the default 1 min); each gets a provisioner fault on
//!   its StorageClass and a mount fault on its node, injected at moments spread over a probe
//!   period: from the injection to (a) the first failure being decidable (the first probe Pod
//!   created after it, plus the threshold), (b) the failure in VictoriaMetrics, (c) the shipped
//!   alert firing in vmalert; p50/p99 per fault kind and threshold.
//!
//! `cargo bench -p pie-e2e --bench cluster` runs every phase at the sizes of the issue;
//! `cargo bench -p pie-e2e --bench cluster -- --help` lists the flags (smaller runs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use e2e::cluster::{
    AuditRequest, LOCAL_STORAGE_CLASS, LocalClusterOptions, TestCluster, own_local_cluster_with,
};
use e2e::scenario::{CONTROLLER_USER, PodLedger, Scenario};
use e2e::{cpu_seconds, now_millis, peak_rss_bytes};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ListParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Steady,
    Size,
    Detect,
}

#[derive(Debug, Parser)]
#[command(about = "pie at cluster scale on the local cluster (docs/benchmarks.md)")]
struct Flags {
    /// Phases to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["steady", "size", "detect"])]
    phases: Vec<Phase>,
    /// Steady state: nodes.
    #[arg(long, default_value_t = 500)]
    steady_nodes: usize,
    /// Steady state: PieProbes over every node.
    #[arg(long, default_value_t = 2)]
    steady_probes: usize,
    /// Steady state: minutes measured (after a warm-up round).
    #[arg(long, default_value_t = 10)]
    steady_minutes: u64,
    /// Size: nodes.
    #[arg(long, default_value_t = 5000)]
    size_nodes: usize,
    /// Size: PieProbes over every node.
    #[arg(long, default_value_t = 3)]
    size_probes: usize,
    /// Size: the nodes' Lease renewal interval, seconds (status every three).
    #[arg(long, default_value_t = 60)]
    size_heartbeat: u64,
    /// Size: seconds of the quiet window; longer than the controller's 300 s requeue.
    #[arg(long, default_value_t = 330)]
    quiet_seconds: u64,
    /// Size: seconds of flapping (a flip every 30 s).
    #[arg(long, default_value_t = 150)]
    flap_seconds: u64,
    /// Detect: faults of each kind per threshold.
    #[arg(long, default_value_t = 20)]
    faults: usize,
    /// Detect: the probeThresholds measured, each with its own PieProbes: the smallest one
    /// that works here (the CRD allows any positive duration shorter than the period; below
    /// the process kubelet's start latency healthy probes count as late) and the default.
    #[arg(long, value_delimiter = ',', default_values = ["5s", "1m"])]
    thresholds: Vec<String>,
    /// Detect: minutes to wait for every alert to fire.
    #[arg(long, default_value_t = 25)]
    detect_timeout_minutes: u64,
    /// pie-controller's client-side rate limit (its `--kube-qps`; 0: none), in every phase.
    #[arg(long, default_value_t = 100.0)]
    kube_qps: f64,
    /// pie-controller's `--kube-burst`, in every phase.
    #[arg(long, default_value_t = 200)]
    kube_burst: u32,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A scenario whose controller has the bench's `--kube-qps` and `--kube-burst`.
async fn start(cluster: &'static TestCluster, name: &str, f: &Flags) -> Scenario {
    let limit = [
        format!("--kube-qps={}", f.kube_qps),
        format!("--kube-burst={}", f.kube_burst),
    ];
    Scenario::start_with(cluster, name, |o| o.extra_args.extend(limit)).await
}

/// Every node: the PieProbes of `steady` and `size` select all of them.
fn every_node() -> serde_json::Value {
    serde_json::json!({"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
    ]}]})
}

/// One node by name.
fn one_node(node: &str) -> serde_json::Value {
    serde_json::json!({"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    ]}]})
}

fn say(what: impl AsRef<str>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{}", what.as_ref());
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A cluster for one phase; `'static` for [`Scenario`], stopped by [`Phase`]'s end.
fn cluster(options: LocalClusterOptions) -> &'static TestCluster {
    let started = Instant::now();
    let cluster = own_local_cluster_with(&options).expect("the local cluster (needs Go)");
    say(format!(
        "  cluster: {} nodes ready in {:.0} s",
        options.nodes,
        started.elapsed().as_secs_f64()
    ));
    Box::leak(Box::new(cluster))
}

/// Requests by `verb resource`, sorted.
fn tally(requests: &[AuditRequest]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in requests {
        *out.entry(format!("{} {}", r.verb, r.resource)).or_default() += 1;
    }
    out
}

/// Prints requests by verb and resource, each also per `per` (when given).
fn print_tally(requests: &[AuditRequest], per: Option<(f64, &str)>) {
    for (what, n) in tally(requests) {
        match per {
            Some((d, unit)) if d > 0.0 => say(format!(
                "    {what:<45} {n:>8}   {:>8.3} per {unit}",
                n as f64 / d
            )),
            _ => say(format!("    {what:<45} {n:>8}")),
        }
    }
}

/// Writes other than the controller's Lease (renewed on a clock, not per probe).
fn writes_but_lease(requests: &[AuditRequest]) -> Vec<AuditRequest> {
    requests
        .iter()
        .filter(|r| r.is_write() && r.resource != "leases")
        .cloned()
        .collect()
}

fn count(requests: &[AuditRequest], verbs: &[&str]) -> usize {
    requests
        .iter()
        .filter(|r| verbs.contains(&r.verb.as_str()))
        .count()
}

/// CronJobs and PVCs in the scenario's namespace, counted cheaply: a metadata LIST of one item
/// and the API server's `remainingItemCount`, so that polling 15,000 objects does not load the
/// API server being measured.
async fn objects(s: &Scenario) -> (usize, usize) {
    let lp = ListParams::default().limit(1);
    fn count<T: Clone>(l: kube::core::ObjectList<T>) -> usize {
        l.items.len() + l.metadata.remaining_item_count.unwrap_or(0).max(0) as usize
    }
    let cron_jobs = s.api::<CronJob>().list_metadata(&lp).await.map_or(0, count);
    let pvcs = s
        .api::<PersistentVolumeClaim>()
        .list_metadata(&lp)
        .await
        .map_or(0, count);
    (cron_jobs, pvcs)
}

/// Waits until `probes` PieProbes over `nodes` nodes have all their CronJobs (a mount probe
/// per node and a provision probe each) and PVCs (one per node each); returns how long.
async fn wait_objects(s: &Scenario, nodes: usize, probes: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    let want = (probes * (nodes + 1), probes * nodes);
    loop {
        let have = objects(s).await;
        if have.0 >= want.0 && have.1 >= want.1 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "after {timeout:?}: {} of {} CronJobs, {} of {} PVCs",
            have.0,
            want.0,
            have.1,
            want.1
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sleeps until the wall clock is at second `second` of a minute.
async fn until_second_of_minute(second: i64) {
    let now = now_millis();
    let wait = (second * 1000 - now.rem_euclid(60_000)).rem_euclid(60_000);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

async fn steady(f: &Flags) {
    say(format!(
        "\n== steady: {} nodes x {} PieProbes at probePeriod 1 for {} min (load {})",
        f.steady_nodes,
        f.steady_probes,
        f.steady_minutes,
        load()
    ));
    let mut options = LocalClusterOptions::new(f.steady_nodes);
    options.recorded_fio = true;
    options.ready_timeout = Duration::from_secs(600);
    let cluster = cluster(options);
    let s = start(cluster, "steady", f).await;
    let ledger = PodLedger::start(s.client.clone(), &s.namespace).await;
    for i in 0..f.steady_probes {
        s.create_probe(
            &format!("steady-{i}"),
            serde_json::json!({
                "monitoringStorageClass": LOCAL_STORAGE_CLASS,
                "nodeSelector": every_node(), "probePeriod": 1,
            }),
        )
        .await;
    }
    let took = wait_objects(
        &s,
        f.steady_nodes,
        f.steady_probes,
        Duration::from_secs(900),
    )
    .await;
    say(format!(
        "  every CronJob and PVC exists after {:.1} s",
        took.as_secs_f64()
    ));
    // A warm-up round: the first Jobs bind every mount probe's PVC.
    let round = f.steady_nodes * f.steady_probes;
    let warm = Instant::now();
    while ledger.records().len() < round && warm.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Batches start at second 0 of each minute; a window from second 55 to second 55 holds
    // whole minutes of probe work.
    until_second_of_minute(55).await;
    until_second_of_minute(55).await;
    let pid = s.controller.pid();
    let (t0, cpu0) = (now_millis(), cpu_seconds(pid).unwrap_or(0.0));
    say(format!("  measuring from {t0} (load {})", load()));
    tokio::time::sleep(Duration::from_secs(f.steady_minutes * 60)).await;
    let (t1, cpu1) = (now_millis(), cpu_seconds(pid).unwrap_or(0.0));
    let peak = peak_rss_bytes(pid).unwrap_or(0);
    let records = ledger.records();
    let pods: Vec<_> = records
        .values()
        .filter(|r| (t0..t1).contains(&r.created_ms))
        .collect();
    let started: Vec<i64> = pods
        .iter()
        .filter_map(|r| r.started_ms.map(|s| s - r.created_ms))
        .collect();
    let n = pods.len() as f64;
    let requests = cluster.audit_requests(CONTROLLER_USER, t0, t1);
    say(format!(
        "  window {:.0} s: {} probe Pods created ({} mount, {} provision), {} of them started; load {}",
        (t1 - t0) as f64 / 1000.0,
        pods.len(),
        pods.iter().filter(|r| r.probe == "mount").count(),
        pods.iter().filter(|r| r.probe == "provision").count(),
        started.len(),
        load()
    ));
    say(format!(
        "  Pod creation -> probe container start: {}",
        percentiles_ms(started.clone())
    ));
    say("  pie-controller's requests (audit log):");
    print_tally(&requests, Some((n, "probe Pod")));
    let writes = writes_but_lease(&requests);
    say(format!(
        "  requests per probe Pod: {:.2}; GET {}, LIST {} (target 0 outside watch starts), WATCH starts {}",
        requests.len() as f64 / n,
        count(&requests, &["get"]),
        count(&requests, &["list"]),
        count(&requests, &["watch"]),
    ));
    say(format!(
        "  writes per probe Pod (Lease renewals aside, {} of them): {:.2} (target <= 2)",
        requests
            .iter()
            .filter(|r| r.is_write() && r.resource == "leases")
            .count(),
        writes.len() as f64 / n
    ));
    say(format!(
        "  controller CPU: {:.1} s = {:.2} ms per probe Pod; peak RSS {:.1} MiB",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1000.0 / n,
        mib(peak)
    ));
    drop(ledger);
    cluster.stop();
}

/// A probeThreshold in milliseconds.
fn millis(threshold: &str) -> i64 {
    let d: kube::core::Duration = threshold
        .parse()
        .unwrap_or_else(|e| panic!("--thresholds {threshold}: {e}"));
    std::time::Duration::from(d).as_millis() as i64
}

fn percentiles_ms(mut v: Vec<i64>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.1} s, p99 {:.1} s, max {:.1} s (n={})",
        at(0.5),
        at(0.99),
        at(1.0),
        v.len()
    )
}

async fn size(f: &Flags) {
    say(format!(
        "\n== size: {} nodes x {} PieProbes, no CronJob controller, node heartbeat {} s (load {})",
        f.size_nodes,
        f.size_probes,
        f.size_heartbeat,
        load()
    ));
    let mut options = LocalClusterOptions::new(f.size_nodes);
    options.node_heartbeat = Some(Duration::from_secs(f.size_heartbeat));
    options.disabled_controllers = vec!["cronjob-controller".into()];
    options.ready_timeout = Duration::from_secs(1800);
    let cluster = cluster(options);
    let mut s = start(cluster, "size", f).await;
    let pid = s.controller.pid();
    let (t0, cpu0) = (now_millis(), cpu_seconds(pid).unwrap_or(0.0));
    for i in 0..f.size_probes {
        s.create_probe(
            &format!("size-{i}"),
            serde_json::json!({
                "monitoringStorageClass": LOCAL_STORAGE_CLASS, "nodeSelector": every_node(),
            }),
        )
        .await;
    }
    let took = wait_objects(&s, f.size_nodes, f.size_probes, Duration::from_secs(3600)).await;
    let t1 = now_millis();
    let cpu1 = cpu_seconds(pid).unwrap_or(0.0);
    let created = cluster.audit_requests(CONTROLLER_USER, t0, t1);
    say(format!(
        "  PieProbes created -> every CronJob ({}) and PVC ({}) exists: {:.1} s; controller CPU {:.1} s; \
         client rate limit --kube-qps {} --kube-burst {}; load {}",
        f.size_probes * (f.size_nodes + 1),
        f.size_probes * f.size_nodes,
        took.as_secs_f64(),
        cpu1 - cpu0,
        f.kube_qps,
        f.kube_burst,
        load()
    ));
    print_tally(&created, None);

    // Let the controller finish what follows creation (status, a requeue of each PieProbe).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let q0 = now_millis();
    tokio::time::sleep(Duration::from_secs(f.quiet_seconds)).await;
    let q1 = now_millis();
    let quiet = cluster.audit_requests(CONTROLLER_USER, q0, q1);
    say(format!(
        "  quiet {} s (spans the 300 s requeue): {} requests, {} writes besides the Lease (target 0)",
        f.quiet_seconds,
        quiet.len(),
        writes_but_lease(&quiet).len()
    ));
    print_tally(&quiet, None);
    say(format!(
        "  peak RSS after creation and the quiet window: {:.1} MiB (target <= 100 MiB)",
        mib(peak_rss_bytes(pid).unwrap_or(0))
    ));

    let r0 = now_millis();
    let restarted = Instant::now();
    s.controller.restart().await;
    let ready = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let r1 = now_millis();
    let resync = cluster.audit_requests(CONTROLLER_USER, r0, r1);
    let pid = s.controller.pid();
    say(format!(
        "  restart (a full resync): ready after {:.1} s; {} requests in the 60 s after, {} writes besides the Lease (target 0); peak RSS {:.1} MiB",
        ready.as_secs_f64(),
        resync.len(),
        writes_but_lease(&resync).len(),
        mib(peak_rss_bytes(pid).unwrap_or(0))
    ));
    print_tally(&resync, None);

    // 1 % of the nodes (at least one), spread over the cluster.
    let flapping_count = (f.size_nodes / 100).max(1);
    let flapping: Vec<String> = (0..flapping_count)
        .map(|k| format!("pie-node-{}", 1 + k * (f.size_nodes / flapping_count)))
        .collect();
    let f0 = now_millis();
    let flips = (f.flap_seconds / 30).max(1);
    for flip in 0..flips {
        let value = if flip % 2 == 0 {
            "faults.pie.test/ready=false"
        } else {
            "faults.pie.test/ready-"
        };
        let mut args = vec!["annotate", "node", "--overwrite"];
        args.extend(flapping.iter().map(String::as_str));
        args.push(value);
        cluster.kubectl_ok(&args);
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut args = vec!["annotate", "node", "--overwrite"];
    args.extend(flapping.iter().map(String::as_str));
    args.push("faults.pie.test/ready-");
    cluster.kubectl_ok(&args);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let f1 = now_millis();
    let flaps = cluster.audit_requests(CONTROLLER_USER, f0, f1);
    let writes = writes_but_lease(&flaps);
    say(format!(
        "  {} nodes flipping Ready/NotReady {} times ({} flips, one every 30 s): {} writes besides the Lease \
         (expected: only CronJob patches of their suspend flag, {} PieProbes x nodes x flips = {})",
        flapping.len(),
        flips,
        flips + 1,
        writes.len(),
        f.size_probes,
        f.size_probes * flapping.len() * (flips as usize + 1)
    ));
    print_tally(&flaps, None);
    let flapping_cronjobs: std::collections::BTreeSet<String> = (0..f.size_probes)
        .flat_map(|i| {
            flapping.iter().map(move |node| {
                pie_api::names::mount_cronjob(&format!("size-{i}"), node, LOCAL_STORAGE_CLASS)
            })
        })
        .collect();
    explain_flapping_writes(&writes, &flapping_cronjobs, flips as usize + 1);
    say(format!(
        "  peak RSS over the phase (restarted process): {:.1} MiB; load {}",
        mib(peak_rss_bytes(pid).unwrap_or(0)),
        load()
    ));
    cluster.stop();
}

/// Prints the flapping window's writes that are not a successful patch of one of `flapping` (the
/// flapping nodes' CronJobs, by name: another node's, a refused or retried request), one line each
/// (status patches counted, not listed), and the flapping CronJobs patched other than once per flip.
fn explain_flapping_writes(
    writes: &[AuditRequest],
    flapping: &std::collections::BTreeSet<String>,
    flips: usize,
) {
    let of_flapping_node = |r: &AuditRequest| r.name.as_ref().is_some_and(|n| flapping.contains(n));
    let mut per_object: BTreeMap<&str, usize> = BTreeMap::new();
    for r in writes {
        let expected = r.verb == "patch"
            && r.resource == "cronjobs"
            && r.code.is_some_and(|c| (200..300).contains(&c))
            && of_flapping_node(r);
        if expected {
            *per_object
                .entry(r.name.as_deref().unwrap_or(""))
                .or_default() += 1;
        } else if r.resource != "pieprobes/status" {
            say(format!(
                "    not a flip: {} {} {} -> {}",
                r.verb,
                r.resource,
                r.name.as_deref().unwrap_or("-"),
                r.code.map_or("no answer".to_owned(), |c| c.to_string())
            ));
        }
    }
    let other: Vec<String> = per_object
        .iter()
        .filter(|&(_, &n)| n != flips)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    say(format!(
        "    flapping CronJobs patched: {}; patched other than once per flip ({flips}): {}",
        per_object.len(),
        if other.is_empty() {
            "none".to_owned()
        } else {
            other.join(", ")
        }
    ));
}

/// One injected fault and what was seen of it.
#[derive(Debug)]
struct Fault {
    probe: String,
    threshold_ms: i64,
    injected_ms: i64,
    /// Late probes of its PieProbe in VictoriaMetrics when it was injected.
    late_before: f64,
    /// Its alert fired already when it was injected (not measurable).
    firing_before: bool,
    decidable_ms: Option<i64>,
    in_vm_ms: Option<i64>,
    firing_ms: Option<i64>,
}

async fn detect(f: &Flags) {
    let thresholds = &f.thresholds;
    let per = f.faults;
    say(format!(
        "\n== detect: {per} faults of each kind at probePeriod 1 with probeThreshold {} (load {})",
        thresholds.join(", "),
        load()
    ));
    let mut options = LocalClusterOptions::new(thresholds.len() * per);
    options.recorded_fio = true;
    options.ready_timeout = Duration::from_secs(600);
    let cluster = cluster(options);
    let s = start(cluster, "detect", f).await;
    let ledger = PodLedger::start(s.client.clone(), &s.namespace).await;
    let mut probes = Vec::new();
    for (t, threshold) in thresholds.iter().enumerate() {
        let threshold_ms = millis(threshold);
        for i in 0..per {
            let n = t * per + i;
            let probe = format!("detect-{n}");
            let sc = format!("pie-detect-{n}");
            let node = format!("pie-node-{}", n + 1);
            s.create_storage_class(&sc, &[]);
            s.create_probe(
                &probe,
                serde_json::json!({
                    "monitoringStorageClass": sc, "nodeSelector": one_node(&node),
                    "probePeriod": 1, "probeThreshold": threshold,
                }),
            )
            .await;
            probes.push((probe, node, sc, threshold_ms));
        }
    }
    // Every probe healthy first: one on-time mount probe each.
    s.wait_increase(
        r#"pie_mount_probe_total{on_time="true"}"#,
        probes.len() as f64,
        Duration::from_secs(600),
    )
    .await;
    let provision = inject(&s, &probes, "provision", |sc, _| {
        vec![
            "annotate",
            "storageclass",
            sc,
            "faults.pie.test/provision=fail",
        ]
    })
    .await;
    let mount = inject(&s, &probes, "mount", |_, node| {
        vec!["annotate", "node", node, "faults.pie.test/mount=fail"]
    })
    .await;
    let mut faults = [("provision", provision), ("mount", mount)];
    let deadline = Instant::now() + Duration::from_secs(f.detect_timeout_minutes * 60);
    loop {
        let now = now_millis();
        let records = ledger.records();
        let mut open = 0;
        for (kind, list) in &mut faults {
            let (metric, alert) = metric_and_alert(kind);
            let late = late_counts(&s, metric).await;
            let fires = firing(&s, alert).await;
            for fault in list.iter_mut() {
                if fault.decidable_ms.is_none() {
                    fault.decidable_ms = records
                        .values()
                        .filter(|r| {
                            r.probe == *kind
                                && r.pie_probe == fault.probe
                                && r.created_ms >= fault.injected_ms
                        })
                        .map(|r| r.created_ms + fault.threshold_ms)
                        .min();
                }
                if fault.in_vm_ms.is_none()
                    && late.get(&fault.probe).copied().unwrap_or(0.0) > fault.late_before
                {
                    fault.in_vm_ms = Some(now);
                }
                if fault.firing_ms.is_none() && !fault.firing_before && fires.contains(&fault.probe)
                {
                    fault.firing_ms = Some(now);
                }
                if fault.firing_ms.is_none() && !fault.firing_before {
                    open += 1;
                }
            }
        }
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say(format!(
        "  (times from injection; VictoriaMetrics and vmalert polled every 0.5 s, vmalert evaluates every 5 s; load {})",
        load()
    ));
    for (kind, list) in &faults {
        for threshold in thresholds {
            let th = millis(threshold);
            let these: Vec<&Fault> = list.iter().filter(|f| f.threshold_ms == th).collect();
            let of = |get: fn(&Fault) -> Option<i64>| {
                let seen: Vec<i64> = these
                    .iter()
                    .filter_map(|f| get(f).map(|t| t - f.injected_ms))
                    .collect();
                let missing = these.len() - seen.len();
                let mut line = percentiles_ms(seen);
                if missing > 0 {
                    line.push_str(&format!(", {missing} not seen"));
                }
                let before = these.iter().filter(|f| f.firing_before).count();
                if before > 0 {
                    line.push_str(&format!(" ({before} firing before their fault)"));
                }
                line
            };
            say(format!("  {kind} fault, probeThreshold {threshold}:"));
            say(format!(
                "    (a) decidable:          {}",
                of(|f| f.decidable_ms)
            ));
            say(format!(
                "    (b) in VictoriaMetrics: {}",
                of(|f| f.in_vm_ms)
            ));
            say(format!(
                "    (c) alert firing:       {}",
                of(|f| f.firing_ms)
            ));
        }
    }
    for (kind, list) in &faults {
        for fault in list.iter().filter(|f| f.firing_ms.is_none()).take(2) {
            explain_unfired(&s, &ledger, kind, fault).await;
        }
    }
    drop(ledger);
    cluster.stop();
}

/// What VictoriaMetrics and the Pod ledger hold for a fault whose alert never fired: the
/// counters the rules read, as (minutes after the injection, increase so far) at each change,
/// and the probe Pods since the injection.
async fn explain_unfired(s: &Scenario, ledger: &PodLedger, kind: &str, fault: &Fault) {
    let (metric, alert) = metric_and_alert(kind);
    say(format!(
        "  why {alert} did not fire for {} ({kind} fault injected at {}):",
        fault.probe, fault.injected_ms
    ));
    let minutes = |t: i64| (t - fault.injected_ms) as f64 / 60_000.0;
    let selectors = [
        format!(r#"{metric}{{pie_probe_name="{}"}}"#, fault.probe),
        format!(
            r#"pie_probe_failures_total{{probe="{kind}",pie_probe_name="{}"}}"#,
            fault.probe
        ),
        format!(r#"pie_node_eligible{{pie_probe_name="{}"}}"#, fault.probe),
    ];
    for selector in &selectors {
        for series in s.series(selector).await {
            let labels: Vec<String> = series
                .metric
                .iter()
                .filter(|(k, _)| ["__name__", "on_time", "reason", "succeed"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut changes = Vec::new();
            let mut previous: Option<f64> = None;
            for (t, v) in series.timestamps.iter().zip(&series.values) {
                if v.is_nan() || previous == Some(*v) {
                    continue;
                }
                previous = Some(*v);
                changes.push(format!("{:.1}m:{v}", minutes(*t)));
            }
            let shown = changes.len().saturating_sub(12);
            say(format!(
                "    {}: {}",
                labels.join(","),
                changes[shown..].join(" ")
            ));
        }
    }
    let mut records: Vec<_> = ledger
        .records()
        .into_values()
        .filter(|r| r.pie_probe == fault.probe && r.probe == kind)
        .filter(|r| r.created_ms >= fault.injected_ms - 60_000)
        .collect();
    records.sort_by_key(|r| r.created_ms);
    let pods: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{:.1}m{}{}",
                minutes(r.created_ms),
                r.started_ms
                    .map(|t| format!(" started +{:.0}s", (t - r.created_ms) as f64 / 1000.0))
                    .unwrap_or_default(),
                if r.deleted { " gone" } else { "" }
            )
        })
        .collect();
    say(format!(
        "    {kind} probe Pods since a minute before: {}",
        pods.join(", ")
    ));
}

/// Late probes of `metric` in VictoriaMetrics, by PieProbe.
async fn late_counts(s: &Scenario, metric: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for series in s.series(&format!(r#"{metric}{{on_time="false"}}"#)).await {
        if let Some(probe) = series.metric.get("pie_probe_name") {
            *out.entry(probe.clone()).or_default() += series.counter_increase();
        }
    }
    out
}

/// The PieProbes for which `alert` fires in vmalert now.
async fn firing(s: &Scenario, alert: &str) -> Vec<String> {
    s.alerts()
        .await
        .into_iter()
        .filter(|a| a.name == alert && a.state == "firing")
        .filter_map(|a| a.labels.get("pie_probe_name").cloned())
        .collect()
}

/// The metric of `kind`'s late probes and the alert that says so.
fn metric_and_alert(kind: &str) -> (&'static str, &'static str) {
    if kind == "provision" {
        ("pie_provision_probe_total", "PieProvisionProbeFailing")
    } else {
        ("pie_mount_probe_total", "PieMountProbeFailingOnNode")
    }
}

/// Breaks every probe's StorageClass or node (`command` of the StorageClass and the node) at
/// moments spread evenly over one probe period, and returns the faults.
async fn inject<'a>(
    s: &Scenario,
    probes: &'a [(String, String, String, i64)],
    kind: &str,
    command: impl Fn(&'a str, &'a str) -> Vec<&'a str>,
) -> Vec<Fault> {
    let step = Duration::from_millis(60_000 / probes.len().max(1) as u64);
    let mut out = Vec::new();
    let (metric, alert) = metric_and_alert(kind);
    for (probe, node, sc, threshold_ms) in probes {
        // What was late, and firing, before: healthy probes can be late at a small threshold
        // on a loaded machine; only what comes after the fault is its detection.
        let late_before = late_counts(s, metric)
            .await
            .get(probe)
            .copied()
            .unwrap_or(0.0);
        let firing_before = firing(s, alert).await.contains(probe);
        let args = command(sc, node);
        s.cluster.kubectl_ok(&args);
        out.push(Fault {
            probe: probe.clone(),
            threshold_ms: *threshold_ms,
            injected_ms: now_millis(),
            late_before,
            firing_before,
            decidable_ms: None,
            in_vm_ms: None,
            firing_ms: None,
        });
        tokio::time::sleep(step).await;
    }
    say(format!("  {} {kind} faults injected", out.len()));
    out
}

#[tokio::main]
async fn main() {
    let flags = Flags::parse();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    say(format!(
        "pie cluster bench, commit {commit}, {} CPUs, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    ));
    for phase in &flags.phases {
        match phase {
            Phase::Steady => steady(&flags).await,
            Phase::Size => size(&flags).await,
            Phase::Detect => detect(&flags).await,
        }
    }
}
