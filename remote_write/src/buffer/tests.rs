use super::*;
use crate::series::ExternalLabels;

const URL: &str = "http://vm:8428/api/v1/write";

struct Fixture {
    dir: tempfile::TempDir,
    stats: Arc<EndpointStats>,
    queue: Arc<Queue>,
}

impl Fixture {
    fn new() -> Fixture {
        let stats = Arc::new(EndpointStats::new(URL));
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            queue: Arc::new(Queue::new(
                1000,
                10,
                ExternalLabels::default(),
                stats.clone(),
            )),
            stats,
        }
    }

    fn settings(&self, max_bytes: u64, segment_bytes: u64) -> Settings {
        Settings {
            dir: self.dir.path().join(endpoint_dir_name(URL)),
            max_bytes,
            segment_bytes,
            fsync: Fsync::EveryBatch,
        }
    }

    fn open_with(&self, max_bytes: u64, segment_bytes: u64) -> io::Result<Buffer> {
        Buffer::open(
            self.settings(max_bytes, segment_bytes),
            URL,
            self.stats.clone(),
            self.queue.clone(),
        )
    }

    fn open(&self) -> Buffer {
        self.open_with(1 << 20, 4096).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(endpoint_dir_name(URL)).join(name)
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.path(""))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }
}

fn body(i: u32) -> Vec<u8> {
    format!("request body number {i:04}").into_bytes()
}

/// Reads and acknowledges everything: `(samples, body)` in order.
fn drain(b: &mut Buffer) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(r) = b.peek() {
        out.push((r.samples, r.body.to_vec()));
        b.ack(r.pos).unwrap();
    }
    out
}

#[test]
fn records_survive_a_restart_in_order_and_acks_persist() {
    let f = Fixture::new();
    let mut b = f.open();
    for i in 0..10 {
        assert_eq!(b.append(&body(i), i + 1, None).unwrap(), Appended::Stored);
    }
    // Deliver two, then "crash" (drop without anything else).
    for _ in 0..2 {
        let r = b.peek().unwrap();
        b.ack(r.pos).unwrap();
    }
    drop(b);
    let mut b = f.open();
    assert_eq!(b.samples(), (3..=10).sum::<u32>() as u64);
    let got = drain(&mut b);
    let want: Vec<_> = (2..10).map(|i| (i + 1, body(i))).collect();
    assert_eq!(got, want, "the acknowledged two are not replayed");
    assert!(b.peek().is_none());
    drop(b);
    let mut b = f.open();
    assert!(
        b.peek().is_none(),
        "everything acknowledged stays acknowledged"
    );
    let s = f.stats.snapshot().buffer;
    assert_eq!(s.records_written, 10);
    assert_eq!(s.records_replayed, 10);
    assert_eq!(s.records_corrupted, 0);
    assert_eq!((s.records, s.samples), (0, 0));
}

#[test]
fn segment_ids_stay_above_the_acknowledged_one_across_restarts() {
    let f = Fixture::new();
    let mut b = f.open();
    b.append(b"delivered", 1, None).unwrap();
    let r = b.peek().unwrap();
    b.ack(r.pos).unwrap();
    drop(b);
    drop(f.open()); // deletes the fully acknowledged segment
    assert!(f.segments().is_empty());
    let mut b = f.open();
    b.append(b"pending", 1, None).unwrap();
    drop(b);
    let mut b = f.open();
    assert_eq!(
        drain(&mut b),
        vec![(1, b"pending".to_vec())],
        "not mistaken for acknowledged"
    );
}

#[test]
fn segments_rotate_and_drained_ones_are_deleted() {
    let f = Fixture::new();
    let mut b = f.open_with(1 << 20, 4096).unwrap();
    let big = vec![7u8; 1500];
    for _ in 0..9 {
        b.append(&big, 1, None).unwrap();
    }
    assert_eq!(
        f.segments().len(),
        3,
        "three records of ~1.5 KiB per 4 KiB segment"
    );
    for _ in 0..4 {
        let r = b.peek().unwrap();
        b.ack(r.pos).unwrap();
    }
    assert_eq!(f.segments().len(), 2, "the first segment is gone");
    drain(&mut b);
    assert_eq!(
        f.segments().len(),
        1,
        "the segment being appended to is kept"
    );
    assert_eq!(f.stats.snapshot().buffer.records, 0);
}

#[test]
fn the_cap_drops_whole_oldest_segments_and_counts() {
    let f = Fixture::new();
    let mut b = f.open_with(16 * 1024, 4096).unwrap();
    let big = vec![1u8; 1000];
    for i in 0..100u32 {
        b.append(&big, i, None).unwrap();
        let s = f.stats.snapshot().buffer;
        assert!(s.bytes <= 16 * 1024, "{} bytes", s.bytes);
        let on_disk: u64 = f
            .segments()
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, s.bytes);
    }
    let s = f.stats.snapshot().buffer;
    assert_eq!(s.records_written, 100);
    assert_eq!(s.records_dropped + s.records, 100);
    assert!(s.records_dropped > 80);
    let left = drain(&mut b);
    assert_eq!(left.len() as u64, s.records);
    // The newest survive, in order.
    let samples: Vec<u32> = left.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        samples,
        ((100 - left.len() as u32)..100).collect::<Vec<_>>()
    );
    assert_eq!(
        b.append(&vec![0u8; 20_000], 5, None).unwrap(),
        Appended::TooLarge
    );
    assert_eq!(f.stats.snapshot().buffer.samples_dropped, {
        let dropped: u64 = (0..(100 - left.len() as u64)).sum();
        dropped + 5
    });
}

