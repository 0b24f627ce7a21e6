//! The durable on-disk buffer of one endpoint: request bodies that could not be delivered in
//! time survive a restart and are replayed, in order, before anything newer.
//!
//! # What is stored
//! A record is one request body exactly as it is POSTed (the snappy-compressed `WriteRequest`)
//! plus its sample count, so replaying is a POST of the stored bytes; the format is in
//! [`segment`]. Records are appended to segment files `<20-digit id>.seg`; a new segment is
//! started when the current one has reached `buffer_segment_bytes`, and at every start of the
//! process (nothing is ever appended behind bytes a crash may have torn).
//!
//! # When batches go to disk
//! - A batch taken from the in-memory queue whose first attempt fails with a retryable error
//!   (connection error, timeout, 408, 429, 5xx) is written to disk; it is then retried from
//!   disk, with backoff.
//! - While the endpoint is failing (a record is backing off), the in-memory queue is moved to
//!   disk: full batches as soon as they are queued, everything at every flush interval. So
//!   during an outage the queue stays nearly empty and its samples survive a crash.
//! - While records are replayed and the in-memory queue is half full, its full batches are
//!   moved to disk behind the records instead of waiting for the replay to finish.
//! - At shutdown, what could not be delivered before the deadline (the batch in flight and
//!   everything queued) is written to disk instead of being dropped.
//! - While a batch is in flight and the endpoint has not failed yet, a queue that fills up
//!   still drops its oldest samples (counted as `queue_full`): writing newer batches to disk
//!   ahead of the one in flight would break the order.
//!
//! # Order
//! Records are sent strictly in the order they were written, and the sender only takes
//! batches from memory when the buffer is empty; the batches on disk are always older than
//! those in memory, so per-series order holds. After a restart, samples pushed to the new
//! client must be newer than the buffered ones of the same series (the ordering check of the
//! in-memory queue does not know them); timestamps from the wall clock are.
//!
//! # Acknowledgement and exactly-once
//! A record leaves the buffer only after a 2xx, or a permanent rejection (other 4xx, counted
//! as `http_4xx`). Its position is then written to the small `ack` file (written to `ack.tmp`,
//! synced, renamed) before the next record is read, and a fully acknowledged segment is
//! deleted. So a batch acknowledged with 2xx is never sent again, except after a crash between
//! the 2xx and the `ack` write (a few milliseconds): then that one batch is sent once more.
//! VictoriaMetrics stores such a duplicate twice unless it runs with `-dedup.minScrapeInterval`
//! (which keeps one sample per interval and series); Prometheus rejects it as a duplicate
//! sample. A damaged `ack` file means replaying every buffered record again (logged).
//!
//! # Size cap
//! The segment files of an endpoint never exceed `buffer_max_bytes`: before a record is
//! appended, whole oldest segments are deleted until it fits, their records counted as
//! dropped (`records_dropped`, `samples_dropped`). A record larger than the cap is dropped
//! alone. The in-memory queue keeps its own capacity, so memory stays bounded too.
//!
//! # Crash safety
//! At start every segment is read once to build the index of intact records: a record cut
//! short at the tail (a crash mid-write) or a record whose checksum fails (a flipped byte) is
//! skipped and counted (`records_corrupted`), and reading resumes at the next intact record.
//! Empty segment files (deleted) and foreign files (left alone) are counted in
//! `files_ignored`. A record that cannot be read back when it is replayed is skipped and
//! counted the same way: damage never stops the sender.
//!
//! # fsync
//! [`Fsync::EveryBatch`] (default): every append, `ack` write and new segment is synced before
//! the sender goes on, so a batch on disk survives a power loss. [`Fsync::Never`] leaves it to
//! the kernel: a killed process loses nothing (the page cache survives it), a kernel crash or
//! power loss may lose the last seconds and resend some acknowledged batches.
//!
//! # Directory
//! Each endpoint has its own subdirectory of `buffer_dir`, named after a stable hash (64-bit
//! FNV-1a, hex) of its URL; the URL is written to `url` inside it. A `lock` file is locked
//! while a client uses the directory, so two clients never share one.

pub mod segment;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::queue::Queue;
use crate::stats::EndpointStats;

