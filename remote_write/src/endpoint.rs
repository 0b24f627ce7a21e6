//! The send loop of one endpoint: take a batch, POST it, retry or drop, repeat.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{BatchConfig, RetryConfig};
use crate::encode::RequestEncoder;
use crate::queue::{Batch, Queue};
use crate::stats::{DropReason, EndpointStats};
use crate::transport::{Outcome, Transport};

/// How long a series' staleness marker is remembered (to send it only once) before the series
/// is forgotten.
const FORGET_STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// What happened to a batch.
enum Fate {
    Finished,
    /// The shutdown deadline passed while the batch was still undelivered.
    OutOfTime,
}

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
    /// Runs until shutdown; returns the number of samples it could not deliver.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<Option<Instant>>) -> u64 {
        let mut encoder = RequestEncoder::new();
        let mut burst = Burst::default();
        let mut tick = tokio::time::interval(self.batch.flush_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_forget = Instant::now();
        loop {
            let drain_all = if shutdown.borrow().is_some() {
                true
            } else {
                tokio::select! {
                    _ = tick.tick() => true,
                    _ = self.queue.wake.notified() => self.batch.immediate || self.queue.take_flush_request(),
                    _ = shutdown.changed() => true,
                }
            };
            let shutting_down = shutdown.borrow().is_some();
            while drain_all || self.queue.has_full_batch() {
                let Some(batch) = self
                    .queue
                    .take_batch(self.batch.max_samples, self.batch.max_bytes)
                else {
                    break;
                };
                let fate = self
                    .deliver(&mut encoder, &batch, &mut burst, &mut shutdown)
                    .await;
                self.queue.complete_batch();
                if let Fate::OutOfTime = fate {
                    return batch.entries.len() as u64 + self.queue.drain();
                }
            }
            if shutting_down {
                return self.queue.drain();
            }
            if last_forget.elapsed() >= FORGET_STALE_AFTER {
                last_forget = Instant::now();
                let cutoff = now_ms() - FORGET_STALE_AFTER.as_millis() as i64;
                self.queue.forget_stale_before(cutoff);
            }
        }
    }

    /// Sends `batch` until it is delivered, dropped, or the shutdown deadline passes.
    async fn deliver(
        &self,
        encoder: &mut RequestEncoder,
        batch: &Batch,
        burst: &mut Burst,
        shutdown: &mut watch::Receiver<Option<Instant>>,
    ) -> Fate {
        let url = self.transport.url();
        let samples = batch.entries.len() as u64;
        let request = encoder.encode(&batch.entries);
        let raw_len = request.raw_len as u64;
        let body = Bytes::copy_from_slice(request.body);
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .without_max_times()
            .build();
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.transport.send(body.clone()) => outcome,
                _ = deadline(shutdown) => return Fate::OutOfTime,
            };
            match outcome {
                Outcome::Delivered { status } => {
                    self.stats.request(status, started.elapsed());
                    self.stats
                        .delivered(samples, body.len() as u64, raw_len, now_ms());
                    burst.success(url);
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
                    burst.success(url);
                    return Fate::Finished;
                }
                Outcome::Retry {
                    status,
                    retry_after,
                    error,
                } => {
                    self.stats.request(status, started.elapsed());
                    burst.failure(url, &error);
                    let ceiling = backoff.next().unwrap_or(self.retry.max_delay);
                    let delay = match retry_after {
                        Some(after) => after.min(self.retry.max_retry_after),
                        None => full_jitter(ceiling),
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = deadline(shutdown) => return Fate::OutOfTime,
                    }
                    self.stats.retried(samples);
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

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
