//! The crate's error type.

/// Errors of the controller library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be serialized.
    #[error("serialization: {0}")]
    Serialize(#[from] serde_json::Error),
    /// YAML input or output failed.
    #[error("YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Leader election stopped (its task ended).
    #[error("leader election: {0}")]
    Leadership(String),
    /// The API server refused some of a PieProbe's objects (the message names each).
    #[error("applying probe objects: {0}")]
    Apply(String),
    /// Input that is not what it should be.
    #[error("{0}")]
    Input(String),
    /// Nothing can be planned for a PieProbe (invalid spec, missing StorageClass).
    #[error("not planned: {0}")]
    Blocked(#[from] crate::domain::plan::Blocked),
    /// An object lacks a field the controller needs (e.g. a namespace).
    #[error("object is missing {0}")]
    MissingField(&'static str),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