/// When the buffer's writes are synced to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fsync {
    /// After every record appended, every acknowledgement and every new segment (default).
    #[default]
    EveryBatch,
    /// Never explicitly: survives a killed process, not necessarily a power loss.
    Never,
}

const SEGMENT_SUFFIX: &str = ".seg";
const ACK: &str = "ack";
const ACK_TMP: &str = "ack.tmp";
const LOCK: &str = "lock";
const URL: &str = "url";

/// The subdirectory name of the endpoint at `url`: 64-bit FNV-1a of the URL, in hex.
pub(crate) fn endpoint_dir_name(url: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn segment_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Where a record starts: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    segment: u64,
    offset: u64,
}

/// The index entry of one unacknowledged record.
#[derive(Debug, Clone, Copy)]
struct RecordRef {
    offset: u64,
    payload_len: u32,
    samples: u32,
    /// For records written by this process: the queue sequence number just after the batch,
    /// released to the queue when the record leaves the buffer (so `flush` waits for it).
    seq_end: Option<u64>,
}

impl RecordRef {
    fn len(&self) -> u64 {
        segment::HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes in the file.
    len: u64,
    /// Unacknowledged intact records, oldest first.
    records: VecDeque<RecordRef>,
}

/// A record read back for sending.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) pos: Position,
    pub(crate) body: Bytes,
    pub(crate) samples: u32,
}

/// What became of an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Appended {
    /// It is on disk.
    Stored,
    /// It alone is larger than the cap: dropped and counted.
    TooLarge,
}

/// The buffer settings of one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) dir: PathBuf,
    pub(crate) max_bytes: u64,
    pub(crate) segment_bytes: u64,
    pub(crate) fsync: Fsync,
}

/// The on-disk buffer of one endpoint. Only its sender uses it, one operation at a time.
#[derive(Debug)]
pub(crate) struct Buffer {
    settings: Settings,
    /// Oldest first; the last one is being appended to when `writer` is set.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_id: u64,
    bytes: u64,
    records: u64,
    samples: u64,
    stats: Arc<EndpointStats>,
    queue: Arc<Queue>,
    scratch: Vec<u8>,
    /// Whether the cap dropped segments since the last delivery (for logging).
    dropping: bool,
    /// Held (locked) for the buffer's lifetime.
    _lock: File,
}

