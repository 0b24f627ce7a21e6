//! `pie-controller run`: wires watches, leader election and the reconciler together.
//!
//! One kube-runtime `Controller` per watched namespace (or one for all namespaces), sharing a
//! cache of `NodeFacts` and a StorageClass metadata cache. Node and StorageClass changes reach
//! the controllers over a broadcast channel and are mapped to the PieProbes they concern.

use pie_api::labels;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::crd::PieProbe;
use crate::domain::node_facts::NodeFacts;
use crate::domain::nodes;
use crate::domain::outcome::observe::{ProbeIndex, parse_threshold_ms};
use crate::domain::plan::{self, EligibilityMap, Existing, NodeEligibility};
use crate::error::{Error, Result};
use crate::http::health::Health;
use crate::k8s::client::Clients;
use crate::k8s::leader;
use crate::k8s::reconcile::{self, Context, Stores};
use crate::k8s::tracker;
use crate::k8s::watch::{by_label, logged, probe_objects_selector, scoped};
use crate::metrics::catalogue;
use crate::metrics::push::Pusher;
use remote_write::now_ms;

/// How `run` scopes and coordinates itself.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Namespaces whose PieProbes are reconciled; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Compete for the Lease and reconcile only while leading.
    pub leader_elect: bool,
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the Pod name).
    pub identity: String,
}

/// Plain-data views of the running controller, for the metrics exporter.
#[derive(Clone, Debug, Default)]
pub struct Handles {
    eligibility: Arc<RwLock<EligibilityMap>>,
    counted: Arc<tracker::CountedPods>,
    /// The (stripped) Node cache of the current term, for eligibility at decision time.
    nodes: Arc<RwLock<Option<Store<NodeFacts>>>>,
    probe_stores: Arc<RwLock<Vec<Store<PieProbe>>>>,
    plan_changed: Arc<tokio::sync::Notify>,
}

impl Handles {
    /// Node eligibility of existing PieProbes (entries of deleted ones are dropped): the
    /// `pie_node_eligible{pie_probe_name,node,storage_class}` gauge, 1 eligible / 0 not.
    pub fn node_eligibility(&self) -> Vec<NodeEligibility> {
        let stores = self.probe_stores.read().unwrap_or_else(|e| e.into_inner());
        let exists = |ns: &str, name: &str| {
            let r = ObjectRef::new(name).within(ns);
            stores.iter().any(|s| s.get(&r).is_some())
        };
        let mut map = self.eligibility.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|(ns, name), _| exists(ns, name));
        map.values().flatten().cloned().collect()
    }
}

impl Handles {
    /// Every existing PieProbe and the nodes of those with mount probes, for the periodic sync.
    pub fn planned(&self) -> crate::domain::series::Planned {
        let nodes = self.node_eligibility();
        let planned: std::collections::BTreeSet<String> = self
            .eligibility
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(|(_, name)| name.clone())
            .collect();
        let stores = self.probe_stores.read().unwrap_or_else(|e| e.into_inner());
        let mut probes: Vec<crate::domain::series::PlannedProbe> = stores
            .iter()
            .flat_map(|s| s.state())
            .map(|p| crate::domain::series::PlannedProbe {
                name: p.name_any(),
                storage_class: p.spec.monitoring_storage_class.clone(),
                provision: !p.spec.disable_provision_probe,
                nodes_known: planned.contains(&p.name_any()),
            })
            .collect();
        probes.sort();
        probes.dedup();
        crate::domain::series::Planned { probes, nodes }
    }

