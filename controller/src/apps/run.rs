//! `pie-controller run`: the composition root of run mode. One `Handles` (the reconciler's
//! plan and PieProbe caches), one `Health` and one [`Pusher`] are made here and handed to
//! the parts that share them: the results API (which accepts results only for managed mount
//! probes, and only while ready), `/metrics`, the periodic sync-and-push, and the Kubernetes
//! side (reconcilers, outcome tracker, leader election).

use std::sync::Arc;
use std::time::Duration;

use clap::ArgAction;
use pie_api::ProbeKey;
use tracing::{error, info};

use super::{ListenArgs, ProbeArgs, serve_metrics};
use crate::domain::series::{Planned, keep, sync_updates};
use crate::http::auth::TokenReviewAuth;
use crate::http::health::{self, Health};
use crate::http::listen::{self, ListenError};
use crate::http::results::{self, Receiver, Targets};
use crate::k8s::client::{self, ClientArgs};
use crate::k8s::controllers::{self, Handles, RunOptions};
use crate::metrics::push::{PushArgs, Pusher};
use crate::metrics::store::Store;
use remote_write::now_ms;

/// Flags of `pie-controller run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Namespace whose PieProbes are reconciled (repeatable; comma-separated in the env var).
    /// Default: all namespaces.
    #[arg(long = "namespace", env = "PIE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Reconcile only while holding the Lease (--lease-name).
    #[arg(long, env = "PIE_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease the replicas compete for. Two pie installations that reconcile
    /// different namespaces but keep their Lease in the same namespace need different names.
    #[arg(long, env = "PIE_LEASE_NAME", default_value = crate::k8s::leader::LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the Lease (default: the controller's own namespace).
    #[arg(long, env = "PIE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "PIE_POD_NAME")]
    pub pod_name: Option<String>,
    /// Address of /healthz and /readyz (`:PORT` for all interfaces).
    #[arg(long, env = "PIE_HEALTH_ADDR", default_value = ":8081")]
    pub health_addr: String,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub push: PushArgs,
    #[command(flatten)]
    pub kube: ClientArgs,
}

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration (in-cluster or kubeconfig).
    #[error("connecting to the Kubernetes API: {0}")]
    Connect(kube::Error),
    /// A listener cannot be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The remote-write settings are invalid, or the disk buffer cannot be used.
    #[error("remote write: {0}")]
    RemoteWrite(remote_write::ConfigError),
    /// The controllers stopped (lost leadership, or leader election failed).
    #[error(transparent)]
    Controller(#[from] crate::Error),
}

/// The mount probes of the PieProbes this replica reconciles: the results API accepts results
/// only for these, and only while this replica is ready (leads with synced caches).
#[derive(Debug, Clone)]
pub struct ManagedTargets {
    handles: Handles,
    health: Arc<Health>,
}

impl Targets for ManagedTargets {
    fn contains(&self, key: &ProbeKey) -> bool {
        self.handles
            .manages_mount_probe(&key.pie_probe_name, &key.node, &key.storage_class)
    }

    fn ready(&self) -> bool {
        self.health.ready()
    }

    fn counted(&self, pod_uid: &str) -> bool {
        self.handles.counted(pod_uid)
    }
}

/// Runs until SIGTERM/SIGINT (Ok) or the loss of leadership (Err: the process exits and
/// restarts as a follower); then delivers what is queued (at most 10 s).
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let clients = client::connect(&args.kube)
        .await
        .map_err(RunError::Connect)?;
    let client = clients.api.clone();
    info!(
        qps = args.kube.kube_qps,
        burst = args.kube.kube_burst,
        "Kubernetes API client (qps 0: no client-side limit)"
    );
    let health = Arc::new(Health::default());
    let handles = Handles::default();
    let pusher = Pusher::new(&args.push, Arc::new(Store::new())).map_err(RunError::RemoteWrite)?;

    let health_listener = listen::bind_flag(
        "--health-addr",
        "binding /healthz and /readyz on",
        &args.health_addr,
    )
    .await?;
    tokio::spawn(health::serve(health_listener, health.clone()));
    serve_metrics(args.listen.metrics_addr.as_deref(), &pusher).await?;
    let results_listener =
        listen::bind_flag("--listen", "binding the receiver on", &args.listen.listen).await?;
    info!(addr = %args.listen.listen, "receiving results");
    let receiver = Receiver {
        pusher: pusher.clone(),
        auth: Arc::new(TokenReviewAuth::new(client.clone())),
        targets: Arc::new(ManagedTargets {
            handles: handles.clone(),
            health: health.clone(),
        }),
    };
    tokio::spawn(async move {
        if let Err(e) = results::serve(results_listener, receiver, std::future::pending()).await {
            error!(error = %e, "results receiver stopped");
        }
    });
    let periodic = {
        let (handles, health) = (handles.clone(), health.clone());
        tokio::spawn(pusher.clone().run_periodic(
            args.push.push_interval,
            handles.plan_changed(),
            move |pusher| {
                let plan = health.ready().then(|| handles.planned());
                sync(pusher, health.leader(), plan.as_ref());
            },
        ))
    };

    let options = RunOptions {
        namespaces: args.namespaces,
        leader_elect: args.leader_elect,
        lease_name: args.lease_name,
        lease_namespace: args
            .lease_namespace
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: args
            .pod_name
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "pie-controller".into()),
    };
    let outcome = controllers::run(
        clients,
        args.probe.config(),
        options,
        health,
        handles,
        pusher.clone(),
    )
    .await;
    periodic.abort();
    pusher.shutdown(Duration::from_secs(10)).await;
    Ok(outcome?)
}

/// Run mode's step of the periodic push, before the whole store is queued. `leader`: this
/// replica holds the Lease (the `pie_controller_leader` gauge). `planned`: the PieProbes and
/// their nodes, once this replica leads with synced caches; `None` before (an unsynced plan
/// would look like every PieProbe deleted), and then nothing but the leader gauge changes.
fn sync(pusher: &Pusher, leader: bool, planned: Option<&Planned>) {
    let now = now_ms();
    let Some(planned) = planned else {
        pusher.record(sync_updates(&Planned::default(), leader, now));
        return;
    };
    pusher.record(sync_updates(planned, leader, now));
    let removed = pusher.remove(keep(planned));
    if removed > 0 {
        info!(
            series = removed,
            "removed series of deleted PieProbes or nodes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalogue;
    use crate::metrics::store::Value;

    #[test]
    fn the_leader_gauge_follows_the_lease_before_caches_sync() {
        let pusher = Pusher::without_client(Arc::new(Store::new()));
        let plan = Planned {
            probes: vec![crate::domain::series::PlannedProbe {
                name: "p".into(),
                storage_class: "sc".into(),
                provision: true,
                nodes_known: true,
            }],
            nodes: vec![crate::domain::plan::NodeEligibility {
                pie_probe: "p".into(),
                namespace: "pie".into(),
                node: "n1".into(),
                storage_class: "sc".into(),
                ineligible: None,
            }],
        };
        sync(&pusher, true, Some(&plan));
        assert!(pusher.store().len() > 1);
        // Leading, caches not synced yet: the gauge says leader, nothing is removed.
        let before = pusher.store().len();
        sync(&pusher, true, None);
        assert_eq!(pusher.store().len(), before);
        assert_eq!(
            pusher.store().get(&catalogue::LEADER, &[]),
            Some(Value::Scalar(1.0))
        );
        // The Lease is lost.
        sync(&pusher, false, None);
        assert_eq!(
            pusher.store().get(&catalogue::LEADER, &[]),
            Some(Value::Scalar(0.0))
        );
    }
}
