//! The probe-outcome state machine: plain observations of probe Pods, the Events about them and
//! their PVCs, and the probe PVCs and PVs in; metric updates and actions out. No I/O, no clock:
//! every call gets `now_ms`.
//!
//! pie's `on_time` semantics: registered = Pod creation, started = the `probe` container's
//! startedAt. `started - registered >= threshold`, or not started and `now - registered >=
//! threshold`, is `on_time="false"` (counted once) and the Job is deleted; otherwise `true`.
//! A Pod is counted exactly once: the outcome asks for the Pod to be marked counted
//! ([`Action::MarkCounted`], an annotation), and a Pod seen with that mark is never counted again,
//! also after a restart. Probes that could not run are not failures (a mount probe of an
//! ineligible node, a provision probe of a PieProbe none of whose nodes is eligible): their Pod is
//! marked and its Job deleted, but nothing is counted.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::metrics::catalogue;
use crate::metrics::catalogue::{Op, Probe, Update};

/// Which probe a Pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// The provision probe (ephemeral volume).
    Provision,
    /// A mount probe (per node).
    Mount,
}

impl ProbeKind {
    /// The `probe` label value.
    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Provision => "provision",
            ProbeKind::Mount => "mount",
        }
    }
}

/// What the watch layer knows about one probe Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodObs {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The Job owning the Pod.
    pub job: Option<String>,
    /// Provision or mount.
    pub kind: ProbeKind,
    /// PieProbe name.
    pub pie_probe_name: String,
    /// StorageClass.
    pub storage_class: String,
    /// `spec.nodeName` (empty while unscheduled).
    pub node: String,
    /// creationTimestamp, ms.
    pub created_ms: i64,
    /// The `probe` container's startedAt, ms.
    pub started_ms: Option<i64>,
    /// The PieProbe's probeThreshold, ms.
    pub threshold_ms: i64,
    /// The counted mark is on the Pod.
    pub counted: bool,
    /// Waiting reason of the `probe` container (e.g. `ImagePullBackOff`).
    pub waiting_reason: Option<String>,
    /// Names of the PVCs the Pod uses (for Events about them).
    pub pvcs: Vec<String>,
    /// A mount probe's node can run probes; for a provision probe, some node of its PieProbe
    /// can. A late probe that could not run is not a failure.
    pub node_eligible: bool,
}

/// An Event about a probe Pod or a probe PVC.
#[derive(Debug, Clone, PartialEq)]
pub struct EventObs {
    /// Namespace of the involved object.
    pub namespace: String,
    /// `Pod` or `PersistentVolumeClaim`.
    pub involved_kind: String,
    /// Name of the involved object.
    pub involved_name: String,
    /// The Event's reason.
    pub reason: String,
    /// The Event's message.
    pub message: String,
    /// When it (last) happened, ms.
    pub time_ms: i64,
}

/// A provision probe's ephemeral PVC.
#[derive(Debug, Clone, PartialEq)]
pub struct PvcObs {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// PieProbe name.
    pub pie_probe_name: String,
    /// StorageClass.
    pub storage_class: String,
    /// creationTimestamp, ms.
    pub created_ms: i64,
    /// `status.phase == Bound`.
    pub bound: bool,
    /// `spec.volumeName`.
    pub volume: Option<String>,
    /// deletionTimestamp, ms.
    pub deleted_ms: Option<i64>,
    /// The PieProbe's probeThreshold, ms.
    pub threshold_ms: i64,
}

/// One observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A probe Pod was added or changed.
    Pod(PodObs),
    /// A probe Pod is gone.
    PodGone {
        /// Its UID.
        uid: String,
    },
    /// An Event.
    Event(EventObs),
    /// An ephemeral PVC was added or changed.
    Pvc(PvcObs),
    /// An ephemeral PVC is gone (its PV may remain).
    PvcGone {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A PV is gone.
    PvGone {
        /// Its name.
        name: String,
    },
    /// Time passes (check thresholds).
    Tick,
}

