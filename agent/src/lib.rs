//! pie-agent: the probe that runs inside pie's probe Pods.
//!
//! The mount probe runs fio on the mounted volume ([`fio`], [`probe`]), including an integrity
//! check, and posts a [`result::ProbeResult`] to the controller ([`deliver`]); the provision
//! probe optionally checks its ephemeral volume takes writes ([`provision`]). [`result`] is the
//! wire type the controller's receiver imports.

pub mod app;
pub mod cli;
pub mod deliver;
pub mod fio;
pub mod probe;
pub mod provision;
pub mod result;
