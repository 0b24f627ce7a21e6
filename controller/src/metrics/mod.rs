//! The metrics side: the catalogue of every exported family, the store that holds their
//! series, the `/metrics` exposition, the pusher that queues changes for remote write, and the
//! sync that keeps the store in step with the plan.

pub mod exposition;
pub mod push;
pub mod store;
pub mod sync;
