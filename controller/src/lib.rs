//! pie-controller: reconciles PieProbes into probe CronJobs and PVCs, times their Pods, receives
//! the mount probes' results and pushes it all to VictoriaMetrics.
//!
//! The folders show the layering (see docs/design.md for the map):
//! - [`domain`]: pure decisions, no I/O: the plan of probe objects, node eligibility, the
//!   outcome machine and its observations, PieProbe status.
//! - [`metrics`]: the metric catalogue, the store, `/metrics`, and the push to remote write.
//! - [`http`]: the results API, its authentication, health endpoints, binding listeners.
//! - `k8s`: Kubernetes I/O: watches, the reconciler, outcome actions, leader election.
//! - [`apps`]: the subcommands `run`, `receive` and `plan` as thin composition roots.

pub mod apps;
pub mod crd;
pub mod domain;
mod error;
pub mod http;
pub(crate) mod k8s;
pub mod metrics;
pub mod signal;

pub use error::Error;

#[cfg(test)]
mod fixtures;
