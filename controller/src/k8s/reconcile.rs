//! The PieProbe reconciler: the thin I/O layer around [`crate::domain::plan`].
//!
//! Reads come from watch caches ([`Stores`]); writes are server-side applies with field manager
//! `pie-controller`, skipped when the object's desired-hash annotation already matches, and
//! deletions with UID + resourceVersion preconditions. Deleting a PieProbe leaves cleanup to the
//! ownerReferences (garbage collector).

use pie_api::labels;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::crd::{PieProbe, PieProbeStatus};
use crate::domain::node_facts::NodeFacts;
use crate::domain::plan::{self, EligibilityMap, Existing, Plan};
use crate::domain::status;
use crate::error::{Error, Result};

/// Watch caches the reconciler reads instead of calling the API server.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Nodes, as far as planning reads them.
    pub nodes: Store<NodeFacts>,
    /// StorageClasses, metadata only.
    pub storage_classes: Store<PartialObjectMeta<StorageClass>>,
    /// CronJobs managed by pie-controller (and topolvm/pie's, to adopt), as [`Existing`].
    pub cron_jobs: Store<Existing<CronJob>>,
    /// PVCs managed by pie-controller (and topolvm/pie's), as [`Existing`].
    pub pvcs: Store<Existing<PersistentVolumeClaim>>,
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings that shape the probe objects.
    pub config: plan::Config,
    /// Watch caches.
    pub stores: Stores,
    /// Publishes Kubernetes Events on PieProbes.
    pub recorder: Recorder,
    /// Latest per-node eligibility of every reconciled PieProbe (shared by the per-namespace
    /// controllers).
    pub eligibility: Arc<RwLock<EligibilityMap>>,
    failures: Mutex<HashMap<(String, String), u32>>,
    /// PieProbes (namespace, name) that adopted topolvm/pie's objects in this term and may
    /// still have Pods of topolvm/pie's template (see [`release_legacy_pods`]).
    legacy_pods: Mutex<BTreeSet<(String, String)>>,
    /// Notified when a PieProbe's node eligibility changes (see [`Context::notify_plans_to`]).
    plan_changed: Arc<tokio::sync::Notify>,
    /// True once every cache in [`Stores`] has its first list (see
    /// [`Context::after_caches_synced`]).
    caches_synced: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context around `client` and the watch caches; `eligibility` may be shared.
    pub fn new(
        client: Client,
        config: plan::Config,
        stores: Stores,
        recorder: Recorder,
        eligibility: Arc<RwLock<EligibilityMap>>,
    ) -> Self {
        Self {
            client,
            config,
            stores,
            recorder,
            eligibility,
            failures: Mutex::default(),
            legacy_pods: Mutex::default(),
            plan_changed: Arc::default(),
            caches_synced: tokio::sync::watch::channel(true).1,
        }
    }

    /// Holds every reconcile until `synced` is true: the first list of every cache in
    /// [`Stores`]. Until then an object not listed yet would look missing (an apply that
    /// changes nothing) and a node not listed yet like one that is gone (its objects stale).
    /// Without it (tests fill the caches by hand), reconciles start at once.
    pub fn after_caches_synced(mut self, synced: tokio::sync::watch::Receiver<bool>) -> Self {
        self.caches_synced = synced;
        self
    }

    /// Notifies `changed` (one stored permit) whenever a reconcile changes a PieProbe's node
    /// eligibility: the periodic push then exports it at once rather than up to a push interval
    /// later (the real cluster showed probe results in VictoriaMetrics well before the first
    /// `pie_node_eligible` of a new leader).
    pub fn notify_plans_to(mut self, changed: Arc<tokio::sync::Notify>) -> Self {
        self.plan_changed = changed;
        self
    }
}

fn key(probe: &PieProbe) -> (String, String) {
    (probe.namespace().unwrap_or_default(), probe.name_any())
}

