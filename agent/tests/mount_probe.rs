//! The real `pie-agent` binary probing real and broken setups: every outcome is posted to the
//! controller, failures with `performance_probe_succeed=false`, an `error` and a non-zero exit.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Controller, Reply, agent, fake_fio, fixture, mount_args, real_fs_tempdir};
use pie_api::ProbeResult;

fn controller() -> Controller {
    Controller::start(Vec::new(), Reply::status(204))
}

/// Asserts exactly one result was posted and returns it.
fn only_result(c: &Controller) -> ProbeResult {
    let received = c.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/api/v1/results");
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(received[0].authorization, None);
    let result: ProbeResult = serde_json::from_value(received[0].body.clone()).unwrap();
    assert_eq!(result.validate(), Ok(()));
    assert_eq!(result.node, "worker-1");
    assert_eq!(result.storage_class, "topolvm-provisioner");
    assert_eq!(result.pie_probe_name, "test-pie-probe");
    result
}

/// Asserts a failure was posted whose error contains `needle`, and the agent exited 1.
fn assert_reported_failure(c: &Controller, run: &common::Run, needle: &str) -> ProbeResult {
    assert_eq!(run.code, Some(1), "{run:?}");
    let result = only_result(c);
    assert!(!result.performance_probe_succeed, "{result:?}");
    assert_eq!((result.read_latency, result.write_latency), (0.0, 0.0));
    let error = result.error.as_deref().unwrap_or_default();
    assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    assert!(!error.contains('\n'), "{error:?}");
    assert!(result.probe_duration_seconds.is_some());
    result
}

