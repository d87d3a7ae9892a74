//! Opening a FlashPack file: the footer is read from the tail with two positioned reads and
//! validated before any of its numbers are used. Only regular files are opened: a FIFO, socket or
//! device is refused without blocking on it (see [`open_regular`]).
//!
//! ```
//! use flashpack::{read::FlashFile, write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! pack(&path, &[PackEntry::new("b", Dtype::U8, vec![3], &[1, 2, 3])], &PackOptions::default()).unwrap();
//! let f = FlashFile::open(&path).unwrap();
//! assert_eq!(f.payload_len(), 3);
//! assert_eq!(f.footer().records()[0].shape(), &[3]);
//! ```
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::format::{footer_span, FormatError, MAGIC, TRAILER_LEN};
use crate::os::Positioned;
use crate::{Error, Footer, Result};

/// An open FlashPack file with its validated footer.
#[derive(Debug)]
pub struct FlashFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) file_len: u64,
    /// Bytes before the footer JSON; every block lies inside them.
    pub(crate) payload_len: u64,
    pub(crate) footer: Footer,
    /// The footer exactly as stored.
    pub(crate) footer_json: Vec<u8>,
}

impl FlashFile {
    /// The path the file was opened from (named in errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's length in bytes when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Bytes before the footer JSON; every block lies inside them.
    pub fn payload_len(&self) -> u64 {
        self.payload_len
    }

    /// The validated footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The footer JSON exactly as stored.
    pub fn footer_json(&self) -> &[u8] {
        &self.footer_json
    }

    /// Opens `path` and reads and validates its footer.
    pub fn open(path: impl AsRef<Path>) -> Result<FlashFile> {
        let path = path.as_ref();
        Self::from_file(path, open_regular(path)?)
    }

    /// Reads and validates the footer of `file`, already opened from `path` (named in errors).
    pub fn from_file(path: impl AsRef<Path>, file: File) -> Result<FlashFile> {
        let path = path.as_ref();
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        let fmt = |e| Error::format(path, e);
        if file_len < TRAILER_LEN {
            return Err(fmt(FormatError::TooSmall { size: file_len }));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, file_len - TRAILER_LEN)
            .map_err(|e| Error::io(path, "read footer", e))?;
        if &trailer[8..] != MAGIC {
            return Err(fmt(FormatError::BadMagic));
        }
        let (payload_len, json_len) = footer_span(&trailer, file_len).map_err(fmt)?;
        // Bounded by MAX_FOOTER_BYTES (and by the file's length) in footer_span.
        let mut footer_json = Vec::new();
        footer_json
            .try_reserve_exact(json_len as usize)
            .map_err(|e| {
                Error::out_of_memory(json_len, format!("the footer of {} ({e})", path.display()))
            })?;
        footer_json.resize(json_len as usize, 0);
        file.read_exact_at(&mut footer_json, payload_len)
            .map_err(|e| Error::io(path, "read footer", e))?;
        let footer = Footer::decode(&footer_json, payload_len).map_err(fmt)?;
        Ok(FlashFile {
            path: path.to_path_buf(),
            file,
            file_len,
            payload_len,
            footer,
            footer_json,
        })
    }
}

/// Opens `path` for reading if it is a regular file. Anything else is refused before it could
/// block a read: a FIFO (whose `open` would wait for a writer), a socket or a device is
/// [`Error::NotAFile`], a directory the OS error `EISDIR` (on Windows an `IsADirectory` error). On
/// Unix the file is opened non-blocking, checked with `fstat` (the same file that was opened,
/// whatever the path points to meanwhile), and set back to blocking.
pub fn open_regular(path: impl AsRef<Path>) -> Result<File> {
    let path = path.as_ref();
    let file = crate::os::open_nonblocking(path).map_err(|e| Error::io(path, "open", e))?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .file_type();
    if kind.is_dir() {
        return Err(Error::io(path, "open", crate::os::is_a_directory()));
    }
    if !kind.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
            kind: crate::os::special_kind(&kind),
        });
    }
    crate::os::set_blocking(&file).map_err(|e| Error::io(path, "open", e))?;
    Ok(file)
}

/// True when `path` opens as a valid FlashPack file.
pub fn is_flashpack_file(path: impl AsRef<Path>) -> bool {
    FlashFile::open(path).is_ok()
}
