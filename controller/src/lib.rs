//! pie-controller: reconciles PieProbes into probe CronJobs and PVCs.
//!
//! Domain logic lives in [`plan`] (pure functions, no Kubernetes I/O); [`reconcile`] is the thin
//! kube-runtime wiring around it.

pub mod crd;
pub mod error;
pub mod health;
pub mod leader;
pub mod offline;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod watch;

pub use error::Error;

#[cfg(test)]
mod fixtures;
