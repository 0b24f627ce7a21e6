//! Pure decisions: everything here is a function of plain data (PieProbes, Nodes, watch events)
//! and returns plain data; no Kubernetes client, no HTTP, no clock.

pub mod node_facts;
pub mod nodes;
pub mod outcome;
pub mod plan;
pub(crate) mod relist;
pub(crate) mod series;
pub(crate) mod status;
