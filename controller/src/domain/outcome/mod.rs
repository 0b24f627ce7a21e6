//! Probe outcomes: [`machine`] decides whether a probe Pod started on time and why not, and
//! `observe` turns Kubernetes objects and watch events into its observations, and
//! [`status_throttle`] decides when an outcome reaches the PieProbe's status. All are pure;
//! `k8s::tracker` runs the watches that feed them and `k8s::actions` does what the machine asks.

pub mod machine;
pub(crate) mod observe;
pub(crate) mod status_throttle;
