//! What a Socket.IO client sees when an event fails: `{ error: "<message>" }` as the
//! acknowledgement, and the socket stays connected.

use crate::serve::state::SetBlobError;
use crate::storage::quota::{AdmitError, Refusal};
use crate::storage::store::{self, MAX_VERSION, MAX_WRITER};

/// Why an event could not be served. The client receives `{ error: "<this message>" }` as the
/// acknowledgement and stays connected.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// `get` or `set` before a `ref`.
    #[error("Reference is not provided")]
    NoRef,
    /// `watch` or `unwatch` without a list of valid refs.
    #[error("Invalid refs: expected a list of at most 1000 refs of 64 hexadecimal characters")]
    InvalidRefs,
    /// `watch` past `MAX_WATCHED_REFS`; nothing of that `watch` is applied.
    #[error("Too many watched refs: at most {0} per connection")]
    TooManyWatched(usize),
    /// The server holds `MAX_WATCHES` watches already.
    #[error("Too many watched refs on this server: at most {0}")]
    ServerWatchesFull(usize),
    /// `ref` with anything but 64 hex characters or `null`.
    #[error("Invalid reference: expected 64 hexadecimal characters or null")]
    InvalidRef,
    /// `get`/`set` whose argument is not an object (`null`, a number, a string, an array).
    #[error("Invalid argument: expected an object")]
    NotAnObject,
    /// A binary attachment, which no event of the protocol takes.
    #[error("Invalid argument: binary attachments are not supported")]
    Binary,
    /// `known` or `version` that is not an integer in range.
    #[error("Invalid {0}: expected an integer from 1 to {MAX_VERSION}")]
    InvalidVersion(&'static str),
    /// A `set` whose `writer` is not 1 to 64 letters, digits, `-` or `_`, or whose `seq` is
    /// not an integer in range, or with one of them and not the other.
    #[error(
        "Invalid write id: expected writer (1 to {MAX_WRITER} letters, digits, '-' or '_') and seq (an integer from 1 to {MAX_VERSION}), both or neither"
    )]
    InvalidWriteId,
    /// `data` that is not base64 text or is too long.
    #[error("Invalid data: expected a base64 string of at most {0} characters")]
    InvalidData(usize),
    /// A content-addressed event whose argument does not have the documented shape.
    #[error("Invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// `set` or `blob-upload` with a read-only token.
    #[error("Read-only token")]
    ReadOnly,
    /// The socket sends events faster than `EVENTS_PER_SECOND` allows.
    #[error("Rate limit exceeded: too many events per second")]
    RateLimited,
    /// The socket already has the maximum number of events waiting to run.
    #[error("Too many pending requests on this connection")]
    Busy,
    /// The token's `exp` has passed; the socket is disconnected after this answer.
    #[error("Token expired")]
    TokenExpired,
    /// The token was revoked (`blobs revoke`); the socket is disconnected after this answer.
    #[error("Token revoked")]
    TokenRevoked,
    /// The server is shutting down and takes no new events.
    #[error("Server is shutting down")]
    Closing,
    /// A write past the bucket's quota, or while the server is low on disk space: the message
    /// says which. Nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed. The cause is logged; the client learns that the operation did not
    /// complete: a `set` answered this way was not acknowledged, and the blob keeps its
    /// previous version unless the file was already replaced when the final sync failed.
    #[error("Storage error: the operation could not be completed")]
    Store(#[from] store::Error),
    /// The content store failed; logged, like [`AckError::Store`].
    #[error("Storage error: the operation could not be completed")]
    Content(crate::storage::content::Error),
}

impl From<SetBlobError> for AckError {
    fn from(error: SetBlobError) -> Self {
        match error {
            SetBlobError::Refused(refusal) => AckError::Refused(refusal),
            SetBlobError::Store(error) => AckError::Store(error),
        }
    }
}

impl From<AdmitError> for AckError {
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::Refused(refusal) => AckError::Refused(refusal),
            // Logged and answered as any storage failure.
            AdmitError::Measure(cause) => AckError::Store(store::Error::Io {
                path: "the bucket's listing".to_owned(),
                source: std::io::Error::other(cause),
            }),
        }
    }
}

impl From<crate::storage::content::Error> for AckError {
    fn from(error: crate::storage::content::Error) -> Self {
        match error {
            crate::storage::content::Error::Refused(refusal) => AckError::Refused(refusal),
            other => AckError::Content(other),
        }
    }
}
