//! The kit for pie's end-to-end tests: real pie, VictoriaMetrics, vmauth, vmalert and Prometheus
//! processes, and a real Kubernetes, for tests, benches and the soak run.
//!
//! Every program is started on a free loopback port with its own temporary directory and is
//! stopped (killed and reaped) when its handle is dropped, also when a test panics. A program
//! that is not installed makes the test fail with a message that says how to install it: CI
//! installs all of them (`task deps`), so these tests never silently skip there.
//!
//! From the top down, one module per harness:
//!
//! - [`cluster`]: the Kubernetes of the cluster tests (the local control plane of `e2e/cluster`,
//!   or any cluster named by `PIE_E2E_KUBECONFIG`) and `pie-controller run` against it.
//! - `pie`: [`PieReceive`] (`pie-controller receive`, plus `pie-agent mount-probe` against it),
//!   and [`probe_result_json`] / [`MOUNT_RESULT_GAUGES`] for tests that post results themselves,
//!   [`assert_results_exactly_once`] to check what arrived of them.
//! - what pie talks to: [`VictoriaMetrics`] (`victoria_metrics`), [`Vmalert`] with the
//!   [`shipped_rules`] (`vmalert`), [`Vmauth`] (`vmauth`), [`Vmagent`] (`vmagent`),
//!   [`Prometheus`] (`prometheus`); the VictoriaMetrics programs of either [`VmRelease`]
//!   (`vm_release`: Debian's 1.79 or a current release built from its Go module), and
//!   [`test_each_vm!`] to run a test once per release.
//! - `builds`: [`pie_binaries`], the one cargo build of pie's binaries, [`target_dir`] and
//!   [`repo_root`].
//! - `process`: [`Process`] and [`free_port`], which every harness above is made of, and
//!   [`require_binary`], [`rss_bytes`], [`peak_rss_bytes`], [`cpu_seconds`], [`dir_bytes`].
//! - `http`: [`http_client`], [`scrape`], [`scrape_value`], [`scrape_sum`]; `time`:
//!   [`now_millis`].
//!
//! The modules are private and everything is re-exported here: a test names
//! `e2e::VictoriaMetrics`, never the file it lives in.

pub mod cluster;
pub mod scenario;

mod builds;
mod http;
mod pie;
mod process;
mod prometheus;
mod service;
mod time;
mod victoria_metrics;
mod vm_release;
mod vmagent;
mod vmalert;
mod vmauth;

pub use builds::{
    PieBinaries, build_pie_controller, clear_cargo_test_env, pie_binaries, repo_root, target_dir,
};
pub use http::{http_client, scrape, scrape_sum, scrape_value};
pub use pie::{MOUNT_RESULT_GAUGES, PieReceive, assert_results_exactly_once, probe_result_json};
pub use process::{
    Process, cpu_seconds, dir_bytes, find_binary, free_port, peak_rss_bytes, require_binary,
    rss_bytes,
};
pub use prometheus::{PromSeries, Prometheus};
pub use service::{Backend, ReadyService};
pub use time::now_millis;
pub use victoria_metrics::{ExportedSeries, VictoriaMetrics, samples_by_key, series_count};
pub use vm_release::VmRelease;
pub use vmagent::Vmagent;
pub use vmalert::{Notifier, Vmalert, VmalertAlert, VmalertRule, shipped_rules};
pub use vmauth::Vmauth;