/// Reconciles one PieProbe: applies what changed, deletes what is stale, updates the status.
pub async fn reconcile(probe: Arc<PieProbe>, ctx: Arc<Context>) -> Result<Action> {
    let ns = probe
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if probe.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the owned objects; re-applying them
        // would race it.
        return Ok(Action::await_change());
    }
    if ctx
        .caches_synced
        .clone()
        .wait_for(|synced| *synced)
        .await
        .is_err()
    {
        // The term ends before its caches were listed: nothing to decide on.
        return Ok(Action::await_change());
    }
    let nodes = ctx.stores.nodes.state();
    let sc = &probe.spec.monitoring_storage_class;
    let sc_exists = ctx
        .stores
        .storage_classes
        .get(&ObjectRef::new(sc))
        .is_some();
    let planned = plan::plan(&probe, &nodes, sc_exists, &ctx.config);
    let now = Time(Timestamp::now());
    let desired_status = status::desired(&probe, &planned, &now);

    let plan = match planned {
        Err(blocked) => {
            write_status(&ctx, &probe, &ns, desired_status).await?;
            return Err(Error::Blocked(blocked));
        }
        Ok(plan) => plan,
    };
    // One object the API server refuses does not keep the others from being applied; the
    // refusals are reported in the status (Ready=False, ApplyFailed) and retried with backoff.
    let (desired, mut failures) = apply_all(&ctx, &ns, &plan).await;
    failures.extend(delete_stale(&ctx, &probe, &ns, &desired).await);
    if desired.adopted {
        ctx.legacy_pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(&probe));
    }
    let legacy_pending = ctx
        .legacy_pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&key(&probe));
    let mut requeue = Duration::from_secs(300);
    if legacy_pending {
        match release_legacy_pods(&ctx, &ns, &probe).await {
            Ok(0) => {
                ctx.legacy_pods
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key(&probe));
            }
            Ok(_) => requeue = LEGACY_PODS_EVERY,
            Err(e) => failures.push(format!("topolvm/pie's probe Pods: {e}")),
        }
    }
    let previous = ctx
        .eligibility
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key(&probe), plan.nodes.clone());
    if previous.as_ref() != Some(&plan.nodes) {
        ctx.plan_changed.notify_one();
    }
    let desired_status =
        status::with_apply_failures(desired_status, &failures, probe.metadata.generation, &now);
    write_status(&ctx, &probe, &ns, desired_status).await?;
    if !failures.is_empty() {
        return Err(Error::Apply(failures.join("; ")));
    }
    ctx.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key(&probe));
    Ok(Action::requeue(requeue))
}

/// topolvm/pie's finalizer on its probe Pods, which its controller removed once it had read the
/// Pod. pie uses none, and nothing else removes it.
pub const LEGACY_POD_FINALIZER: &str = "pie.topolvm.io/pod";

/// How often a PieProbe that adopted topolvm/pie's objects looks for Pods of their old
/// template again, while any are left.
const LEGACY_PODS_EVERY: Duration = Duration::from_secs(30);

/// Removes topolvm/pie's finalizer from the Pods its template made for `probe` (Jobs created
/// before the adoption; they lack pie's `managed-by` label), which would otherwise stay
/// Terminating for good once their Job is cleaned up. Returns how many such Pods are left: they
/// go with their Jobs, and until then their Jobs may make more.
async fn release_legacy_pods(ctx: &Context, ns: &str, probe: &PieProbe) -> Result<usize> {
    let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!(
        "{}={},!{}",
        labels::LABEL_PIE_PROBE,
        probe.name_any(),
        labels::LABEL_MANAGED_BY
    );
    let pods = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    for pod in &pods.items {
        if !pod.finalizers().iter().any(|f| f == LEGACY_POD_FINALIZER) {
            continue;
        }
        let keep: Vec<&String> = pod
            .finalizers()
            .iter()
            .filter(|f| *f != LEGACY_POD_FINALIZER)
            .collect();
        // The resourceVersion read makes a concurrent change a conflict, not a lost finalizer.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": pod.resource_version(),
                "finalizers": keep,
            }
        });
        api.patch_metadata(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        info!(pod = %pod.name_any(), probe = %probe.name_any(), "released a probe Pod of topolvm/pie's template from its finalizer");
    }
    Ok(pods.items.len())
}

