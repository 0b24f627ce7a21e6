//! Probe outcomes: [`machine`] decides (pure); the watch layer feeding it with Pod, Event, PVC and
//! PV observations from watch caches is not written yet.

pub mod machine;