/// What the watch layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Annotate the Pod as counted.
    MarkCounted {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
    },
    /// Delete the Job (background propagation).
    DeleteJob {
        /// Namespace.
        namespace: String,
        /// Job name.
        job: String,
    },
    /// Show the outcome in the PieProbe's status (`lastProvisionOutcome` or `lastMountOutcome`).
    RecordOutcome {
        /// Namespace.
        namespace: String,
        /// PieProbe name.
        pie_probe: String,
        /// Which probe.
        kind: ProbeKind,
        /// When it was decided (start or threshold), ms.
        time_ms: i64,
        /// Node of a mount probe (and of a provision probe once scheduled).
        node: Option<String>,
        /// `OnTime`, `Late` or `NotStarted`.
        result: &'static str,
        /// Creation to start, ms (`None`: it did not start).
        started_after_ms: Option<i64>,
        /// The probeThreshold, ms.
        threshold_ms: i64,
        /// Why it did not start (a failure reason), if it did not.
        reason: Option<&'static str>,
    },
}

/// One probe Pod's outcome, decided. The runtime marks the Pod first and records the updates
/// only then (see [`Decision::mark`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The Pod's UID.
    pub uid: String,
    /// The counted mark ([`Action::MarkCounted`]); `None` when the Pod is gone. Marked before
    /// the updates are recorded: a controller killed in between has counted nothing and its
    /// successor counts the unmarked Pod, where the other order would count it twice. (What
    /// remains is the moment between the mark and the sample reaching VictoriaMetrics.)
    pub mark: Option<Action>,
    /// Its metric changes.
    pub updates: Vec<Update>,
    /// What to do after the mark: delete a late Pod's Job, show the outcome in the status.
    pub actions: Vec<Action>,
}

/// Updates and actions of one step.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// Metric changes that need no mark (volume timings).
    pub updates: Vec<Update>,
    /// Probe Pods whose outcome was decided in this step.
    pub decisions: Vec<Decision>,
    /// UIDs of probe Pods seen already counted (marked by an earlier controller).
    pub counted: Vec<String>,
    /// UIDs of probe Pods no longer tracked (gone).
    pub forgotten: Vec<String>,
}

impl Output {
    /// Every update and action of the step in the order the runtime carries them out (each
    /// decision's mark, its updates, its other actions), for tests.
    pub fn flatten(self) -> (Vec<Update>, Vec<Action>) {
        let mut updates = self.updates;
        let mut actions = Vec::new();
        for d in self.decisions {
            actions.extend(d.mark);
            updates.extend(d.updates);
            actions.extend(d.actions);
        }
        (updates, actions)
    }
}

/// Reasons a probe did not start on time.
pub const REASONS: [&str; 7] = [
    "FailedScheduling",
    "ExternalProvisioning",
    "FailedAttachVolume",
    "FailedMount",
    "ProvisioningFailed",
    "ImagePull",
    "timeout",
];

/// The failure reason an Event stands for, if any.
pub fn event_reason(reason: &str, message: &str) -> Option<&'static str> {
    match reason {
        "FailedScheduling" => Some("FailedScheduling"),
        // The claim still waits for its (external) provisioner: one that does not exist, or
        // does not answer.
        "ExternalProvisioning" => Some("ExternalProvisioning"),
        "FailedAttachVolume" => Some("FailedAttachVolume"),
        "FailedMount" => Some("FailedMount"),
        "ProvisioningFailed" => Some("ProvisioningFailed"),
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => Some("ImagePull"),
        "Failed" | "BackOff" if message.contains("image") || message.contains("pull") => {
            Some("ImagePull")
        }
        _ => None,
    }
}

/// How telling a reason is. A probe Pod that waits for its volume sees the scheduler's
/// `FailedScheduling` ("waiting for the ephemeral volume controller", "unbound immediate
/// PersistentVolumeClaims") and the claim's `ExternalProvisioning` again and again while the
/// cause is elsewhere; so a failure (`ProvisioningFailed`, `FailedAttachVolume`, `FailedMount`,
/// `ImagePull`) outranks waiting, and waiting for the provisioner outranks waiting to be
/// scheduled. Within one rank the latest Event wins.
fn rank(reason: &str) -> u8 {
    match reason {
        "FailedScheduling" => 0,
        "ExternalProvisioning" => 1,
        _ => 2,
    }
}

