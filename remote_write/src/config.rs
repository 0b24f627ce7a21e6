//! Client configuration: endpoints, authentication, TLS, batching, retries and queue size.

use std::path::PathBuf;
use std::time::Duration;

use crate::buffer::Fsync;

/// Largest request VictoriaMetrics accepts by default (`-maxInsertRequestSize`).
pub const VICTORIA_METRICS_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Everything a [`crate::Client`] needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where to send; each endpoint gets every sample, with its own queue and retry state.
    pub endpoints: Vec<EndpointConfig>,
    /// Labels added to every series, e.g. `cluster=prod-a`. A series' own label of the same
    /// name wins (the external label is not added to that series).
    pub external_labels: Vec<(String, String)>,
    /// When and how much to send at once.
    pub batch: BatchConfig,
    /// How failed requests are retried.
    pub retry: RetryConfig,
    /// Samples each endpoint may hold while it cannot deliver; beyond that the oldest are
    /// dropped and counted as `queue_full`.
    pub queue_capacity: usize,
    /// The `User-Agent` header, `<name>/<version>`.
    pub user_agent: String,
    /// Keep what cannot be delivered in time on disk, under this directory (one
    /// subdirectory per endpoint, named after a hash of its URL), and replay it after a
    /// restart. `None` (default): no disk buffer; undeliverable samples are dropped. The
    /// directory should be on local storage (e.g. a Kubernetes `emptyDir` that outlives a
    /// container restart). See [`crate::buffer`] for the format and guarantees.
    pub buffer_dir: Option<PathBuf>,
    /// The most bytes each endpoint's buffer may hold on disk (default 256 MiB); beyond it
    /// the oldest segments are deleted and counted. At least twice `buffer_segment_bytes`.
    pub buffer_max_bytes: u64,
    /// A new segment file is started once the current one reaches this size (default
    /// 8 MiB). The cap drops whole segments, so this is also its granularity. At least 4 KiB.
    pub buffer_segment_bytes: u64,
    /// When buffer writes are synced to the disk (default: after every batch).
    pub buffer_fsync: Fsync,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            endpoints: Vec::new(),
            external_labels: Vec::new(),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            queue_capacity: 100_000,
            user_agent: concat!("pie-remote-write/", env!("CARGO_PKG_VERSION")).to_owned(),
            buffer_dir: None,
            buffer_max_bytes: 256 * 1024 * 1024,
            buffer_segment_bytes: 8 * 1024 * 1024,
            buffer_fsync: Fsync::default(),
        }
    }
}

/// One remote-write receiver.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The full write URL, e.g. `http://vminsert:8480/insert/0/prometheus/api/v1/write`.
    pub url: String,
    /// Credentials sent with every request.
    pub auth: Auth,
    /// Extra headers. They cannot replace the protocol headers (`Content-Encoding`,
    /// `Content-Type`, `X-Prometheus-Remote-Write-Version`, `User-Agent`), nor
    /// `Authorization` when [`EndpointConfig::auth`] is set: such a header is a config error.
    pub headers: Vec<(String, String)>,
    /// A PEM file of CA certificates trusted in addition to the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Accept any server certificate. For tests only.
    pub tls_insecure_skip_verify: bool,
    /// Time limit for one request, connecting included.
    pub timeout: Duration,
}

