//! Posting a report to the controller, with retries: a mount probe's [`pie_api::ProbeResult`]
//! to `/api/v1/results`, a provision probe's [`pie_api::ProvisionStarted`] to
//! `/api/v1/provision-started` (the answer comes once the controller has counted the Pod).
//!
//! `POST <controller-url><path>` with the JSON body and, when a token file is given,
//! `Authorization: Bearer <token>` (the file is re-read and trimmed on every attempt, so a rotated
//! token is picked up). Connection errors, 5xx and 429 are retried with jittered exponential
//! backoff, honouring `Retry-After` (seconds or an HTTP date), until the overall deadline; any
//! other 4xx is final and its `{"error": "..."}` message is returned.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tracing::{info, warn};

pub use pie_api::{PROVISION_STARTED_PATH, RESULTS_PATH};

/// First retry delay (before jitter, which adds up to the same again).
const MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest retry delay (before jitter).
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Time left for the last attempt when the backoff would overshoot the deadline.
const LAST_ATTEMPT_MARGIN: Duration = Duration::from_millis(100);
/// Longest controller message quoted in an error.
const MAX_MESSAGE_LEN: usize = 300;

/// Why a result was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The controller URL is unusable.
    #[error("invalid controller URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file cannot be read or holds no PEM certificate.
    #[error("cannot use CA file {path:?}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
    /// The token file cannot be read.
    #[error("cannot read token file {path:?}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token file is empty or holds something that cannot be an HTTP header.
    #[error("token file {0:?} is empty or not a valid token")]
    BadToken(PathBuf),
    /// The result cannot be encoded.
    #[error("cannot encode the result: {0}")]
    Encode(String),
    /// The controller answered with a non-retryable status.
    #[error("controller rejected the result with {status}: {message}")]
    Rejected {
        /// HTTP status.
        status: StatusCode,
        /// The controller's `error` message, or the start of its body.
        message: String,
    },
    /// The deadline passed (or a `Retry-After` pointed beyond it) before delivery succeeded.
    #[error("result not delivered within {deadline:?} after {attempts} attempt(s); last: {last}")]
    DeadlineExceeded {
        /// The overall deadline.
        deadline: Duration,
        /// Attempts made.
        attempts: u32,
        /// What went wrong last.
        last: String,
    },
}

/// A successful delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Attempts needed, at least 1.
    pub attempts: u32,
    /// The controller's answer.
    pub status: StatusCode,
}

/// Sends results to one controller.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    url: reqwest::Url,
    token_file: Option<PathBuf>,
    deadline: Duration,
}

/// The outcome of one failed attempt.
#[derive(Debug)]
enum AttemptError {
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    Fatal(DeliveryError),
}

impl Deliverer {
    /// A deliverer posting to `<controller_url><path>`, giving up after `deadline`.
    ///
    /// An `https` controller is verified against `ca_file` (a PEM bundle) when given, else
    /// against the system's roots. For plain `http` no roots are loaded at all, which saves
    /// reading the system's certificate store at every start.
    pub fn new(
        controller_url: &str,
        path: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<&Path>,
        deadline: Duration,
    ) -> Result<Self, DeliveryError> {
        let url = endpoint_url(controller_url, path)?;
        // reqwest is built without a default crypto provider; the error only says one is
        // installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder =
            reqwest::Client::builder().user_agent(concat!("pie-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            builder = builder.tls_certs_only(read_ca_file(path)?);
        } else if url.scheme() == "http" {
            builder = builder.tls_certs_only([]);
        }
        let client = builder
            .build()
            .map_err(|e| DeliveryError::Client(error_chain(&e)))?;
        Ok(Self {
            client,
            url,
            token_file,
            deadline,
        })
    }

    /// The receiver's URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Posts `report` as JSON, retrying transient failures until the deadline.
    pub async fn deliver<T: serde::Serialize>(
        &self,
        report: &T,
    ) -> Result<Delivered, DeliveryError> {
        let body = serde_json::to_vec(report).map_err(|e| DeliveryError::Encode(e.to_string()))?;
        let started = Instant::now();
        let ends = started + self.deadline;
        let attempts = Cell::new(0u32);
        let last = RefCell::new(String::from("no attempt finished"));
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .without_max_times();
        let attempt = || {
            attempts.set(attempts.get() + 1);
            self.attempt(&body, ends)
        };
        let retrying = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, AttemptError::Retryable { .. }))
            .adjust(|e, delay| {
                let remaining = ends.saturating_duration_since(Instant::now());
                match e {
                    // The controller said when; coming back earlier is pointless, and after the
                    // deadline impossible.
                    AttemptError::Retryable {
                        retry_after: Some(after),
                        ..
                    } => (*after < remaining).then_some(*after),
                    // Our own backoff: squeeze in a last attempt shortly before the deadline.
                    _ => {
                        let latest = remaining.checked_sub(LAST_ATTEMPT_MARGIN)?;
                        delay.map(|d| d.min(latest))
                    }
                }
            })
            .notify(|e, delay| {
                if let AttemptError::Retryable { reason, .. } = e {
                    last.replace(reason.clone());
                    warn!(attempt = attempts.get(), %reason, retry_in = ?delay, "delivery failed, retrying");
                }
            });
        let outcome = tokio::time::timeout(self.deadline, retrying).await;
        let deadline_exceeded = |last: String| DeliveryError::DeadlineExceeded {
            deadline: self.deadline,
            attempts: attempts.get(),
            last,
        };
        match outcome {
            Ok(Ok(status)) => {
                let delivered = Delivered {
                    attempts: attempts.get(),
                    status,
                };
                info!(url = %self.url, attempts = delivered.attempts, %status, elapsed = ?started.elapsed(), "result delivered");
                Ok(delivered)
            }
            Ok(Err(AttemptError::Fatal(e))) => Err(e),
            Ok(Err(AttemptError::Retryable {
                reason,
                retry_after,
            })) => Err(deadline_exceeded(match retry_after {
                Some(after) => format!("{reason} (Retry-After {after:?} is past the deadline)"),
                None => reason,
            })),
            Err(_) => Err(deadline_exceeded(last.take())),
        }
    }

    async fn attempt(&self, body: &[u8], ends: Instant) -> Result<StatusCode, AttemptError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(ends.saturating_duration_since(Instant::now()))
            .body(body.to_vec());
        if let Some(path) = &self.token_file {
            request = request.header(AUTHORIZATION, read_token(path)?);
        }
        let response = request.send().await.map_err(|e| AttemptError::Retryable {
            reason: error_chain(&e),
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(status);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let message = controller_message(status, &response.text().await.unwrap_or_default());
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(AttemptError::Retryable {
                reason: format!("{status}: {message}"),
                retry_after,
            })
        } else {
            Err(AttemptError::Fatal(DeliveryError::Rejected {
                status,
                message,
            }))
        }
    }
}

