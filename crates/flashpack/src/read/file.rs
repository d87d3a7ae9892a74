//! Opening a local FlashPack file: the footer is read from the tail with two positioned reads
//! (through its [`Source`], as every weight file's index is) and validated before any of its
//! numbers are used. Only regular files are opened: a FIFO, socket or device is refused without
//! blocking on it (see [`open_regular`](crate::source::open_regular)).
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

use crate::source::header::{read_flash, FlashIndex};
use crate::source::{Parts, Source};
use crate::{Footer, Result};

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
        Self::from_source(Source::open_local(path)?)
    }

    /// Reads and validates the footer of `file`, already opened from `path` (named in errors).
    pub fn from_file(path: impl AsRef<Path>, file: File) -> Result<FlashFile> {
        Self::from_source(Source::from_file(path, file)?)
    }

    /// Reads and validates the footer of the local file `source` (the same reads as for any
    /// weight file's index, see [`crate::source::header`]).
    fn from_source(source: Source) -> Result<FlashFile> {
        let index = read_flash(&source)?;
        match source.into_parts() {
            Parts::Local { path, file, len } => Ok(Self::from_index(path, file, len, index)),
            #[cfg(feature = "remote")]
            Parts::Remote(r) => Err(crate::Error::Internal(format!(
                "{}: a FlashFile opened from a remote source",
                r.url()
            ))),
        }
    }

    /// The file opened from `path`, `file_len` bytes long, with its validated footer.
    pub(crate) fn from_index(
        path: PathBuf,
        file: File,
        file_len: u64,
        index: FlashIndex,
    ) -> FlashFile {
        FlashFile {
            path,
            file,
            file_len,
            payload_len: index.payload_len,
            footer: index.footer,
            footer_json: index.footer_json,
        }
    }
}

/// True when `path` opens as a valid FlashPack file.
pub fn is_flashpack_file(path: impl AsRef<Path>) -> bool {
    FlashFile::open(path).is_ok()
}
