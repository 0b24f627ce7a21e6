//! The whole of pie on a real control plane: every promise tested end to end, on the local
//! Kubernetes of `e2e/cluster` (real kube-apiserver, kube-controller-manager and kube-scheduler,
//! the process kubelet, the test provisioner), with real VictoriaMetrics and vmalert evaluating
//! the shipped rules, and the real `pie-controller run` binary as its ServiceAccount with
//! `deploy/`'s RBAC and `deploy/base/deployment.yaml`'s flags.
//!
//! Each scenario (one module) is a trial of its own; they run side by side on one cluster of
//! [`GROUPS`] nodes, whatever `--test-threads` libtest would default to, because several wait
//! out the `for:` of the shipped alerts (up to 10 minutes). docs/testing.md, "Scenarios", says
//! what each one proves and how it was checked to fail. The trial `demo_runs_headless` runs
//! `task demo`'s script beside them, on a cluster of its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;

use e2e::cluster::{TestCluster, test_cluster_of};
use e2e::scenario::label_node_groups;
use libtest_mimic::{Arguments, Failed, Trial};

mod cleanup;
mod demo;
mod exactly_once;
mod forged;
mod healthy;
mod image_pull;
mod io_broken;
mod migration;
mod mount_broken;
mod node_lifecycle;
mod provisioning;
mod slow_delete;

/// The cluster's node groups (name, nodes), in node order. A scenario that puts faults on nodes
/// has a group of its own.
pub const GROUPS: [(&str, usize); 4] = [
    // Healthy nodes every scenario without node faults shares.
    ("shared", 3),
    // One of them gets failing mounts (scenario mount_broken).
    ("mountfault", 3),
    // NotReady, cordoned, tainted (scenario node_lifecycle).
    ("lifecycle", 3),
    // Where probes move to when their node selector changes (scenario cleanup).
    ("spare", 2),
];

/// What every scenario gets: the cluster and its node groups.
#[derive(Debug)]
pub struct Env {
    /// The local cluster.
    pub cluster: &'static TestCluster,
    groups: BTreeMap<String, Vec<String>>,
}

impl Env {
    /// The nodes of group `name`.
    pub fn group(&self, name: &str) -> &[String] {
        self.groups
            .get(name)
            .unwrap_or_else(|| panic!("no node group {name}"))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// The cluster, started and its nodes grouped on first use; `None` where there is no Go (the
/// skip is said once, by the harness).
fn env() -> Option<&'static Env> {
    static ENV: OnceLock<Option<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let nodes = GROUPS.iter().map(|(_, n)| n).sum();
        let cluster = test_cluster_of(nodes)?;
        let groups = runtime().block_on(async {
            cluster.install_pie().await;
            label_node_groups(cluster, &GROUPS).await
        });
        Some(Env { cluster, groups })
    })
    .as_ref()
}

type Scenario = fn(&'static Env) -> Pin<Box<dyn Future<Output = ()> + Send>>;

fn trial(name: &'static str, scenario: Scenario) -> Trial {
    Trial::test(name, move || {
        let Some(env) = env() else {
            return Ok(());
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| runtime().block_on(scenario(env)))).map_err(
            |panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the scenario panicked".into());
                Failed::from(message)
            },
        )
    })
}

/// A trial that needs no shared cluster (the demo starts its own): a `-- demo` filter starts
/// nothing else.
fn trial_alone(name: &'static str, run: fn() -> Result<(), String>) -> Trial {
    Trial::test(name, move || run().map_err(Failed::from))
}

fn main() {
    let mut args = Arguments::from_args();
    let trials = vec![
        trial("healthy", |e| Box::pin(healthy::run(e))),
        trial("provisioning_broken", |e| Box::pin(provisioning::run(e))),
        trial("mount_broken_on_one_node", |e| {
            Box::pin(mount_broken::run(e))
        }),
        trial("io_broken", |e| Box::pin(io_broken::run(e))),
        trial("node_not_ready_cordoned_tainted", |e| {
            Box::pin(node_lifecycle::run(e))
        }),
        trial("image_pull_fails", |e| Box::pin(image_pull::run(e))),
        trial("slow_deletion", |e| Box::pin(slow_delete::run(e))),
        trial("exactly_once_across_kill_and_leader_change", |e| {
            Box::pin(exactly_once::run(e))
        }),
        trial("forged_results", |e| Box::pin(forged::run(e))),
        trial("cleanup", |e| Box::pin(cleanup::run(e))),
        trial("migration_from_topolvm_pie", |e| {
            Box::pin(migration::run(e))
        }),
        // `task demo`, headless; its own cluster, beside the others.
        trial_alone("demo_runs_headless", demo::run),
    ];
    // Side by side, all of them: most of a scenario's time is waiting for the cluster,
    // VictoriaMetrics or vmalert, not CPU.
    args.test_threads.get_or_insert(trials.len());
    libtest_mimic::run(&args, trials).exit();
}