    /// Whether a PieProbe of this term's caches has mount probes for `storage_class` and selects
    /// `node` (eligible now or not: a probe that ran just before its node was cordoned still
    /// reports). From the caches, not the last plan, which a new term does not have yet when
    /// the probes of the last one report (the real cluster showed results refused as "not
    /// managed", for good, right after the Lease was taken back).
    pub fn manages_mount_probe(&self, name: &str, node: &str, storage_class: &str) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let Some(node) = nodes.as_ref().and_then(|n| n.get(&ObjectRef::new(node))) else {
            return false;
        };
        let stores = self.probe_stores.read().unwrap_or_else(|e| e.into_inner());
        stores.iter().flat_map(|s| s.state()).any(|p| {
            p.name_any() == name
                && p.spec.monitoring_storage_class == storage_class
                && !p.spec.disable_mount_probes
                && plan::selects(&p, &node)
        })
    }

    /// Notified when a reconcile changed a PieProbe's node eligibility (the periodic push
    /// exports it at once).
    pub fn plan_changed(&self) -> Arc<tokio::sync::Notify> {
        self.plan_changed.clone()
    }

    /// Whether the outcome of the probe Pod with UID `uid` is counted.
    pub fn counted(&self, uid: &str) -> bool {
        self.counted.contains(uid)
    }

    /// Forgets the PieProbe caches and the plan of a term of leadership that ended.
    fn clear(&self) {
        self.counted.clear();
        self.probe_stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.eligibility
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.nodes.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn probe(&self, namespace: &str, name: &str) -> Option<Arc<PieProbe>> {
        let r = ObjectRef::new(name).within(namespace);
        let stores = self.probe_stores.read().unwrap_or_else(|e| e.into_inner());
        stores.iter().find_map(|s| s.get(&r))
    }
}

/// The outcome tracker reads PieProbes and node eligibility from the reconciler's caches.
impl ProbeIndex for Handles {
    fn threshold_ms(&self, namespace: &str, name: &str) -> Option<i64> {
        parse_threshold_ms(&self.probe(namespace, name)?.spec.probe_threshold)
    }

    /// From the Node cache, as the plan decides it: whether `node` is selected by the PieProbe
    /// and eligible now. Not from the last plan, which a restarted controller does not have yet
    /// when it decides the outcomes of the probes it finds (the real cluster showed late probes
    /// of healthy nodes dropped as "ineligible" right after a restart).
    fn node_eligible(&self, namespace: &str, name: &str, node: &str, storage_class: &str) -> bool {
        let Some(probe) = self.probe(namespace, name) else {
            return false;
        };
        if probe.spec.monitoring_storage_class != storage_class || probe.spec.disable_mount_probes {
            return false;
        }
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let Some(nodes) = nodes.as_ref() else {
            return true;
        };
        nodes
            .get(&ObjectRef::new(node))
            .is_some_and(|n| plan::eligible_for(&probe, &n))
    }

    fn provision_runnable(&self, namespace: &str, name: &str) -> bool {
        let Some(probe) = self.probe(namespace, name) else {
            return true;
        };
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let Some(nodes) = nodes.as_ref() else {
            return true;
        };
        nodes.state().iter().any(|n| plan::eligible_for(&probe, n))
    }

    fn namespaces(&self) -> std::collections::BTreeSet<String> {
        let stores = self.probe_stores.read().unwrap_or_else(|e| e.into_inner());
        stores
            .iter()
            .flat_map(|s| s.state())
            .filter_map(|p| p.metadata.namespace.clone())
            .collect()
    }
}

/// A change outside the PieProbes that may change their plans.
#[derive(Clone, Debug)]
enum Trigger {
    Node(Arc<NodeFacts>),
    StorageClass(String),
    /// Events were lost: reconcile everything.
    All,
}

/// How one term of leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermEnd {
    /// SIGTERM or SIGINT: the process stops.
    Shutdown,
    /// The Lease was lost (or could not be renewed): follow until it can be taken again.
    LostLease,
}

