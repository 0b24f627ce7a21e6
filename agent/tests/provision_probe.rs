//! `provision-probe` with the real `pie-agent` binary: without a controller URL it exits at
//! once, as topolvm/pie's probe did; with one it reports its start with the Pod's token and lives
//! until the controller answers that it counted the Pod (503 means not yet).

mod common;

use std::time::Duration;

use common::{Controller, Reply, agent, real_fs_tempdir};

fn report_args<'a>(url: &'a str, token: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "provision-probe",
        "--controller-url",
        url,
        "--pie-probe-name",
        "test-pie-probe",
        "--storage-class",
        "topolvm-provisioner",
        "--token-file",
        token,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn without_a_controller_it_exits_at_once() {
    let dir = real_fs_tempdir();
    let run = agent(&["provision-probe", "--path", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn it_waits_until_the_controller_has_counted_it() {
    let c = Controller::start(
        vec![
            Reply::status(503).header("retry-after", "1"),
            Reply::status(503).body(r#"{"error":"not counted yet; retry"}"#),
        ],
        Reply::status(200).body(r#"{"status":"counted"}"#),
    );
    let dir = real_fs_tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "pod-token\n").unwrap();
    let url = c.url();
    let run = agent(&report_args(
        &url,
        token.to_str().unwrap(),
        &["--path", dir.path().to_str().unwrap()],
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    let received = c.received();
    assert_eq!(received.len(), 3, "{received:?}");
    for r in &received {
        assert_eq!(r.path, "/api/v1/provision-started");
        assert_eq!(r.authorization.as_deref(), Some("Bearer pod-token"));
        assert_eq!(
            r.body,
            serde_json::json!({"pie_probe_name": "test-pie-probe", "storage_class": "topolvm-provisioner"})
        );
    }
    // Retry-After: 1 was honoured between the first two attempts.
    assert!(received[1].at - received[0].at >= Duration::from_millis(900));
    assert!(
        run.stderr
            .contains("the controller counted this provision probe"),
        "{}",
        run.stderr
    );
}

#[test]
fn no_answer_in_time_is_exit_3_and_a_refusal_is_not_retried() {
    let dir = real_fs_tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let down = Controller::start(Vec::new(), Reply::status(503));
    let url = down.url();
    let run = agent(&report_args(
        &url,
        token.to_str().unwrap(),
        &["--timeout", "2s"],
    ));
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10), "{run:?}");
    assert!(down.received().len() >= 2);

    let refusing = Controller::start(
        Vec::new(),
        Reply::status(403)
            .body(r#"{"error":"Pod pie/x is not a provision probe of pie-controller"}"#),
    );
    let url = refusing.url();
    let run = agent(&report_args(&url, token.to_str().unwrap(), &[]));
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(refusing.received().len(), 1);
    assert!(
        run.stderr.contains("is not a provision probe"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_controller_url_without_the_probe_names_is_a_usage_error() {
    let run = agent(&["provision-probe", "--controller-url", "http://127.0.0.1:1"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("--controller-url needs --pie-probe-name and --storage-class"),
        "{}",
        run.stderr
    );
    let run = agent(&[
        "provision-probe",
        "--controller-url",
        "ftp://x",
        "--pie-probe-name",
        "p",
        "--storage-class",
        "s",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("invalid controller URL"),
        "{}",
        run.stderr
    );
}
