//! The send loop of one endpoint: take a batch, POST it, retry or drop, repeat.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::buffer::{Appended, Position, SharedBuffer};
use crate::config::{BatchConfig, RetryConfig};
use crate::encode::RequestEncoder;
use crate::queue::{Batch, Queue};
use crate::series::now_ms;
use crate::stats::{DropReason, EndpointStats};
use crate::transport::{Outcome, Transport};

/// How long a series' staleness marker is remembered (to send it only once) before the series
/// is forgotten.
const FORGET_STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// What happened to a batch.
enum Fate {
    /// Delivered (2xx) or dropped for good (other 4xx).
    Finished,
    /// The shutdown deadline passed while the batch was still undelivered.
    OutOfTime,
    /// A batch from memory failed and a disk buffer exists: store it and retry from there.
    Failing,
    /// A record from disk was dropped by the buffer's size cap while it was being retried.
    Abandoned,
}

/// Where the batch being delivered lives.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Taken from the in-memory queue; on failure, hand it to the disk buffer if `to_disk`.
    Memory { to_disk: bool },
    /// The oldest record of the disk buffer.
    Disk(Position),
}

/// What [`Endpoint::run`] leaves behind at shutdown, in samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Leftover {
    /// Neither delivered nor kept on disk.
    pub(crate) lost: u64,
    /// Kept on disk for the next run (earlier runs' records included).
    pub(crate) buffered: u64,
}

/// The send loop's state.
struct Loop {
    encoder: RequestEncoder,
    burst: Burst,
    tick: Interval,
    shutdown: watch::Receiver<Option<Instant>>,
    backoff: ExponentialBackoff,
    /// Set when a batch failed and was handed to the disk buffer: wait this long before the
    /// next attempt.
    wait_first: Option<Duration>,
    /// Whether the last disk write failed (one warning per burst of write errors).
    write_failing: bool,
}

/// What interrupted a backoff wait.
enum Wake {
    Slept,
    ShutdownBegins,
    Deadline,
    Queue,
    Tick,
}

/// Once a shutdown has begun, a retry waits at most this long: the endpoint has only the
/// shutdown window left to come back in, and a wait grown to `max_delay` during a long outage
/// would otherwise sleep through it.
const SHUTDOWN_RETRY_EVERY: Duration = Duration::from_millis(500);

/// Tracks failure bursts so that logs say once that an endpoint fails and once that it recovered.
#[derive(Debug, Default)]
struct Burst {
    failures: u64,
}

impl Burst {
    fn failure(&mut self, url: &str, what: &str) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(
                endpoint = url,
                "remote write failing, retrying with backoff: {what}"
            );
        } else {
            tracing::debug!(
                endpoint = url,
                failures = self.failures,
                "remote write still failing: {what}"
            );
        }
    }

    fn success(&mut self, url: &str) {
        if self.failures > 0 {
            tracing::info!(
                endpoint = url,
                failed_attempts = self.failures,
                "remote write recovered"
            );
        }
        self.failures = 0;
    }
}

/// One endpoint's sender.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) queue: Arc<Queue>,
    pub(crate) stats: Arc<EndpointStats>,
    pub(crate) transport: Transport,
    pub(crate) batch: BatchConfig,
    pub(crate) retry: RetryConfig,
    pub(crate) buffer: Option<SharedBuffer>,
}

