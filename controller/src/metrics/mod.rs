//! The metrics side, bottom-up: the catalogue (every exported family and the typed updates of
//! each), the store that holds their series, the remote-write client's self-metrics, the
//! `/metrics` exposition, and the pusher that queues every change for remote write and re-sends
//! the whole store periodically. Nothing here knows Kubernetes or the plan.

pub mod catalogue;
pub(crate) mod exposition;
pub mod push;
pub(crate) mod self_metrics;
pub mod store;
