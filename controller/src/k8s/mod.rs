//! Kubernetes I/O: the watches and reconcilers of `run` ([`controllers`], [`reconcile`]), the
//! outcome tracker's watches ([`tracker`]) and the actions it takes ([`actions`]), and leader
//! election ([`leader`]); [`watch`] is what all their watches share, [`client`] the clients
//! they use (rate limited; the Lease apart).

pub mod actions;
pub mod client;
pub mod controllers;
pub mod leader;
pub mod reconcile;
pub mod tracker;
pub mod watch;