/// Runs until a shutdown signal. With leader election, the watches, reconcilers and outcome
/// tracking run only while this replica holds the Lease; when it loses the Lease (another
/// replica took it, or the API server could not be reached to renew it) they stop, what they
/// recorded is dropped from the store (the next leader counts on), and the replica follows
/// until it can lead again: the process does not exit. Readiness follows the Lease and whether
/// the API server answers.
pub async fn run(
    clients: Clients,
    config: plan::Config,
    options: RunOptions,
    health: Arc<Health>,
    handles: Handles,
    pusher: Pusher,
) -> Result<()> {
    let client = clients.api;
    let lease = options.leader_elect.then(|| {
        leader::elect(
            clients.lease,
            leader::Candidate {
                name: options.lease_name.clone(),
                namespace: options.lease_namespace.clone(),
                identity: options.identity.clone(),
            },
        )
    });
    if let Some(rx) = &lease {
        // `pie_controller_leader` and readiness follow the Lease at once, also while the
        // watches are winding down after it was lost.
        let (mut rx, health) = (rx.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                let status = *rx.borrow_and_update();
                health.set_leader(status.leading);
                health.set_api_reachable(status.reachable);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    loop {
        if let Some(rx) = &lease {
            info!(identity = %options.identity, lease = %options.lease_name, "waiting for leadership");
            let mut rx = rx.clone();
            tokio::select! {
                led = rx.wait_for(|s| s.leading) => {
                    led.map_err(|_| Error::Leadership("stopped".into()))?;
                }
                () = crate::signal::shutdown() => {
                    info!("shutting down");
                    return Ok(());
                }
            }
        } else {
            health.set_leader(true);
            health.set_api_reachable(true);
        }
        // The previous leader (maybe another replica) pushed the same series until a moment
        // ago: this term's samples come after its.
        pusher.store().set_floor(now_ms());
        let end = lead(
            &client,
            &config,
            &options,
            &health,
            &handles,
            &pusher,
            lease.clone(),
        )
        .await;
        health.set_synced(false);
        handles.clear();
        // What this term recorded about probes goes: the next leader counts on, and a
        // follower must not push old counters next to it.
        let dropped = pusher.forget(crate::domain::series::keep(
            &crate::domain::series::Planned::default(),
        ));
        match end {
            TermEnd::Shutdown => return Ok(()),
            TermEnd::LostLease => warn!(
                series = dropped,
                "lost the Lease: stopped reconciling and tracking; following until it can be taken again"
            ),
        }
    }
}

/// One term of leadership: everything that only the leader does, until the Lease is lost or the
/// process is told to stop.
async fn lead(
    client: &Client,
    config: &plan::Config,
    options: &RunOptions,
    health: &Arc<Health>,
    handles: &Handles,
    pusher: &Pusher,
    lease: Option<tokio::sync::watch::Receiver<leader::Status>>,
) -> TermEnd {
    let client = client.clone();
    let pusher = pusher.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<TermEnd>);
    let stopper = tokio::spawn(async move {
        let lost = async move {
            match lease {
                Some(mut rx) => {
                    let _ = rx.wait_for(|s| !s.leading).await;
                }
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            () = lost => TermEnd::LostLease,
            () = crate::signal::shutdown() => TermEnd::Shutdown,
        };
        let _ = stop_tx.send(Some(end));
    });
    let end_rx = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(Option::is_some).await;
        }
    };
    info!("leading; starting watches");

    let (tx, _) = broadcast::channel::<Trigger>(1024);
    let (nodes, node_writer) = reflector::store();
    let (storage_classes, sc_writer) = reflector::store();
    let (nodes_listed, nodes_listed_rx) = tokio::sync::watch::channel(false);
    let (classes_listed, classes_listed_rx) = tokio::sync::watch::channel(false);
    // The watches of this term end with it.
    let mut term_tasks = vec![
        tokio::spawn(watch_nodes(
            Api::all(client.clone()),
            node_writer,
            tx.clone(),
            nodes_listed,
        )),
        tokio::spawn(watch_storage_classes(
            Api::all(client.clone()),
            sc_writer,
            tx.clone(),
            classes_listed,
        )),
    ];
    *handles.nodes.write().unwrap_or_else(|e| e.into_inner()) = Some(nodes.clone());

    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: labels::MANAGER.into(),
            instance: Some(options.identity.clone()),
        },
    );
    let mut to_sync: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    let mut controllers = Vec::new();
    // Outcomes need the PieProbes (thresholds) and the Nodes (eligibility) before the first
    // probe Pod is looked at.
    let mut probes_ready = vec![listed(nodes_listed_rx.clone(), "Node")];
    for scope in scopes.clone() {
        let ns = scope.as_deref();
        let (cron_jobs, cj_writer) = reflector::store();
        let (pvcs, pvc_writer) = reflector::store();
        // Reconciles wait for the first list of every cache they read. Before it, a missing
        // CronJob or PVC looks like one to create (the real API server showed 78 needless
        // applies after a restart at 5,000 nodes, while the PVC list was still paging) and a
        // node not listed yet like one whose objects are stale.
        let (caches_synced, caches_synced_rx) = tokio::sync::watch::channel(false);
        let caches = [
            listed(nodes_listed_rx.clone(), "Node"),
            listed(classes_listed_rx.clone(), "StorageClass"),
            ready(cron_jobs.clone()),
            ready(pvcs.clone()),
        ];
        term_tasks.push(tokio::spawn(async move {
            futures::future::join_all(caches).await;
            caches_synced.send_replace(true);
        }));
        let stores = Stores {
            nodes: nodes.clone(),
            storage_classes: storage_classes.clone(),
            cron_jobs: cron_jobs.clone(),
            pvcs: pvcs.clone(),
        };
        let ctx = Arc::new(
            Context::new(
                client.clone(),
                config.clone(),
                stores,
                recorder.clone(),
                handles.eligibility.clone(),
            )
            .notify_plans_to(handles.plan_changed.clone())
            .after_caches_synced(caches_synced_rx.clone()),
        );
        // The PieProbe reflector is ours, not Controller::new's, so that its readiness has a
        // signal of its own: the Controller already waits on the store (it holds its runner
        // until the first list), and a second waiter on the same store can hang forever
        // (see `ready`).
        let (probes, probe_writer) = reflector::store();
        let (probes_synced, probes_synced_rx) = tokio::sync::watch::channel(false);
        let probe_events = watcher(
            scoped::<PieProbe>(&client, ns),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(probe_writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                probes_synced.send_replace(true);
            }
        })
        .applied_objects();
        let controller = Controller::for_stream(probe_events, probes.clone());
        handles
            .probe_stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(probes.clone());
        to_sync.extend([
            listed(probes_synced_rx.clone(), "PieProbe"),
            listed(caches_synced_rx, "probe objects, Nodes, StorageClasses"),
        ]);
        probes_ready.push(listed(probes_synced_rx, "PieProbe"));
        let shutdown = stopped();
        let run = controller
            .reconcile_on(owned(
                scoped::<PartialObjectMeta<CronJob>>(&client, ns),
                cj_writer,
                "cron jobs",
            ))
            .reconcile_on(owned(
                scoped::<PartialObjectMeta<PersistentVolumeClaim>>(&client, ns),
                pvc_writer,
                "persistent volume claims",
            ))
            .reconcile_on(triggers(
                tx.subscribe(),
                probes,
                handles.eligibility.clone(),
            ))
            .with_config(
                kube::runtime::controller::Config::default()
                    .debounce(std::time::Duration::from_secs(1)),
            )
            .graceful_shutdown_on(shutdown)
            .run(reconcile::reconcile, reconcile::error_policy, ctx)
            .for_each({
                let pusher = pusher.clone();
                move |result| {
                    let outcome = match &result {
                        Ok((obj, _)) => {
                            tracing::debug!(probe = %obj.name, "reconciled");
                            "ok"
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "reconcile");
                            "error"
                        }
                    };
                    pusher.record([catalogue::reconcile(outcome == "ok", now_ms())]);
                    futures::future::ready(())
                }
            });
        controllers.push(run);
    }
    let synced = health.clone();
    let synced_task = tokio::spawn(async move {
        futures::future::join_all(to_sync).await;
        info!("caches synced");
        synced.set_synced(true);
    });
    // Outcomes need the PieProbes (thresholds) before the first probe Pod is looked at.
    let outcomes = {
        let shutdown = stopped();
        let client = client.clone();
        let index = Arc::new(handles.clone());
        let counted = handles.counted.clone();
        async move {
            futures::future::join_all(probes_ready).await;
            info!("tracking probe outcomes");
            tracker::run(client, scopes, index, pusher, counted, shutdown).await;
        }
    };
    futures::future::join(futures::future::join_all(controllers), outcomes).await;
    synced_task.abort();
    for task in term_tasks {
        task.abort();
    }
    let end = end_rx.borrow().unwrap_or(TermEnd::Shutdown);
    stopper.abort();
    end
}

