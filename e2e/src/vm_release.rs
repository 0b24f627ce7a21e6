//! Which VictoriaMetrics release a harness runs: Debian's package (1.79, installed by
//! `task deps` with apt) or a current release built from VictoriaMetrics' own Go module
//! (`e2e/victoriametrics`, scripts/build-victoriametrics.sh, also run by `task deps`). The
//! compatibility tests run once per release with [`test_each_vm!`](crate::test_each_vm).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::builds::go_build;
use crate::require_binary;

/// A VictoriaMetrics release whose programs (`victoria-metrics`, `vmagent`, `vmalert`,
/// `vmauth`) the harnesses start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmRelease {
    /// Debian's `victoria-metrics` package (1.79), on `PATH`.
    Debian,
    /// The release `e2e/victoriametrics/go.mod` pins, built into `<target>/victoriametrics/`.
    Current,
}

impl VmRelease {
    /// Every release the compatibility tests run against.
    pub const ALL: [VmRelease; 2] = [VmRelease::Debian, VmRelease::Current];

    /// The path of `program` of this release; builds the current release on first use (Go's
    /// build cache makes that a second when `task deps` built it already).
    pub fn binary(self, program: &str) -> PathBuf {
        match self {
            VmRelease::Debian => require_binary(program, "victoria-metrics"),
            VmRelease::Current => current_release_dir().join(program),
        }
    }

    /// The release's version as VictoriaMetrics numbers it (`v1.79.5`, `v1.153.0`): the
    /// current release's from its programs' `-version` (the build sets it as VictoriaMetrics'
    /// Makefile does), Debian's from the package (its build leaves `-version` empty).
    pub fn version(self) -> String {
        match self {
            VmRelease::Debian => {
                let out = Command::new("dpkg-query")
                    .args(["-W", "-f", "${Version}", "victoria-metrics"])
                    .output()
                    .expect("run dpkg-query");
                assert!(
                    out.status.success(),
                    "dpkg-query: the package is not installed"
                );
                // 1.79.5+ds1-2+b5: the upstream version is before the `+`.
                let full = String::from_utf8_lossy(&out.stdout);
                format!("v{}", full.split(['+', '-']).next().unwrap_or_default())
            }
            VmRelease::Current => {
                let out = Command::new(self.binary("victoria-metrics"))
                    .arg("-version")
                    .output()
                    .expect("run victoria-metrics -version");
                let text = String::from_utf8_lossy(&out.stdout);
                // victoria-metrics-20260925-133939-tags-v1.153.0-0
                text.split('-')
                    .find(|part| part.starts_with('v') && part.contains('.'))
                    .unwrap_or_else(|| panic!("no version in {text:?}"))
                    .to_owned()
            }
        }
    }
}

/// `<target>/victoriametrics/`, built once per test binary by scripts/build-victoriametrics.sh.
fn current_release_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            go_build(
                "build-victoriametrics.sh",
                "the current VictoriaMetrics (e2e/victoriametrics)",
                "victoriametrics",
            )
        })
        .clone()
}

/// Runs the async test function `$test(release: VmRelease)` once per [`VmRelease`]: expands to
/// a module `$test` holding the tests `debian` and `current` (`cargo test $test` runs both),
/// each on a two-thread tokio runtime.
#[macro_export]
macro_rules! test_each_vm {
    ($($test:ident),+ $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn debian() {
                    super::$test($crate::VmRelease::Debian).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn current() {
                    super::$test($crate::VmRelease::Current).await
                }
            }
        )+
    };
}
