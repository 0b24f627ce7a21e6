//! Kubernetes I/O: the watches and reconcilers of `run` ([`controllers`], [`reconcile`]), the
//! outcome tracker's watches ([`tracker`]) and the actions it takes ([`actions`]), and leader
//! election ([`leader`]).

pub mod actions;
pub mod controllers;
pub mod leader;
pub mod reconcile;
pub mod tracker;