/// Resolves once `store` has its first list. Give each store at most one such waiter:
/// `Store::wait_until_ready` keeps a single waker (a oneshot channel underneath), so of two
/// tasks waiting on one store only the last to poll is woken; the other waits forever. The real
/// API server showed it (a PieProbe store waited on twice never became ready in about one start
/// of three); [`listed`] is for a store several tasks wait on.
fn ready<K>(store: Store<K>) -> futures::future::BoxFuture<'static, ()>
where
    K: reflector::Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync + Default,
{
    Box::pin(async move {
        let _ = store.wait_until_ready().await;
        tracing::debug!(kind = %K::kind(&Default::default()), "cache synced");
    })
}

/// Resolves once the watch of `kind` behind `synced` has finished its first list (any number of
/// waiters).
fn listed(
    mut synced: tokio::sync::watch::Receiver<bool>,
    kind: &'static str,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let _ = synced.wait_for(|listed| *listed).await;
        tracing::debug!(kind, "cache synced");
    })
}

/// Probe objects (pie's, and topolvm/pie's to adopt) kept in `writer`'s store as [`Existing`];
/// yields the PieProbe to reconcile whenever one of its objects appears, goes, or changes in
/// what a reconcile acts on (its fingerprint). Status updates such as a CronJob's
/// `lastScheduleTime` trigger nothing; a deleted object always does (it is re-created at once).
/// Objects that went while the watch was away vanish with the re-list without a trigger; the
/// periodic requeue re-creates them.
fn owned<K>(
    api: Api<PartialObjectMeta<K>>,
    mut writer: Writer<Existing<K>>,
    what: &'static str,
) -> impl Stream<Item = ObjectRef<PieProbe>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let cached = writer.as_reader();
    logged(by_label(api, &probe_objects_selector()), what).flat_map(move |event| {
        let event = existing_event(event);
        let triggers = reconcile_triggers(&cached, &event);
        writer.apply_watcher_event(&event);
        stream::iter(triggers)
    })
}

