//! The bounded per-endpoint queue that also keeps every series' samples in timestamp order.
//!
//! One sender task drains a queue, one request at a time, and retries a request until it
//! succeeds or is dropped before taking the next. So the order samples leave the queue is the
//! order they reach the receiver, and checking order when a sample is queued is enough to keep
//! each series strictly increasing across requests, retries and restarts of the sender.
//!
//! Queued samples name their series by a slot number in a table of label bytes rather than
//! holding a reference-counted pointer: pushing touches only the series map and the end of
//! the queue, and encoding a batch reads the label bytes through the table without touching
//! any reference count (an atomic instruction per sample would make the CPU wait for each
//! sample's cache misses in turn). The table has its own lock, taken for writing only when a
//! series gets or gives up a slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{Notify, watch};

use crate::encode::{EncodedRequest, RequestEncoder, estimated_len, labels_len};
use crate::series::{ExternalLabels, Sample, Series, SeriesMap, WireLabels};
use crate::stats::{DropReason, EndpointStats};

/// The most samples [`Queue::push_many`] queues under one lock, so that the sender never
/// waits long to take a batch.
const PUSH_CHUNK: usize = 256;

/// What the queue remembers per series.
#[derive(Debug, Clone, Copy)]
struct SeriesState {
    /// The newest timestamp queued for the series.
    last_ms: i64,
    /// The series' slot in [`Queue::labels`].
    slot: u32,
    /// Whether the newest sample queued was a staleness marker.
    stale: bool,
}

/// A queued sample and its series' slot in [`Queue::labels`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    slot: u32,
    pub(crate) sample: Sample,
}

