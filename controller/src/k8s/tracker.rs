//! The runtime around the outcome machine: watch streams in, metric updates and actions out.
//!
//! Watches (all streamed, nothing polled, no object cache beyond the machine's own state):
//! - probe Pods, by label (`app.kubernetes.io/managed-by=pie-controller`), per watched scope;
//! - the provision probes' ephemeral PVCs, by label, per watched scope;
//! - PVs, metadata only (only their disappearance is used: volume deletion timings);
//! - Events, only in namespaces holding PieProbes: per namespace one watch with the field
//!   selector `involvedObject.kind=Pod` and one with `involvedObject.kind=PersistentVolumeClaim`,
//!   started and stopped as PieProbes come and go. Events are never watched cluster-wide.
//!
//! Every observation goes through the machine at once; its metric updates are recorded (and
//! queued for remote write) immediately, its actions run concurrently with retries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::actions;
use crate::domain::outcome::machine::{Action, Decision, Machine, Observation, ProbeKind};
use crate::domain::outcome::observe::{self, Known, ProbeIndex};
use crate::domain::outcome::status_throttle::StatusThrottle;
use crate::k8s::watch::{by_label, logged, managed_selector, provision_pvc_selector, scoped};
use crate::metrics::push::{Pusher, SETTLE_TIMEOUT};
use remote_write::now_ms;

/// How often thresholds are checked and Event namespaces re-evaluated.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the set of namespaces whose Events are watched is re-evaluated.
pub const EVENT_NAMESPACES_EVERY: Duration = Duration::from_secs(5);
/// Attempts per action (patch or delete) before it is given up and logged.
pub const ACTION_ATTEMPTS: usize = 5;
/// A PieProbe's last outcome of one kind reaches its status at once when its result changes,
/// else at most this often (domain::outcome::status_throttle).
pub const STATUS_EVERY: Duration = Duration::from_secs(30);

/// The status writes of outcomes waiting for [`STATUS_EVERY`], by namespace, PieProbe and kind.
type Throttle = std::sync::Mutex<StatusThrottle<(String, String, ProbeKind), Action>>;

/// The probe Pods whose outcome is counted, by UID, while they exist: the results API accepts
/// a probe's report only for these, so a probe Pod does not end before it is counted.
#[derive(Debug, Default)]
pub struct CountedPods(std::sync::Mutex<std::collections::HashSet<String>>);

impl CountedPods {
    /// Whether the Pod with UID `uid` is counted.
    pub fn contains(&self, uid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(uid)
    }

    fn update(&self, counted: Vec<String>, forgotten: Vec<String>) {
        if counted.is_empty() && forgotten.is_empty() {
            return;
        }
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.extend(counted);
        for uid in &forgotten {
            set.remove(uid);
        }
    }

    /// Forgets everything (a term of leadership ended).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The machine plus where its output goes.
#[derive(Debug)]
pub struct Tracker {
    machine: Machine,
    pusher: Pusher,
    counted: Arc<CountedPods>,
}

impl Tracker {
    /// A tracker recording into `pusher` and `counted`.
    pub fn new(pusher: Pusher, counted: Arc<CountedPods>) -> Tracker {
        Tracker {
            machine: Machine::new(),
            pusher,
            counted,
        }
    }

    /// Feeds one observation: records the updates that need no mark (queued for remote write
    /// at once), notes the Pods seen counted or gone, and returns the decisions to settle.
    pub fn step(&mut self, observation: Observation, now_ms: i64) -> Vec<Decision> {
        let out = self.machine.observe(observation, now_ms);
        if !out.updates.is_empty() {
            self.pusher.record(out.updates);
        }
        self.counted.update(out.counted, out.forgotten);
        out.decisions
    }

    /// Probe Pods tracked (tests read it).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.machine.tracked()
    }
}

/// The watch configuration of Events about objects of `kind` (field selector; Events cannot
/// be selected by label).
pub fn event_config(kind: &str) -> watcher::Config {
    watcher::Config::default()
        .fields(&format!("involvedObject.kind={kind}"))
        .any_semantic()
}

/// Sends the observations of every event of `events` to `tx` until it closes.
async fn forward<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    mut convert: impl FnMut(&watcher::Event<K>) -> Vec<Observation>,
    tx: mpsc::Sender<Observation>,
    what: &'static str,
) {
    let mut events = std::pin::pin!(logged(events, what));
    while let Some(event) = events.next().await {
        for obs in convert(&event) {
            if tx.send(obs).await.is_err() {
                return;
            }
        }
    }
}

/// Aborts its task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Event watches of one namespace.
fn watch_events_in(client: &Client, namespace: &str, tx: mpsc::Sender<Observation>) -> Task {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let pods = watcher(api.clone(), event_config("Pod")).default_backoff();
    let pvcs = watcher(api, event_config("PersistentVolumeClaim")).default_backoff();
    Task(tokio::spawn(forward(
        stream::select(pods, pvcs),
        observe::event_events,
        tx,
        "events",
    )))
}

/// Keeps one set of Event watches per namespace holding PieProbes.
async fn watch_events<I: ProbeIndex>(client: Client, index: Arc<I>, tx: mpsc::Sender<Observation>) {
    let mut running: HashMap<String, Task> = HashMap::new();
    let mut every = tokio::time::interval(EVENT_NAMESPACES_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let wanted = index.namespaces();
        running.retain(|ns, _| {
            let keep = wanted.contains(ns);
            if !keep {
                debug!(namespace = %ns, "no PieProbes left; stopping its Event watch");
            }
            keep
        });
        for ns in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(ns) {
                debug!(namespace = %slot.key(), "watching Events");
                let task = watch_events_in(&client, slot.key(), tx.clone());
                slot.insert(task);
            }
        }
    }
}