/// The event with its object reduced to [`Existing`].
fn existing_event<K>(event: watcher::Event<PartialObjectMeta<K>>) -> watcher::Event<Existing<K>> {
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
    match event {
        Apply(o) => Apply(Existing::from_meta(&o.metadata)),
        Delete(o) => Delete(Existing::from_meta(&o.metadata)),
        InitApply(o) => InitApply(Existing::from_meta(&o.metadata)),
        Init => Init,
        InitDone => InitDone,
    }
}

/// The PieProbes to reconcile for `event`, given the store before it is applied: the owner of
/// an object that is new, deleted, or has another fingerprint than the cached one (and the
/// cached one's owner, should the controller have changed).
fn reconcile_triggers<K: Resource<DynamicType = ()>>(
    cached: &Store<Existing<K>>,
    event: &watcher::Event<Existing<K>>,
) -> Vec<ObjectRef<PieProbe>> {
    use kube::runtime::reflector::Lookup as _;
    let (object, deleted) = match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
        watcher::Event::Delete(o) => (o, true),
        watcher::Event::Init | watcher::Event::InitDone => return Vec::new(),
    };
    let before = cached.get(&object.to_object_ref(()));
    if !deleted && before.as_ref().map(|b| b.fingerprint) == Some(object.fingerprint) {
        return Vec::new();
    }
    let mut owners: Vec<_> = object.owner().into_iter().collect();
    if let Some(previous) = before.and_then(|b| b.owner())
        && !owners.contains(&previous)
    {
        owners.push(previous);
    }
    owners
}