#[derive(Debug, Default)]
struct State {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`; numbers count every sample ever queued.
    head_seq: u64,
    /// First sequence number and length of the batch being sent.
    inflight: Option<(u64, usize)>,
    /// Sequence numbers `[first, end)` of samples moved to the disk buffer and not yet
    /// delivered or dropped from there (the buffer keeps them in order).
    disk: Option<(u64, u64)>,
    series: SeriesMap<SeriesState>,
    /// Slots free for new series.
    free_slots: Vec<u32>,
    /// Slots of forgotten series that queued or in-flight samples may still name, with the
    /// sequence number every such sample is below: free once everything before it is done.
    retired_slots: Vec<(u32, u64)>,
}

impl State {
    /// Every sample with a lower sequence number is delivered or dropped.
    fn done_before(&self) -> u64 {
        let memory = self.durable_before();
        self.disk.map_or(memory, |(first, _)| first.min(memory))
    }

    /// Every sample with a lower sequence number is delivered, dropped, or in the disk buffer
    /// (written, and synced as the buffer's fsync policy says): no longer only in memory.
    fn durable_before(&self) -> u64 {
        self.inflight.map_or(self.head_seq, |(first, _)| first)
    }

    fn next_seq(&self) -> u64 {
        self.head_seq + self.entries.len() as u64
    }

    fn pending(&self) -> u64 {
        (self.entries.len() + self.inflight.map_or(0, |(_, n)| n)) as u64
    }
}

/// A batch taken from the queue for sending; [`Queue::encode`] encodes it.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) entries: Vec<Entry>,
    /// The sequence number just after the batch.
    pub(crate) end_seq: u64,
}

/// A bounded FIFO of samples for one endpoint.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The label entries (with where the external labels go) of every tracked series, by
    /// slot; a free slot holds empty labels. A slot keeps its labels while any queued or
    /// in-flight sample names it (see [`Queue::forget_stale_before`]). Lock order: `state`
    /// first.
    labels: RwLock<Vec<WireLabels>>,
    /// Wakes the sender: a full batch is queued, or a flush was requested.
    pub(crate) wake: Notify,
    /// Set by [`Queue::request_flush`]: send everything now, not only full batches.
    force: AtomicBool,
    done: watch::Sender<u64>,
    durable: watch::Sender<u64>,
    stats: Arc<EndpointStats>,
    external: ExternalLabels,
    capacity: usize,
    wake_at: usize,
}

impl Queue {
    /// A queue holding at most `capacity` samples that wakes its sender once `wake_at` are
    /// queued; samples are prepared with `external` labels as they are queued.
    pub(crate) fn new(
        capacity: usize,
        wake_at: usize,
        external: ExternalLabels,
        stats: Arc<EndpointStats>,
    ) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            labels: RwLock::new(Vec::new()),
            wake: Notify::new(),
            force: AtomicBool::new(false),
            done: watch::Sender::new(0),
            durable: watch::Sender::new(0),
            stats,
            external,
            capacity,
            // A queue smaller than a batch wakes its sender when full.
            wake_at: wake_at.clamp(1, capacity.max(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters more than losing the queue, so keep going with what is there.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_labels(&self) -> RwLockReadGuard<'_, Vec<WireLabels>> {
        self.labels.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_labels(&self) -> RwLockWriteGuard<'_, Vec<WireLabels>> {
        self.labels.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot holding `labels` for a new series.
    fn new_slot(&self, st: &mut State, labels: WireLabels) -> u32 {
        let mut table = self.write_labels();
        match st.free_slots.pop() {
            Some(slot) => {
                table[slot as usize] = labels;
                slot
            }
            None => {
                table.push(labels);
                // Slots are bounded by the series tracked at once, far below 2^32.
                (table.len() - 1) as u32
            }
        }
    }

    /// Queues `sample` unless it is not newer than the last one queued for `series`.
    /// Returns whether it was queued.
    pub(crate) fn push(&self, series: &Series, sample: Sample) -> bool {
        self.push_locked(std::iter::once((series, sample))) == 1
    }

    /// Queues every sample of `points` in order, as [`Queue::push`] does one by one, taking
    /// the lock once per [`PUSH_CHUNK`] samples. Returns how many were queued.
    pub(crate) fn push_many(&self, points: &[(Series, Sample)]) -> usize {
        points
            .chunks(PUSH_CHUNK)
            .map(|chunk| self.push_locked(chunk.iter().map(|(series, sample)| (series, *sample))))
            .sum()
    }

    /// Queues `points` under one lock. Besides saving lock round trips, this lets the CPU
    /// look up several series at once: each lookup is usually a cache miss, and the atomic
    /// instructions of a lock between two lookups would make them wait for each other.
    fn push_locked<'a>(&self, points: impl IntoIterator<Item = (&'a Series, Sample)>) -> usize {
        let mut st = self.lock();
        let before = st.entries.len();
        let (mut queued, mut out_of_order, mut dropped) = (0, 0, 0);
        for (series, sample) in points {
            let slot = match st.series.get_mut(series) {
                Some(s) if sample.timestamp_ms <= s.last_ms => {
                    out_of_order += 1;
                    continue;
                }
                Some(s) => {
                    s.last_ms = sample.timestamp_ms;
                    s.stale = sample.is_stale();
                    s.slot
                }
                None => {
                    let slot = self.new_slot(&mut st, self.external.wire(series));
                    st.series.insert(
                        series.clone(),
                        SeriesState {
                            last_ms: sample.timestamp_ms,
                            slot,
                            stale: sample.is_stale(),
                        },
                    );
                    slot
                }
            };
            dropped += self.append(&mut st, Entry { slot, sample });
            queued += 1;
        }
        self.finish_push(st, before, dropped);
        if out_of_order > 0 {
            self.stats.dropped(DropReason::OutOfOrder, out_of_order);
        }
        queued
    }

    /// Queues a staleness marker for `series` once: not for a series never queued, and not
    /// again until a new sample revives it. The marker's timestamp is `timestamp_ms`, or just
    /// after the series' last sample if that is newer. Returns whether a marker was queued.
    pub(crate) fn mark_stale(&self, series: &Series, timestamp_ms: i64) -> bool {
        let mut st = self.lock();
        let Some(s) = st.series.get_mut(series) else {
            return false;
        };
        if s.stale {
            return false;
        }
        let ts = timestamp_ms.max(s.last_ms.saturating_add(1));
        s.last_ms = ts;
        s.stale = true;
        let entry = Entry {
            slot: s.slot,
            sample: Sample::stale(ts),
        };
        let before = st.entries.len();
        let dropped = self.append(&mut st, entry);
        self.finish_push(st, before, dropped);
        true
    }

    /// Appends `entry`, first dropping the oldest samples while the queue is full; returns
    /// how many were dropped.
    fn append(&self, st: &mut State, entry: Entry) -> u64 {
        let mut dropped = 0;
        while st.entries.len() >= self.capacity {
            st.entries.pop_front();
            st.head_seq += 1;
            dropped += 1;
        }
        st.entries.push_back(entry);
        dropped
    }

    /// After appending to a queue that held `before` samples: publishes the new state,
    /// counts `dropped` samples and wakes the sender if a full batch became available.
    fn finish_push(&self, st: MutexGuard<'_, State>, before: usize, dropped: u64) {
        let len = st.entries.len();
        self.stats.set_pending(st.pending());
        if dropped > 0 {
            self.publish_done(&st);
        }
        drop(st);
        if dropped > 0 {
            self.stats.dropped(DropReason::QueueFull, dropped);
        }
        // Wake the sender when a full batch becomes available; while it is busy it keeps
        // taking full batches by itself, so waking it on every push would only cost.
        if before < self.wake_at && len >= self.wake_at {
            self.wake.notify_one();
        }
    }

    fn publish_done(&self, st: &State) {
        for (tx, value) in [
            (&self.done, st.done_before()),
            (&self.durable, st.durable_before()),
        ] {
            tx.send_if_modified(|d| {
                let changed = *d != value;
                *d = value;
                changed
            });
        }
    }

    /// Samples queued (not counting the batch in flight).
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether at least half the capacity is queued.
    pub(crate) fn is_half_full(&self) -> bool {
        self.len() >= self.capacity.div_ceil(2)
    }

    /// Whether a full batch is queued.
    pub(crate) fn has_full_batch(&self) -> bool {
        self.len() >= self.wake_at
    }

    /// Takes the oldest samples, at most `max_samples` and about `max_bytes` of protobuf (at
    /// least one sample), as the batch in flight. `None` when the queue is empty.
    pub(crate) fn take_batch(&self, max_samples: usize, max_bytes: usize) -> Option<Batch> {
        let mut guard = self.lock();
        let st = &mut *guard;
        debug_assert!(st.inflight.is_none(), "one batch in flight at a time");
        if st.entries.is_empty() {
            return None;
        }
        let table = self.read_labels();
        let external = self.external.encoded();
        let (mut n, mut bytes) = (0, 0);
        for entry in st.entries.iter().take(max_samples) {
            let len = estimated_len(labels_len(table[entry.slot as usize].parts(external)));
            if n > 0 && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            n += 1;
        }
        drop(table);
        let entries: Vec<Entry> = st.entries.drain(..n).collect();
        st.inflight = Some((st.head_seq, n));
        st.head_seq += n as u64;
        Some(Batch {
            entries,
            end_seq: st.head_seq,
        })
    }

    /// Encodes and compresses `batch` (taken from this queue) with `encoder`.
    pub(crate) fn encode<'a>(
        &self,
        batch: &Batch,
        encoder: &'a mut RequestEncoder,
    ) -> EncodedRequest<'a> {
        // The batch's slots keep their labels until it is done (see `forget_stale_before`).
        let table = self.read_labels();
        let external = self.external.encoded();
        encoder.encode_entries(&batch.entries, |e| {
            (table[e.slot as usize].parts(external), e.sample)
        })
    }

    /// Puts the batch in flight back at the front of the queue (it could not be sent or
    /// stored); it is the next one taken.
    pub(crate) fn untake(&self, batch: Batch) {
        let mut st = self.lock();
        st.inflight = None;
        st.head_seq -= batch.entries.len() as u64;
        // The slots are still in use: a series' slot is freed only once its last sample is
        // done, and these are not.
        for entry in batch.entries.into_iter().rev() {
            st.entries.push_front(entry);
        }
        self.stats.set_pending(st.pending());
    }

    /// The batch in flight was written to the disk buffer: it no longer counts as pending in
    /// memory, but is not done until [`Queue::disk_done`] says so.
    pub(crate) fn inflight_to_disk(&self) {
        let mut st = self.lock();
        if let Some((first, n)) = st.inflight.take() {
            let end = first + n as u64;
            st.disk = Some((st.disk.map_or(first, |(lo, _)| lo), end));
        }
        self.stats.set_pending(st.pending());
        self.publish_done(&st);
    }

    /// Every sample moved to disk with a sequence number below `end` was delivered or dropped.
    pub(crate) fn disk_done(&self, end: u64) {
        let mut st = self.lock();
        st.disk = match st.disk {
            Some((_, hi)) if end >= hi => None,
            Some((lo, hi)) => Some((lo.max(end), hi)),
            None => None,
        };
        self.publish_done(&st);
    }

    /// The batch in flight was delivered or dropped.
    pub(crate) fn complete_batch(&self) {
        let mut st = self.lock();
        st.inflight = None;
        self.stats.set_pending(st.pending());
        self.publish_done(&st);
    }

    /// Removes everything queued and in flight (at shutdown) and returns how many samples that was.
    pub(crate) fn drain(&self) -> u64 {
        let mut st = self.lock();
        let n = st.pending();
        st.head_seq = st.next_seq();
        st.entries.clear();
        st.inflight = None;
        st.disk = None;
        self.stats.set_pending(0);
        self.publish_done(&st);
        n
    }

    /// Asks the sender to send everything queued now; returns the sequence number that
    /// [`Queue::wait_done`] must reach for everything queued so far to be finished.
    pub(crate) fn request_flush(&self) -> u64 {
        let target = self.lock().next_seq();
        self.force.store(true, Ordering::Release);
        self.wake.notify_one();
        target
    }

    /// Whether a flush was requested since the last call (clears the request).
    pub(crate) fn take_flush_request(&self) -> bool {
        self.force.swap(false, Ordering::AcqRel)
    }

    /// Waits until every sample with a sequence number below `target` is delivered or dropped.
    pub(crate) async fn wait_done(&self, target: u64) {
        let mut rx = self.done.subscribe();
        // The sender is owned by the queue, so the channel cannot close while we wait.
        let _ = rx.wait_for(|done| *done >= target).await;
    }

    /// Waits until every sample with a sequence number below `target` is delivered, dropped or
    /// in the disk buffer.
    pub(crate) async fn wait_durable(&self, target: u64) {
        let mut rx = self.durable.subscribe();
        let _ = rx.wait_for(|durable| *durable >= target).await;
    }

    /// Forgets series whose staleness marker is older than `cutoff_ms`, so that a long-running
    /// program that churns series does not keep them forever.
    pub(crate) fn forget_stale_before(&self, cutoff_ms: i64) {
        let mut guard = self.lock();
        let (done, next) = (guard.done_before(), guard.next_seq());
        let State {
            series,
            free_slots,
            retired_slots,
            ..
        } = &mut *guard;
        series.retain(|_, s| {
            let forget = s.stale && s.last_ms < cutoff_ms;
            if forget {
                // Every sample of the series queued so far is numbered below `next`.
                retired_slots.push((s.slot, next));
            }
            !forget
        });
        // A slot is reused only when no queued or in-flight sample names it any more.
        if retired_slots.iter().any(|&(_, below)| below <= done) {
            let mut table = self.write_labels();
            retired_slots.retain(|&(slot, below)| {
                let free = below <= done;
                if free {
                    table[slot as usize] = WireLabels::empty();
                    free_slots.push(slot);
                }
                !free
            });
        }
    }

    /// Series the queue tracks for ordering.
    #[cfg(test)]
    pub(crate) fn tracked_series(&self) -> usize {
        self.lock().series.len()
    }

    /// Label slots allocated (in use, retired or free).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.read_labels().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> (Queue, Arc<EndpointStats>) {
        let stats = Arc::new(EndpointStats::new("http://test"));
        (
            Queue::new(capacity, 10, ExternalLabels::default(), stats.clone()),
            stats,
        )
    }

    fn s(name: &str) -> Series {
        Series::new(name, [("a", "b")]).unwrap()
    }

    fn take_all(q: &Queue) -> Vec<Sample> {
        let b = q.take_batch(usize::MAX, usize::MAX);
        q.complete_batch();
        b.map(|b| b.entries.into_iter().map(|e| e.sample).collect())
            .unwrap_or_default()
    }

    #[test]
    fn samples_not_newer_than_the_last_are_dropped_and_counted() {
        let (q, stats) = queue(100);
        let a = s("a");
        assert!(q.push(&a, Sample::new(1.0, 10)));
        assert!(!q.push(&a, Sample::new(2.0, 10)), "equal timestamp");
        assert!(!q.push(&a, Sample::new(2.0, 5)), "older timestamp");
        assert!(q.push(&a, Sample::new(3.0, 11)));
        assert!(
            q.push(&s("b"), Sample::new(1.0, 1)),
            "other series are independent"
        );
        // Still ordered after the earlier samples left the queue.
        assert_eq!(take_all(&q).len(), 3);
        assert!(!q.push(&a, Sample::new(4.0, 11)));
        assert!(q.push(&a, Sample::new(4.0, 12)));
        assert_eq!(stats.snapshot().dropped(DropReason::OutOfOrder), 3);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts() {
        let (q, stats) = queue(3);
        for i in 0..5 {
            q.push(&s("a"), Sample::new(i as f64, i));
        }
        let values: Vec<f64> = take_all(&q).iter().map(|s| s.value).collect();
        assert_eq!(values, vec![2.0, 3.0, 4.0]);
        let snap = stats.snapshot();
        assert_eq!(snap.dropped(DropReason::QueueFull), 2);
        assert_eq!(snap.pending_samples, 0);
    }

    #[test]
    fn queue_never_exceeds_capacity() {
        let (q, stats) = queue(1000);
        for i in 0..100_000 {
            q.push(&s(&format!("m{}", i % 50)), Sample::new(0.0, i));
            assert!(q.len() <= 1000);
        }
        assert_eq!(stats.snapshot().dropped(DropReason::QueueFull), 99_000);
        assert_eq!(stats.snapshot().pending_samples, 1000);
    }

    #[test]
    fn batches_respect_sample_and_byte_limits() {
        let (q, _) = queue(100);
        let a = s("a");
        for i in 0..25 {
            q.push(&a, Sample::new(0.0, i));
        }
        let b = q.take_batch(10, usize::MAX).unwrap();
        assert_eq!(b.entries.len(), 10);
        q.complete_batch();
        let one = crate::PreparedSample::new(&a, &ExternalLabels::default(), Sample::new(0.0, 0))
            .estimated_len();
        let b = q.take_batch(100, one * 3 + 1).unwrap();
        assert_eq!(b.entries.len(), 3);
        q.complete_batch();
        // A single sample larger than max_bytes still goes out alone.
        let b = q.take_batch(100, 1).unwrap();
        assert_eq!(b.entries.len(), 1);
        q.complete_batch();
        assert_eq!(q.len(), 11);
        let ts: Vec<i64> = take_all(&q).iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(ts, (14..25).collect::<Vec<_>>(), "FIFO order");
    }

    #[test]
    fn stale_marker_is_sent_once_and_after_the_last_sample() {
        let (q, _) = queue(100);
        let a = s("a");
        assert!(!q.mark_stale(&a, 100), "never-seen series get no marker");
        q.push(&a, Sample::new(1.0, 50));
        assert!(q.mark_stale(&a, 10), "marker bumped past the last sample");
        assert!(!q.mark_stale(&a, 200), "only once");
        let got = take_all(&q);
        assert_eq!(got.len(), 2);
        assert!(got[1].is_stale());
        assert_eq!(got[1].timestamp_ms, 51);
        // A new sample revives the series; then it can be marked again.
        assert!(q.push(&a, Sample::new(1.0, 300)));
        assert!(q.mark_stale(&a, 400));
        let got = take_all(&q);
        assert_eq!(got[1].timestamp_ms, 400);
        assert_eq!(got[1].value.to_bits(), crate::series::STALE_NAN_BITS);
    }

    #[test]
    fn stale_series_are_forgotten_after_the_cutoff() {
        let (q, _) = queue(100);
        q.push(&s("a"), Sample::new(1.0, 50));
        q.push(&s("b"), Sample::new(1.0, 50));
        q.mark_stale(&s("a"), 60);
        q.forget_stale_before(61);
        assert_eq!(
            q.tracked_series(),
            1,
            "`a` (stale at 60) is forgotten, `b` is kept"
        );
        // Forgotten means its order is no longer enforced: an old sample is accepted again.
        assert!(q.push(&s("a"), Sample::new(1.0, 1)));
    }

    /// The metric name of every sample in `batch`, from its encoded request.
    fn names(q: &Queue, batch: &Batch) -> Vec<String> {
        let mut encoder = RequestEncoder::new();
        let request =
            crate::encode::decode_write_request(q.encode(batch, &mut encoder).body).unwrap();
        request
            .timeseries
            .iter()
            .flat_map(|ts| {
                let name = ts.labels[0].value.clone();
                ts.samples.iter().map(move |_| name.clone())
            })
            .collect()
    }

    #[test]
    fn push_many_is_push_one_by_one() {
        // More than two lock chunks, with out-of-order samples in every chunk and a queue
        // that overflows, pushed at once and one by one into two queues.
        let series: Vec<Series> = (0..7).map(|i| s(&format!("m{i}"))).collect();
        let points: Vec<(Series, Sample)> = (0..PUSH_CHUNK * 2 + 100)
            .map(|i| {
                // Every 10th sample repeats its series' previous timestamp: out of order.
                let round = (i / 7) as i64 - i64::from(i % 10 == 9 && i >= 7);
                (series[i % 7].clone(), Sample::new(i as f64, round))
            })
            .collect();
        let (many, many_stats) = queue(500);
        let (one, one_stats) = queue(500);
        let queued = many.push_many(&points);
        let queued_one_by_one = points.iter().filter(|(s, x)| one.push(s, *x)).count();
        assert_eq!(queued, queued_one_by_one);
        let (a, b) = (many_stats.snapshot(), one_stats.snapshot());
        assert!(a.dropped(DropReason::OutOfOrder) > 0);
        assert!(
            a.dropped(DropReason::QueueFull) > 0,
            "capacity 500 overflowed"
        );
        for reason in [DropReason::OutOfOrder, DropReason::QueueFull] {
            assert_eq!(a.dropped(reason), b.dropped(reason), "{reason:?}");
        }
        assert_eq!(a.pending_samples, b.pending_samples);
        let sent = |q: &Queue| {
            let batch = q.take_batch(usize::MAX, usize::MAX).unwrap();
            let out: Vec<(String, i64, u64)> = names(q, &batch)
                .into_iter()
                .zip(&batch.entries)
                .map(|(n, e)| (n, e.sample.timestamp_ms, e.sample.value.to_bits()))
                .collect();
            q.complete_batch();
            out
        };
        assert_eq!(sent(&many), sent(&one));
    }

    #[tokio::test]
    async fn push_many_wakes_the_sender_once_a_batch_is_full() {
        let (q, _) = queue(100);
        let a = s("a");
        // 9 samples: below the batch size of 10, no wake-up.
        let points: Vec<(Series, Sample)> =
            (0..9).map(|i| (a.clone(), Sample::new(0.0, i))).collect();
        q.push_many(&points);
        let woken = tokio::time::timeout(std::time::Duration::from_millis(50), q.wake.notified());
        assert!(woken.await.is_err(), "no full batch yet");
        // 5 more cross the batch size within one call.
        let points: Vec<(Series, Sample)> =
            (9..14).map(|i| (a.clone(), Sample::new(0.0, i))).collect();
        q.push_many(&points);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(1), q.wake.notified());
        assert!(woken.await.is_ok(), "a full batch wakes the sender");
    }

    #[test]
    fn a_forgotten_series_keeps_its_labels_until_its_samples_are_done() {
        let (q, _) = queue(100);
        q.push(&s("a"), Sample::new(1.0, 50));
        q.mark_stale(&s("a"), 60);
        // Forgotten while its sample and marker are still queued: its slot is retired, not
        // reused, so a new series gets another one.
        q.forget_stale_before(61);
        q.push(&s("b"), Sample::new(1.0, 70));
        assert_eq!(q.slots(), 2);
        let batch = q.take_batch(usize::MAX, usize::MAX).unwrap();
        // Still in flight: the slot stays retired, and the batch still encodes with a's labels
        // (the sender encodes, and re-encodes for the disk buffer, while the batch is in flight).
        q.forget_stale_before(61);
        q.push(&s("c"), Sample::new(1.0, 80));
        assert_eq!(q.slots(), 3);
        assert_eq!(names(&q, &batch), ["a", "a", "b"]);
        q.complete_batch();
        // Done now: the next pass frees it and a new series reuses it with its own labels.
        q.forget_stale_before(61);
        q.push(&s("d"), Sample::new(1.0, 90));
        assert_eq!(q.slots(), 3, "a's slot was reused");
        let batch = q.take_batch(usize::MAX, usize::MAX).unwrap();
        assert_eq!(names(&q, &batch), ["c", "d"]);
        q.complete_batch();
    }

    #[test]
    fn an_untaken_batch_keeps_its_labels() {
        let (q, _) = queue(100);
        q.push(&s("a"), Sample::new(1.0, 1));
        q.push(&s("b"), Sample::new(1.0, 1));
        let batch = q.take_batch(usize::MAX, usize::MAX).unwrap();
        q.untake(batch);
        let batch = q.take_batch(usize::MAX, usize::MAX).unwrap();
        assert_eq!(names(&q, &batch), ["a", "b"]);
    }

    #[test]
    fn an_untaken_batch_is_the_next_one_taken() {
        let (q, stats) = queue(100);
        for i in 0..5 {
            q.push(&s("a"), Sample::new(0.0, i));
        }
        let b = q.take_batch(3, usize::MAX).unwrap();
        assert_eq!(b.end_seq, 3);
        q.untake(b);
        assert_eq!(stats.snapshot().pending_samples, 5);
        let b = q.take_batch(3, usize::MAX).unwrap();
        assert_eq!(b.end_seq, 3, "same sequence numbers again");
        let ts: Vec<i64> = b.entries.iter().map(|e| e.sample.timestamp_ms).collect();
        assert_eq!(ts, vec![0, 1, 2]);
        q.complete_batch();
        let ts: Vec<i64> = take_all(&q).iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(ts, vec![3, 4]);
    }

    #[tokio::test]
    async fn wait_done_follows_completion_and_drops() {
        let (q, _) = queue(2);
        let q = Arc::new(q);
        let a = s("a");
        q.push(&a, Sample::new(0.0, 1));
        let target = q.request_flush();
        assert!(q.take_flush_request());
        assert!(!q.take_flush_request(), "the request is cleared once taken");
        let b = q.take_batch(10, usize::MAX).unwrap();
        assert_eq!(b.entries.len(), 1);
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.wait_done(target).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "not done while the batch is in flight"
        );
        q.complete_batch();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("done after completion")
            .unwrap();

        // Samples dropped because the queue is full count as finished too.
        for i in 2..6 {
            q.push(&a, Sample::new(0.0, i));
        }
        let target = q.request_flush();
        let b = q.take_batch(10, usize::MAX).unwrap();
        assert_eq!(b.entries.len(), 2, "capacity 2 kept the newest two");
        q.complete_batch();
        tokio::time::timeout(std::time::Duration::from_secs(1), q.wait_done(target))
            .await
            .expect("done");
    }
}