/// Whether `new` (time, reason) explains a Pod better than `old`.
fn explains_better(new: (i64, &'static str), old: Option<(i64, &'static str)>) -> bool {
    old.is_none_or(|old| (rank(new.1), new.0) >= (rank(old.1), old.0))
}

#[derive(Debug, Clone)]
struct Tracked {
    pod: PodObs,
    /// Latest explaining Event: (time, reason).
    reason: Option<(i64, &'static str)>,
    done: bool,
}

#[derive(Debug, Clone)]
struct Volume {
    pvc: PvcObs,
    provision_seen: bool,
    delete_counted: bool,
}

/// The state machine.
#[derive(Debug, Default)]
pub struct Machine {
    pods: HashMap<String, Tracked>,
    /// Events that arrived before their Pod, keyed by (namespace, object name).
    early: HashMap<(String, String), (i64, &'static str)>,
    volumes: HashMap<(String, String), Volume>,
}

impl Machine {
    /// An empty machine.
    pub fn new() -> Machine {
        Machine::default()
    }

    /// Pods tracked and not yet counted.
    pub fn pending(&self) -> usize {
        self.pods.values().filter(|t| !t.done).count()
    }

    /// Pods tracked (counted or not, until they are gone).
    pub fn tracked(&self) -> usize {
        self.pods.len()
    }

    /// Feeds one observation at `now_ms`.
    pub fn observe(&mut self, observation: Observation, now_ms: i64) -> Output {
        let mut out = Output::default();
        match observation {
            Observation::Pod(pod) => self.pod(pod, now_ms, &mut out),
            Observation::PodGone { uid } => {
                out.forgotten.push(uid.clone());
                if let Some(mut t) = self.pods.remove(&uid)
                    && !t.done
                    && now_ms - t.pod.created_ms >= t.pod.threshold_ms
                {
                    // Gone without starting after its threshold: count it (nothing left to
                    // mark or delete).
                    let mut decision = decide(&mut t, uid, now_ms);
                    decision.mark = None;
                    decision
                        .actions
                        .retain(|a| matches!(a, Action::RecordOutcome { .. }));
                    out.decisions.push(decision);
                }
            }
            Observation::Event(e) => self.event(e, now_ms, &mut out),
            Observation::Pvc(pvc) => self.pvc(pvc, now_ms, &mut out),
            Observation::PvcGone { namespace, name } => {
                let key = (namespace, name);
                if self
                    .volumes
                    .get(&key)
                    .is_some_and(|v| v.pvc.volume.is_none())
                {
                    // Never provisioned: there is no volume whose deletion could be timed.
                    self.volumes.remove(&key);
                } else if let Some(v) = self.volumes.get_mut(&key)
                    && v.pvc.deleted_ms.is_none()
                {
                    v.pvc.deleted_ms = Some(now_ms);
                }
            }
            Observation::PvGone { name } => self.pv_gone(&name, now_ms, &mut out),
            Observation::Tick => self.check_thresholds(now_ms, &mut out),
        }
        out
    }

    fn pod(&mut self, mut pod: PodObs, now_ms: i64, out: &mut Output) {
        let early = if self.early.is_empty() {
            None
        } else {
            pod.pvcs
                .iter()
                .chain([&pod.name])
                .filter_map(|n| self.early.remove(&(pod.namespace.clone(), n.clone())))
                .max_by_key(|(t, _)| *t)
        };
        // The UID lives only in the map key (memory per tracked Pod).
        let uid = std::mem::take(&mut pod.uid);
        let mut was_done = false;
        let t = match self.pods.entry(uid.clone()) {
            Entry::Vacant(slot) => slot.insert(Tracked {
                done: pod.counted,
                pod,
                reason: None,
            }),
            Entry::Occupied(slot) => {
                let t = slot.into_mut();
                was_done = t.done;
                // Never let an older observation undo what is known (out-of-order updates).
                let started = t.pod.started_ms.or(pod.started_ms);
                let node = if pod.node.is_empty() {
                    std::mem::take(&mut t.pod.node)
                } else {
                    pod.node
                };
                t.done |= pod.counted;
                t.pod = PodObs {
                    started_ms: started,
                    node,
                    counted: t.pod.counted || pod.counted,
                    ..pod
                };
                t
            }
        };
        if let Some(e) = early
            && explains_better(e, t.reason)
        {
            t.reason = Some(e);
        }
        if let Some(w) = t.pod.waiting_reason.as_deref()
            && let Some(r) = event_reason(w, "")
            && explains_better((now_ms, r), t.reason)
        {
            t.reason = Some((now_ms, r));
        }
        if !t.done
            && (t.pod.started_ms.is_some() || now_ms - t.pod.created_ms >= t.pod.threshold_ms)
        {
            out.decisions.push(decide(t, uid, now_ms));
        } else if t.done && !was_done {
            // Marked by an earlier controller: counted already.
            out.counted.push(uid);
        }
    }