/// Carries out a decision: marks the Pod, then records the outcome (queued for remote write at
/// once) and, once it left memory (delivered or on disk, at most a few seconds), notes the Pod
/// counted (from then on the results API answers it), then deletes a late Pod's Job and shows
/// the outcome in the PieProbe's status (at once when its result changed, else through the
/// throttle, at most every [`STATUS_EVERY`]). A mark that cannot be made
/// after the retries (the API server is away) does not hold the outcome back.
async fn settle(
    client: Client,
    pusher: Pusher,
    counted: Arc<CountedPods>,
    status: Arc<Throttle>,
    decision: Decision,
) {
    let Decision {
        uid,
        mark,
        updates,
        actions,
    } = decision;
    if let Some(mark) = &mark
        && let Err(e) = act(&client, mark).await
    {
        warn!(error = %e, action = ?mark, "could not mark a probe Pod counted; counting it anyway");
    }
    if let Some(Action::RecordOutcome {
        namespace,
        pie_probe,
        kind,
        node,
        result,
        reason,
        ..
    }) = actions
        .iter()
        .find(|a| matches!(a, Action::RecordOutcome { .. }))
    {
        debug!(%namespace, %pie_probe, probe = kind.label(), ?node, result, ?reason, "probe outcome counted");
    }
    pusher.record(updates);
    // The Pod is answered (and may end) only once its outcome is out of memory.
    pusher.settle(SETTLE_TIMEOUT).await;
    counted.update(vec![uid], Vec::new());
    for action in actions {
        let action = match &action {
            Action::RecordOutcome {
                namespace,
                pie_probe,
                kind,
                result,
                ..
            } => {
                let key = (namespace.clone(), pie_probe.clone(), *kind);
                let mut throttle = status.lock().unwrap_or_else(|e| e.into_inner());
                match throttle.offer(key, result, action, now_ms()) {
                    Some(action) => action,
                    None => continue,
                }
            }
            _ => action,
        };
        if let Err(e) = act(&client, &action).await {
            warn!(error = %e, ?action, "could not carry out an outcome action");
        }
    }
}

/// Writes the outcomes whose status write has waited long enough.
fn write_due_statuses(client: &Client, status: &Throttle) {
    let due = status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .due(now_ms());
    for action in due {
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = act(&client, &action).await {
                warn!(error = %e, ?action, "could not write an outcome to the status");
            }
        });
    }
}

/// Carries out `action` with [`ACTION_ATTEMPTS`] attempts.
async fn act(client: &Client, action: &Action) -> Result<(), kube::Error> {
    let result =
        actions::execute_with_retries(client, action, ACTION_ATTEMPTS, Duration::from_millis(200))
            .await;
    if result.is_ok() {
        debug!(?action, "done");
    }
    result
}

/// Runs the outcome tracking for `scopes` (`None`: all namespaces) until `shutdown` resolves.
pub async fn run<I>(
    client: Client,
    scopes: Vec<Option<String>>,
    index: Arc<I>,
    pusher: Pusher,
    counted: Arc<CountedPods>,
    shutdown: impl Future<Output = ()>,
) where
    I: ProbeIndex + Send + Sync + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Observation>(4096);
    let mut tasks = Vec::new();
    for scope in &scopes {
        let ns = scope.as_deref();
        let pods = by_label(scoped::<Pod>(&client, ns), &managed_selector());
        let idx = index.clone();
        let mut known = Known::default();
        tasks.push(Task(tokio::spawn(forward(
            pods,
            move |e| observe::pod_events(&mut known, e, idx.as_ref()),
            tx.clone(),
            "probe pods",
        ))));
        let pvcs = by_label(
            scoped::<PersistentVolumeClaim>(&client, ns),
            &provision_pvc_selector(),
        );
        let idx = index.clone();
        let mut known = Known::default();
        tasks.push(Task(tokio::spawn(forward(
            pvcs,
            move |e| observe::pvc_events(&mut known, e, idx.as_ref()),
            tx.clone(),
            "probe pvcs",
        ))));
    }
    let pvs = watcher(
        Api::<PartialObjectMeta<PersistentVolume>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff();
    let mut known = Known::default();
    tasks.push(Task(tokio::spawn(forward(
        pvs,
        move |e| observe::pv_events(&mut known, e),
        tx.clone(),
        "persistent volumes",
    ))));
    tasks.push(Task(tokio::spawn(watch_events(
        client.clone(),
        index,
        tx.clone(),
    ))));
    drop(tx);

    let mut tracker = Tracker::new(pusher, counted);
    let status: Arc<Throttle> = Arc::new(std::sync::Mutex::new(StatusThrottle::new(
        STATUS_EVERY.as_millis() as i64,
    )));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let observation = tokio::select! {
            Some(obs) = rx.recv() => obs,
            _ = tick.tick() => {
                write_due_statuses(&client, &status);
                Observation::Tick
            }
            () = &mut shutdown => break,
        };
        for decision in tracker.step(observation, now_ms()) {
            tokio::spawn(settle(
                client.clone(),
                tracker.pusher.clone(),
                tracker.counted.clone(),
                status.clone(),
                decision,
            ));
        }
    }
    drop(tasks);
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
