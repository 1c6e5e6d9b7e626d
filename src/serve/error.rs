//! Why a node could not start.

use crate::config::ConfigError;

/// Why the server could not start. The binary prints it as one sentence and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the storage directory {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("the Socket.IO Redis adapter failed to start: {0}")]
    Adapter(String),
    #[error("cannot load the Blob Service's records: {0}")]
    Records(#[source] crate::blob_service::Error),
    #[error(transparent)]
    Objects(#[from] crate::storage::objects::OpenError),
    #[error("cannot read the revoked tokens: {0}")]
    Revocations(#[source] crate::auth::revocation::Error),
}