    fn event(&mut self, e: EventObs, _now_ms: i64, _out: &mut Output) {
        let Some(reason) = event_reason(&e.reason, &e.message) else {
            return;
        };
        let mut matched = false;
        for t in self.pods.values_mut() {
            let about = match e.involved_kind.as_str() {
                "Pod" => t.pod.name == e.involved_name,
                "PersistentVolumeClaim" => t.pod.pvcs.contains(&e.involved_name),
                _ => false,
            };
            if about && t.pod.namespace == e.namespace {
                matched = true;
                if explains_better((e.time_ms, reason), t.reason) {
                    t.reason = Some((e.time_ms, reason));
                }
            }
        }
        if !matched {
            let key = (e.namespace, e.involved_name);
            let slot = self.early.entry(key).or_insert((e.time_ms, reason));
            if explains_better((e.time_ms, reason), Some(*slot)) {
                *slot = (e.time_ms, reason);
            }
        }
    }

    fn check_thresholds(&mut self, now_ms: i64, out: &mut Output) {
        for (uid, t) in &mut self.pods {
            if !t.done && now_ms - t.pod.created_ms >= t.pod.threshold_ms {
                out.decisions.push(decide(t, uid.clone(), now_ms));
            }
        }
        for v in self.volumes.values_mut() {
            delete_overdue(v, now_ms, out);
        }
        // Early Events older than an hour will never meet their Pod.
        self.early.retain(|_, (t, _)| now_ms - *t < 3_600_000);
    }

    fn pvc(&mut self, pvc: PvcObs, now_ms: i64, out: &mut Output) {
        let key = (pvc.namespace.clone(), pvc.name.clone());
        let first = !self.volumes.contains_key(&key);
        let v = self.volumes.entry(key).or_insert_with(|| Volume {
            // A PVC first seen already Bound (e.g. after a restart) has no measurable
            // provisioning time.
            provision_seen: pvc.bound,
            pvc: pvc.clone(),
            delete_counted: false,
        });
        if first {
            for on_time in [true, false] {
                out.updates.push(catalogue::volume_delete_total(
                    Probe::provision(&pvc.pie_probe_name, &pvc.storage_class),
                    on_time,
                    Op::Ensure,
                    now_ms,
                ));
            }
        }
        if pvc.bound && !v.provision_seen {
            v.provision_seen = true;
            out.updates.push(catalogue::volume_provision(
                Probe::provision(&pvc.pie_probe_name, &pvc.storage_class),
                secs(now_ms - pvc.created_ms),
                now_ms,
            ));
        }
        v.pvc.bound |= pvc.bound;
        v.pvc.volume = pvc.volume.or(v.pvc.volume.take());
        v.pvc.deleted_ms = v.pvc.deleted_ms.or(pvc.deleted_ms);
        delete_overdue(v, now_ms, out);
    }