#[test]
fn damage_found_at_start_is_skipped_and_counted() {
    let f = Fixture::new();
    let mut b = f.open();
    for i in 0..6 {
        b.append(&body(i), 1, None).unwrap();
    }
    drop(b);
    let seg = f.segments().pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let record = segment::HEADER_LEN + body(0).len();
    // A flipped byte in record 2's payload, and record 5 cut short (a crash mid-write).
    bytes[2 * record + segment::HEADER_LEN + 3] ^= 0xff;
    bytes.truncate(5 * record + 7);
    fs::write(&seg, &bytes).unwrap();
    fs::write(f.path("00000000000000000099.seg"), b"").unwrap();
    fs::write(f.path("notes.txt"), b"not ours").unwrap();

    let mut b = f.open();
    let got: Vec<Vec<u8>> = drain(&mut b).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, vec![body(0), body(1), body(3), body(4)]);
    let s = f.stats.snapshot().buffer;
    assert_eq!(s.records_corrupted, 2);
    assert_eq!(s.files_ignored, 2);
    assert!(f.path("notes.txt").exists(), "foreign files are left alone");
    assert!(!f.path("00000000000000000099.seg").exists());
    // New segments are numbered after every segment seen, the empty one included.
    b.append(b"new", 1, None).unwrap();
    assert!(f.path("00000000000000000100.seg").exists());
}

#[test]
fn a_record_damaged_after_indexing_is_skipped_when_read() {
    let f = Fixture::new();
    let mut b = f.open();
    for i in 0..3 {
        b.append(&body(i), 1, None).unwrap();
    }
    let seg = f.segments().pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[segment::HEADER_LEN + 1] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let got: Vec<Vec<u8>> = drain(&mut b).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, vec![body(1), body(2)]);
    assert_eq!(f.stats.snapshot().buffer.records_corrupted, 1);
}

#[test]
fn a_damaged_ack_file_replays_everything() {
    let f = Fixture::new();
    let mut b = f.open();
    for i in 0..3 {
        b.append(&body(i), 1, None).unwrap();
    }
    let r = b.peek().unwrap();
    b.ack(r.pos).unwrap();
    drop(b);
    fs::write(f.path(ACK), b"garbage").unwrap();
    let mut b = f.open();
    assert_eq!(drain(&mut b).len(), 3, "resent rather than lost");
}

#[test]
fn one_client_per_directory_and_url() {
    let f = Fixture::new();
    let b = f.open();
    let err = f.open_with(1 << 20, 4096).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    drop(b);
    f.open_with(1 << 20, 4096).expect("free again once closed");
    let other = Buffer::open(
        f.settings(1 << 20, 4096),
        "http://other/api/v1/write",
        f.stats.clone(),
        f.queue.clone(),
    )
    .unwrap_err();
    assert!(other.to_string().contains(URL), "{other}");
    assert_ne!(endpoint_dir_name(URL), endpoint_dir_name("http://other"));
    assert_eq!(endpoint_dir_name(URL), endpoint_dir_name(URL), "stable");
    assert_eq!(endpoint_dir_name("").len(), 16);
}

#[tokio::test]
async fn records_from_the_queue_are_done_only_when_they_leave_the_buffer() {
    let f = Fixture::new();
    let mut b = f.open();
    let series = crate::Series::new("m", [("a", "b")]).unwrap();
    for i in 0..4 {
        f.queue.push(&series, crate::Sample::new(0.0, i));
    }
    let target = f.queue.request_flush();
    let batch = f.queue.take_batch(2, usize::MAX).unwrap();
    b.append(b"first two", 2, Some(batch.end_seq)).unwrap();
    f.queue.inflight_to_disk();
    let batch = f.queue.take_batch(2, usize::MAX).unwrap();
    b.append(b"last two", 2, Some(batch.end_seq)).unwrap();
    f.queue.inflight_to_disk();
    assert_eq!(
        f.stats.snapshot().pending_samples,
        0,
        "nothing left in memory"
    );

    let waiter = tokio::spawn({
        let q = f.queue.clone();
        async move { q.wait_done(target).await }
    });
    let r = b.peek().unwrap();
    b.ack(r.pos).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "half of it is still on disk");
    let r = b.peek().unwrap();
    b.ack(r.pos).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
        .await
        .expect("done once everything is delivered")
        .unwrap();
}

#[test]
fn without_fsync_records_still_survive_a_restart_of_the_process() {
    let f = Fixture::new();
    let settings = Settings {
        fsync: Fsync::Never,
        ..f.settings(1 << 20, 4096)
    };
    let open = || Buffer::open(settings.clone(), URL, f.stats.clone(), f.queue.clone());
    let mut b = open().unwrap();
    b.append(b"one", 1, None).unwrap();
    b.append(b"two", 2, None).unwrap();
    let r = b.peek().unwrap();
    b.ack(r.pos).unwrap();
    drop(b);
    let mut b = open().unwrap();
    assert_eq!(drain(&mut b), vec![(2, b"two".to_vec())]);
}
