//! The durable disk buffer against a local receiver: restarts, damage, the size cap.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use remote_write::buffer::segment::{self, Item};
use remote_write::{Client, ClientConfig, DropReason, Sample, Series};
use support::{Receiver, dead_url, fast_config};

const WAIT: Duration = Duration::from_secs(10);

fn series(name: &str) -> Series {
    Series::new(name, [("node", "n1"), ("storage_class", "sc")]).unwrap()
}

fn port_of(url: &str) -> u16 {
    url.split(':')
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap()
}

fn buffered_config(url: &str, dir: &Path) -> ClientConfig {
    let mut config = fast_config(&[url.to_owned()]);
    config.buffer_dir = Some(dir.to_owned());
    config.batch.max_samples = 10;
    config
}

/// The one endpoint subdirectory of a buffer directory.
fn endpoint_dir(root: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn dir_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Waits until the receiver accepted `n` samples (panics after 10 s), then a little longer
/// so that anything sent twice would show.
async fn wait_accepted(rx: &Receiver, n: usize) -> Vec<(String, f64, i64)> {
    let deadline = Instant::now() + WAIT;
    while rx.accepted_samples().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} samples arrived",
            rx.accepted_samples().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.accepted_samples()
}

/// Polls `done` until it holds (panics after 10 s).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn timestamps(got: &[(String, f64, i64)], name: &str) -> Vec<i64> {
    got.iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, t)| *t)
        .collect()
}

#[tokio::test]
async fn restart_delivers_every_sample_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let names = ["a", "b", "c"];

    // Client A pushes while the endpoint is down, partly while it is already failing.
    let a = Client::new(buffered_config(&url, dir.path())).unwrap();
    for i in 0..100 {
        for name in names {
            a.push(&series(name), Sample::new(i as f64, 1000 + i));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 100..200 {
        for name in names {
            a.push(&series(name), Sample::new(i as f64, 1000 + i));
        }
    }
    let report = a.shutdown(Duration::from_millis(200)).await;
    assert_eq!(report.undelivered(), 0, "{report:?}");
    assert_eq!(report.buffered_samples(), 600);
    assert!(!report.is_complete(), "buffered is not delivered");
    let stats = a.stats()[0].clone();
    assert_eq!(stats.samples_sent, 0);
    assert_eq!(stats.pending_samples, 0);
    assert_eq!(stats.buffer.samples, 600);
    assert_eq!(stats.buffer.records_written, 60, "batches of 10");
    drop(a);

    // Client B starts with the receiver up, replays, and sends its own newer samples after.
    let rx = Receiver::start_on(port_of(&url)).await;
    let b = Client::new(buffered_config(&url, dir.path())).unwrap();
    assert_eq!(
        b.stats()[0].buffer.samples,
        600,
        "indexed at start, before anything is sent"
    );
    for i in 200..220 {
        for name in names {
            b.push(&series(name), Sample::new(i as f64, 1000 + i));
        }
    }
    let got = wait_accepted(&rx, 660).await;
    assert_eq!(got.len(), 660, "nothing sent twice");
    for name in names {
        assert_eq!(
            timestamps(&got, name),
            (1000..1220).collect::<Vec<_>>(),
            "{name}: everything once, in order"
        );
    }
    let report = b.shutdown(WAIT).await;
    assert!(report.is_complete(), "{report:?}");
    let stats = &b.stats()[0];
    assert_eq!(stats.buffer.records_replayed, 60);
    assert_eq!((stats.buffer.records, stats.buffer.samples), (0, 0));
    assert_eq!(stats.buffer.records_corrupted, 0);
    assert_eq!(stats.samples_sent, 660);
    assert!(
        dir_bytes(&endpoint_dir(dir.path())) < 1024,
        "drained segments are deleted"
    );
}

#[tokio::test]
async fn flush_waits_for_batches_moved_to_disk_during_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let client = Client::new(buffered_config(&url, dir.path())).unwrap();
    for i in 0..50 {
        client.push(&series("a"), Sample::new(i as f64, 1000 + i));
    }
    let flush = tokio::spawn({
        let client = client.clone();
        async move { client.flush().await }
    });
    wait_until(
        "everything is moved from memory to disk while failing",
        || {
            let stats = &client.stats()[0];
            stats.buffer.samples == 50 && stats.pending_samples == 0
        },
    )
    .await;
    assert!(!flush.is_finished(), "on disk is not delivered");

    let rx = Receiver::start_on(port_of(&url)).await;
    tokio::time::timeout(WAIT, flush).await.unwrap().unwrap();
    assert_eq!(
        timestamps(&rx.accepted_samples(), "a"),
        (1000..1050).collect::<Vec<_>>()
    );
    assert_eq!(client.stats()[0].buffer.records, 0);
}

