//! One byte source under every read: a local file or (feature `remote`) a remote object
//! (HTTP(S), S3, Hub), opened once from a location, local or remote decided there.
//!
//! A [`Source`] gives its size, ranged reads, the location to name in errors, and its
//! identity as opened ([`Identity`]: a local file's length and modification time, a remote
//! object's pinned ETag / Last-Modified), so that "the file changed under us" is decided in one
//! place ([`Source::check_unchanged`]). A weight file's index (a FlashPack trailer and footer,
//! a safetensors header) is read through a source's ranged reads by one code path for local
//! and remote files (`source::header`). Local files keep their mapped, positioned and `O_DIRECT`
//! payload readers: a weight file takes its source apart and hands them the open file.
//!
//! ```
//! use flashpack::source::Source;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("bytes");
//! std::fs::write(&path, b"hello world").unwrap();
//! let src = Source::open_local(&path).unwrap();
//! let mut buf = [0u8; 5];
//! src.read_exact_at(&mut buf, 6).unwrap();
//! assert_eq!((&buf, src.len()), (b"world", 11));
//! src.check_unchanged().unwrap();
//! ```
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::os::Positioned;
use crate::remote::LocationOptions;
#[cfg(feature = "remote")]
use crate::remote::{RemoteFile, RemoteSettings};
use crate::{Error, Result};

pub(crate) mod header;
mod local;

pub use local::open_regular;

/// An open byte source (see the module documentation).
#[derive(Debug)]
pub struct Source {
    /// The path, or a remote object's URL, as given (named in errors).
    location: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Local {
        file: File,
        len: u64,
        modified: Option<SystemTime>,
    },
    #[cfg(feature = "remote")]
    Remote(Box<RemoteFile>),
}

/// A [`Source`] taken apart (see [`Source::into_parts`]).
pub(crate) enum Parts {
    Local {
        path: PathBuf,
        file: File,
        len: u64,
    },
    #[cfg(feature = "remote")]
    Remote(Box<RemoteFile>),
}

/// What a source was when it was opened, to tell a changed one from the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A local file: its length and modification time (where the OS gives one).
    Local {
        /// The length in bytes.
        len: u64,
        /// The modification time.
        modified: Option<SystemTime>,
    },
    /// A remote object: its size and the validators its version is pinned by.
    Remote {
        /// The size in bytes.
        len: u64,
        /// The ETag, if the server sent one.
        etag: Option<String>,
        /// The Last-Modified (RFC 2822), if the server sent one.
        last_modified: Option<String>,
    },
}

impl Source {
    /// Opens a URL (`http://`, `https://`, `s3://`, `hf://`: see [`crate::remote`], with
    /// `opts`'s settings and cancellation) or else a local path. Local or remote is decided
    /// here, once. A URL needs the `remote` cargo feature: without it, opening one is
    /// [`RemoteError::NotBuilt`](crate::remote::RemoteError::NotBuilt).
    pub fn open(location: impl AsRef<Path>, opts: &LocationOptions) -> Result<Source> {
        let location = location.as_ref();
        match crate::remote::url_of(location) {
            None => Self::open_local(location),
            #[cfg(feature = "remote")]
            Some(url) => Self::open_url(url, opts.settings()?),
            #[cfg(not(feature = "remote"))]
            Some(url) => {
                let _ = opts;
                Err(Error::remote(url, crate::remote::RemoteError::NotBuilt))
            }
        }
    }

    /// Opens the local file `path` (a regular file only, see [`open_regular`]).
    pub fn open_local(path: impl AsRef<Path>) -> Result<Source> {
        let path = path.as_ref();
        let (file, meta) = local::open_regular_with_metadata(path)?;
        Ok(Self::local(path, file, &meta))
    }

    /// A source over `file`, already opened from `path` (named in errors).
    pub(crate) fn from_file(path: impl AsRef<Path>, file: File) -> Result<Source> {
        let path = path.as_ref();
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        Ok(Self::local(path, file, &meta))
    }

    fn local(path: &Path, file: File, meta: &std::fs::Metadata) -> Source {
        Source {
            location: path.to_path_buf(),
            kind: Kind::Local {
                file,
                len: meta.len(),
                modified: meta.modified().ok(),
            },
        }
    }

    /// Opens the remote object at `url` with `settings`: one HEAD, which pins its size and
    /// version (see [`RemoteFile`]).
    #[cfg(feature = "remote")]
    pub fn open_url(url: &str, settings: RemoteSettings) -> Result<Source> {
        RemoteFile::open_with(url, settings).map(Self::from_remote)
    }

    /// A source over an open remote object.
    #[cfg(feature = "remote")]
    fn from_remote(file: RemoteFile) -> Source {
        Source {
            location: PathBuf::from(file.url()),
            kind: Kind::Remote(Box::new(file)),
        }
    }