/// `<controller_url>/api/v1/results`, for an `http` or `https` URL with or without a trailing
/// slash or a path prefix.
pub fn results_url(controller_url: &str) -> Result<reqwest::Url, DeliveryError> {
    endpoint_url(controller_url, RESULTS_PATH)
}

/// `<controller_url><path>`, for an `http` or `https` URL with or without a trailing slash or a
/// path prefix.
pub fn endpoint_url(controller_url: &str, path: &str) -> Result<reqwest::Url, DeliveryError> {
    let invalid = |reason: String| DeliveryError::InvalidUrl {
        url: controller_url.to_owned(),
        reason,
    };
    let base = reqwest::Url::parse(controller_url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    if base.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&joined).map_err(|e| invalid(e.to_string()))
}

/// The certificates of a PEM bundle; at least one.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, DeliveryError> {
    let ca_error = |reason: String| DeliveryError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(error_chain(&e)))?;
    if certs.is_empty() {
        return Err(ca_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The `Authorization` header value from a token file, re-read on every call.
fn read_token(path: &Path) -> Result<HeaderValue, AttemptError> {
    let token = std::fs::read_to_string(path).map_err(|source| {
        AttemptError::Fatal(DeliveryError::Token {
            path: path.to_owned(),
            source,
        })
    })?;
    let token = token.trim();
    let bad = || AttemptError::Fatal(DeliveryError::BadToken(path.to_owned()));
    if token.is_empty() {
        return Err(bad());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| bad())?;
    value.set_sensitive(true);
    Ok(value)
}

/// The delay a `Retry-After` value asks for: delta-seconds or an HTTP date (a date in the past
/// means now). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The controller's `{"error": "..."}` message, else the start of the body, else the status's
/// reason phrase; always one line.
pub fn controller_message(status: StatusCode, body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let text = match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => body.to_owned(),
    };
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    if line.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        line
    }
}

/// An error and its sources on one line (reqwest's own message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_url_joins_the_path() {
        for (base, want) in [
            ("http://pie:8082", "http://pie:8082/api/v1/results"),
            ("http://pie:8082/", "http://pie:8082/api/v1/results"),
            (
                "https://pie.ns.svc/prefix",
                "https://pie.ns.svc/prefix/api/v1/results",
            ),
        ] {
            assert_eq!(results_url(base).unwrap().as_str(), want);
        }
        for bad in ["", "pie:8082", "ftp://pie", "http://"] {
            assert!(results_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let in_5s = httpdate::fmt_http_date(now + Duration::from_secs(5));
        assert_eq!(parse_retry_after(&in_5s, now), Some(Duration::from_secs(5)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn controller_message_prefers_the_error_field() {
        let s = StatusCode::BAD_REQUEST;
        assert_eq!(
            controller_message(s, r#"{"error":"node \"X\" invalid"}"#),
            "node \"X\" invalid"
        );
        assert_eq!(controller_message(s, "plain\ntext "), "plain text");
        assert_eq!(controller_message(s, ""), "Bad Request");
        let long = controller_message(s, &"é".repeat(400));
        assert!(
            long.len() <= MAX_MESSAGE_LEN + '…'.len_utf8(),
            "{}",
            long.len()
        );
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [missing, empty] {
            let err = Deliverer::new(
                "https://pie:8443",
                RESULTS_PATH,
                None,
                Some(&path),
                Duration::from_secs(1),
            )
            .unwrap_err();
            assert!(matches!(err, DeliveryError::CaFile { .. }), "{err:?}");
        }
        for url in ["http://pie:8082", "https://pie:8443"] {
            let d = Deliverer::new(
                url,
                PROVISION_STARTED_PATH,
                None,
                None,
                Duration::from_secs(1),
            );
            assert_eq!(
                d.unwrap().url().as_str(),
                format!("{url}/api/v1/provision-started")
            );
        }
    }

    #[test]
    fn token_is_trimmed_and_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc.def\n").unwrap();
        let value = read_token(&path).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer abc.def");
        assert!(value.is_sensitive());
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token(&path),
            Err(AttemptError::Fatal(DeliveryError::BadToken(_)))
        ));
        assert!(matches!(
            read_token(&dir.path().join("missing")),
            Err(AttemptError::Fatal(DeliveryError::Token { .. }))
        ));
    }
}