impl Buffer {
    /// Opens (creating it if needed) the buffer directory of the endpoint at `url`, locks it
    /// and indexes the intact records left by an earlier run.
    pub(crate) fn open(
        settings: Settings,
        url: &str,
        stats: Arc<EndpointStats>,
        queue: Arc<Queue>,
    ) -> io::Result<Buffer> {
        let dir = &settings.dir;
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                "the buffer directory is in use by another client",
            ),
            fs::TryLockError::Error(e) => e,
        })?;
        match fs::read_to_string(dir.join(URL)) {
            Ok(existing) if existing != url => {
                return Err(io::Error::other(format!(
                    "the buffer directory belongs to {existing:?}"
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::write(dir.join(URL), url)?,
            Err(e) => return Err(e),
        }
        let mut buffer = Buffer {
            settings,
            segments: VecDeque::new(),
            writer: None,
            next_id: 1,
            bytes: 0,
            records: 0,
            samples: 0,
            stats,
            queue,
            scratch: Vec::new(),
            dropping: false,
            _lock: lock,
        };
        buffer.load()?;
        Ok(buffer)
    }

    fn dir(&self) -> &Path {
        &self.settings.dir
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir().join(segment_name(id))
    }

    /// Reads the acknowledged position, if the `ack` file is intact.
    fn read_ack(&self) -> Option<Position> {
        let bytes = match fs::read(self.dir().join(ACK)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(dir = %self.dir().display(), "remote-write buffer: cannot read the ack file, replaying everything: {e}");
                return None;
            }
        };
        let intact =
            bytes.len() == 20 && crc32fast::hash(&bytes[..16]).to_le_bytes() == bytes[16..20];
        if !intact {
            tracing::warn!(dir = %self.dir().display(), "remote-write buffer: damaged ack file, replaying everything");
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
        Some(Position {
            segment: word(0),
            offset: word(8),
        })
    }

    fn write_ack(&self, pos: Position) -> io::Result<()> {
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&pos.segment.to_le_bytes());
        bytes[8..16].copy_from_slice(&pos.offset.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..16]);
        bytes[16..].copy_from_slice(&crc.to_le_bytes());
        let tmp = self.dir().join(ACK_TMP);
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        if self.settings.fsync == Fsync::EveryBatch {
            file.sync_data()?;
        }
        fs::rename(tmp, self.dir().join(ACK))
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.settings.fsync == Fsync::EveryBatch {
            File::open(self.dir())?.sync_all()?;
        }
        Ok(())
    }

    /// Indexes the segments found on disk.
    fn load(&mut self) -> io::Result<()> {
        let ack = self.read_ack();
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.dir())? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match name.as_ref() {
                LOCK | URL | ACK => {}
                ACK_TMP => {
                    let _ = fs::remove_file(entry.path());
                }
                other => match parse_segment_name(other) {
                    Some(id) => ids.push(id),
                    None => {
                        tracing::warn!(file = %entry.path().display(), "remote-write buffer: ignoring a foreign file");
                        self.stats.buffer.files_ignored.inc(1);
                    }
                },
            }
        }
        ids.sort_unstable();
        // Never reuse an id at or below the acknowledged segment: the next start would take
        // such a segment for an acknowledged one and delete it.
        let highest = ids.last().copied().max(ack.map(|a| a.segment)).unwrap_or(0);
        self.next_id = highest + 1;
        for id in ids {
            let path = self.segment_path(id);
            if ack.is_some_and(|a| id < a.segment) {
                self.remove_file(&path);
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "remote-write buffer: ignoring an unreadable segment: {e}");
                    self.stats.buffer.files_ignored.inc(1);
                    continue;
                }
            };
            if bytes.is_empty() {
                tracing::warn!(file = %path.display(), "remote-write buffer: removing an empty segment");
                self.stats.buffer.files_ignored.inc(1);
                self.remove_file(&path);
                continue;
            }
            let acked_before = ack.filter(|a| a.segment == id).map_or(0, |a| a.offset);
            let mut records = VecDeque::new();
            let mut corrupted = 0;
            for item in segment::Reader::new(&bytes) {
                match item {
                    segment::Item::Record {
                        offset, samples, ..
                    } if offset as u64 >= acked_before => records.push_back(RecordRef {
                        offset: offset as u64,
                        payload_len: (item.end() - offset - segment::HEADER_LEN) as u32,
                        samples,
                        seq_end: None,
                    }),
                    segment::Item::Record { .. } => {}
                    segment::Item::Damaged { offset, .. } if offset as u64 >= acked_before => {
                        corrupted += 1;
                    }
                    segment::Item::Damaged { .. } => {}
                }
            }
            if corrupted > 0 {
                tracing::warn!(file = %path.display(), corrupted, "remote-write buffer: skipping damaged records");
                self.stats.buffer.records_corrupted.inc(corrupted);
            }
            if records.is_empty() {
                self.remove_file(&path);
                continue;
            }
            self.records += records.len() as u64;
            self.samples += records.iter().map(|r| u64::from(r.samples)).sum::<u64>();
            self.bytes += bytes.len() as u64;
            self.segments.push_back(Segment {
                id,
                len: bytes.len() as u64,
                records,
            });
        }
        while self.bytes > self.settings.max_bytes && !self.segments.is_empty() {
            self.drop_oldest_segment();
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let b = &self.stats.buffer;
        b.bytes.set(self.bytes);
        b.records.set(self.records);
        b.samples.set(self.samples);
    }

    /// Tells the queue that a record written by this process left the buffer.
    fn release(&self, record: &RecordRef) {
        if let Some(end) = record.seq_end {
            self.queue.disk_done(end);
        }
    }

    /// Takes a record that left the buffer off the gauges; publish them before releasing the
    /// record, so that whoever [`Client::flush`](crate::Client::flush) wakes sees them updated.
    fn forget(&mut self, record: &RecordRef) {
        self.records -= 1;
        self.samples -= u64::from(record.samples);
    }

    /// Deletes the oldest segment, counting its unacknowledged records as dropped.
    fn drop_oldest_segment(&mut self) {
        let Some(seg) = self.segments.pop_front() else {
            return;
        };
        if self.segments.is_empty() {
            self.writer = None;
        }
        let samples: u64 = seg.records.iter().map(|r| u64::from(r.samples)).sum();
        if !seg.records.is_empty() {
            // One warning per burst of drops (until a record is delivered again).
            if self.dropping {
                tracing::debug!(dir = %self.dir().display(), records = seg.records.len(), samples, "remote-write buffer full: dropping the oldest segment");
            } else {
                tracing::warn!(
                    dir = %self.dir().display(),
                    records = seg.records.len(),
                    samples,
                    "remote-write buffer full: dropping the oldest segments; see records_dropped"
                );
            }
            self.dropping = true;
        }
        self.stats
            .buffer
            .records_dropped
            .inc(seg.records.len() as u64);
        self.stats.buffer.samples_dropped.inc(samples);
        for r in &seg.records {
            self.forget(r);
        }
        self.bytes -= seg.len;
        self.remove_file(&self.segment_path(seg.id));
        self.publish();
        for r in &seg.records {
            self.release(r);
        }
    }

    /// Appends one request body of `samples` samples; `seq_end` is the queue sequence number
    /// just after the batch, if it came from this process' queue.
    pub(crate) fn append(
        &mut self,
        body: &[u8],
        samples: u32,
        seq_end: Option<u64>,
    ) -> io::Result<Appended> {
        let record_len = (segment::HEADER_LEN + body.len()) as u64;
        if record_len > self.settings.max_bytes || body.len() > segment::MAX_PAYLOAD {
            tracing::warn!(dir = %self.dir().display(), bytes = record_len, "remote-write buffer: a batch larger than the whole buffer is dropped");
            self.stats.buffer.records_dropped.inc(1);
            self.stats.buffer.samples_dropped.inc(u64::from(samples));
            return Ok(Appended::TooLarge);
        }
        while self.bytes + record_len > self.settings.max_bytes && !self.segments.is_empty() {
            self.drop_oldest_segment();
        }
        let full = self
            .segments
            .back()
            .is_some_and(|s| s.len >= self.settings.segment_bytes);
        if full {
            self.writer = None;
        }
        if self.writer.is_none() {
            let id = self.next_id;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.segment_path(id))?;
            self.next_id += 1;
            self.sync_dir()?;
            self.writer = Some(file);
            self.segments.push_back(Segment {
                id,
                len: 0,
                records: VecDeque::new(),
            });
        }
        self.scratch.clear();
        segment::encode_record(samples, body, &mut self.scratch);
        let (Some(file), Some(seg)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(io::Error::other("no segment to append to"));
        };
        let written = file.write_all(&self.scratch).and_then(|()| {
            if self.settings.fsync == Fsync::EveryBatch {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut a partial record off so that the segment stays clean; if even that fails,
            // start a new segment next time (the reader skips the damage after a restart).
            if file.set_len(seg.len).is_err() {
                self.writer = None;
            }
            return Err(e);
        }
        seg.records.push_back(RecordRef {
            offset: seg.len,
            payload_len: body.len() as u32,
            samples,
            seq_end,
        });
        seg.len += record_len;
        self.bytes += record_len;
        self.records += 1;
        self.samples += u64::from(samples);
        self.stats.buffer.records_written.inc(1);
        self.publish();
        Ok(Appended::Stored)
    }

    /// Reads the oldest unacknowledged record. Records that cannot be read back intact are
    /// skipped and counted as corrupted. `None` when the buffer is empty.
    pub(crate) fn peek(&mut self) -> Option<Replay> {
        loop {
            let seg = self.segments.front()?;
            let Some(record) = seg.records.front().copied() else {
                if self.segments.len() == 1 && self.writer.is_some() {
                    return None;
                }
                self.remove_front_segment();
                continue;
            };
            let pos = Position {
                segment: seg.id,
                offset: record.offset,
            };
            match self.read_record(pos, &record) {
                Ok(Some(body)) => {
                    return Some(Replay {
                        pos,
                        body,
                        samples: record.samples,
                    });
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(dir = %self.dir().display(), segment = pos.segment, offset = pos.offset, "remote-write buffer: a record cannot be read back intact; skipping it");
                    self.stats.buffer.records_corrupted.inc(1);
                    if let Some(seg) = self.segments.front_mut() {
                        seg.records.pop_front();
                    }
                    self.forget(&record);
                    self.publish();
                    self.release(&record);
                }
            }
        }
    }

    fn read_record(&mut self, pos: Position, record: &RecordRef) -> io::Result<Option<Bytes>> {
        let mut file = File::open(self.segment_path(pos.segment))?;
        file.seek(SeekFrom::Start(pos.offset))?;
        self.scratch.clear();
        self.scratch.resize(record.len() as usize, 0);
        file.read_exact(&mut self.scratch)?;
        Ok(segment::parse_record(&self.scratch)
            .filter(|(samples, payload)| {
                *samples == record.samples && payload.len() == record.payload_len as usize
            })
            .map(|(_, payload)| Bytes::copy_from_slice(payload)))
    }

    /// Whether the record at `pos` is still buffered (the cap may have dropped it).
    pub(crate) fn contains(&self, pos: Position) -> bool {
        self.segments
            .front()
            .and_then(|s| Some((s.id, s.records.front()?.offset)))
            == Some((pos.segment, pos.offset))
    }

    /// The record at `pos` (the oldest) was delivered or permanently rejected: forget it and
    /// persist that before anything else is sent.
    pub(crate) fn ack(&mut self, pos: Position) -> io::Result<()> {
        if !self.contains(pos) {
            return Ok(());
        }
        let Some(record) = self
            .segments
            .front_mut()
            .and_then(|s| s.records.pop_front())
        else {
            return Ok(());
        };
        self.stats.buffer.records_replayed.inc(1);
        self.dropping = false;
        let written = self.write_ack(Position {
            segment: pos.segment,
            offset: pos.offset + record.len(),
        });
        self.forget(&record);
        let drained = self.segments.front().is_some_and(|s| {
            s.records.is_empty() && (self.segments.len() > 1 || self.writer.is_none())
        });
        if drained {
            self.remove_front_segment();
        }
        self.publish();
        self.release(&record);
        written
    }

    fn remove_front_segment(&mut self) {
        if let Some(seg) = self.segments.pop_front() {
            if self.segments.is_empty() {
                self.writer = None;
            }
            self.bytes -= seg.len;
            self.remove_file(&self.segment_path(seg.id));
        }
    }

    /// Deletes a segment file; a failure is logged (the file is replayed or removed again
    /// at the next start).
    fn remove_file(&self, path: &Path) {
        if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), "remote-write buffer: cannot delete a segment: {e}");
        }
    }

    /// Unacknowledged samples on disk.
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }
}

