//! Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it:
//! every [`RETRY_PERIOD`] the replica reads the Lease and, if it holds it or the holder has not
//! renewed it for [`LEASE_DURATION`], writes itself in (a `PUT` with the resourceVersion it read,
//! so of two replicas racing only one wins).
//!
//! What a reader can't see from the API calls alone:
//! - **Stepping down without an API server.** A leader that cannot renew for [`RENEW_DEADLINE`]
//!   stops leading on its own, before any other replica may take the Lease ([`LEASE_DURATION`]
//!   after it last saw a renewal): so two replicas never act as leader at once, also when the API
//!   server was away and comes back. The process does not exit; it competes again.
//! - **Expiry by observation.** Another holder's Lease counts as expired when its record has not
//!   changed for [`LEASE_DURATION`] by this replica's clock (client-go's rule, immune to clock
//!   skew), or when its renewTime is older than the duration plus [`CLOCK_SKEW`] (so a fresh
//!   replica need not wait out a Lease abandoned long ago).
//! - **Reachability.** Every step is one or two requests to the API server; the status says
//!   whether the last one within [`REACHABLE_WITHIN`] succeeded, which `/readyz` reports.
//! - **Release.** When the status receivers are gone (shutdown), a holder clears the Lease, so a
//!   follower takes over within one retry period instead of a Lease duration.

use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// Default name of the Lease the replicas compete for (`--lease-name`).
pub const LEASE_NAME: &str = "pie-controller";
/// How long a Lease holds without renewal; a dead leader is replaced within about this long.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that could not renew for this long stops leading (shorter than the duration).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often every replica reads (and a leader renews) the Lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// The API server counts as unreachable when no step succeeded for this long.
pub const REACHABLE_WITHIN: Duration = Duration::from_secs(5);
/// Clock difference between replicas tolerated when judging a renewTime.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);
/// One step (read, maybe write) gives up after this long, so a hanging API server is noticed.
const STEP_TIMEOUT: Duration = Duration::from_secs(4);

/// Where this replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// It holds the Lease (and renewed it within [`RENEW_DEADLINE`]).
    pub leading: bool,
    /// Its last request to the API server within [`REACHABLE_WITHIN`] succeeded.
    pub reachable: bool,
}

/// Which Lease, and who this replica is.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity (the Pod name).
    pub identity: String,
}

/// Starts competing for the Lease in the background; the receiver follows this replica's
/// [`Status`]. Dropping every receiver releases the Lease and ends the task.
pub fn elect(client: Client, candidate: Candidate) -> watch::Receiver<Status> {
    let (tx, rx) = watch::channel(Status::default());
    tokio::spawn(run(
        Elector::new(Api::namespaced(client, &candidate.namespace), candidate),
        tx,
    ));
    rx
}

async fn run(mut elector: Elector, tx: watch::Sender<Status>) {
    let mut last_ok: Option<Instant> = None;
    let mut last_renewed: Option<Instant> = None;
    let mut failing = false;
    loop {
        let step = tokio::time::timeout(STEP_TIMEOUT, elector.step()).await;
        let now = Instant::now();
        let mut status = *tx.borrow();
        match step {
            Ok(Ok(holds)) => {
                if failing {
                    info!(lease = %elector.candidate.name, "the API server answers again");
                    failing = false;
                }
                last_ok = Some(now);
                if holds {
                    last_renewed = Some(now);
                }
                status.leading = holds;
            }
            Ok(Err(e)) => {
                if !failing {
                    warn!(lease = %elector.candidate.name, error = %e, "cannot read or renew the Lease");
                    failing = true;
                }
            }
            Err(_) => {
                if !failing {
                    warn!(lease = %elector.candidate.name, "the API server did not answer within {STEP_TIMEOUT:?}");
                    failing = true;
                }
            }
        }
        if status.leading && last_renewed.is_none_or(|t| now - t >= RENEW_DEADLINE) {
            warn!(lease = %elector.candidate.name, "could not renew the Lease for {RENEW_DEADLINE:?}; stepping down");
            status.leading = false;
        }
        status.reachable = last_ok.is_some_and(|t| now - t < REACHABLE_WITHIN);
        tx.send_if_modified(|s| std::mem::replace(s, status) != status);
        tokio::select! {
            () = tx.closed() => break,
            () = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    if tx.borrow().leading {
        match tokio::time::timeout(STEP_TIMEOUT, elector.release()).await {
            Ok(Ok(())) => info!(lease = %elector.candidate.name, "released the Lease"),
            Ok(Err(e)) => {
                warn!(lease = %elector.candidate.name, error = %e, "could not release the Lease")
            }
            Err(_) => warn!(lease = %elector.candidate.name, "could not release the Lease in time"),
        }
    }
}

/// The Lease record as last observed, and when (this replica's clock).
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<String>),
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    candidate: Candidate,
    observed: Option<Observed>,
}

impl Elector {
    fn new(api: Api<Lease>, candidate: Candidate) -> Elector {
        Elector {
            api,
            candidate,
            observed: None,
        }
    }

    fn duration_seconds() -> i32 {
        LEASE_DURATION.as_secs() as i32
    }

    /// One round: read the Lease, take or renew it if allowed. `Ok(true)`: this replica holds
    /// it now.
    async fn step(&mut self) -> Result<bool, kube::Error> {
        let name = self.candidate.name.clone();
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.candidate.identity.clone()),
                    lease_duration_seconds: Some(Self::duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.clone(),
            lease.resource_version(),
        );
        let observed_at = match &self.observed {
            Some(o) if o.record == record => o.at,
            _ => {
                let at = Instant::now();
                self.observed = Some(Observed { record, at });
                at
            }
        };
        let mine = holder.as_deref() == Some(self.candidate.identity.as_str());
        if !mine && holder.is_some() && !expired(&spec, observed_at, now) {
            return Ok(false);
        }
        let mut taken = lease;
        taken.spec = Some(LeaseSpec {
            holder_identity: Some(self.candidate.identity.clone()),
            lease_duration_seconds: Some(Self::duration_seconds()),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + if mine { 0 } else { 1 }),
            ..spec
        });
        match self
            .api
            .replace(&self.candidate.name, &PostParams::default(), &taken)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(lease = %self.candidate.name, identity = %self.candidate.identity, "took the Lease");
                }
                Ok(true)
            }
            // Someone else wrote it since we read it: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Clears the Lease if this replica holds it.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.candidate.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.candidate.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.candidate.name, &PostParams::default(), &lease)
            .await
            .map(drop)
    }
}

/// Whether another replica's Lease may be taken: unchanged for a whole duration as this replica
/// saw it, or renewed longer ago than the duration plus the tolerated clock skew.
fn expired(spec: &LeaseSpec, observed_at: Instant, now: Timestamp) -> bool {
    let duration = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
    if observed_at.elapsed() >= duration {
        return true;
    }
    let stale_after =
        SignedDuration::try_from(duration + CLOCK_SKEW).unwrap_or(SignedDuration::MAX);
    spec.renew_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0) > stale_after)
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