impl EndpointConfig {
    /// An endpoint at `url` with no authentication and a 30 s request timeout.
    pub fn new(url: impl Into<String>) -> EndpointConfig {
        EndpointConfig {
            url: url.into(),
            auth: Auth::None,
            headers: Vec::new(),
            tls_ca_file: None,
            tls_insecure_skip_verify: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Request credentials. Secret files are read for every request, so rotated credentials
/// (e.g. a projected or mounted Secret) are picked up without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTP basic authentication with the password read from a file (trailing newline trimmed).
    Basic {
        /// The user name.
        username: String,
        /// The file holding the password.
        password_file: PathBuf,
    },
    /// `Authorization: Bearer <token>` with the token read from a file (whitespace trimmed).
    BearerTokenFile(PathBuf),
}

/// Batching: a request is sent when `max_samples` are queued, when the oldest queued sample
/// has waited `flush_interval`, or at once when `immediate` is set.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// At most this many samples per request (default 2000).
    pub max_samples: usize,
    /// At most about this many protobuf bytes per request before compression (default 4 MiB,
    /// far below VictoriaMetrics' 32 MiB limit).
    pub max_bytes: usize,
    /// Send what is queued at least this often (default 1 s).
    pub flush_interval: Duration,
    /// Send as soon as anything is queued; samples that arrive while a request is in flight
    /// go out together in the next one.
    pub immediate: bool,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_samples: 2000,
            max_bytes: 4 * 1024 * 1024,
            flush_interval: Duration::from_secs(1),
            immediate: false,
        }
    }
}

/// Retries of requests that failed with a connection error, a timeout, 408, 429 or 5xx.
/// Delays grow exponentially from `min_delay` to `max_delay` with full jitter (a random delay
/// between zero and the exponential value). A `Retry-After` header replaces the computed
/// delay, capped at `max_retry_after`. Retries go on until the request succeeds, fails
/// permanently, or the client shuts down.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// The first retry's upper bound (default 100 ms).
    pub min_delay: Duration,
    /// The largest upper bound (default 30 s).
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured (default 60 s).
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No endpoint was given.
    #[error("no remote-write endpoint is configured")]
    NoEndpoints,
    /// An endpoint URL does not parse or is not http(s).
    #[error("invalid remote-write URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header cannot be used.
    #[error("header {name:?} for {url}: {reason}")]
    InvalidHeader {
        /// The endpoint URL.
        url: String,
        /// The header name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("TLS CA file {path}: {reason}")]
    TlsCa {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An external label is invalid.
    #[error("external label: {0}")]
    ExternalLabel(#[from] crate::series::SeriesError),
    /// A batching, queue or retry setting is out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The disk buffer directory cannot be used.
    #[error("remote-write buffer {path}: {reason}")]
    Buffer {
        /// The endpoint's buffer directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client for {url}: {reason}")]
    HttpClient {
        /// The endpoint URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl ClientConfig {
    /// Checks the settings that do not need I/O.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints);
        }
        let b = &self.batch;
        if b.max_samples == 0 {
            return Err(ConfigError::OutOfRange(
                "batch max_samples must be at least 1".into(),
            ));
        }
        if b.max_bytes < 1024 || b.max_bytes > VICTORIA_METRICS_MAX_REQUEST_BYTES {
            return Err(ConfigError::OutOfRange(format!(
                "batch max_bytes must be between 1 KiB and {VICTORIA_METRICS_MAX_REQUEST_BYTES} bytes"
            )));
        }
        if b.flush_interval.is_zero() {
            return Err(ConfigError::OutOfRange(
                "batch flush_interval must be positive".into(),
            ));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::OutOfRange(
                "queue_capacity must be at least 1".into(),
            ));
        }
        if self.buffer_dir.is_some()
            && (self.buffer_segment_bytes < 4096
                || self.buffer_max_bytes < 2 * self.buffer_segment_bytes)
        {
            return Err(ConfigError::OutOfRange(
                "buffer_segment_bytes must be at least 4 KiB and buffer_max_bytes at least twice that"
                    .into(),
            ));
        }
        let r = &self.retry;
        if r.min_delay.is_zero() || r.min_delay > r.max_delay {
            return Err(ConfigError::OutOfRange(
                "retry min_delay must be positive and not above max_delay".into(),
            ));
        }
        for e in &self.endpoints {
            if e.timeout.is_zero() {
                return Err(ConfigError::OutOfRange(format!(
                    "timeout for {} must be positive",
                    e.url
                )));
            }
        }
        Ok(())
    }
}
