//! Delivery of the result by the real `pie-agent` binary to a controller stand-in: retries,
//! Retry-After, rejections, the bearer token and the overall deadline. fio is a fake printing a
//! recorded fio 3.33 output, so these tests exercise delivery only.

mod common;

use std::time::Duration;

use common::{Controller, Reply, Run, agent, fio_printing_ok_fixture, mount_args, real_fs_tempdir};

/// Runs a successful mount probe against `controller` with extra flags.
fn probe(controller: &Controller, extra: &[&str]) -> Run {
    let dir = real_fs_tempdir();
    let fio = fio_printing_ok_fixture(dir.path());
    let url = controller.url();
    let mut flags = vec!["--fio", fio.to_str().unwrap()];
    flags.extend_from_slice(extra);
    agent(&mount_args(&url, dir.path().to_str().unwrap(), &flags))
}

#[test]
fn service_unavailable_then_accepted_delivers_once() {
    let c = Controller::start(vec![Reply::status(503)], Reply::status(204));
    let run = probe(&c, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let received = c.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].body, received[1].body);
    assert_eq!(received[1].body["performance_probe_succeed"], true);
    assert!(
        run.stderr.contains("delivery failed, retrying"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("attempts=2"), "{}", run.stderr);
}

#[test]
fn bad_request_is_not_retried_and_its_message_is_printed() {
    let c = Controller::start(
        Vec::new(),
        Reply::status(400).body(r#"{"error":"node \"worker-1\" is not probed by test-pie-probe"}"#),
    );
    let run = probe(&c, &[]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(c.received().len(), 1);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(
            r#"controller rejected the result with 400 Bad Request: node "worker-1" is not probed by test-pie-probe"#
        ),
        "{}",
        errors[0]
    );
}

#[test]
fn too_many_requests_honours_retry_after_seconds() {
    let c = Controller::start(
        vec![Reply::status(429).header("retry-after", "1")],
        Reply::status(204),
    );
    let run = probe(&c, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let received = c.received();
    assert_eq!(received.len(), 2);
    // Without Retry-After the first backoff would be 200-400 ms.
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert!(gap < Duration::from_secs(3), "{gap:?}");
}

#[test]
fn retry_after_http_date_is_honoured() {
    let at = std::time::SystemTime::now() + Duration::from_secs(3);
    let c = Controller::start(
        vec![Reply::status(503).header("retry-after", &httpdate::fmt_http_date(at))],
        Reply::status(204),
    );
    let run = probe(&c, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let received = c.received();
    assert_eq!(received.len(), 2);
    // The date has a one-second resolution, so at least ~2 s remain of the 3 s.
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(1800), "{gap:?}");
    assert!(gap < Duration::from_secs(4), "{gap:?}");
}

#[test]
fn retry_after_past_the_deadline_gives_up_at_once() {
    let c = Controller::start(Vec::new(), Reply::status(503).header("retry-after", "120"));
    let run = probe(&c, &["--timeout", "10s"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(c.received().len(), 1);
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(run.stderr.contains("past the deadline"), "{}", run.stderr);
}

#[test]
fn token_is_sent_and_re_read_on_each_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-secret-token\n").unwrap();
    let rotated = token.clone();
    let c = Controller::start_with_hook(
        vec![Reply::status(503)],
        Reply::status(204),
        Some(Box::new(move |index| {
            if index == 0 {
                std::fs::write(&rotated, "  second-secret-token  \n").unwrap();
            }
        })),
    );
    let run = probe(&c, &["--token-file", token.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let auth: Vec<Option<String>> = c.received().into_iter().map(|r| r.authorization).collect();
    assert_eq!(
        auth,
        [
            Some("Bearer first-secret-token".to_owned()),
            Some("Bearer second-secret-token".to_owned())
        ]
    );
    assert!(
        !run.stderr.contains("secret"),
        "token logged: {}",
        run.stderr
    );
}

#[test]
fn unreadable_token_file_is_not_delivered() {
    let c = Controller::start(Vec::new(), Reply::status(204));
    let run = probe(&c, &["--token-file", "/nonexistent/token"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(c.received().is_empty());
    assert!(
        run.stderr.contains("cannot read token file"),
        "{}",
        run.stderr
    );
}

#[test]
fn deadline_is_respected_while_the_controller_keeps_failing() {
    let c = Controller::start(Vec::new(), Reply::status(500).body(r#"{"error":"busy"}"#));
    let run = probe(&c, &["--timeout", "2s"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.elapsed >= Duration::from_millis(1500), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(c.received().len() >= 2, "{:?}", c.received().len());
    assert!(
        run.stderr.contains("not delivered within 2s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("500 Internal Server Error: busy"),
        "{}",
        run.stderr
    );
}

#[test]
fn deadline_is_respected_while_the_controller_hangs() {
    let c = Controller::start(
        Vec::new(),
        Reply::status(204).delay(Duration::from_secs(30)),
    );
    let run = probe(&c, &["--timeout", "1s"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(4), "{run:?}");
}

#[test]
fn unreachable_controller_is_retried_until_the_deadline() {
    // A port bound without listening, held for the whole test: connections are refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let dir = real_fs_tempdir();
    let fio = fio_printing_ok_fixture(dir.path());
    let url = format!("http://127.0.0.1:{port}");
    let run = agent(&mount_args(
        &url,
        dir.path().to_str().unwrap(),
        &["--fio", fio.to_str().unwrap(), "--timeout", "1s"],
    ));
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.matches("delivery failed, retrying").count() >= 1,
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(4), "{run:?}");
}