#[test]
fn real_fio_result_is_complete_and_plausible() {
    let c = controller();
    let dir = real_fs_tempdir();
    let url = c.url();
    let path = dir.path().to_str().unwrap();
    let run = agent(&mount_args(&url, path, &["--size", "8M"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let r = only_result(&c);
    assert!(r.performance_probe_succeed, "{r:?}");
    assert_eq!(r.error, None);
    assert!(r.read_latency > 0.0 && r.read_latency < 1.0, "{r:?}");
    assert!(r.write_latency > 0.0 && r.write_latency < 1.0, "{r:?}");
    let positive = [
        r.read_iops,
        r.write_iops,
        r.read_bytes_per_second,
        r.write_bytes_per_second,
        r.read_latency_p99,
        r.write_latency_p99,
        r.probe_duration_seconds,
    ];
    assert!(positive.iter().all(|v| v.is_some_and(|v| v > 0.0)), "{r:?}");
    // 4 KiB blocks: bandwidth is IOPS * 4096 (give or take fio's rounding).
    let ratio = r.read_bytes_per_second.unwrap() / (r.read_iops.unwrap() * 4096.0);
    assert!((0.99..1.01).contains(&ratio), "{r:?}");
    // The p99 completion latency is not below the mean completion latency by orders of magnitude.
    assert!(r.read_latency_p99.unwrap() > r.read_latency / 10.0, "{r:?}");
    // Test files removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // One log line per phase, on stderr; nothing on stdout.
    for phase in [
        "mount probe starting",
        "running fio",
        "I/O probe succeeded",
        "result delivered",
    ] {
        assert!(run.stderr.contains(phase), "{phase}: {}", run.stderr);
    }
    assert_eq!(run.stdout, "");
}

#[test]
fn missing_path_is_reported_and_not_created() {
    let c = controller();
    let dir = real_fs_tempdir();
    let missing = dir.path().join("mounted");
    let url = c.url();
    let run = agent(&mount_args(&url, missing.to_str().unwrap(), &[]));
    assert_reported_failure(&c, &run, "does not exist");
    assert!(!missing.exists());
}

#[test]
fn regular_file_path_is_reported() {
    let c = controller();
    let dir = real_fs_tempdir();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let url = c.url();
    let run = agent(&mount_args(&url, file.to_str().unwrap(), &[]));
    assert_reported_failure(&c, &run, "is not a directory");
}

/// Tests may run as root, where a chmod-ed directory stays writable. /sys/kernel is a directory
/// on sysfs, which refuses to create files even for root, so real fio fails with EACCES there.
#[test]
fn unwritable_path_is_reported() {
    assert!(Path::new("/sys/kernel").is_dir());
    let c = controller();
    let url = c.url();
    let run = agent(&mount_args(&url, "/sys/kernel", &[]));
    assert_reported_failure(
        &c,
        &run,
        "fio job pie failed with error 13: Permission denied",
    );
}

#[test]
fn missing_fio_is_reported() {
    let c = controller();
    let dir = real_fs_tempdir();
    let url = c.url();
    let fio = dir.path().join("no-fio-here");
    let run = agent(&mount_args(
        &url,
        dir.path().to_str().unwrap(),
        &["--fio", fio.to_str().unwrap()],
    ));
    assert_reported_failure(&c, &run, "not found");
}

#[test]
fn hanging_fio_is_killed_and_reported() {
    let c = controller();
    let dir = real_fs_tempdir();
    let fio = fake_fio(dir.path(), "sleep 30");
    let url = c.url();
    let run = agent(&mount_args(
        &url,
        dir.path().to_str().unwrap(),
        &["--fio", fio.to_str().unwrap(), "--fio-timeout", "1s"],
    ));
    assert_reported_failure(&c, &run, "did not finish within 1s and was killed");
    assert!(run.elapsed < Duration::from_secs(10), "{run:?}");
}

#[test]
fn fio_exiting_non_zero_is_reported_with_its_message() {
    let c = controller();
    let dir = real_fs_tempdir();
    let fio = fake_fio(dir.path(), "echo 'fio: unrecognized option' >&2; exit 1");
    let url = c.url();
    let run = agent(&mount_args(
        &url,
        dir.path().to_str().unwrap(),
        &["--fio", fio.to_str().unwrap()],
    ));
    assert_reported_failure(
        &c,
        &run,
        "fio exited with exit status: 1: fio: unrecognized option",
    );
}

#[test]
fn unparsable_fio_output_is_reported() {
    let c = controller();
    let dir = real_fs_tempdir();
    let fio = fake_fio(dir.path(), "echo '{\"fio version\": 1'");
    let url = c.url();
    let run = agent(&mount_args(
        &url,
        dir.path().to_str().unwrap(),
        &["--fio", fio.to_str().unwrap()],
    ));
    assert_reported_failure(&c, &run, "could not parse fio's JSON output");
}

#[test]
fn integrity_mismatch_is_reported() {
    let c = controller();
    let dir = real_fs_tempdir();
    let fio = fake_fio(
        dir.path(),
        &format!(
            "cat '{}'; cat '{}' >&2; exit 1",
            fixture("fio-3.33-verify-mismatch.json").display(),
            fixture("fio-3.33-verify-mismatch.stderr").display()
        ),
    );
    let url = c.url();
    let run = agent(&mount_args(
        &url,
        dir.path().to_str().unwrap(),
        &["--fio", fio.to_str().unwrap()],
    ));
    assert_reported_failure(&c, &run, "integrity check failed");
}

#[test]
fn bad_names_and_urls_are_usage_errors_and_nothing_is_sent() {
    let c = controller();
    let dir = real_fs_tempdir();
    let url = c.url();
    let path = dir.path().to_str().unwrap();
    let mut bad_node = mount_args(&url, path, &[]);
    bad_node[6] = "Worker_1";
    let bad_url = mount_args("ftp://controller", path, &[]);
    let bad_size = mount_args(&url, path, &["--size", "lots"]);
    let bad_timeout = mount_args(&url, path, &["--timeout", "0s"]);
    let missing_flag = vec!["mount-probe", "--path", path];
    for args in [bad_node, bad_url, bad_size, bad_timeout, missing_flag] {
        let run = agent(&args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", run.stderr);
    }
    assert!(c.received().is_empty());
}

#[test]
fn environment_variables_replace_flags() {
    let c = controller();
    let dir = real_fs_tempdir();
    let fio = common::fio_printing_ok_fixture(dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pie-agent"))
        .env_clear()
        .arg("mount-probe")
        .env("PIE_CONTROLLER_URL", c.url())
        .env("PIE_PATH", dir.path())
        .env("PIE_NODE_NAME", "worker-1")
        .env("PIE_STORAGE_CLASS", "topolvm-provisioner")
        .env("PIE_PROBE_NAME", "test-pie-probe")
        .env("PIE_FIO", &fio)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(only_result(&c).performance_probe_succeed);
}

#[test]
fn provision_probe() {
    let ok = agent(&["provision-probe"]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    let dir = real_fs_tempdir();
    let ok = agent(&["provision-probe", "--path", dir.path().to_str().unwrap()]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let missing = dir.path().join("missing");
    // /sys/kernel: see unwritable_path_is_reported.
    for (path, needle) in [
        (missing.to_str().unwrap(), "does not exist"),
        ("/sys/kernel", "cannot write"),
    ] {
        let run = agent(&["provision-probe", "--path", path]);
        assert_eq!(run.code, Some(1), "{run:?}");
        let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(errors[0].contains(needle), "{}", run.stderr);
    }
}

#[test]
fn version_prints_the_package_version() {
    let run = agent(&["version"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(
        run.stdout.trim(),
        concat!("pie-agent ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_documents_exit_codes() {
    let run = agent(&["mount-probe", "--help"]);
    assert_eq!(run.code, Some(0));
    for line in [
        "Exit codes:",
        "--destination-address",
        "PIE_CONTROLLER_URL",
        "PIE_TOKEN_FILE",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }
}