/// `settle` returns once what was pushed left memory: on disk during an outage (where `flush`
/// still waits), delivered when the endpoint is up; never while a sample is only in memory.
#[tokio::test]
async fn settle_returns_once_pushed_samples_are_on_disk_or_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let client = Client::new(buffered_config(&url, dir.path())).unwrap();
    for i in 0..50 {
        client.push(&series("a"), Sample::new(i as f64, 1000 + i));
    }
    tokio::time::timeout(WAIT, client.settle())
        .await
        .expect("settled on disk while the endpoint is down");
    let stats = &client.stats()[0];
    assert_eq!((stats.buffer.samples, stats.pending_samples), (50, 0));

    let rx = Receiver::start_on(port_of(&url)).await;
    client.push(&series("a"), Sample::new(50.0, 1050));
    tokio::time::timeout(WAIT, client.settle())
        .await
        .expect("settled once delivered or stored");
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    assert_eq!(
        timestamps(&rx.accepted_samples(), "a"),
        (1000..1051).collect::<Vec<_>>()
    );
}

/// Without a disk buffer, `settle` means delivered: it waits while the endpoint is down.
#[tokio::test]
async fn without_a_buffer_settle_waits_for_delivery() {
    let url = dead_url();
    let client = Client::new(fast_config(std::slice::from_ref(&url))).unwrap();
    client.push(&series("a"), Sample::new(1.0, 1000));
    let settle = tokio::spawn({
        let client = client.clone();
        async move { client.settle().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!settle.is_finished(), "only in memory: not settled");
    let rx = Receiver::start_on(port_of(&url)).await;
    tokio::time::timeout(WAIT, settle).await.unwrap().unwrap();
    assert_eq!(timestamps(&rx.accepted_samples(), "a"), [1000]);
}

#[tokio::test]
async fn damaged_buffer_replays_the_rest_and_counts_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let a = Client::new(buffered_config(&url, dir.path())).unwrap();
    for i in 0..60 {
        a.push(&series("a"), Sample::new(i as f64, 1000 + i));
    }
    let report = a.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.buffered_samples(), 60);
    drop(a);

    // Records 0..6 of 10 samples each: flip a byte inside record 2, cut record 5 short
    // (a crash mid-write), add an empty segment and a foreign file.
    let endpoint = endpoint_dir(dir.path());
    let files = segment_files(&endpoint);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let records: Vec<(usize, usize)> = segment::Reader::new(&bytes)
        .map(|item| match item {
            Item::Record { offset, .. } => (offset, item.end()),
            Item::Damaged { .. } => panic!("a clean segment"),
        })
        .collect();
    assert_eq!(records.len(), 6);
    let (start, end) = records[2];
    bytes[(start + end) / 2] ^= 0x5a;
    bytes.truncate(records[5].0 + (records[5].1 - records[5].0) / 2);
    std::fs::write(&files[0], &bytes).unwrap();
    std::fs::write(endpoint.join("00000000000000000007.seg"), b"").unwrap();
    std::fs::write(endpoint.join("README"), b"someone else's file").unwrap();

    let rx = Receiver::start_on(port_of(&url)).await;
    let b = Client::new(buffered_config(&url, dir.path())).unwrap();
    let got = wait_accepted(&rx, 40).await;
    let want: Vec<i64> = (1000..1020).chain(1030..1050).collect();
    assert_eq!(timestamps(&got, "a"), want, "records 2 and 5 are lost");
    wait_until("the buffer is drained", || b.stats()[0].buffer.records == 0).await;
    let stats = &b.stats()[0].buffer;
    assert_eq!(stats.records_corrupted, 2);
    assert_eq!(stats.files_ignored, 2);
    assert_eq!(stats.records_replayed, 4);

    // The sender is not stuck: new samples go through.
    b.push(&series("a"), Sample::new(0.0, 5000));
    tokio::time::timeout(WAIT, b.flush()).await.unwrap();
    assert_eq!(rx.accepted_samples().last().unwrap().2, 5000);
    assert!(endpoint.join("README").exists());
}

