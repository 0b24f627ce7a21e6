//! Probe outcomes: [`machine`] decides whether a probe Pod started on time and why not, and
//! `observe` turns Kubernetes objects and watch events into its observations. Both are pure;
//! `k8s::tracker` runs the watches that feed them and `k8s::actions` does what the machine asks.

pub mod machine;
pub(crate) mod observe;
