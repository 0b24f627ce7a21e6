//! Store -> remote write: every change is queued at once with its own timestamp, and the whole
//! store is re-sent every `--push-interval` so no series looks stale.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pie_agent::cli::parse_duration;
use remote_write::{Auth, BatchConfig, Client, ClientConfig, ConfigError, EndpointConfig, Series};
use tracing::{info, warn};

use crate::store::{self, Point, Store, StoreError, Update};

/// Remote-write flags, shared by `run` and `receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// Remote-write URL, e.g. http://victoria-metrics:8428/api/v1/write (repeatable; each gets
    /// every sample; comma-separated in the env var). None: serve /metrics only.
    #[arg(
        long = "remote-write-url",
        env = "PIE_REMOTE_WRITE_URLS",
        value_delimiter = ','
    )]
    pub remote_write_urls: Vec<String>,
    /// Label added to every series, `k=v` (repeatable; comma-separated in the env var). Set at
    /// least `cluster=<name>`.
    #[arg(
        long = "external-label",
        env = "PIE_EXTERNAL_LABELS",
        value_delimiter = ',',
        value_parser = parse_pair
    )]
    pub external_labels: Vec<(String, String)>,
    /// Re-send the whole store this often.
    #[arg(long, env = "PIE_PUSH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub push_interval: Duration,
    /// Basic-auth user name for remote write (with --remote-write-password-file).
    #[arg(
        long,
        env = "PIE_REMOTE_WRITE_USERNAME",
        requires = "remote_write_password_file"
    )]
    pub remote_write_username: Option<String>,
    /// File with the basic-auth password (re-read for every request).
    #[arg(
        long,
        env = "PIE_REMOTE_WRITE_PASSWORD_FILE",
        requires = "remote_write_username"
    )]
    pub remote_write_password_file: Option<PathBuf>,
    /// File with a bearer token for remote write (re-read for every request).
    #[arg(
        long,
        env = "PIE_REMOTE_WRITE_BEARER_TOKEN_FILE",
        conflicts_with = "remote_write_username"
    )]
    pub remote_write_bearer_token_file: Option<PathBuf>,
    /// Extra HTTP header `Name=value` for remote write (repeatable; comma-separated in the env
    /// var).
    #[arg(
        long = "remote-write-header",
        env = "PIE_REMOTE_WRITE_HEADERS",
        value_delimiter = ',',
        value_parser = parse_pair
    )]
    pub remote_write_headers: Vec<(String, String)>,
    /// PEM file of CAs trusted for https remote-write URLs, in addition to the system's.
    #[arg(long, env = "PIE_REMOTE_WRITE_CA_FILE")]
    pub remote_write_ca_file: Option<PathBuf>,
    /// Accept any TLS certificate from the remote-write endpoint (tests only).
    #[arg(long, env = "PIE_REMOTE_WRITE_INSECURE_SKIP_VERIFY")]
    pub remote_write_insecure_skip_verify: bool,
    /// Time limit of one remote-write request.
    #[arg(long, env = "PIE_REMOTE_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub remote_write_timeout: Duration,
    /// At most this many samples per request.
    #[arg(long, env = "PIE_REMOTE_WRITE_MAX_SAMPLES", default_value_t = 2000)]
    pub remote_write_max_samples: usize,
    /// With --remote-write-immediate=false: send queued samples at least this often.
    #[arg(long, env = "PIE_REMOTE_WRITE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub remote_write_flush_interval: Duration,
    /// Send as soon as anything is queued (what arrives meanwhile goes in the next request).
    #[arg(long, env = "PIE_REMOTE_WRITE_IMMEDIATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub remote_write_immediate: bool,
    /// Samples each endpoint may hold while it is unreachable (then the oldest are dropped).
    #[arg(
        long,
        env = "PIE_REMOTE_WRITE_QUEUE_CAPACITY",
        default_value_t = 100_000
    )]
    pub remote_write_queue_capacity: usize,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not of the form name=value")),
    }
}

