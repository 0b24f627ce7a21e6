//! Probe outcomes: [`machine`] decides (pure), [`observe`] turns Kubernetes objects and watch
//! events into its observations (pure), [`tracker`] runs the watches and feeds the machine, and
//! [`actions`] carries out what it asks for (the counted mark, deleting Jobs).

pub mod actions;
pub mod machine;
pub mod observe;
pub mod tracker;
