//! One HTTP request to one endpoint, and what its outcome means for the batch.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
    USER_AGENT,
};

use crate::config::{Auth, ConfigError, EndpointConfig};

/// The protocol version header name.
pub const VERSION_HEADER: &str = "x-prometheus-remote-write-version";
/// The protocol version this client speaks.
pub const VERSION: &str = "0.1.0";
/// Longest part of a response body kept for logs.
pub const MAX_LOGGED_BODY: usize = 1024;

/// What a request attempt means for its batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// 2xx: delivered; never send it again.
    Delivered { status: u16 },
    /// Retry: connection error, timeout, 408, 429 or 5xx; `retry_after` from the response.
    Retry {
        status: u16,
        retry_after: Option<Duration>,
        error: String,
    },
    /// Drop the batch: any other status.
    Drop { status: u16, body: String },
}

/// Sends request bodies to one endpoint.
#[derive(Debug)]
pub(crate) struct Transport {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Auth,
    headers: HeaderMap,
}

/// Installs ring as the process-wide rustls crypto provider unless one is installed already.
/// reqwest is built without a provider of its own to keep aws-lc out of the build.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Transport {
    pub(crate) fn new(config: &EndpointConfig, user_agent: &str) -> Result<Transport, ConfigError> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| ConfigError::InvalidUrl {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::InvalidUrl {
                url: config.url.clone(),
                reason: "the scheme must be http or https".into(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::InvalidUrl {
                url: redact(&url),
                reason: "put credentials in the basic-auth settings, not in the URL".into(),
            });
        }
        let headers = protocol_headers(config, user_agent)?;

        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tls_danger_accept_invalid_certs(config.tls_insecure_skip_verify);
        if let Some(path) = &config.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| ConfigError::TlsCa {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConfigError::TlsCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ConfigError::TlsCa {
                    path: path.clone(),
                    reason: "no PEM certificate in the file".into(),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| ConfigError::HttpClient {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        Ok(Transport {
            client,
            url,
            auth: config.auth.clone(),
            headers,
        })
    }

    /// The URL, for logs and stats.
    pub(crate) fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Sends `body` once and classifies the result.
    pub(crate) async fn send(&self, body: Bytes) -> Outcome {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        match &self.auth {
            Auth::None => {}
            Auth::Basic {
                username,
                password_file,
            } => match read_secret(password_file).await {
                Ok(password) => request = request.basic_auth(username, Some(password)),
                Err(error) => return credentials_error(password_file, error),
            },
            Auth::BearerTokenFile(path) => match read_secret(path).await {
                Ok(token) => request = request.bearer_auth(token),
                Err(error) => return credentials_error(path, error),
            },
        }
        match request.send().await {
            Ok(response) => classify(response).await,
            Err(error) => Outcome::Retry {
                status: 0,
                retry_after: None,
                error: describe(&error),
            },
        }
    }
}

/// The headers every request carries. User headers come first and may not name a protocol
/// header (or `Authorization` when credentials are configured).
fn protocol_headers(config: &EndpointConfig, user_agent: &str) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    let bad = |name: &str, reason: String| ConfigError::InvalidHeader {
        url: config.url.clone(),
        name: name.to_owned(),
        reason,
    };
    for (name, value) in &config.headers {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(name, e.to_string()))?;
        let reserved = [
            CONTENT_ENCODING,
            CONTENT_TYPE,
            USER_AGENT,
            HeaderName::from_static(VERSION_HEADER),
        ];
        if reserved.contains(&header) {
            return Err(bad(
                name,
                "is set by the remote-write protocol and cannot be overridden".into(),
            ));
        }
        if header == AUTHORIZATION && config.auth != Auth::None {
            return Err(bad(
                name,
                "conflicts with the configured basic or bearer authentication".into(),
            ));
        }
        let value = HeaderValue::from_str(value).map_err(|e| bad(name, e.to_string()))?;
        headers.append(header, value);
    }
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    headers.insert(
        HeaderName::from_static(VERSION_HEADER),
        HeaderValue::from_static(VERSION),
    );
    headers.insert(
        USER_AGENT,
        HeaderValue::from_str(user_agent).map_err(|e| bad("User-Agent", e.to_string()))?,
    );
    Ok(headers)
}

