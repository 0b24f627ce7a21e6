//! Kubernetes I/O: the watches and reconcilers of `run` ([`controllers`], [`reconcile`]), the
//! outcome tracker's watches ([`tracker`]) and the actions it takes ([`actions`]), and leader
//! election ([`leader`]); [`watch`] is what all their watches share.

pub mod actions;
pub mod controllers;
pub mod leader;
pub mod reconcile;
pub mod tracker;
pub mod watch;
