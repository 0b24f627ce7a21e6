//! The client against a local HTTP receiver: headers, retries, drops, ordering, fan-out, shutdown.

mod support;

use std::time::{Duration, Instant};

use remote_write::{Auth, Client, DropReason, Sample, Series, stale_nan};
use support::{Answer, Receiver, dead_url, fast_config};

fn series(name: &str) -> Series {
    Series::new(name, [("node", "n1"), ("storage_class", "sc")]).unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

/// The port of `http://127.0.0.1:PORT/...`.
fn port_of(url: &str) -> u16 {
    let (_, rest) = url.rsplit_once(':').unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn sends_exact_protocol_headers_and_rotated_bearer_tokens() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let mut config = fast_config(&[rx.url()]);
    config.user_agent = "pie-test/1.2.3".into();
    config.endpoints[0].auth = Auth::BearerTokenFile(token.clone());
    config.endpoints[0].headers = vec![("X-Scope-OrgID".into(), "tenant-1".into())];
    let client = Client::new(config).unwrap();

    client.push(&series("a"), Sample::new(1.0, 1000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    std::fs::write(&token, "second-token").unwrap();
    client.push(&series("a"), Sample::new(2.0, 2000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();

    let requests = rx.requests();
    assert_eq!(requests.len(), 2);
    let h = &requests[0].headers;
    assert_eq!(h["content-encoding"], "snappy");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(h["user-agent"], "pie-test/1.2.3");
    assert_eq!(h["x-scope-orgid"], "tenant-1");
    assert_eq!(h["authorization"], "Bearer first-token");
    assert_eq!(
        requests[1].headers["authorization"], "Bearer second-token",
        "token file re-read"
    );
    client.shutdown(WAIT).await;
}

#[tokio::test]
async fn basic_auth_reads_the_password_file() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let mut config = fast_config(&[rx.url()]);
    config.endpoints[0].auth = Auth::Basic {
        username: "pie".into(),
        password_file: password,
    };
    let client = Client::new(config).unwrap();
    client.push(&series("a"), Sample::new(1.0, 1000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    // base64("pie:s3cret")
    assert_eq!(
        rx.requests()[0].headers["authorization"],
        "Basic cGllOnMzY3JldA=="
    );
}

#[tokio::test]
async fn server_error_then_success_delivers_exactly_once() {
    let rx = Receiver::start().await;
    rx.script([Answer::status(500).with_body("boom")]);
    let client = Client::new(fast_config(&[rx.url()])).unwrap();
    client.push(&series("a"), Sample::new(42.0, 1000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let requests = rx.requests();
    assert_eq!(requests.len(), 2, "one failure, one success, nothing after");
    assert_eq!(requests[0].status, 500);
    assert_eq!(requests[1].status, 204);
    assert_eq!(rx.accepted_samples(), vec![("a".to_string(), 42.0, 1000)]);
    let stats = &client.stats()[0];
    assert_eq!(stats.samples_sent, 1);
    assert_eq!(stats.samples_retried, 1);
    assert_eq!(stats.requests.get(&500), Some(&1));
    assert_eq!(stats.requests.get(&204), Some(&1));
    assert_eq!(stats.pending_samples, 0);
    assert!(stats.last_success_timestamp_seconds.is_some());
    assert!(stats.bytes_sent_compressed > 0 && stats.bytes_sent_raw > 0);
}

#[tokio::test]
async fn bad_request_drops_the_batch_and_never_resends_it() {
    let rx = Receiver::start().await;
    rx.script([Answer::status(400).with_body("out of bounds")]);
    let client = Client::new(fast_config(&[rx.url()])).unwrap();
    client.push(&series("a"), Sample::new(1.0, 1000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.requests().len(), 1, "a 400 is not retried");
    let stats = &client.stats()[0];
    assert_eq!(stats.dropped(DropReason::Http4xx), 1);
    assert_eq!(stats.samples_sent, 0);
    assert_eq!(stats.samples_retried, 0);

    // The next sample goes through normally.
    client.push(&series("a"), Sample::new(2.0, 2000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    assert_eq!(rx.accepted_samples(), vec![("a".to_string(), 2.0, 2000)]);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let rx = Receiver::start().await;
    rx.script([Answer::status(429).with_header("retry-after", "2")]);
    let client = Client::new(fast_config(&[rx.url()])).unwrap();
    client.push(&series("a"), Sample::new(1.0, 1000));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    let requests = rx.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
    assert_eq!(rx.accepted_samples().len(), 1);
}

#[tokio::test]
async fn connection_refused_then_server_up_delivers_everything() {
    let url = dead_url();
    let port = port_of(&url);
    let client = Client::new(fast_config(&[url])).unwrap();
    let s = series("a");
    for i in 0..50 {
        client.push(&s, Sample::new(i as f64, 1000 + i));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = client.stats()[0].clone();
    assert_eq!(before.samples_sent, 0);
    assert!(
        before.requests.get(&0).copied().unwrap_or(0) >= 1,
        "connection errors counted as status 0"
    );
    assert_eq!(before.pending_samples, 50);

    let rx = Receiver::start_on(port).await;
    for i in 50..100 {
        client.push(&s, Sample::new(i as f64, 1000 + i));
    }
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    let got = rx.accepted_samples();
    let want: Vec<_> = (0..100)
        .map(|i| ("a".to_string(), i as f64, 1000 + i))
        .collect();
    assert_eq!(got, want, "everything, once, in order");
}

#[tokio::test]
async fn one_endpoint_down_does_not_stall_the_other() {
    let rx = Receiver::start().await;
    let down = dead_url();
    let client = Client::new(fast_config(&[down.clone(), rx.url()])).unwrap();
    let s = series("a");
    for i in 0..10 {
        client.push(&s, Sample::new(i as f64, 1000 + i));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait on the client's own stats: the receiver records a request before its 2xx answer
    // reaches the client, and the batch leaves `pending_samples` only after `samples_sent`
    // counts it, so the receiver's log can be ahead of both.
    // Generous: a loaded CI machine can stall the runtime for seconds.
    let patience = 3 * WAIT;
    let deadline = Instant::now() + patience;
    while client.stats()[1].samples_sent < 10 || client.stats()[1].pending_samples > 0 {
        assert!(
            Instant::now() < deadline,
            "the healthy endpoint's stats after {patience:?}: {:?}; the receiver got {:?}",
            client.stats()[1],
            rx.accepted_samples()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rx.accepted_samples().len(), 10, "each sample exactly once");
    let stats = client.stats();
    assert_eq!(stats[0].samples_sent, 0);
    assert_eq!(stats[0].pending_samples, 10);
    assert_eq!(stats[1].samples_sent, 10);
    assert_eq!(stats[1].pending_samples, 0);
    let report = client.shutdown(Duration::from_millis(300)).await;
    assert_eq!(report.endpoints, vec![(down, 10), (rx.url(), 0)]);
    assert_eq!(report.undelivered(), 10);
}

#[tokio::test]
async fn order_is_kept_per_series_across_retries() {
    let rx = Receiver::start().await;
    rx.script((0..5).map(|_| Answer::status(503)));
    let mut config = fast_config(&[rx.url()]);
    config.batch.max_samples = 7;
    let client = Client::new(config).unwrap();
    let names = ["a", "b", "c"];
    for i in 0..60 {
        for name in names {
            client.push(&series(name), Sample::new(i as f64, 10_000 + i));
        }
        // Out-of-order and duplicate timestamps are refused at the door.
        client.push(&series("a"), Sample::new(-1.0, 10_000 + i));
        client.push(&series("b"), Sample::new(-1.0, 9_000));
    }
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    let got = rx.accepted_samples();
    assert_eq!(got.len(), 180);
    for name in names {
        let ts: Vec<i64> = got
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, t)| *t)
            .collect();
        assert_eq!(ts, (10_000..10_060).collect::<Vec<_>>(), "{name}");
    }
    assert!(rx.requests().iter().all(|r| {
        r.body
            .timeseries
            .iter()
            .map(|t| t.samples.len())
            .sum::<usize>()
            <= 7
    }));
    let stats = &client.stats()[0];
    assert_eq!(stats.dropped(DropReason::OutOfOrder), 120);
    assert_eq!(stats.samples_sent, 180);
}

#[tokio::test]
async fn full_queue_during_an_outage_drops_oldest_and_counts() {
    let url = dead_url();
    let mut config = fast_config(&[url]);
    config.queue_capacity = 100;
    config.batch.max_samples = 10;
    let client = Client::new(config).unwrap();
    let s = series("a");
    for i in 0..1000 {
        client.push(&s, Sample::new(0.0, i));
    }
    let stats = &client.stats()[0];
    // At most one batch is in flight besides the full queue.
    assert!(
        stats.pending_samples <= 110,
        "pending {}",
        stats.pending_samples
    );
    assert!(stats.dropped(DropReason::QueueFull) >= 890);
    assert_eq!(
        stats.dropped(DropReason::QueueFull) + stats.pending_samples,
        1000
    );
    let report = client.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.undelivered(), stats.pending_samples);
}

#[tokio::test]
async fn stale_marker_goes_out_once_with_the_exact_bits() {
    let rx = Receiver::start().await;
    let client = Client::new(fast_config(&[rx.url()])).unwrap();
    let s = series("gone");
    client.push(&s, Sample::new(1.0, 1000));
    client.mark_stale(&s, 2000);
    client.mark_stale(&s, 3000);
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    let got = rx.accepted_samples();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].1.to_bits(), 0x7ff0_0000_0000_0002);
    assert_eq!(got[1].2, 2000);
    assert_ne!(stale_nan().to_bits(), f64::NAN.to_bits());
}

#[tokio::test]
async fn invalid_labels_are_refused_and_counted() {
    let rx = Receiver::start().await;
    let client = Client::new(fast_config(&[rx.url()])).unwrap();
    let err = client
        .push_labels([("__name__", "ok"), ("bad-name", "x")], Sample::new(1.0, 1))
        .unwrap_err();
    assert!(err.to_string().contains("bad-name"));
    assert!(
        client
            .push_labels([("job", "x")], Sample::new(1.0, 1))
            .is_err()
    );
    client
        .push_labels([("__name__", "ok")], Sample::new(1.0, 1))
        .unwrap();
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    assert_eq!(rx.accepted_samples(), vec![("ok".to_string(), 1.0, 1)]);
    assert_eq!(client.stats()[0].dropped(DropReason::Invalid), 2);
}

#[tokio::test]
async fn external_labels_are_added_and_series_labels_win() {
    let rx = Receiver::start().await;
    let mut config = fast_config(&[rx.url()]);
    config.external_labels = vec![
        ("cluster".into(), "prod-a".into()),
        ("node".into(), "ext".into()),
    ];
    let client = Client::new(config).unwrap();
    client.push(&series("a"), Sample::new(1.0, 1));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    let labels: Vec<(String, String)> = rx.requests()[0].body.timeseries[0]
        .labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("__name__", "a"),
        ("cluster", "prod-a"),
        ("node", "n1"),
        ("storage_class", "sc"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(labels, want);
}

#[tokio::test]
async fn batches_wait_for_the_flush_interval_unless_immediate() {
    let rx = Receiver::start().await;
    let mut config = fast_config(&[rx.url()]);
    config.batch.flush_interval = Duration::from_secs(3600);
    let client = Client::new(config.clone()).unwrap();
    // The first tick fires at start; let it pass.
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.push(&series("a"), Sample::new(1.0, 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.requests().is_empty(),
        "a partial batch waits for the interval"
    );

    let rx2 = Receiver::start().await;
    config.endpoints[0].url = rx2.url();
    config.batch.immediate = true;
    let immediate = Client::new(config).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pushed = Instant::now();
    immediate.push(&series("a"), Sample::new(1.0, 1));
    let requests = rx2.wait_requests(1).await;
    assert!(requests[0].at - pushed < Duration::from_secs(1));
}

#[tokio::test]
async fn a_full_batch_is_sent_without_waiting_for_the_interval() {
    let rx = Receiver::start().await;
    let mut config = fast_config(&[rx.url()]);
    config.batch.flush_interval = Duration::from_secs(3600);
    config.batch.max_samples = 5;
    let client = Client::new(config).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = series("a");
    for i in 0..5 {
        client.push(&a, Sample::new(0.0, i));
    }
    let requests = rx.wait_requests(1).await;
    assert_eq!(requests[0].body.timeseries[0].samples.len(), 5);
}

#[tokio::test]
async fn shutdown_retries_soon_an_endpoint_in_a_long_backoff() {
    // An endpoint down long enough for the retry delay to reach its 30 s ceiling comes back one
    // second into a 5 s shutdown window: the queued samples must reach it within the window,
    // not wait for a retry scheduled after it.
    let url = dead_url();
    let port = port_of(&url);
    let mut config = fast_config(&[url]);
    config.retry.min_delay = Duration::from_secs(30);
    config.retry.max_delay = Duration::from_secs(30);
    let client = Client::new(config).unwrap();
    client.push(&series("a"), Sample::new(1.0, 1000));
    // The first attempt fails at once; the next is up to 30 s away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.stats()[0].samples_sent, 0);
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Receiver::start_on(port).await
    });
    let started = Instant::now();
    let report = client.shutdown(Duration::from_secs(5)).await;
    let rx = back.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(rx.accepted_samples(), [("a".to_string(), 1.0, 1000)]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued() {
    let rx = Receiver::start().await;
    let mut config = fast_config(&[rx.url()]);
    config.batch.flush_interval = Duration::from_secs(3600);
    config.batch.max_samples = 100;
    let client = Client::new(config).unwrap();
    for i in 0..250 {
        client.push(&series("a"), Sample::new(0.0, i));
    }
    let report = client.shutdown(WAIT).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(rx.accepted_samples().len(), 250);
    assert!(
        client.shutdown(WAIT).await.endpoints.is_empty(),
        "second call reports nothing"
    );
}

#[tokio::test]
async fn config_errors_are_reported() {
    use remote_write::{ClientConfig, ConfigError};
    assert!(matches!(
        Client::new(ClientConfig::default()),
        Err(ConfigError::NoEndpoints)
    ));
    let mut c = fast_config(&["http://127.0.0.1:1/api/v1/write".into()]);
    c.batch.max_samples = 0;
    assert!(matches!(Client::new(c), Err(ConfigError::OutOfRange(_))));
    let mut c = fast_config(&["http://127.0.0.1:1/api/v1/write".into()]);
    c.batch.max_bytes = 64 * 1024 * 1024;
    assert!(matches!(Client::new(c), Err(ConfigError::OutOfRange(_))));
    let mut c = fast_config(&["http://127.0.0.1:1/api/v1/write".into()]);
    c.external_labels = vec![("bad-name".into(), "x".into())];
    assert!(matches!(Client::new(c), Err(ConfigError::ExternalLabel(_))));
    let mut c = fast_config(&["http://127.0.0.1:1/api/v1/write".into()]);
    c.retry.min_delay = Duration::from_secs(60);
    assert!(matches!(Client::new(c), Err(ConfigError::OutOfRange(_))));
}
