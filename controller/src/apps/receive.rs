//! `pie-controller receive`: the results receiver, the metric store and the push, without
//! Kubernetes (probes outside a cluster, the demo, tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{ListenArgs, serve_metrics};
use crate::http::auth::{Authenticator, NoAuth, SharedToken, TokenFileError};
use crate::http::listen::{self, ListenError};
use crate::http::results::{self, AnyTarget, Receiver};
use crate::metrics::catalogue;
use crate::metrics::push::{PushArgs, Pusher};
use crate::metrics::store::Store;
use remote_write::now_ms;

/// Flags of `pie-controller receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// File with the token probes must send as `Authorization: Bearer <token>`.
    #[arg(long, env = "PIE_AUTH_TOKEN_FILE", conflicts_with = "insecure_no_auth")]
    pub auth_token_file: Option<PathBuf>,
    /// Accept results without a token on a non-loopback address.
    #[arg(long, env = "PIE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub push: PushArgs,
}

/// Why `receive` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A listener cannot be set up, or failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Listening without authentication on a non-loopback address was not allowed.
    #[error(
        "refusing to accept unauthenticated results on {0}: give --auth-token-file, listen on a loopback address, or pass --insecure-no-auth"
    )]
    Unauthenticated(SocketAddr),
    /// The token file cannot be used.
    #[error("--auth-token-file: {0}")]
    TokenFile(#[from] TokenFileError),
    /// The remote-write settings are invalid, or the disk buffer cannot be used. (Not a
    /// `source`: the message already holds it, and `anyhow` would print it twice.)
    #[error("remote write: {0}")]
    RemoteWrite(remote_write::ConfigError),
}

impl From<remote_write::ConfigError> for ReceiveError {
    fn from(e: remote_write::ConfigError) -> ReceiveError {
        ReceiveError::RemoteWrite(e)
    }
}

/// The authenticator `receive` uses for `args`.
pub fn authenticator(
    args: &ReceiveArgs,
    listen: SocketAddr,
) -> Result<Arc<dyn Authenticator>, ReceiveError> {
    if let Some(path) = &args.auth_token_file {
        return Ok(Arc::new(SharedToken::from_file(path)?));
    }
    if !listen.ip().is_loopback() && !args.insecure_no_auth {
        return Err(ReceiveError::Unauthenticated(listen));
    }
    if args.insecure_no_auth {
        warn!("--insecure-no-auth: anyone who reaches {listen} can post results");
    }
    Ok(Arc::new(NoAuth))
}

/// Runs `receive` until `shutdown` resolves, then delivers what is queued (at most 10 s).
pub async fn run(
    args: ReceiveArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ReceiveError> {
    let listen = listen::addr("--listen", &args.listen.listen)?;
    let auth = authenticator(&args, listen)?;
    let pusher = Pusher::new(&args.push, Arc::new(Store::new()))?;
    pusher.record([catalogue::leader(true, now_ms())]);
    serve_metrics(args.listen.metrics_addr.as_deref(), &pusher).await?;
    let listener = listen::bind("binding the receiver on", listen).await?;
    info!(addr = %listen, "receiving results");
    let periodic = tokio::spawn(pusher.clone().run_periodic(
        args.push.push_interval,
        Default::default(),
        |_| {},
    ));
    let receiver = Receiver {
        pusher: pusher.clone(),
        auth,
        targets: Arc::new(AnyTarget),
    };
    let served = results::serve(listener, receiver, shutdown).await;
    periodic.abort();
    pusher.shutdown(Duration::from_secs(10)).await;
    served.map_err(|source| {
        ReceiveError::Listen(ListenError::Io {
            what: "serving results on",
            addr: listen,
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        receive: ReceiveArgs,
    }

    fn parse(args: &[&str]) -> ReceiveArgs {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().receive
    }

    #[test]
    fn defaults() {
        let args = parse(&[]);
        assert_eq!(args.listen.listen, ":8082");
        assert_eq!(args.listen.metrics_addr, None);
        assert!(!args.insecure_no_auth);
        assert!(
            Cli::try_parse_from(["x", "--insecure-no-auth", "--auth-token-file", "/t"]).is_err()
        );
    }

    #[tokio::test]
    async fn no_token_only_on_loopback_or_when_insecure() {
        let args = parse(&[]);
        let any: SocketAddr = "0.0.0.0:8082".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8082".parse().unwrap();
        assert!(matches!(
            authenticator(&args, any),
            Err(ReceiveError::Unauthenticated(_))
        ));
        assert!(authenticator(&args, lo).is_ok());
        assert!(authenticator(&parse(&["--insecure-no-auth"]), any).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "abc").unwrap();
        let with_token = parse(&["--auth-token-file", token.to_str().unwrap()]);
        let auth = authenticator(&with_token, any).unwrap();
        assert!(auth.authenticate(Some("abc")).await.is_ok());
        assert!(auth.authenticate(Some("abd")).await.is_err());
        let missing = parse(&["--auth-token-file", "/nonexistent/token"]);
        assert!(matches!(
            authenticator(&missing, any),
            Err(ReceiveError::TokenFile(_))
        ));
    }

    #[tokio::test]
    async fn an_unusable_buffer_dir_stops_receive_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let args = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--remote-write-url",
            "http://127.0.0.1:1/api/v1/write",
            "--remote-write-buffer-dir",
            file.to_str().unwrap(),
        ]);
        let err = run(args, async {}).await.unwrap_err();
        assert!(matches!(err, ReceiveError::RemoteWrite(_)), "{err:?}");
        // main prints one line of the causes not yet said; a `source` here would add nothing.
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.starts_with("remote write: remote-write buffer ") && text.contains("file"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn run_refuses_a_public_address_without_a_token() {
        let err = run(parse(&["--listen", ":0"]), async {}).await.unwrap_err();
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    }
}