    /// The path, or a remote object's URL (named in errors).
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// The size in bytes when opened.
    pub fn len(&self) -> u64 {
        match &self.kind {
            Kind::Local { len, .. } => *len,
            #[cfg(feature = "remote")]
            Kind::Remote(r) => r.len(),
        }
    }

    /// True when the source has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a remote object.
    pub fn is_remote(&self) -> bool {
        !matches!(self.kind, Kind::Local { .. })
    }

    /// The source taken apart: a local file's path, open file and length as opened, or the
    /// remote object.
    pub(crate) fn into_parts(self) -> Parts {
        match self.kind {
            Kind::Local { file, len, .. } => Parts::Local {
                path: self.location,
                file,
                len,
            },
            #[cfg(feature = "remote")]
            Kind::Remote(r) => Parts::Remote(r),
        }
    }

    /// The pinned remote object; `None` for a local file.
    #[cfg(feature = "remote")]
    pub(crate) fn remote(&self) -> Option<&RemoteFile> {
        match &self.kind {
            Kind::Remote(r) => Some(r),
            Kind::Local { .. } => None,
        }
    }

    /// Reads bytes `[offset, offset + dst.len())` into `dst`: a positioned read of a local
    /// file, one ranged GET of the pinned version of a remote object (its settings' timeout and
    /// cancel apply). Bytes past the end are an error.
    pub fn read_exact_at(&self, dst: &mut [u8], offset: u64) -> Result<()> {
        self.read_for(dst, offset, "read")
    }

    /// As [`read_exact_at`](Self::read_exact_at), a local failure reported as the operation
    /// `what` (e.g. "read footer").
    pub(crate) fn read_for(&self, dst: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
        match &self.kind {
            Kind::Local { file, .. } => file
                .read_exact_at(dst, offset)
                .map_err(|e| Error::io(&self.location, what, e)),
            #[cfg(feature = "remote")]
            Kind::Remote(r) => r.read_exact_at(dst, offset),
        }
    }

    /// `len` bytes from `offset` into new memory (its allocation failure an out-of-memory
    /// error naming `what`).
    pub(crate) fn read_vec(&self, offset: u64, len: u64, what: &'static str) -> Result<Vec<u8>> {
        let n = usize::try_from(len)
            .map_err(|_| Error::out_of_memory(len, format!("{what} of {}", self.describe())))?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(n).map_err(|e| {
            Error::out_of_memory(len, format!("{what} of {} ({e})", self.describe()))
        })?;
        bytes.resize(n, 0);
        self.read_for(&mut bytes, offset, what)?;
        Ok(bytes)
    }

    fn describe(&self) -> std::path::Display<'_> {
        self.location.display()
    }

    /// What the source was when opened.
    pub fn identity(&self) -> Identity {
        match &self.kind {
            Kind::Local { len, modified, .. } => Identity::Local {
                len: *len,
                modified: *modified,
            },
            #[cfg(feature = "remote")]
            Kind::Remote(r) => Identity::Remote {
                len: r.len(),
                etag: r.etag().map(str::to_string),
                last_modified: r.last_modified(),
            },
        }
    }

    /// Fails when the source is no longer what it was when opened: a local file whose length or
    /// modification time changed (an I/O error naming the file and both), a remote object whose
    /// size or validators changed (one HEAD: [`RemoteError::Changed`](crate::remote::RemoteError)).
    /// A remote object's reads check this on every response by themselves.
    pub fn check_unchanged(&self) -> Result<()> {
        match &self.kind {
            Kind::Local {
                file,
                len,
                modified,
            } => {
                let meta = file
                    .metadata()
                    .map_err(|e| Error::io(&self.location, "stat", e))?;
                let now = (meta.len(), meta.modified().ok());
                if now == (*len, *modified) {
                    return Ok(());
                }
                Err(Error::io(
                    &self.location,
                    format!(
                        "check (the file changed since it was opened: {len} bytes, modified \
                         {modified:?} then; {} bytes, modified {:?} now)",
                        now.0, now.1
                    ),
                    std::io::ErrorKind::Other.into(),
                ))
            }
            #[cfg(feature = "remote")]
            Kind::Remote(r) => r.check_unchanged(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_file_that_grew_since_it_was_opened_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123").unwrap();
        let src = Source::open(&path, &LocationOptions::default()).unwrap();
        assert!(!src.is_remote());
        assert!(matches!(src.identity(), Identity::Local { len: 4, .. }));
        src.check_unchanged().unwrap();
        let mut buf = [0u8; 2];
        assert!(src.read_exact_at(&mut buf, 3).is_err(), "past the end");
        std::fs::write(&path, b"012345").unwrap();
        let e = src.check_unchanged().unwrap_err().to_string();
        assert!(e.contains("changed since it was opened"), "{e}");
    }

    #[test]
    fn a_directory_or_a_missing_file_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Source::open_local(dir.path()).is_err());
        assert!(Source::open_local(dir.path().join("absent")).is_err());
    }
}
