//! What can go wrong reading a remote object; [`Error::Remote`](crate::Error::Remote) pairs it
//! with the object's URL.
use std::time::Duration;

/// A remote read's failure (the URL is in the enclosing [`Error::Remote`](crate::Error::Remote)).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not a URL this build reads (`http://`, `https://`, `s3://bucket/key`).
    #[error("not a supported URL: {0}")]
    BadUrl(String),
    /// This build has no remote support (the engine's `remote` cargo feature is off).
    #[error("remote sources are not built into this program (cargo feature `remote`)")]
    NotBuilt,
    /// The client could not be set up (TLS, credentials, configuration).
    #[error("cannot set up the client: {0}")]
    Setup(String),
    /// The server says there is no such object.
    #[error("no such object (404 Not Found)")]
    NotFound,
    /// The server refused access (401/403), e.g. missing or wrong credentials.
    #[error("access denied: {0}")]
    Denied(String),
    /// The object changed after it was opened (its size or ETag differ, or the server answered
    /// 412 to the pinned ETag): the load stops rather than mix two versions.
    #[error("the object changed while it was being read: {0}")]
    Changed(String),
    /// The server's answer does not match the request (a range, a length, a missing size).
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The object is not usable as asked (e.g. it has no size, or a range lies past its end).
    #[error("{0}")]
    Unusable(String),
    /// The request failed, after retrying where retrying could help (5xx, resets, timeouts,
    /// unreachable host).
    #[error("request failed: {0}")]
    Failed(String),
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
            RemoteError::Failed(m) => RemoteError::Failed(format!("{m} ({what})")),
            other => other,
        }
    }

    /// True when the object itself is at fault (it changed, or the server sent bytes that do
    /// not match the request), not the network or the caller's access.
    pub fn is_data_error(&self) -> bool {
        matches!(self, RemoteError::Changed(_) | RemoteError::BadResponse(_))
    }
}