/// Requeues a failed PieProbe with exponential backoff (5 s doubling up to 5 min), so an
/// invalid spec or a missing StorageClass never becomes a hot loop.
pub fn error_policy(probe: Arc<PieProbe>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(key(&probe)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff(*n);
    match error {
        Error::Blocked(_) => debug!(probe = %probe.name_any(), %error, ?delay, "not planned"),
        _ => warn!(probe = %probe.name_any(), %error, ?delay, "reconcile failed"),
    }
    Action::requeue(delay)
}

/// 5 s after the first failure, doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// Names of the desired objects, as [`apply_all`] saw them.
struct DesiredNames {
    cron_jobs: BTreeSet<String>,
    pvcs: BTreeSet<String>,
    /// An object topolvm/pie made was adopted.
    adopted: bool,
}

/// Applies what changed; returns the names of everything desired (for [`delete_stale`]) and
/// what the API server refused (`CronJob x: message`), having tried every object.
async fn apply_all(ctx: &Context, ns: &str, plan: &Plan) -> (DesiredNames, Vec<String>) {
    let mut names = DesiredNames {
        cron_jobs: BTreeSet::new(),
        pvcs: BTreeSet::new(),
        adopted: false,
    };
    let mut failures = Vec::new();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for pvc in plan.desired_pvcs() {
        match apply_if_changed(&pvcs, &ctx.stores.pvcs, ns, &pvc).await {
            Ok(adopted) => names.adopted |= adopted,
            Err(e) => failures.push(refusal("PersistentVolumeClaim", &pvc.name, &e)),
        }
        names.pvcs.insert(pvc.name);
    }
    let cron_jobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), ns);
    for cj in plan.desired_cron_jobs() {
        match apply_if_changed(&cron_jobs, &ctx.stores.cron_jobs, ns, &cj).await {
            Ok(adopted) => names.adopted |= adopted,
            Err(e) => failures.push(refusal("CronJob", &cj.name, &e)),
        }
        names.cron_jobs.insert(cj.name);
    }
    (names, failures)
}

/// `kind name: why` for the status, with the API server's own message when it gave one.
fn refusal(kind: &str, name: &str, error: &Error) -> String {
    match error {
        Error::Kube(kube::Error::Api(s)) => format!("{kind} {name}: {}", s.message),
        other => format!("{kind} {name}: {other}"),
    }
}

/// Applies `desired` unless the cached object already carries its desired-hash; the object is
/// only built when it is applied.
async fn apply_if_changed<K>(
    api: &Api<K>,
    store: &Store<Existing<K>>,
    ns: &str,
    desired: &plan::Desired<'_, K>,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let existing = store.get(&ObjectRef::new(&desired.name).within(ns));
    if existing.as_ref().and_then(|e| e.desired_hash.as_deref()) == Some(desired.hash.as_str()) {
        return Ok(false);
    }
    let adopting = existing.is_some_and(|existing| !existing.managed_by_pie);
    if adopting {
        adopt(api, desired).await?;
    }
    debug!(kind = %K::kind(&()), name = %desired.name, "applying");
    api.patch(
        &desired.name,
        &PatchParams::apply(labels::MANAGER).force(),
        &Patch::Apply(&desired.build()),
    )
    .await?;
    Ok(adopting)
}

