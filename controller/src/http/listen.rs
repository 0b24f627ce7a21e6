//! Listening on a flag's address: every listener of pie-controller (results API, `/metrics`,
//! health) is bound here, so they accept the same `:PORT` / `host:port` syntax and fail with
//! the same one-line errors.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Why a listener could not be set up or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// An address does not parse.
    #[error("{flag} {addr:?}: {source}")]
    Addr {
        /// The flag.
        flag: &'static str,
        /// The value.
        addr: String,
        /// The parse error.
        source: std::net::AddrParseError,
    },
    /// A listener cannot be bound or failed.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Parses `:8081` (all interfaces) or `host:port`.
pub fn parse_addr(addr: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}").parse(),
        None => addr.parse(),
    }
}

/// The address `value` of `flag`.
pub fn addr(flag: &'static str, value: &str) -> Result<SocketAddr, ListenError> {
    parse_addr(value).map_err(|source| ListenError::Addr {
        flag,
        addr: value.to_owned(),
        source,
    })
}

/// Binds `addr`; `what` says what for in the error (e.g. "binding /metrics on").
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Io { what, addr, source })
}

/// Parses `value` of `flag` and binds it.
pub async fn bind_flag(
    flag: &'static str,
    what: &'static str,
    value: &str,
) -> Result<TcpListener, ListenError> {
    bind(what, addr(flag, value)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr(":8081").unwrap().to_string(), "0.0.0.0:8081");
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert!(parse_addr("nonsense").is_err());
    }

    #[tokio::test]
    async fn bad_addresses_and_taken_ports_are_one_line_errors() {
        let err = bind_flag("--listen", "binding the receiver on", "nonsense")
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(r#"--listen "nonsense": "#),
            "{err}"
        );
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind_flag(
            "--listen",
            "binding the receiver on",
            &format!("127.0.0.1:{port}"),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("binding the receiver on 127.0.0.1:{port}: ")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}
