//! A Prometheus remote-write 1.0 client, as VictoriaMetrics (vminsert, vmagent, single node)
//! and Prometheus' own receiver accept it.
//!
//! - [`Series`]: a validated, sorted label set (invalid input is an error here, never sent).
//! - [`Client`]: queues samples per endpoint (bounded, drop-oldest, counted), batches them,
//!   encodes protobuf, compresses with snappy's block format, POSTs with the protocol headers,
//!   retries connection errors, timeouts, 408, 429 and 5xx with exponential backoff and full
//!   jitter (honouring `Retry-After`), and drops other 4xx answers (counted and logged).
//!   Per series, timestamps leave in strictly increasing order across requests and retries.
//!   [`Client::push_many`] queues a whole snapshot of samples at once, locking each queue once
//!   per few hundred samples rather than once per sample.
//! - [`Client::stats`]: self-metrics per endpoint as plain data.
//! - Optionally ([`ClientConfig::buffer_dir`]), a durable on-disk buffer per endpoint: what
//!   cannot be delivered in time, and what is pending at shutdown, is kept in checksummed
//!   segment files and replayed in order after a restart (see [`buffer`]).
//!
//! ```no_run
//! use remote_write::{Client, ClientConfig, EndpointConfig, Sample, Series};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new(ClientConfig {
//!     endpoints: vec![EndpointConfig::new("http://127.0.0.1:8428/api/v1/write")],
//!     external_labels: vec![("cluster".into(), "prod-a".into())],
//!     ..ClientConfig::default()
//! })?;
//! let series = Series::new("pie_probe_total", [("storage_class", "standard")])?;
//! client.push(&series, Sample::new(1.0, 1_700_000_000_000));
//! let report = client.shutdown(std::time::Duration::from_secs(5)).await;
//! assert!(report.is_complete());
//! # Ok(()) }
//! ```

pub mod buffer;
mod client;
mod config;
mod encode;
mod endpoint;
pub mod proto;
mod queue;
mod series;
mod stats;
mod transport;

pub use buffer::Fsync;
pub use client::{Client, ShutdownReport};
pub use config::{
    Auth, BatchConfig, ClientConfig, ConfigError, EndpointConfig, RetryConfig,
    VICTORIA_METRICS_MAX_REQUEST_BYTES,
};
pub use encode::{
    DecodeError, EncodedRequest, MAX_DECODED_REQUEST_BYTES, PreparedSample, RequestEncoder,
    decode_write_request, encode_write_request,
};
pub use series::{
    ExternalLabels, MAX_LABEL_NAME_BYTES, MAX_LABEL_VALUE_BYTES, MAX_LABELS, METRIC_NAME_LABEL,
    STALE_NAN_BITS, Sample, Series, SeriesError, is_stale_nan, is_valid_label_name,
    is_valid_metric_name, now_ms, stale_nan,
};
pub use stats::{
    BufferStats, DropReason, DurationHistogram, EndpointStatsSnapshot, SEND_DURATION_BUCKETS,
};
pub use transport::{VERSION, VERSION_HEADER, install_crypto_provider};
