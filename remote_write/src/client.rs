//! The public client: enqueue samples, flush, shut down, read self-metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::buffer::{Buffer, Settings, SharedBuffer, endpoint_dir_name};
use crate::config::{ClientConfig, ConfigError};
use crate::endpoint::{Endpoint, Leftover};
use crate::queue::Queue;
use crate::series::{ExternalLabels, Sample, Series, SeriesError};
use crate::stats::{DropReason, EndpointStats, EndpointStatsSnapshot};
use crate::transport::Transport;

/// A remote-write client sending every sample to each configured endpoint.
///
/// Cloning is cheap and clones share the queues. Each endpoint has its own bounded queue,
/// sender task and retry state, so an endpoint that is down never stalls the others. Pushing
/// never blocks: when a queue is full its oldest samples are dropped and counted.
///
/// Dropping the last clone stops the senders at once; call [`Client::shutdown`] first to
/// deliver what is queued.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<(Arc<Queue>, Arc<EndpointStats>)>,
    shutdown: watch::Sender<Option<Instant>>,
    tasks: Mutex<Vec<(String, JoinHandle<Leftover>)>>,
    /// Whether the endpoints have disk buffers.
    buffered: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, task) in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// What [`Client::shutdown`] could not deliver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// `(endpoint URL, samples not delivered)` for every endpoint: lost, neither delivered
    /// nor kept in the disk buffer.
    pub endpoints: Vec<(String, u64)>,
    /// `(endpoint URL, samples in the disk buffer)` for every endpoint with a buffer: kept on
    /// disk for the next client using the same `buffer_dir` (earlier runs' included).
    pub buffered: Vec<(String, u64)>,
}

impl ShutdownReport {
    /// Samples not delivered and not buffered (lost), summed over endpoints.
    pub fn undelivered(&self) -> u64 {
        self.endpoints.iter().map(|(_, n)| n).sum()
    }

    /// Samples left in disk buffers, summed over endpoints.
    pub fn buffered_samples(&self) -> u64 {
        self.buffered.iter().map(|(_, n)| n).sum()
    }

    /// Whether everything was delivered everywhere (nothing lost, nothing left on disk).
    pub fn is_complete(&self) -> bool {
        self.undelivered() == 0 && self.buffered_samples() == 0
    }
}

