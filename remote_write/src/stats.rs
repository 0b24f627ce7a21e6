//! Self-metrics of each endpoint, as plain data the embedding program can export.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the send-duration histogram buckets.
pub const SEND_DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why samples were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The receiver answered with a status that must not be retried (4xx other than 408/429,
    /// or any other non-2xx, non-retryable status).
    Http4xx,
    /// The queue was full; the oldest samples made room.
    QueueFull,
    /// The sample was not newer than the last one queued for its series.
    OutOfOrder,
    /// The label set was invalid (see [`crate::Client::push_labels`]).
    Invalid,
}

impl DropReason {
    /// Every reason, for exporting zero-valued counters.
    pub const ALL: [DropReason; 4] = [
        DropReason::Http4xx,
        DropReason::QueueFull,
        DropReason::OutOfOrder,
        DropReason::Invalid,
    ];

    /// The label value: `http_4xx`, `queue_full`, `out_of_order` or `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Http4xx => "http_4xx",
            DropReason::QueueFull => "queue_full",
            DropReason::OutOfOrder => "out_of_order",
            DropReason::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A counter or gauge of the buffer, shared with [`crate::buffer`].
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Live self-metrics of an endpoint's disk buffer (see [`BufferStats`]).
#[derive(Debug, Default)]
pub(crate) struct BufferCounters {
    pub(crate) bytes: Counter,
    pub(crate) records: Counter,
    pub(crate) samples: Counter,
    pub(crate) records_written: Counter,
    pub(crate) records_replayed: Counter,
    pub(crate) records_dropped: Counter,
    pub(crate) samples_dropped: Counter,
    pub(crate) records_corrupted: Counter,
    pub(crate) files_ignored: Counter,
    pub(crate) write_errors: Counter,
}

impl BufferCounters {
    fn snapshot(&self) -> BufferStats {
        BufferStats {
            bytes: self.bytes.get(),
            records: self.records.get(),
            samples: self.samples.get(),
            records_written: self.records_written.get(),
            records_replayed: self.records_replayed.get(),
            records_dropped: self.records_dropped.get(),
            samples_dropped: self.samples_dropped.get(),
            records_corrupted: self.records_corrupted.get(),
            files_ignored: self.files_ignored.get(),
            write_errors: self.write_errors.get(),
        }
    }
}

/// Self-metrics of an endpoint's on-disk buffer (all zero when it has none). A record is one
/// request body (one batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Bytes of the buffer's segment files (gauge; at most `buffer_max_bytes`).
    pub bytes: u64,
    /// Records waiting on disk (gauge).
    pub records: u64,
    /// Samples in the records waiting on disk (gauge).
    pub samples: u64,
    /// Records written to disk.
    pub records_written: u64,
    /// Records read back from disk and acknowledged by the endpoint (2xx, or a permanent 4xx
    /// counted as `http_4xx`).
    pub records_replayed: u64,
    /// Records deleted unsent because the buffer reached its size cap (oldest first).
    pub records_dropped: u64,
    /// Samples in those dropped records.
    pub samples_dropped: u64,
    /// Damaged spans skipped: records cut short by a crash, records failing their checksum,
    /// garbage between records. Their samples are lost.
    pub records_corrupted: u64,
    /// Files in the buffer directory that are not the buffer's (left alone) or are empty
    /// segments (deleted).
    pub files_ignored: u64,
    /// Batches that could not be written to disk (they stay in memory and are retried there).
    pub write_errors: u64,
}