async fn watch_nodes(
    api: Api<Node>,
    mut writer: Writer<NodeFacts>,
    tx: broadcast::Sender<Trigger>,
    listed: tokio::sync::watch::Sender<bool>,
) {
    let mut changes = nodes::NodeChanges::default();
    let events = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    logged(events, "nodes")
        .map(nodes::facts_event)
        .for_each(|event| {
            writer.apply_watcher_event(&event);
            if matches!(event, watcher::Event::InitDone) {
                listed.send_replace(true);
            }
            for node in changes.observe(&event) {
                let _ = tx.send(Trigger::Node(Arc::new(node)));
            }
            futures::future::ready(())
        })
        .await;
}

async fn watch_storage_classes(
    api: Api<PartialObjectMeta<StorageClass>>,
    mut writer: Writer<PartialObjectMeta<StorageClass>>,
    tx: broadcast::Sender<Trigger>,
    listed: tokio::sync::watch::Sender<bool>,
) {
    let events = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    logged(events, "storage classes")
        .for_each(|event| {
            writer.apply_watcher_event(&event);
            if matches!(event, watcher::Event::InitDone) {
                listed.send_replace(true);
            }
            if let watcher::Event::Apply(sc)
            | watcher::Event::Delete(sc)
            | watcher::Event::InitApply(sc) = &event
            {
                let _ = tx.send(Trigger::StorageClass(sc.name_any()));
            }
            futures::future::ready(())
        })
        .await;
}