    fn pv_gone(&mut self, name: &str, now_ms: i64, out: &mut Output) {
        let key = self
            .volumes
            .iter()
            .find(|(_, v)| v.pvc.volume.as_deref() == Some(name))
            .map(|(k, _)| k.clone());
        let Some(v) = key.and_then(|k| self.volumes.remove(&k)) else {
            return;
        };
        let Some(deleted) = v.pvc.deleted_ms else {
            return;
        };
        let probe = Probe::provision(&v.pvc.pie_probe_name, &v.pvc.storage_class);
        let took = now_ms - deleted;
        out.updates
            .push(catalogue::volume_delete(probe, secs(took), now_ms));
        if !v.delete_counted {
            let on_time = took < v.pvc.threshold_ms;
            out.updates.push(catalogue::volume_delete_total(
                probe,
                on_time,
                Op::Inc(1.0),
                now_ms,
            ));
        }
    }
}

/// Counts a deletion still unfinished at its threshold as `on_time="false"`, once. A claim
/// that never got a volume (its provisioning failed or never happened) has no deletion to time:
/// the real cluster showed every late provision probe on a broken StorageClass also counted as
/// a stuck deletion, firing PieVolumeDeletionStuck next to PieProvisionProbeFailing.
fn delete_overdue(v: &mut Volume, now_ms: i64, out: &mut Output) {
    if let Some(deleted) = v.pvc.deleted_ms
        && v.pvc.volume.is_some()
        && !v.delete_counted
        && now_ms - deleted >= v.pvc.threshold_ms
    {
        v.delete_counted = true;
        out.updates.push(catalogue::volume_delete_total(
            Probe::provision(&v.pvc.pie_probe_name, &v.pvc.storage_class),
            false,
            Op::Inc(1.0),
            deleted + v.pvc.threshold_ms,
        ));
    }
}

/// ms as seconds (negative durations as 0).
pub(crate) fn secs(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Decides `t`'s outcome (it started, or its threshold passed).
fn decide(t: &mut Tracked, uid: String, now_ms: i64) -> Decision {
    t.done = true;
    let p = &t.pod;
    let (on_time, at) = match p.started_ms {
        Some(started) => (started - p.created_ms < p.threshold_ms, started),
        None => (false, p.created_ms + p.threshold_ms),
    };
    let at = at.min(now_ms);
    let mut decision = Decision {
        uid,
        mark: Some(Action::MarkCounted {
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
        }),
        updates: Vec::new(),
        actions: Vec::new(),
    };
    if !on_time && let Some(job) = &p.job {
        decision.actions.push(Action::DeleteJob {
            namespace: p.namespace.clone(),
            job: job.clone(),
        });
    }
    if !p.node_eligible && !on_time {
        // Its node (for a provision probe: every node it may run on) became ineligible: not a
        // failure.
        return decision;
    }
    let started_after_ms = p.started_ms.map(|s| s - p.created_ms);
    let result = match started_after_ms {
        Some(_) if on_time => "OnTime",
        Some(_) => "Late",
        None => "NotStarted",
    };
    decision.actions.push(Action::RecordOutcome {
        namespace: p.namespace.clone(),
        pie_probe: p.pie_probe_name.clone(),
        kind: p.kind,
        time_ms: at,
        node: (!p.node.is_empty()).then(|| p.node.clone()),
        result,
        started_after_ms,
        threshold_ms: p.threshold_ms,
        reason: started_after_ms
            .is_none()
            .then(|| t.reason.map_or("timeout", |(_, r)| r)),
    });
    let probe = Probe::mount(&p.pie_probe_name, &p.node, &p.storage_class);
    decision.updates.push(match p.kind {
        ProbeKind::Provision => catalogue::provision_total(probe, on_time, Op::Inc(1.0), at),
        ProbeKind::Mount => catalogue::mount_total(probe, on_time, Op::Inc(1.0), at),
    });
    if let Some(started) = p.started_ms {
        decision.updates.push(catalogue::start_duration(
            probe,
            p.kind.label(),
            secs(started - p.created_ms),
            at,
        ));
    }
    if !on_time {
        let reason = t.reason.map_or("timeout", |(_, r)| r);
        decision
            .updates
            .push(catalogue::failure(probe, p.kind.label(), reason, at));
    }
    decision
}

/// Both `on_time` values at 0 for a probe (so ratio alerts work from the start).
pub fn zero_updates(
    kind: ProbeKind,
    pie_probe_name: &str,
    node: &str,
    storage_class: &str,
    now_ms: i64,
) -> Vec<Update> {
    let probe = Probe::mount(pie_probe_name, node, storage_class);
    [true, false]
        .into_iter()
        .map(|on_time| match kind {
            ProbeKind::Provision => catalogue::provision_total(probe, on_time, Op::Ensure, now_ms),
            ProbeKind::Mount => catalogue::mount_total(probe, on_time, Op::Ensure, now_ms),
        })
        .collect()
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