/// Resolves at the shutdown deadline; never resolves while no shutdown was requested.
async fn deadline(shutdown: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let at = *shutdown.borrow_and_update();
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Endpoint {
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .without_max_times()
            .build()
    }

    /// Runs until shutdown; returns what it could not deliver.
    pub(crate) async fn run(self, shutdown: watch::Receiver<Option<Instant>>) -> Leftover {
        let mut tick = tokio::time::interval(self.batch.flush_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut lp = Loop {
            encoder: RequestEncoder::new(),
            burst: Burst::default(),
            tick,
            shutdown,
            backoff: self.backoff(),
            wait_first: None,
            write_failing: false,
        };
        let mut last_forget = Instant::now();
        loop {
            let drain_all = if lp.shutdown.borrow().is_some() {
                true
            } else {
                tokio::select! {
                    _ = lp.tick.tick() => true,
                    _ = self.queue.wake.notified() => self.batch.immediate || self.queue.take_flush_request(),
                    _ = lp.shutdown.changed() => true,
                }
            };
            let shutting_down = lp.shutdown.borrow().is_some();
            // What is on disk is older than anything in memory: it goes first.
            if let Fate::OutOfTime = self.replay(&mut lp).await {
                return self.finish(&mut lp, None).await;
            }
            while drain_all || self.queue.has_full_batch() {
                let Some(batch) = self
                    .queue
                    .take_batch(self.batch.max_samples, self.batch.max_bytes)
                else {
                    break;
                };
                let request = self.queue.encode(&batch, &mut lp.encoder);
                let raw_len = request.raw_len as u64;
                let body = Bytes::copy_from_slice(request.body);
                let samples = batch.entries.len() as u64;
                let source = Source::Memory {
                    to_disk: self.buffer.is_some(),
                };
                let mut fate = self.deliver(&mut lp, &body, samples, raw_len, source).await;
                let mut stored = false;
                if let Fate::Failing = fate {
                    stored = self.store(&mut lp, body.clone(), &batch).await;
                    if stored {
                        fate = self.replay(&mut lp).await;
                    } else {
                        let source = Source::Memory { to_disk: false };
                        fate = self.deliver(&mut lp, &body, samples, raw_len, source).await;
                    }
                }
                match fate {
                    Fate::OutOfTime => {
                        let inflight = (!stored).then_some((body, batch));
                        return self.finish(&mut lp, inflight).await;
                    }
                    Fate::Finished | Fate::Abandoned | Fate::Failing => {
                        // After `store`, the batch is no longer in flight: this is a no-op.
                        self.queue.complete_batch();
                    }
                }
            }
            if shutting_down {
                return self.finish(&mut lp, None).await;
            }
            if last_forget.elapsed() >= FORGET_STALE_AFTER {
                last_forget = Instant::now();
                let cutoff = now_ms() - FORGET_STALE_AFTER.as_millis() as i64;
                self.queue.forget_stale_before(cutoff);
            }
        }
    }

    /// Writes the batch in flight (encoded as `body`) to the disk buffer. Returns whether it
    /// left memory (stored, or dropped as larger than the whole buffer); on a write error it
    /// stays in flight.
    async fn store(&self, lp: &mut Loop, body: Bytes, batch: &Batch) -> bool {
        let Some(buffer) = &self.buffer else {
            return false;
        };
        let samples = batch.entries.len() as u32;
        match buffer.append(body, samples, Some(batch.end_seq)).await {
            Ok(Appended::Stored) => {
                lp.write_failing = false;
                self.queue.inflight_to_disk();
                true
            }
            Ok(Appended::TooLarge) => {
                self.queue.complete_batch();
                true
            }
            Err(error) => {
                self.stats.buffer.write_errors.inc(1);
                if !lp.write_failing {
                    tracing::warn!(
                        endpoint = self.transport.url(),
                        "remote-write buffer: cannot write a batch to disk, keeping it in memory: {error}"
                    );
                }
                lp.write_failing = true;
                false
            }
        }
    }

    /// Moves queued samples to the disk buffer: full batches, or everything when `all`.
    async fn spill(&self, lp: &mut Loop, all: bool) {
        if self.buffer.is_none() {
            return;
        }
        while all || self.queue.has_full_batch() {
            let Some(batch) = self
                .queue
                .take_batch(self.batch.max_samples, self.batch.max_bytes)
            else {
                return;
            };
            let body = Bytes::copy_from_slice(self.queue.encode(&batch, &mut lp.encoder).body);
            if !self.store(lp, body, &batch).await {
                self.queue.untake(batch);
                return;
            }
        }
    }

    /// Sends the disk buffer's records, oldest first, until it is empty or the shutdown
    /// deadline passes.
    async fn replay(&self, lp: &mut Loop) -> Fate {
        let Some(buffer) = &self.buffer else {
            return Fate::Finished;
        };
        // Checking the count first keeps an empty buffer off the blocking pool.
        while buffer.has_records() {
            let Some(record) = buffer.peek().await else {
                break;
            };
            let samples = u64::from(record.samples);
            let raw_len = snap::raw::decompress_len(&record.body).unwrap_or(0) as u64;
            let source = Source::Disk(record.pos);
            match self
                .deliver(lp, &record.body, samples, raw_len, source)
                .await
            {
                Fate::Finished => {
                    if let Err(error) = buffer.ack(record.pos).await {
                        tracing::warn!(
                            endpoint = self.transport.url(),
                            "remote-write buffer: cannot record a delivery; after a restart the batch may be sent again: {error}"
                        );
                    }
                }
                Fate::OutOfTime => return Fate::OutOfTime,
                Fate::Abandoned | Fate::Failing => {}
            }
            // What piles up in memory meanwhile is newer than every record: once the queue
            // is half full, move it to disk behind them rather than let it overflow during a
            // long replay.
            if self.queue.is_half_full() {
                self.spill(lp, false).await;
            }
        }
        Fate::Finished
    }

    /// At shutdown: keeps what is undelivered on disk if there is a buffer (the batch that was
    /// in flight first, then the queue), and reports the rest as lost.
    async fn finish(&self, lp: &mut Loop, inflight: Option<(Bytes, Batch)>) -> Leftover {
        let mut lost = 0;
        if let Some((body, batch)) = inflight
            && !self.store(lp, body, &batch).await
        {
            lost += batch.entries.len() as u64;
            self.queue.complete_batch();
        }
        if lost == 0 {
            self.spill(lp, true).await;
        }
        lost += self.queue.drain();
        Leftover {
            lost,
            buffered: self.buffer.as_ref().map_or(0, SharedBuffer::samples),
        }
    }

    /// Waits `delay` before a retry; with `spill` (a disk record is being retried, so no batch
    /// from memory is in flight), moves the queue to disk meanwhile. `Some(OutOfTime)` when
    /// the shutdown deadline passes.
    async fn wait(&self, lp: &mut Loop, delay: Duration, spill: bool) -> Option<Fate> {
        let spilling = spill && self.buffer.is_some();
        let mut begins = lp.shutdown.clone();
        let mut shortened = begins.borrow().is_some();
        let sleep = tokio::time::sleep(if shortened {
            delay.min(SHUTDOWN_RETRY_EVERY)
        } else {
            delay
        });
        tokio::pin!(sleep);
        loop {
            let wake = tokio::select! {
                _ = &mut sleep => Wake::Slept,
                _ = begins.wait_for(Option::is_some), if !shortened => Wake::ShutdownBegins,
                _ = deadline(&mut lp.shutdown) => Wake::Deadline,
                _ = self.queue.wake.notified(), if spilling => Wake::Queue,
                _ = lp.tick.tick(), if spilling => Wake::Tick,
            };
            match wake {
                Wake::Slept => return None,
                Wake::ShutdownBegins => {
                    shortened = true;
                    let soon = Instant::now() + SHUTDOWN_RETRY_EVERY;
                    if soon < sleep.deadline() {
                        sleep.as_mut().reset(soon);
                    }
                }
                Wake::Deadline => return Some(Fate::OutOfTime),
                Wake::Queue => self.spill(lp, false).await,
                Wake::Tick => self.spill(lp, true).await,
            }
        }
    }

    /// Sends one request body until it is delivered, dropped, handed to the disk buffer
    /// (`Failing`), abandoned, or the shutdown deadline passes.
    async fn deliver(
        &self,
        lp: &mut Loop,
        body: &Bytes,
        samples: u64,
        raw_len: u64,
        source: Source,
    ) -> Fate {
        let url = self.transport.url();
        loop {
            if let Some(delay) = lp.wait_first.take() {
                let spill = matches!(source, Source::Disk(_));
                if let Some(fate) = self.wait(lp, delay, spill).await {
                    return fate;
                }
                self.stats.retried(samples);
            }
            if let (Source::Disk(pos), Some(buffer)) = (source, &self.buffer)
                && !buffer.contains(pos)
            {
                return Fate::Abandoned;
            }
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.transport.send(body.clone()) => outcome,
                _ = deadline(&mut lp.shutdown) => return Fate::OutOfTime,
            };
            match outcome {
                Outcome::Delivered { status } => {
                    self.stats.request(status, started.elapsed());
                    self.stats
                        .delivered(samples, body.len() as u64, raw_len, now_ms());
                    lp.burst.success(url);
                    lp.backoff = self.backoff();
                    return Fate::Finished;
                }
                Outcome::Drop { status, body } => {
                    self.stats.request(status, started.elapsed());
                    self.stats.dropped(DropReason::Http4xx, samples);
                    tracing::warn!(
                        endpoint = url,
                        status,
                        samples,
                        "remote write rejected a batch; dropped it without retrying: {body}"
                    );
                    // The endpoint answered, so it is not down.
                    lp.burst.success(url);
                    lp.backoff = self.backoff();
                    return Fate::Finished;
                }
                Outcome::Retry {
                    status,
                    retry_after,
                    error,
                } => {
                    self.stats.request(status, started.elapsed());
                    lp.burst.failure(url, &error);
                    let ceiling = lp.backoff.next().unwrap_or(self.retry.max_delay);
                    let delay = match retry_after {
                        Some(after) => after.min(self.retry.max_retry_after),
                        None => full_jitter(ceiling),
                    };
                    lp.wait_first = Some(delay);
                    if let Source::Memory { to_disk: true } = source {
                        return Fate::Failing;
                    }
                }
            }
        }
    }
}

/// A uniformly random delay between zero and `ceiling` ("full jitter"), so that many senders
/// that failed together do not retry together.
fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_ceiling() {
        let ceiling = Duration::from_millis(100);
        let delays: Vec<Duration> = (0..1000).map(|_| full_jitter(ceiling)).collect();
        assert!(delays.iter().all(|d| *d <= ceiling));
        assert!(
            delays.iter().any(|d| *d < ceiling / 4),
            "spread down to zero"
        );
        assert!(
            delays.iter().any(|d| *d > ceiling * 3 / 4),
            "spread up to the ceiling"
        );
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_ceiling_grows_and_caps() {
        let mut b = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build();
        // backon multiplies with an f32 factor: compare at millisecond precision.
        let ceilings: Vec<u128> = (0..12).map(|_| b.next().unwrap().as_millis()).collect();
        assert_eq!(&ceilings[..4], &[100, 200, 400, 800]);
        assert_eq!(*ceilings.last().unwrap(), 30_000);
    }
}
