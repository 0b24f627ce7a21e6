//! Who may post results: a shared token (`receive`), nobody checked (`--insecure-no-auth`), or
//! the probe Pod's projected ServiceAccount token checked with a TokenReview (`run`).

use std::path::Path;

use futures::future::BoxFuture;
use std::fmt;
use subtle::ConstantTimeEq;

pub mod tokenreview;

pub use tokenreview::TokenReviewAuth;

use pie_api::ProbeKey;

/// Who the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// May report for any probe (shared token, or no authentication).
    Anyone,
    /// A mount probe Pod: may report results only for this triple.
    Probe {
        /// The (PieProbe, node it runs on, StorageClass) of the Pod.
        key: ProbeKey,
        /// The Pod's UID.
        pod_uid: String,
    },
    /// A provision probe Pod of a PieProbe and StorageClass: may report its start.
    ProvisionProbe {
        /// The PieProbe.
        pie_probe_name: String,
        /// The StorageClass.
        storage_class: String,
        /// The Pod's UID.
        pod_uid: String,
    },
}

impl Identity {
    /// Whether this caller may report results for `triple`.
    pub fn may_report(&self, triple: &ProbeKey) -> bool {
        match self {
            Identity::Anyone => true,
            Identity::Probe { key, .. } => key == triple,
            Identity::ProvisionProbe { .. } => false,
        }
    }

    /// The probe Pod behind the token, if it is one.
    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            Identity::Anyone => None,
            Identity::Probe { pod_uid, .. } | Identity::ProvisionProbe { pod_uid, .. } => {
                Some(pod_uid)
            }
        }
    }
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token is not valid (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is valid but not a probe Pod's (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The token could not be checked now (503).
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

/// Checks bearer tokens.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Who holds `token` (`None`: no bearer token was sent).
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>>;
}

/// No authentication (`--insecure-no-auth`, or a loopback listener without a token file).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn authenticate<'a>(
        &'a self,
        _token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async { Ok(Identity::Anyone) })
    }
}

/// A token shared by every caller, read from a file once (trimmed), compared in constant time.
#[derive(Clone)]
pub struct SharedToken {
    token: Vec<u8>,
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedToken(..)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It holds no token.
    #[error("{0} is empty")]
    Empty(String),
}

impl SharedToken {
    /// A shared token `token` (must not be empty after trimming).
    pub fn new(token: &str) -> Option<SharedToken> {
        let token = token.trim();
        (!token.is_empty()).then(|| SharedToken {
            token: token.as_bytes().to_vec(),
        })
    }

    /// Reads the token from `path`.
    pub fn from_file(path: &Path) -> Result<SharedToken, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        SharedToken::new(&text).ok_or_else(|| TokenFileError::Empty(path.display().to_string()))
    }
}

impl Authenticator for SharedToken {
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            let token = token.ok_or(AuthError::Missing)?;
            if bool::from(token.as_bytes().ct_eq(&self.token)) {
                Ok(Identity::Anyone)
            } else {
                Err(AuthError::Invalid("the token does not match".into()))
            }
        })
    }
}

/// The bearer token of an `Authorization` header value (`Bearer <token>`, scheme case-
/// insensitive); `None` when absent or of another scheme.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let auth = SharedToken::from_file(&path).unwrap();
        assert_eq!(
            auth.authenticate(Some("s3cret")).await,
            Ok(Identity::Anyone)
        );
        assert!(matches!(
            auth.authenticate(Some("s3cre")).await,
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            SharedToken::from_file(&path),
            Err(TokenFileError::Empty(_))
        ));
        assert!(SharedToken::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn probes_report_only_for_themselves() {
        let t = |n: &str| ProbeKey {
            pie_probe_name: "p".into(),
            node: n.into(),
            storage_class: "sc".into(),
        };
        let probe = |n: &str| Identity::Probe {
            key: t(n),
            pod_uid: "u".into(),
        };
        assert!(probe("a").may_report(&t("a")));
        assert!(!probe("a").may_report(&t("b")));
        let provision = Identity::ProvisionProbe {
            pie_probe_name: "p".into(),
            storage_class: "sc".into(),
            pod_uid: "u2".into(),
        };
        assert!(
            !provision.may_report(&t("a")),
            "a provision Pod reports no results"
        );
        assert_eq!(provision.pod_uid(), Some("u2"));
        assert_eq!(Identity::Anyone.pod_uid(), None);
        assert!(Identity::Anyone.may_report(&t("b")));
    }
}