/// Deletes what `probe` owns but no longer wants; returns what could not be deleted.
/// Takes over an object of ours by name that another controller made (topolvm/pie, whose
/// objects a migration keeps): afterwards it is exactly what pie applies, with no field left
/// over and no other field manager. A server-side apply alone would keep what the other
/// manager set and pie does not (topolvm/pie's `pie.topolvm.io/pod` finalizer in the Pod
/// template, which would leave every probe Pod Terminating, and its `genericvol` volume), so:
///
/// 1. a JSON merge patch, with the resourceVersion just read, turns the object into the
///    desired one (every key pie does not set is nulled; a PVC's spec, immutable once bound,
///    is left as it is);
/// 2. a merge patch of `managedFields: [{}]` forgets who wrote which field before;
/// 3. the caller's server-side apply then owns every field pie sets, as for its own objects.
async fn adopt<K>(api: &Api<K>, desired: &plan::Desired<'_, K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let Some(live) = api.get_opt(&desired.name).await? else {
        return Ok(());
    };
    let live = serde_json::to_value(&live)?;
    let want = serde_json::to_value(desired.build())?;
    let mut patch = serde_json::json!({
        "metadata": {
            "resourceVersion": live["metadata"]["resourceVersion"],
            "labels": merge_patch_to(&live["metadata"]["labels"], &want["metadata"]["labels"]),
            "annotations": merge_patch_to(&live["metadata"]["annotations"], &want["metadata"]["annotations"]),
            "ownerReferences": want["metadata"]["ownerReferences"],
        }
    });
    if kind != "PersistentVolumeClaim" {
        patch["spec"] = merge_patch_to(&live["spec"], &want["spec"]);
    }
    info!(%kind, name = %desired.name, "adopting an object pie-controller did not make (topolvm/pie's?)");
    let params = PatchParams {
        field_manager: Some(labels::MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(&desired.name, &params, &Patch::Merge(&patch))
        .await?;
    api.patch(
        &desired.name,
        &params,
        &Patch::Merge(serde_json::json!({"metadata": {"managedFields": [{}]}})),
    )
    .await?;
    Ok(())
}

/// The JSON merge patch (RFC 7386) that turns `live` into `want`: keys only `live` has are
/// nulled, objects are patched key by key, anything else (arrays included) is replaced.
pub fn merge_patch_to(live: &serde_json::Value, want: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (live, want) {
        (Value::Object(live), Value::Object(want)) => {
            let mut patch = serde_json::Map::new();
            for key in live.keys().filter(|k| !want.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, value) in want {
                let live_value = live.get(key).unwrap_or(&Value::Null);
                if live_value != value {
                    patch.insert(key.clone(), merge_patch_to(live_value, value));
                }
            }
            Value::Object(patch)
        }
        (_, want) => want.clone(),
    }
}

async fn delete_stale(
    ctx: &Context,
    probe: &PieProbe,
    ns: &str,
    desired: &DesiredNames,
) -> Vec<String> {
    let client = &ctx.client;
    let mut failures = Vec::new();
    if let Err(e) =
        delete_stale_of(&ctx.stores.cron_jobs, client, probe, ns, &desired.cron_jobs).await
    {
        failures.push(format!("deleting stale CronJobs: {e}"));
    }
    if let Err(e) = delete_stale_of(&ctx.stores.pvcs, client, probe, ns, &desired.pvcs).await {
        failures.push(format!("deleting stale PVCs: {e}"));
    }
    failures
}

/// Deletes the objects of one kind in `ns` that `probe` owns but no longer wants.
async fn delete_stale_of<K>(
    store: &Store<Existing<K>>,
    client: &Client,
    probe: &PieProbe,
    ns: &str,
    desired: &BTreeSet<String>,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let cached = store.state();
    let existing = cached
        .iter()
        .map(AsRef::as_ref)
        .filter(|o| o.namespace.as_deref() == Some(ns));
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    for stale in plan::stale(probe, desired, existing) {
        delete(&api, stale).await?;
    }
    Ok(())
}

async fn delete<K>(api: &Api<K>, stale: &Existing<K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    info!(kind = %K::kind(&()), name = %stale.name, "deleting stale object");
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: stale.uid.as_deref().map(Into::into),
            resource_version: stale.resource_version.as_deref().map(Into::into),
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(&stale.name, &params).await {
        Ok(_) => Ok(()),
        // Already gone, or changed since our cache saw it: the next reconcile decides again.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The status fields this reconciler owns (the outcome tracker owns the last outcomes).
#[derive(Serialize, PartialEq, Debug)]
#[serde(rename_all = "camelCase")]
struct OwnedStatus<'a> {
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<&'a crate::crd::NodeCounts>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    skipped_nodes: &'a [crate::crd::SkippedNode],
}

impl<'a> From<&'a PieProbeStatus> for OwnedStatus<'a> {
    fn from(s: &'a PieProbeStatus) -> Self {
        Self {
            conditions: &s.conditions,
            observed_generation: s.observed_generation,
            nodes: s.nodes.as_ref(),
            skipped_nodes: &s.skipped_nodes,
        }
    }
}

async fn write_status(
    ctx: &Context,
    probe: &PieProbe,
    ns: &str,
    desired: PieProbeStatus,
) -> Result<()> {
    let current = probe.status.clone().unwrap_or_default();
    if OwnedStatus::from(&current) == OwnedStatus::from(&desired) {
        return Ok(());
    }
    let api: Api<PieProbe> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": PieProbe::api_version(&()),
        "kind": PieProbe::kind(&()),
        "status": OwnedStatus::from(&desired),
    });
    api.patch_status(
        &probe.name_any(),
        &PatchParams::apply(labels::MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    // An Event on every change of the Ready condition that is not good news.
    let old_ready = status::ready_condition(Some(&current));
    let new_ready = status::ready_condition(Some(&desired));
    if let Some(ready) = new_ready
        && ready.status != "True"
        && old_ready.map(|c| (&c.reason, &c.message)) != Some((&ready.reason, &ready.message))
    {
        let event = Event {
            type_: EventType::Warning,
            reason: ready.reason.clone(),
            note: Some(ready.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &probe.object_ref(&())).await {
            warn!(probe = %probe.name_any(), error = %e, "publishing event failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
