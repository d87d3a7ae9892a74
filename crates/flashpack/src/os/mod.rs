//! Everything that differs between operating systems, behind one small portable interface, so
//! the reader, the writer and the sinks above it are the same code everywhere.
//!
//! | | Linux | macOS | Windows |
//! |---|---|---|---|
//! | positioned reads/writes | `pread`/`pwrite` | `pread`/`pwrite` | `ReadFile`/`WriteFile` at an offset |
//! | direct reads (`open_direct`) | `O_DIRECT` | `F_NOCACHE` | `FILE_FLAG_NO_BUFFERING` |
//! | page-cache residency | `mincore` | `mincore` | not available: `Unsupported` |
//! | same file | device + inode | device + inode | volume serial + file index |
//! | unnamed staged file | `O_TMPFILE` | named temp file | named temp file |
//! | replace | `rename` | `rename` | `MoveFileExW(REPLACE_EXISTING)` (tempfile's `persist`) |
//! | durability | `fsync` | `F_FULLFSYNC` (std's `sync_all`) | `FlushFileBuffers` (std's `sync_all`) |
//! | writeback hint, populate hint | `sync_file_range`, `MADV_POPULATE_WRITE` | none | none |
//! | readahead hints (`advise_sequential`, `prefetch`) | `posix_fadvise` | none | none |
//!
//! ```
//! use flashpack::os::Positioned;
//! let mut f = tempfile::tempfile().unwrap();
//! f.write_all_at(b"hello", 3).unwrap();
//! let mut b = [0u8; 5];
//! f.read_exact_at(&mut b, 3).unwrap();
//! assert_eq!(&b, b"hello");
//! ```
use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::{link_tmpfile, unnamed_tmpfile};
#[cfg(target_os = "macos")]
mod macos;

/// Reads and writes at a file offset without moving a shared cursor that other threads rely on
/// (every read and write of ours names its offset).
pub trait Positioned {
    /// Fills `buf` from `offset`; `UnexpectedEof` when the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl Positioned for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        imp::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        imp::write_all_at(self, buf, offset)
    }
}

/// Opens `path` for reading without blocking on it if it is a FIFO (Unix: `O_NONBLOCK |
/// O_NOCTTY`); [`set_blocking`] restores an ordinary handle once it is known to be a file.
/// A directory is an `IsADirectory` error on every OS.
pub(crate) fn open_nonblocking(path: &Path) -> io::Result<File> {
    imp::open_nonblocking(path)
}

/// Clears the non-blocking flag [`open_nonblocking`] set (nothing to do on Windows).
pub(crate) fn set_blocking(file: &File) -> io::Result<()> {
    imp::set_blocking(file)
}

/// What a file that is neither a regular file nor a directory is, for errors.
pub(crate) fn special_kind(kind: &std::fs::FileType) -> &'static str {
    imp::special_kind(kind)
}

/// The error for "this path is a directory" (`EISDIR` on Unix).
pub(crate) fn is_a_directory() -> io::Error {
    imp::is_a_directory()
}

/// A second read handle on `path` that bypasses the page cache, or `None` where the OS or the
/// filesystem refuses one (e.g. tmpfs has no `O_DIRECT`). Direct handles only get reads whose
/// offset, length and memory address are multiples of `DIRECT_ALIGN` (4096, a multiple of every
/// sector size in use); [`direct_refused`] recognises a refusal of a read, which is then done
/// buffered.
pub(crate) fn open_direct(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    return linux::open_direct(path);
    #[cfg(target_os = "macos")]
    return macos::open_direct(path);
    #[cfg(windows)]
    return windows::open_direct(path);
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    {
        let _ = path;
        None
    }
}

/// True when a read on a direct handle failed because the filesystem (or this range) refuses
/// unbuffered I/O, so the same bytes should be read buffered.
pub(crate) fn direct_refused(e: &io::Error) -> bool {
    imp::direct_refused(e)
}

/// True when `a` and `b` are handles on the same file (not merely files with equal contents).
pub(crate) fn same_file(a: &File, b: &File) -> bool {
    imp::same_file(a, b)
}

/// Fraction (0..=1) of the first `len` bytes of `file` in the page cache; `Unsupported` on
/// Windows, which has no per-file residency query.
pub(crate) fn resident_fraction(file: &File, len: u64) -> io::Result<f64> {
    imp::resident_fraction(file, len)
}

/// Tells the OS that `file` is about to be read front to back, so it reads ahead further (Linux
/// `POSIX_FADV_SEQUENTIAL`); a hint, nothing elsewhere.
pub(crate) fn advise_sequential(file: &File) {
    #[cfg(target_os = "linux")]
    linux::advise_sequential(file);
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Starts reading `[offset, offset + len)` of `file` into the page cache without waiting (Linux
/// `POSIX_FADV_WILLNEED`); a hint. True when the OS took it (false elsewhere).
pub(crate) fn prefetch(file: &File, offset: u64, len: u64) -> bool {
    #[cfg(target_os = "linux")]
    return linux::prefetch(file, offset, len);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        false
    }
}

/// Starts writeback of a just-written range without waiting (Linux `sync_file_range`); a hint
/// whose errors surface at the final `sync_all`. Nothing elsewhere.
pub(crate) fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    linux::start_writeback(file, offset, len);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Faults in a destination range in one call before it is filled (Linux `MADV_POPULATE_WRITE`);
/// nothing elsewhere.
pub(crate) fn populate(dst: &mut [u8]) {
    #[cfg(target_os = "linux")]
    linux::populate(dst);
    #[cfg(not(target_os = "linux"))]
    let _ = dst;
}

/// Makes a rename in `dir` durable where the OS allows syncing a folder (Unix); best effort.
/// On Windows a folder cannot be opened as a file and NTFS journals the rename itself.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows has no page-cache residency query: it says so (and `Auto` reads buffered there,
    /// see tests/pack_load.rs).
    #[test]
    #[cfg(windows)]
    fn residency_is_unsupported_on_windows() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        let err = resident_fraction(&f, 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    }

    #[test]
    fn positioned_io_reads_and_writes_at_offsets_and_reports_a_short_file() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"abcdef", 10).unwrap();
        f.write_all_at(b"XY", 12).unwrap();
        let mut b = [0u8; 6];
        f.read_exact_at(&mut b, 10).unwrap();
        assert_eq!(&b, b"abXYef");
        let mut zeros = [9u8; 10];
        f.read_exact_at(&mut zeros, 0).unwrap();
        assert_eq!(zeros, [0u8; 10]);
        let e = f.read_exact_at(&mut b, 13).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn same_file_tells_handles_on_one_file_from_handles_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"same bytes").unwrap();
        std::fs::write(&b, b"same bytes").unwrap();
        let a1 = File::open(&a).unwrap();
        assert!(same_file(&a1, &File::open(&a).unwrap()));
        assert!(!same_file(&a1, &File::open(&b).unwrap()));
    }

    #[test]
    fn a_directory_is_refused_as_a_directory_and_a_file_opens() {
        let dir = tempfile::tempdir().unwrap();
        match crate::source::open_regular(dir.path()) {
            Err(crate::Error::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::IsADirectory, "{source}")
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        crate::source::open_regular(&file).unwrap();
    }
}
