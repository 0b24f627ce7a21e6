//! pie-controller: reconciles PieProbes into probe CronJobs and PVCs.
//!
//! Domain logic lives in [`plan`] (pure functions, no Kubernetes I/O); [`reconcile`] is the thin
//! kube-runtime wiring around it.

pub mod auth;
pub mod crd;
pub mod error;
pub mod exposition;
pub mod health;
pub mod leader;
pub mod offline;
pub mod outcome;
pub mod plan;
pub mod push;
pub mod receive;
pub mod receiver;
pub mod reconcile;
pub mod run;
pub mod serve;
pub mod status;
pub mod store;
pub mod watch;

pub use error::Error;

#[cfg(test)]
mod fixtures;