/// A [`Buffer`] shared with the blocking thread pool: its file I/O never runs on the async
/// runtime's threads.
#[derive(Debug, Clone)]
pub(crate) struct SharedBuffer(Arc<Mutex<Buffer>>);

impl SharedBuffer {
    pub(crate) fn new(buffer: Buffer) -> SharedBuffer {
        SharedBuffer(Arc::new(Mutex::new(buffer)))
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the blocking pool; `None` if it panicked.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Buffer) -> T + Send + 'static,
    ) -> Option<T> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .ok()
    }

    /// See [`Buffer::append`].
    pub(crate) async fn append(
        &self,
        body: Bytes,
        samples: u32,
        seq_end: Option<u64>,
    ) -> io::Result<Appended> {
        self.blocking(move |b| b.append(&body, samples, seq_end))
            .await
            .unwrap_or_else(|| Err(io::Error::other("the buffer append panicked")))
    }

    /// See [`Buffer::peek`].
    pub(crate) async fn peek(&self) -> Option<Replay> {
        self.blocking(Buffer::peek).await.flatten()
    }

    /// See [`Buffer::ack`].
    pub(crate) async fn ack(&self, pos: Position) -> io::Result<()> {
        self.blocking(move |b| b.ack(pos))
            .await
            .unwrap_or_else(|| Err(io::Error::other("the buffer ack panicked")))
    }

    /// See [`Buffer::contains`]. Cheap: only the sender uses the buffer, so the lock is free.
    pub(crate) fn contains(&self, pos: Position) -> bool {
        self.lock().contains(pos)
    }

    /// See [`Buffer::samples`].
    pub(crate) fn samples(&self) -> u64 {
        self.lock().samples()
    }

    /// Whether any record waits on disk. Cheap, like [`SharedBuffer::contains`].
    pub(crate) fn has_records(&self) -> bool {
        self.lock().records > 0
    }
}

#[cfg(test)]
mod tests;