#[tokio::test]
async fn the_cap_bounds_disk_and_memory_during_a_long_outage() {
    const CAP: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let mut config = buffered_config(&url, dir.path());
    config.buffer_max_bytes = CAP;
    config.buffer_segment_bytes = 8 * 1024;
    config.queue_capacity = 2000;
    config.batch.max_samples = 200;
    let client = Client::new(config).unwrap();
    let endpoint = endpoint_dir(dir.path());
    let names: Vec<Series> = (0..20).map(|i| series(&format!("m{i}"))).collect();
    let mut pushed = 0u64;
    let mut rng = fastrand::Rng::with_seed(1);
    for round in 0..40 {
        for s in &names {
            for k in 0..50 {
                // Random values compress badly, so the buffer fills up.
                client.push(s, Sample::new(rng.f64(), round * 1000 + k));
                pushed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        let stats = &client.stats()[0];
        assert!(
            dir_bytes(&endpoint) <= CAP,
            "{} bytes",
            dir_bytes(&endpoint)
        );
        assert!(stats.buffer.bytes <= CAP);
        assert!(
            stats.pending_samples <= 2000 + 200,
            "memory bounded by the queue and one batch: {}",
            stats.pending_samples
        );
    }
    let report = client.shutdown(Duration::from_millis(100)).await;
    let stats = &client.stats()[0];
    assert!(dir_bytes(&endpoint) <= CAP);
    assert!(
        stats.buffer.records_dropped > 0 && stats.buffer.samples_dropped > 0,
        "{stats:?}"
    );
    assert_eq!(stats.samples_sent, 0);
    assert_eq!(
        stats.buffer.samples_dropped
            + report.buffered_samples()
            + stats.dropped(DropReason::QueueFull)
            + report.undelivered(),
        pushed,
        "every sample is accounted for: {stats:?} {report:?}"
    );
    assert_eq!(report.buffered_samples(), stats.buffer.samples);
}

#[tokio::test]
async fn a_directory_in_use_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let a = Client::new(buffered_config(&url, dir.path())).unwrap();
    let err = Client::new(buffered_config(&url, dir.path())).unwrap_err();
    assert!(
        matches!(err, remote_write::ConfigError::Buffer { .. }),
        "{err}"
    );
    a.shutdown(Duration::from_millis(50)).await;
    drop(a);
    let mut config = buffered_config(&url, dir.path());
    config.buffer_max_bytes = 1024;
    assert!(matches!(
        Client::new(config),
        Err(remote_write::ConfigError::OutOfRange(_))
    ));
    Client::new(buffered_config(&url, dir.path())).expect("free once the first shut down");
}

#[tokio::test]
async fn a_buffer_that_cannot_be_written_keeps_batches_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let client = Client::new(buffered_config(&url, dir.path())).unwrap();
    // The directory disappears under the client: creating a segment fails.
    std::fs::remove_dir_all(endpoint_dir(dir.path())).unwrap();
    for i in 0..30 {
        client.push(&series("a"), Sample::new(i as f64, 1000 + i));
    }
    wait_until("a write fails", || {
        client.stats()[0].buffer.write_errors >= 1
    })
    .await;
    let stats = client.stats()[0].clone();
    assert_eq!(stats.buffer.records_written, 0);
    assert_eq!(stats.pending_samples, 30, "still in memory");

    let rx = Receiver::start_on(port_of(&url)).await;
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    assert_eq!(
        timestamps(&rx.accepted_samples(), "a"),
        (1000..1030).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn replayed_records_are_retried_on_5xx_and_dropped_on_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let a = Client::new(buffered_config(&url, dir.path())).unwrap();
    for i in 0..30 {
        a.push(&series("a"), Sample::new(i as f64, 1000 + i));
    }
    assert_eq!(
        a.shutdown(Duration::from_millis(100))
            .await
            .buffered_samples(),
        30
    );
    drop(a);

    let rx = Receiver::start_on(port_of(&url)).await;
    rx.script([
        support::Answer::status(503),
        support::Answer::status(400).with_body("bad"),
    ]);
    let b = Client::new(buffered_config(&url, dir.path())).unwrap();
    let got = wait_accepted(&rx, 20).await;
    assert_eq!(
        timestamps(&got, "a"),
        (1010..1030).collect::<Vec<_>>(),
        "the first record was rejected for good"
    );
    let statuses: Vec<u16> = rx.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 400, 204, 204], "nothing resent");
    wait_until("the buffer is drained", || b.stats()[0].buffer.records == 0).await;
    let stats = &b.stats()[0];
    assert_eq!(stats.dropped(DropReason::Http4xx), 10);
    assert_eq!(stats.samples_retried, 10);
    assert_eq!(stats.buffer.records_replayed, 3);
    assert_eq!(stats.buffer.records, 0);
}
