//! pie's wire contract: everything the probe (`pie-agent`) and the controller must agree on,
//! and nothing else. No I/O, no Kubernetes client, no HTTP.
//!
//! - [`result`]: the results JSON a mount probe posts, and what the receiver accepts of it.
//! - [`started`]: what a provision probe reports once its Pod runs; the API's paths.
//! - [`key`]: the (PieProbe, node, StorageClass) a probe and its results are about.
//! - [`names`] and [`labels`]: how probe objects are named and labelled, byte for byte as
//!   topolvm/pie does, so the controller adopts pie's objects and recognises its own.
//! - [`units`]: the duration and size syntax of flags on both sides.

pub mod key;
pub mod labels;
pub mod names;
pub mod result;
pub mod started;
pub mod units;

pub use key::ProbeKey;
pub use result::{ProbeResult, ValidationError};
pub use started::{PROVISION_STARTED_PATH, ProvisionStarted, RESULTS_PATH};