/// Live counters of one endpoint (updated by the client, read through [`EndpointStats::snapshot`]).
#[derive(Debug)]
pub(crate) struct EndpointStats {
    url: String,
    samples_sent: AtomicU64,
    dropped: [AtomicU64; 4],
    samples_retried: AtomicU64,
    bytes_compressed: AtomicU64,
    bytes_raw: AtomicU64,
    pending: AtomicU64,
    last_success_ms: AtomicI64,
    requests: Mutex<BTreeMap<u16, u64>>,
    durations: Mutex<Histogram>,
    pub(crate) buffer: BufferCounters,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; SEND_DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl EndpointStats {
    pub(crate) fn new(url: &str) -> EndpointStats {
        EndpointStats {
            url: url.to_owned(),
            samples_sent: AtomicU64::new(0),
            dropped: Default::default(),
            samples_retried: AtomicU64::new(0),
            bytes_compressed: AtomicU64::new(0),
            bytes_raw: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            last_success_ms: AtomicI64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            durations: Mutex::new(Histogram::default()),
            buffer: BufferCounters::default(),
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, samples: u64) {
        self.dropped[reason.index()].fetch_add(samples, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self, samples: u64) {
        self.samples_retried.fetch_add(samples, Ordering::Relaxed);
    }

    pub(crate) fn set_pending(&self, samples: u64) {
        self.pending.store(samples, Ordering::Relaxed);
    }

    /// Records one request: `status` 0 means no HTTP response (connection error or timeout).
    pub(crate) fn request(&self, status: u16, duration: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
        let secs = duration.as_secs_f64();
        let mut h = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        h.count += 1;
        h.sum += secs;
        if let Some(i) = SEND_DURATION_BUCKETS.iter().position(|le| secs <= *le) {
            h.counts[i] += 1;
        }
    }

    pub(crate) fn delivered(&self, samples: u64, compressed: u64, raw: u64, now_ms: i64) {
        self.samples_sent.fetch_add(samples, Ordering::Relaxed);
        self.bytes_compressed
            .fetch_add(compressed, Ordering::Relaxed);
        self.bytes_raw.fetch_add(raw, Ordering::Relaxed);
        self.last_success_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EndpointStatsSnapshot {
        let h = self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut cumulative = 0;
        let buckets = SEND_DURATION_BUCKETS
            .iter()
            .zip(h.counts)
            .map(|(le, n)| {
                cumulative += n;
                (*le, cumulative)
            })
            .collect();
        let last = self.last_success_ms.load(Ordering::Relaxed);
        EndpointStatsSnapshot {
            url: self.url.clone(),
            samples_sent: self.samples_sent.load(Ordering::Relaxed),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (*r, self.dropped[r.index()].load(Ordering::Relaxed)))
                .collect(),
            samples_retried: self.samples_retried.load(Ordering::Relaxed),
            requests: self
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            bytes_sent_compressed: self.bytes_compressed.load(Ordering::Relaxed),
            bytes_sent_raw: self.bytes_raw.load(Ordering::Relaxed),
            pending_samples: self.pending.load(Ordering::Relaxed),
            last_success_timestamp_seconds: (last > 0).then(|| last as f64 / 1000.0),
            send_duration: DurationHistogram {
                buckets,
                count: h.count,
                sum_seconds: h.sum,
            },
            buffer: self.buffer.snapshot(),
        }
    }
}

/// A point-in-time copy of one endpoint's self-metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatsSnapshot {
    /// The endpoint URL (credentials are never part of it).
    pub url: String,
    /// Samples acknowledged with a 2xx.
    pub samples_sent: u64,
    /// Samples dropped, by reason (every reason present, zero included).
    pub dropped: BTreeMap<DropReason, u64>,
    /// Samples in requests that were retried (counted once per retry).
    pub samples_retried: u64,
    /// Requests by HTTP status; 0 means the request got no response (connection error, timeout).
    pub requests: BTreeMap<u16, u64>,
    /// Body bytes of successful requests (snappy-compressed).
    pub bytes_sent_compressed: u64,
    /// Protobuf bytes of successful requests before compression.
    pub bytes_sent_raw: u64,
    /// Samples queued or in flight in memory (those on disk are in [`BufferStats::samples`]).
    pub pending_samples: u64,
    /// When a request last succeeded (Unix seconds), if ever.
    pub last_success_timestamp_seconds: Option<f64>,
    /// Durations of requests (each attempt), successful or not.
    pub send_duration: DurationHistogram,
    /// The on-disk buffer (all zero without `buffer_dir`).
    pub buffer: BufferStats,
}

impl EndpointStatsSnapshot {
    /// Samples dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
}

/// A cumulative histogram of request durations.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationHistogram {
    /// `(upper bound in seconds, requests at or below it)`, cumulative, in bound order; the
    /// implicit `+Inf` bucket equals `count`.
    pub buckets: Vec<(f64, u64)>,
    /// All requests.
    pub count: u64,
    /// Sum of all durations, seconds.
    pub sum_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let s = EndpointStats::new("http://x");
        s.request(204, Duration::from_millis(3));
        s.request(500, Duration::from_millis(70));
        s.request(0, Duration::from_secs(100));
        let snap = s.snapshot();
        assert_eq!(snap.requests, BTreeMap::from([(0, 1), (204, 1), (500, 1)]));
        assert_eq!(snap.send_duration.count, 3);
        assert_eq!(snap.send_duration.buckets[0], (0.005, 1));
        assert_eq!(snap.send_duration.buckets[4], (0.1, 2));
        assert_eq!(
            snap.send_duration.buckets.last().unwrap().1,
            2,
            "100 s is only in +Inf"
        );
        assert!((snap.send_duration.sum_seconds - 100.073).abs() < 1e-9);
        assert_eq!(snap.last_success_timestamp_seconds, None);
        assert_eq!(snap.dropped.len(), 4);
    }
}
