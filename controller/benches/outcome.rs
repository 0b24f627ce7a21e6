//! Outcome state machine throughput (Pod updates per second on one core) and memory per
//! tracked probe Pod (RSS growth while tracking many Pods).
//!
//! `cargo bench -p pie-controller --bench outcome`

use std::hint::black_box;
use std::time::Instant;

use pie_controller::domain::outcome::machine::{Machine, Observation, PodObs, ProbeKind};

fn pod(i: usize, started: Option<i64>) -> PodObs {
    PodObs {
        uid: format!("7c6f3a1e-0000-4000-8000-{i:012}"),
        namespace: "pie".into(),
        name: format!("mount-test-pie-p-worker-{i:05}-topolvm-pro-a1b2c3-29000000-x7k2p"),
        job: Some(format!(
            "mount-test-pie-p-worker-{i:05}-topolvm-pro-a1b2c3-29000000"
        )),
        kind: ProbeKind::Mount,
        pie_probe_name: "test-pie-probe".into(),
        storage_class: "topolvm-provisioner".into(),
        node: format!("worker-{i:05}"),
        created_ms: 1_000_000,
        started_ms: started,
        threshold_ms: 60_000,
        counted: false,
        waiting_reason: None,
        pvcs: vec![format!(
            "pie-pvc-test-pie-p-worker-{i:05}-topolvm-provi-a1b2c3"
        )],
        node_eligible: true,
    }
}

/// Resident set size in bytes (Linux).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // Throughput: 1,000 tracked Pods, updates cycling over them (pending, then started).
    const PODS: usize = 1_000;
    let updates: Vec<PodObs> = (0..PODS)
        .map(|i| pod(i, None))
        .chain((0..PODS).map(|i| pod(i, Some(1_002_000))))
        .collect();
    let rounds = 500;
    let mut total = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut machine = Machine::new();
        for p in &updates {
            let out = machine.observe(Observation::Pod(p.clone()), 1_001_000);
            total += out.updates.len();
        }
        black_box(&machine);
    }
    let elapsed = started.elapsed();
    let n = rounds * updates.len();
    println!(
        "outcome machine: {n} Pod updates in {elapsed:?}: {:.2} M updates/s on one core ({} metric updates)",
        n as f64 / elapsed.as_secs_f64() / 1e6,
        total
    );

    // Memory: RSS growth while tracking 200,000 pending Pods.
    const TRACKED: usize = 200_000;
    let before = rss();
    let mut machine = Machine::new();
    for i in 0..TRACKED {
        black_box(machine.observe(Observation::Pod(pod(i, None)), 1_001_000));
    }
    let after = rss();
    assert_eq!(machine.pending(), TRACKED);
    println!(
        "outcome machine: {TRACKED} tracked Pods, RSS +{:.1} MiB: {:.0} bytes per tracked Pod",
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) as f64 / TRACKED as f64
    );
}
