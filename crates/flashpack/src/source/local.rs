//! Opening a local file for reading: regular files only, refused without blocking on anything
//! else (a FIFO, socket or device).
use std::fs::{File, Metadata};
use std::path::Path;

use crate::{Error, Result};

/// Opens `path` for reading if it is a regular file. Anything else is refused before it could
/// block a read: a FIFO (whose `open` would wait for a writer), a socket or a device is
/// [`Error::NotAFile`], a directory the OS error `EISDIR` (on Windows an `IsADirectory` error). On
/// Unix the file is opened non-blocking, checked with `fstat` (the same file that was opened,
/// whatever the path points to meanwhile), and set back to blocking.
pub fn open_regular(path: impl AsRef<Path>) -> Result<File> {
    open_regular_with_metadata(path.as_ref()).map(|(file, _)| file)
}

/// [`open_regular`], with the `fstat` it made (length, modification time).
pub(super) fn open_regular_with_metadata(path: &Path) -> Result<(File, Metadata)> {
    let file = crate::os::open_nonblocking(path).map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    let kind = meta.file_type();
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
    Ok((file, meta))
}