impl PushArgs {
    /// The remote-write client configuration, or `None` when no URL is given.
    pub fn client_config(&self) -> Option<ClientConfig> {
        if self.remote_write_urls.is_empty() {
            return None;
        }
        let auth = match (
            &self.remote_write_username,
            &self.remote_write_password_file,
            &self.remote_write_bearer_token_file,
        ) {
            (Some(username), Some(password_file), _) => Auth::Basic {
                username: username.clone(),
                password_file: password_file.clone(),
            },
            (_, _, Some(token)) => Auth::BearerTokenFile(token.clone()),
            _ => Auth::None,
        };
        let endpoints = self
            .remote_write_urls
            .iter()
            .map(|url| EndpointConfig {
                auth: auth.clone(),
                headers: self.remote_write_headers.clone(),
                tls_ca_file: self.remote_write_ca_file.clone(),
                tls_insecure_skip_verify: self.remote_write_insecure_skip_verify,
                timeout: self.remote_write_timeout,
                ..EndpointConfig::new(url.clone())
            })
            .collect();
        Some(ClientConfig {
            endpoints,
            external_labels: self.external_labels.clone(),
            batch: BatchConfig {
                max_samples: self.remote_write_max_samples,
                flush_interval: self.remote_write_flush_interval,
                immediate: self.remote_write_immediate,
                ..BatchConfig::default()
            },
            queue_capacity: self.remote_write_queue_capacity,
            user_agent: concat!("pie-controller/", env!("CARGO_PKG_VERSION")).to_owned(),
            ..ClientConfig::default()
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The store and the remote-write client together: what the receiver and the outcome tracker
/// record into.
#[derive(Debug, Clone)]
pub struct Pusher {
    store: Arc<Store>,
    client: Option<Client>,
}

impl Pusher {
    /// Starts the remote-write client (on the current tokio runtime) when `args` has a URL;
    /// otherwise warns once and only keeps the store (for `/metrics`).
    ///
    /// # Errors
    /// An invalid URL, header, CA file, external label or batching setting.
    pub fn new(args: &PushArgs, store: Arc<Store>) -> Result<Pusher, ConfigError> {
        let client = match args.client_config() {
            Some(config) => {
                remote_write::install_crypto_provider();
                Some(Client::new(config)?)
            }
            None => {
                warn!("no --remote-write-url given: nothing is pushed, /metrics only");
                None
            }
        };
        Ok(Pusher { store, client })
    }

    /// A pusher with an existing client (or none), for tests and benchmarks.
    pub fn with_client(store: Arc<Store>, client: Option<Client>) -> Pusher {
        Pusher { store, client }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The remote-write client, if any.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Applies `updates` to the store and queues the changed samples at once.
    pub fn record(&self, updates: impl IntoIterator<Item = Update>) -> Vec<StoreError> {
        let (points, errors) = self.store.apply(updates);
        for e in &errors {
            warn!(error = %e, "metric update rejected");
        }
        self.push(&points);
        errors
    }

    /// Queues `points`.
    pub fn push(&self, points: &[Point]) {
        if let Some(client) = &self.client {
            for (series, sample) in points {
                client.push(series, *sample);
            }
        }
    }

    /// Removes series for which `keep` is false and queues a stale marker for each.
    pub fn remove(&self, keep: impl FnMut(&store::Family, &[(&str, &str)]) -> bool) -> usize {
        let stale: Vec<(Series, i64)> = self.store.retain(now_ms(), keep);
        if let Some(client) = &self.client {
            for (series, ts) in &stale {
                client.mark_stale(series, *ts);
            }
        }
        stale.len()
    }

    /// Copies the remote-write client's self-metrics into the store (nothing is pushed).
    pub fn refresh_self_metrics(&self) {
        if let Some(client) = &self.client {
            let (_, errors) = self
                .store
                .apply(store::remote_write_updates(&client.stats(), now_ms()));
            for e in errors {
                warn!(error = %e, "remote-write self-metric rejected");
            }
        }
    }

    /// Queues the whole store at `now_ms` (self-metrics refreshed first).
    pub fn push_all(&self, now_ms: i64) -> usize {
        self.refresh_self_metrics();
        let points = self.store.snapshot(now_ms);
        self.push(&points);
        points.len()
    }

    /// Pushes the whole store now and then every `interval`, forever.
    pub async fn run_periodic(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let n = self.push_all(now_ms());
            tracing::debug!(samples = n, "periodic push");
        }
    }

    /// Pushes the whole store once more and delivers what can be delivered within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Some(client) = &self.client {
            self.push_all(now_ms());
            let report = client.shutdown(timeout).await;
            if report.is_complete() {
                info!("remote write: everything delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        push: PushArgs,
    }

    #[test]
    fn flags_build_the_client_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--remote-write-url",
            "http://a/api/v1/write",
            "--remote-write-url",
            "http://b/api/v1/write",
            "--external-label",
            "cluster=prod-a",
            "--external-label",
            "region=eu",
            "--push-interval",
            "10s",
            "--remote-write-bearer-token-file",
            "/t",
            "--remote-write-immediate=false",
            "--remote-write-header",
            "X-Scope-OrgID=7",
        ])
        .unwrap();
        assert_eq!(cli.push.push_interval, Duration::from_secs(10));
        let config = cli.push.client_config().unwrap();
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.endpoints[1].auth, Auth::BearerTokenFile("/t".into()));
        assert_eq!(
            config.endpoints[0].headers,
            [("X-Scope-OrgID".into(), "7".into())]
        );
        assert_eq!(
            config.external_labels,
            [
                ("cluster".into(), "prod-a".into()),
                ("region".into(), "eu".into())
            ]
        );
        assert!(!config.batch.immediate);
    }

    #[test]
    fn defaults_and_bad_flags() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.push.client_config().is_none());
        assert_eq!(cli.push.push_interval, Duration::from_secs(30));
        assert!(cli.push.remote_write_immediate);
        assert!(Cli::try_parse_from(["x", "--external-label", "nolabel"]).is_err());
        assert!(Cli::try_parse_from(["x", "--push-interval", "0s"]).is_err());
        assert!(Cli::try_parse_from(["x", "--remote-write-username", "u"]).is_err());
    }

    #[tokio::test]
    async fn record_without_a_client_keeps_the_store() {
        let store = Arc::new(Store::new());
        let pusher = Pusher::with_client(store.clone(), None);
        let errors = pusher.record([Update::new(
            &store::LEADER,
            Vec::<String>::new(),
            store::Op::Set(1.0),
            1,
        )]);
        assert!(errors.is_empty());
        assert_eq!(store.len(), 1);
        assert_eq!(pusher.push_all(2), 1);
        assert_eq!(pusher.remove(|_, _| false), 1);
        assert!(store.is_empty());
    }
}
