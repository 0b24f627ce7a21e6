//! pie's binaries, built by the tests themselves: cargo builds no other package's binaries for a
//! test (artifact dependencies are unstable), so the first test that needs them runs
//! `cargo build` into the test binary's own target dir, where the dependencies are compiled
//! already. The Go programs of the repository's Go modules (the local cluster, Helm, a current
//! VictoriaMetrics) are built the same way by their scripts (scripts/lib/go-build.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_owned()
}

/// `<target>` of the running test binary (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_owned()
}

/// `pie-controller` and `pie-agent`, built for the tests.
#[derive(Debug)]
pub struct PieBinaries {
    /// The `pie-controller` binary.
    pub controller: PathBuf,
    /// The `pie-agent` binary.
    pub agent: PathBuf,
}

/// Builds `pie-controller` and `pie-agent` into [`target_dir`], once per test binary, in the
/// running binary's profile (debug for tests, release for benches, so that a bench measures
/// what ships), and returns their paths. Both, also for a test that needs only one, so that there is one
/// build to keep right (the `CARGO_*` variables below).
pub fn pie_binaries() -> &'static PieBinaries {
    static BINARIES: OnceLock<PieBinaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let target = target_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        let release = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.ancestors().nth(2)?.file_name()? == "release"))
            .unwrap_or(false);
        command.args(["build", "-p", "pie-controller", "-p", "pie-agent"]);
        if release {
            command.arg("--release");
        }
        command
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        clear_cargo_test_env(&mut command);
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        let bin = target.join(if release { "release" } else { "debug" });
        PieBinaries {
            controller: bin.join("pie-controller"),
            agent: bin.join("pie-agent"),
        }
    })
}

/// The `pie-controller` of [`pie_binaries`]' one build. `target` must be [`target_dir`]: that
/// build writes nowhere else, so a caller that means another dir fails here rather than run a
/// binary it did not build.
pub fn build_pie_controller(target: &Path) -> PathBuf {
    assert_eq!(
        target,
        target_dir(),
        "pie's binaries are built into the test binary's target dir only"
    );
    pie_binaries().controller.clone()
}

/// Removes from `command`'s environment the variables cargo gives a test process about its own
/// package, for a `cargo build` run from a test (here, and by `scripts/demo.sh` in the demo
/// trial): a build script that reruns when one of them changes (ring: `CARGO_MANIFEST_DIR`)
/// would otherwise be rebuilt there and again by the next `cargo test`, with everything that
/// depends on it.
pub fn clear_cargo_test_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
}

/// Runs `scripts/<script>` (one of the Go builds, scripts/lib/go-build.sh) for the tests' target
/// dir and returns `<target>/<output>`; fails the test with the script's stderr.
pub(crate) fn go_build(script: &str, what: &str, output: &str) -> PathBuf {
    let target = target_dir();
    let run = Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(
        run.status.success(),
        "building {what} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    target.join(output)
}
