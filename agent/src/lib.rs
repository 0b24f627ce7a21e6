//! pie-agent: the probe that runs inside pie's probe Pods.
//!
//! The mount probe runs fio on the mounted volume ([`fio`], [`probe`]), including an integrity
//! check, and posts a [`pie_api::ProbeResult`] to the controller ([`deliver`]); the provision
//! probe optionally checks its ephemeral volume takes writes ([`provision`]). The wire types
//! live in `pie-api`, shared with the controller.

pub mod app;
pub mod cli;
pub mod deliver;
pub mod fio;
pub mod probe;
pub mod provision;