fn triggers(
    rx: broadcast::Receiver<Trigger>,
    probes: Store<PieProbe>,
    eligibility: Arc<RwLock<EligibilityMap>>,
) -> impl Stream<Item = ObjectRef<PieProbe>> + Send + 'static {
    stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(t) => Some((t, rx)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Trigger::All, rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .flat_map(move |trigger| {
        let all = probes.state();
        let refs = match trigger {
            Trigger::Node(node) => {
                let planned = eligibility.read().unwrap_or_else(|e| e.into_inner());
                nodes::probes_for_node(&all, &planned, &node)
            }
            Trigger::StorageClass(name) => nodes::probes_for_storage_class(&all, &name),
            Trigger::All => all
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect(),
        };
        stream::iter(refs)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Wake, Waker};

    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::{reflector, watcher};

    use super::{Handles, existing_event, listed, reconcile_triggers};
    use crate::fixtures::{NodeBuilder, PieProbeBuilder};

    #[derive(Default)]
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Why `ready` allows one waiter per store: of two futures waiting on one store, only the
    /// one polled last is woken by the first list. If kube-runtime ever wakes both, this test
    /// fails and the PieProbe store can go back to `Store::wait_until_ready`.
    #[test]
    fn a_store_wakes_only_its_last_waiter() {
        let (store, mut writer) = reflector::store::<Node>();
        let (first, second) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
        let mut a = Box::pin(store.wait_until_ready());
        let mut b = Box::pin(store.wait_until_ready());
        let waker_a = Waker::from(first.clone());
        let waker_b = Waker::from(second.clone());
        assert!(
            a.as_mut()
                .poll(&mut Context::from_waker(&waker_a))
                .is_pending()
        );
        assert!(
            b.as_mut()
                .poll(&mut Context::from_waker(&waker_b))
                .is_pending()
        );
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert!(second.0.load(Ordering::SeqCst), "the last waiter is woken");
        assert!(
            !first.0.load(Ordering::SeqCst),
            "kube-runtime now wakes every waiter of a store"
        );
    }

    /// A CronJob as the metadata watch delivers it, controlled by PieProbe `probe`.
    fn cron_job(
        probe: &str,
        generation: i64,
        rv: &str,
    ) -> kube::api::PartialObjectMeta<k8s_openapi::api::batch::v1::CronJob> {
        use kube::api::PartialObjectMetaExt as _;
        kube::api::ObjectMeta {
            name: Some("mount-x".into()),
            namespace: Some("pie".into()),
            uid: Some("uid-cj".into()),
            resource_version: Some(rv.into()),
            generation: Some(generation),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "pie.topolvm.io/v1alpha1".into(),
                    kind: "PieProbe".into(),
                    name: probe.into(),
                    uid: format!("uid-{probe}"),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
        .into_response_partial()
    }

    /// What replaced kube's predicate filter on the CronJob and PVC watches: a reconcile of the
    /// owning PieProbe for a new object, a changed fingerprint or a deletion, none for a status
    /// update; the comparison is against the store itself (no second map of every object).
    #[test]
    fn probe_objects_trigger_their_pieprobe_only_when_a_reconcile_has_something_to_do() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let (cached, mut writer) = reflector::store();
        let mut step = |event| {
            let event = existing_event(event);
            let triggers = reconcile_triggers(&cached, &event);
            writer.apply_watcher_event(&event);
            triggers
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect::<Vec<_>>()
        };
        assert!(step(Init).is_empty());
        assert_eq!(
            step(InitApply(cron_job("a", 1, "1"))),
            ["pie/a"],
            "first seen"
        );
        assert!(step(InitDone).is_empty());
        assert!(
            step(Apply(cron_job("a", 1, "2"))).is_empty(),
            "a status update (new resourceVersion only)"
        );
        assert_eq!(
            step(Apply(cron_job("a", 2, "3"))),
            ["pie/a"],
            "spec changed"
        );
        assert_eq!(
            step(Apply(cron_job("b", 2, "4"))),
            ["pie/b", "pie/a"],
            "another controller: both PieProbes look"
        );
        // A re-list compares against what the store had before it.
        assert!(step(Init).is_empty());
        assert!(step(InitApply(cron_job("b", 2, "5"))).is_empty());
        assert!(step(InitDone).is_empty());
        assert_eq!(
            step(Delete(cron_job("b", 2, "5"))),
            ["pie/b"],
            "a deletion, unchanged as it is, re-creates the object at once"
        );
        assert!(cached.is_empty());
    }

    #[tokio::test]
    async fn the_pieprobe_list_reaches_every_waiter() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(listed(rx.clone(), "PieProbe")))
            .collect();
        tokio::task::yield_now().await;
        tx.send_replace(true);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("every waiter sees the first list")
                .unwrap();
        }
        // A waiter that comes after the list returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), listed(rx, "PieProbe"))
            .await
            .expect("a late waiter returns at once");
    }

    /// What the results API accepts comes from the caches of the term, not from a plan the
    /// reconciler may not have made yet.
    #[test]
    fn a_new_term_manages_the_mount_probes_of_its_caches_before_any_reconcile() {
        let handles = Handles::default();
        assert!(!handles.manages_mount_probe("p", "n1", "sc"), "no term");
        let (probes, mut probe_writer) = reflector::store();
        let (nodes, mut node_writer) = reflector::store();
        for node in [
            NodeBuilder::new("n1").build(),
            NodeBuilder::new("n2").unschedulable().build(),
            NodeBuilder::new("n3").label("zone", "b").build(),
        ] {
            node_writer.apply_watcher_event(&watcher::Event::Apply(node));
        }
        let probe = PieProbeBuilder::new("p", "sc")
            .selector_in("kubernetes.io/hostname", &["n1", "n2"])
            .build();
        probe_writer.apply_watcher_event(&watcher::Event::Apply(probe));
        let off = PieProbeBuilder::new("off", "sc")
            .spec(|s| s.disable_mount_probes = true)
            .build();
        probe_writer.apply_watcher_event(&watcher::Event::Apply(off));
        handles.probe_stores.write().unwrap().push(probes);
        *handles.nodes.write().unwrap() = Some(nodes);

        assert!(handles.manages_mount_probe("p", "n1", "sc"));
        assert!(
            handles.manages_mount_probe("p", "n2", "sc"),
            "selected, though cordoned"
        );
        assert!(
            !handles.manages_mount_probe("p", "n3", "sc"),
            "not selected"
        );
        assert!(
            !handles.manages_mount_probe("p", "n9", "sc"),
            "no such node"
        );
        assert!(
            !handles.manages_mount_probe("p", "n1", "other"),
            "other class"
        );
        assert!(
            !handles.manages_mount_probe("off", "n1", "sc"),
            "mount probes off"
        );
        assert!(
            !handles.manages_mount_probe("q", "n1", "sc"),
            "no such PieProbe"
        );
    }
}