impl Client {
    /// Validates `config` and starts one sender task per endpoint on the current tokio runtime.
    ///
    /// With [`ClientConfig::buffer_dir`], each endpoint's buffer directory is created, locked
    /// and indexed here (reading the segments left by an earlier run), and their records are
    /// sent before anything pushed to this client.
    ///
    /// # Errors
    /// A [`ConfigError`] for invalid settings, URLs, headers, CA files or external labels, or
    /// a buffer directory that cannot be created, read or locked (in use by another client).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Client, ConfigError> {
        config.validate()?;
        let external = ExternalLabels::new(
            config
                .external_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        let wake_at = if config.batch.immediate {
            1
        } else {
            config.batch.max_samples
        };
        let (shutdown, _) = watch::channel(None);
        let mut endpoints = Vec::new();
        let mut senders = Vec::new();
        for endpoint in &config.endpoints {
            let transport = Transport::new(endpoint, &config.user_agent)?;
            let stats = Arc::new(EndpointStats::new(transport.url()));
            let queue = Arc::new(Queue::new(
                config.queue_capacity,
                wake_at,
                external.clone(),
                stats.clone(),
            ));
            let buffer = match &config.buffer_dir {
                Some(root) => {
                    let dir = root.join(endpoint_dir_name(transport.url()));
                    let settings = Settings {
                        dir: dir.clone(),
                        max_bytes: config.buffer_max_bytes,
                        segment_bytes: config.buffer_segment_bytes,
                        fsync: config.buffer_fsync,
                    };
                    let buffer =
                        Buffer::open(settings, transport.url(), stats.clone(), queue.clone())
                            .map_err(|e| ConfigError::Buffer {
                                path: dir,
                                reason: e.to_string(),
                            })?;
                    Some(SharedBuffer::new(buffer))
                }
                None => None,
            };
            endpoints.push((queue.clone(), stats.clone()));
            senders.push(Endpoint {
                queue,
                stats,
                transport,
                batch: config.batch.clone(),
                retry: config.retry.clone(),
                buffer,
            });
        }
        let tasks = senders
            .into_iter()
            .map(|sender| {
                let url = sender.transport.url().to_owned();
                (url, tokio::spawn(sender.run(shutdown.subscribe())))
            })
            .collect();
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                shutdown,
                tasks: Mutex::new(tasks),
                buffered: config.buffer_dir.is_some(),
            }),
        })
    }

    /// Queues `sample` of `series` for every endpoint. A sample not newer than the last one
    /// queued for its series is dropped and counted as `out_of_order` (per endpoint).
    pub fn push(&self, series: &Series, sample: Sample) {
        for (queue, _) in &self.inner.endpoints {
            queue.push(series, sample);
        }
    }

    /// Queues every `(series, sample)` of `points`, in order, for every endpoint: the same as
    /// calling [`Client::push`] for each, but cheaper for many samples at once (a whole
    /// snapshot of a metric store, say), since each endpoint's queue is locked once per few
    /// hundred samples instead of once per sample.
    pub fn push_many(&self, points: &[(Series, Sample)]) {
        for (queue, _) in &self.inner.endpoints {
            queue.push_many(points);
        }
    }

    /// Validates `labels` (which must include `__name__`) and queues `sample`. An invalid label
    /// set is counted as dropped (`invalid`) and returned as an error; nothing is sent.
    pub fn push_labels<K, V>(
        &self,
        labels: impl IntoIterator<Item = (K, V)>,
        sample: Sample,
    ) -> Result<Series, SeriesError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        match Series::from_labels(labels) {
            Ok(series) => {
                self.push(&series, sample);
                Ok(series)
            }
            Err(error) => {
                for (_, stats) in &self.inner.endpoints {
                    stats.dropped(DropReason::Invalid, 1);
                }
                Err(error)
            }
        }
    }

    /// Marks `series` as gone: sends one staleness marker (StaleNaN) at `timestamp_ms`, or just
    /// after the series' last sample if that is newer. A series never pushed, or already marked
    /// and not pushed since, gets no marker.
    pub fn mark_stale(&self, series: &Series, timestamp_ms: i64) {
        for (queue, _) in &self.inner.endpoints {
            queue.mark_stale(series, timestamp_ms);
        }
    }

    /// Sends everything queued now and waits until every sample pushed before this call was
    /// delivered or dropped, on every endpoint (a sample moved to the disk buffer is neither
    /// until it is replayed). While an endpoint is down this waits for it to come back; wrap it
    /// in [`tokio::time::timeout`] to bound the wait. Records left by an earlier run are not
    /// waited for.
    pub async fn flush(&self) {
        let targets: Vec<u64> = self
            .inner
            .endpoints
            .iter()
            .map(|(queue, _)| queue.request_flush())
            .collect();
        for ((queue, _), target) in self.inner.endpoints.iter().zip(targets) {
            queue.wait_done(target).await;
        }
    }

    /// Sends everything queued now and waits until every sample pushed before this call left
    /// memory on every endpoint: delivered, dropped, or written to the disk buffer (synced as
    /// its fsync policy says). A program that acknowledges data to its own clients only after
    /// this loses nothing it acknowledged when it is killed. Without a disk buffer this waits
    /// for an endpoint that is down to come back; wrap it in [`tokio::time::timeout`].
    pub async fn settle(&self) {
        let targets: Vec<u64> = self
            .inner
            .endpoints
            .iter()
            .map(|(queue, _)| queue.request_flush())
            .collect();
        for ((queue, _), target) in self.inner.endpoints.iter().zip(targets) {
            queue.wait_durable(target).await;
        }
    }

    /// Delivers what it can within `timeout`, then stops the senders and reports what each
    /// endpoint could not deliver. With a disk buffer, what is undelivered at the deadline
    /// (the batch in flight and everything queued) is written to disk instead of being lost,
    /// which takes a moment after the deadline. Samples pushed afterwards are not sent. A
    /// second call returns an empty report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = Instant::now() + timeout;
        self.inner.shutdown.send_replace(Some(deadline));
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let mut report = ShutdownReport::default();
        for (url, task) in tasks {
            let left = task.await.unwrap_or_else(|e| {
                tracing::error!(endpoint = url, "remote-write sender ended abnormally: {e}");
                Leftover::default()
            });
            if left.lost > 0 {
                tracing::warn!(
                    endpoint = url,
                    undelivered = left.lost,
                    "remote write shut down with samples undelivered"
                );
            }
            if left.buffered > 0 {
                tracing::info!(
                    endpoint = url,
                    buffered = left.buffered,
                    "remote write shut down with samples kept in its disk buffer"
                );
            }
            if self.inner.buffered {
                report.buffered.push((url.clone(), left.buffered));
            }
            report.endpoints.push((url, left.lost));
        }
        report
    }

    /// Whether the endpoints have disk buffers ([`ClientConfig::buffer_dir`] was set), i.e.
    /// whether the [`EndpointStatsSnapshot::buffer`] figures mean anything.
    pub fn has_buffer(&self) -> bool {
        self.inner.buffered
    }

    /// Self-metrics of every endpoint, in configuration order.
    pub fn stats(&self) -> Vec<EndpointStatsSnapshot> {
        self.inner
            .endpoints
            .iter()
            .map(|(_, stats)| stats.snapshot())
            .collect()
    }
}
