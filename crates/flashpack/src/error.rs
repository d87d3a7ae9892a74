//! The crate-wide error type: every failure names the file and, where there is one, the tensor.
//!
//! Pure format problems are [`FormatError`]s (no I/O, no path); the I/O layers wrap them with the
//! path of the file they concern.
//!
//! ```
//! use flashpack::{Error, FormatError};
//! let e = Error::format("model.flashpack", FormatError::BadMagic);
//! assert!(e.to_string().starts_with("model.flashpack: "));
//! ```
use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::format::FormatError;

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Any error the engine returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call on `path` failed. `source` keeps the OS error code (for a pack,
    /// `path` is the destination, whatever failed underneath it).
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        op: Cow<'static, str>,
        #[source]
        source: std::io::Error,
    },
    /// `path` is not a regular file (a FIFO, a socket, a device): refused before anything could
    /// block on it.
    #[error("{}: is a {kind}, not a regular file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// The operation was stopped through its [`Cancel`](crate::cancel::Cancel) before it was
    /// done; a pack left its destination as it was.
    #[error("{}: interrupted", path.display())]
    Cancelled { path: PathBuf },
    /// The file (or the tensors given to the packer) break the format contract.
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// The caller asked for something that cannot be done (bad option, unsupported device).
    #[error("{0}")]
    Invalid(String),
    /// A device (GPU) call failed, or no usable device driver was found.
    #[error("{0}")]
    Device(String),
}

impl Error {
    pub(crate) fn io(
        path: impl AsRef<Path>,
        op: impl Into<Cow<'static, str>>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            op: op.into(),
            source,
        }
    }

    /// Wraps a format problem with the file it was found in.
    pub fn format(path: impl AsRef<Path>, source: FormatError) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// True for errors caused by the file's or caller's data, not by the OS (or an interruption).
    pub fn is_data_error(&self) -> bool {
        !matches!(
            self,
            Error::Io { .. } | Error::Device(_) | Error::Cancelled { .. }
        )
    }
}