async fn read_secret(path: &std::path::Path) -> std::io::Result<String> {
    let text = tokio::fs::read_to_string(path).await?;
    Ok(text.trim().to_owned())
}

fn credentials_error(path: &std::path::Path, error: std::io::Error) -> Outcome {
    // A missing or unreadable secret file is usually a rotation in progress: retry.
    Outcome::Retry {
        status: 0,
        retry_after: None,
        error: format!("reading credentials from {}: {error}", path.display()),
    }
}

async fn classify(response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Outcome::Delivered { status };
    }
    let retry_after = parse_retry_after(response.headers(), SystemTime::now());
    let body = truncate(&response.text().await.unwrap_or_default(), MAX_LOGGED_BODY);
    if status == 408 || status == 429 || (500..600).contains(&status) {
        Outcome::Retry {
            status,
            retry_after,
            error: format!("HTTP {status}: {body}"),
        }
    } else {
        Outcome::Drop { status, body }
    }
}

/// `Retry-After` as a delay: whole seconds, or an HTTP date (a date in the past means now).
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// The error and its sources in one line, e.g. "error sending request: connection refused".
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    };
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn redact(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_retry_after(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&headers_with_retry_after("2"), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(&headers_with_retry_after(" 0 "), now),
            Some(Duration::ZERO)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(&headers_with_retry_after(&later), now),
            Some(Duration::from_secs(7))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(&headers_with_retry_after(&earlier), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&headers_with_retry_after("soon"), now),
            None
        );
        assert_eq!(
            parse_retry_after(&headers_with_retry_after("-1"), now),
            None
        );
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("aé", 2), "a…");
        assert_eq!(
            truncate(&"x".repeat(5000), MAX_LOGGED_BODY).len(),
            MAX_LOGGED_BODY + '…'.len_utf8()
        );
    }

    #[test]
    fn protocol_headers_cannot_be_overridden() {
        for name in [
            "Content-Encoding",
            "content-type",
            "User-Agent",
            "X-Prometheus-Remote-Write-Version",
        ] {
            let mut c = EndpointConfig::new("http://127.0.0.1:1/api/v1/write");
            c.headers.push((name.into(), "x".into()));
            let err = Transport::new(&c, "t/1").unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidHeader { .. }),
                "{name}: {err}"
            );
        }
        let mut c = EndpointConfig::new("http://127.0.0.1:1/api/v1/write");
        c.headers.push(("Authorization".into(), "Bearer x".into()));
        assert!(
            Transport::new(&c, "t/1").is_ok(),
            "allowed without configured auth"
        );
        c.auth = Auth::BearerTokenFile("/nonexistent".into());
        assert!(matches!(
            Transport::new(&c, "t/1"),
            Err(ConfigError::InvalidHeader { .. })
        ));
        let mut c = EndpointConfig::new("http://127.0.0.1:1/api/v1/write");
        c.headers.push(("bad header".into(), "x".into()));
        assert!(matches!(
            Transport::new(&c, "t/1"),
            Err(ConfigError::InvalidHeader { .. })
        ));
        c.headers = vec![("X-Scope-OrgID".into(), "bad\nvalue".into())];
        assert!(matches!(
            Transport::new(&c, "t/1"),
            Err(ConfigError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn urls_are_checked() {
        for url in [
            "not a url",
            "ftp://x/y",
            "http://user:pw@127.0.0.1/api/v1/write",
        ] {
            let err = Transport::new(&EndpointConfig::new(url), "t/1").unwrap_err();
            assert!(matches!(err, ConfigError::InvalidUrl { .. }), "{url}");
            assert!(
                !err.to_string().contains("pw@"),
                "credentials are not echoed: {err}"
            );
        }
        let mut c = EndpointConfig::new("https://127.0.0.1/api/v1/write");
        c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            Transport::new(&c, "t/1"),
            Err(ConfigError::TlsCa { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here").unwrap();
        c.tls_ca_file = Some(empty);
        assert!(matches!(
            Transport::new(&c, "t/1"),
            Err(ConfigError::TlsCa { .. })
        ));
    }
}
