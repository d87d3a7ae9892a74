//! What can go wrong reading a remote object; [`Error::Remote`](crate::Error::Remote) pairs it
//! with the object's URL.
use std::time::Duration;

/// An error from the HTTP or object-store client, kept as a [`RemoteError`]'s source.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A remote read's failure (the URL is in the enclosing [`Error::Remote`](crate::Error::Remote)).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not a URL this build reads (`http://`, `https://`, `s3://bucket/key`).
    #[error("not a supported URL: {0}")]
    BadUrl(String),
    /// This build has no remote support (the engine's `remote` cargo feature is off).
    #[error("remote sources are not built into this program (cargo feature `remote`)")]
    NotBuilt,
    /// The client could not be set up (TLS, credentials, configuration); `source` is the
    /// store's (or runtime's) error where there is one.
    #[error("cannot set up the client: {reason}")]
    Setup {
        /// What went wrong, with its causes.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The server says there is no such object.
    #[error("no such object (404 Not Found)")]
    NotFound,
    /// The server refused access (401/403), e.g. missing or wrong credentials; `source` is
    /// the HTTP client's error.
    #[error("access denied: {reason}")]
    Denied {
        /// What the server said, with its causes.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The object changed after it was opened (its size or validators differ, or the server
    /// answered 412 to the pinned ETag or Last-Modified): the load stops rather than mix two
    /// versions.
    #[error("the object changed while it was being read: {0}")]
    Changed(String),
    /// The server's answer does not match the request (a range, a length, a missing size).
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The object is not usable as asked (e.g. it has no size, or a range lies past its end).
    #[error("{0}")]
    Unusable(String),
    /// The request failed, after retrying where retrying could help (5xx, resets, timeouts,
    /// unreachable host); `source` is the store's error.
    #[error("request failed: {reason}")]
    Failed {
        /// What went wrong (and where), with its causes.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The whole read did not finish within the time bound
    /// (`FLASHPACK_REMOTE_TIMEOUT_SECS`).
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

impl RemoteError {
    /// The same failure with `what` was being done (e.g. "reading tensor 'w'") added to its
    /// message, where the message is free text.
    #[cfg(feature = "remote")]
    pub(crate) fn with_context(self, what: &str) -> RemoteError {
        match self {
            RemoteError::Changed(m) => RemoteError::Changed(format!("{m} ({what})")),
            RemoteError::BadResponse(m) => RemoteError::BadResponse(format!("{m} ({what})")),
            RemoteError::Unusable(m) => RemoteError::Unusable(format!("{m} ({what})")),
            RemoteError::Failed { reason, source } => RemoteError::Failed {
                reason: format!("{reason} ({what})"),
                source,
            },
            other => other,
        }
    }

    /// True when the object itself is at fault (it changed, or the server sent bytes that do
    /// not match the request), not the network or the caller's access.
    pub fn is_data_error(&self) -> bool {
        matches!(self, RemoteError::Changed(_) | RemoteError::BadResponse(_))
    }
}
