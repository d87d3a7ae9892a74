//! Windows: offset reads/writes with `seek_read`/`seek_write`, unbuffered reads with
//! `FILE_FLAG_NO_BUFFERING`, identity by volume serial number and file index.
//!
//! Windows has no per-file page-cache residency query, so [`resident_fraction`] is
//! `Unsupported` and automatic I/O reads buffered (the cache-friendly choice: a second load of
//! the same file comes from memory).
use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::{FileExt, OpenOptionsExt};
use std::os::windows::io::AsRawHandle;
use std::path::Path;

use windows_sys::Win32::Foundation::{ERROR_INVALID_PARAMETER, HANDLE};
use windows_sys::Win32::Storage::FileSystem::{
    GetFileInformationByHandle, BY_HANDLE_FILE_INFORMATION, FILE_FLAG_NO_BUFFERING,
};

/// `seek_read` moves the handle's cursor, which none of our code uses: every read names its
/// offset. It may return fewer bytes than asked, hence the loop.
pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write whole buffer",
                ))
            }
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Windows opens never block on a pipe the way a Unix FIFO does. Opening a folder as a file is
/// refused with "access denied", reported here as `IsADirectory` like on Unix.
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied && path.is_dir() {
            is_a_directory()
        } else {
            e
        }
    })
}

pub fn set_blocking(_file: &File) -> io::Result<()> {
    Ok(())
}

pub fn special_kind(_kind: &std::fs::FileType) -> &'static str {
    "special file"
}

pub fn is_a_directory() -> io::Error {
    io::Error::new(io::ErrorKind::IsADirectory, "is a directory")
}

pub fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(FILE_FLAG_NO_BUFFERING)
        .open(path)
        .ok()
}

/// Unbuffered reads must be sector-aligned: a misaligned one is `ERROR_INVALID_PARAMETER`.
pub fn direct_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32)
}

pub fn same_file(a: &File, b: &File) -> bool {
    match (identity(a), identity(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// (volume serial number, file index): what identifies a file on Windows.
fn identity(file: &File) -> Option<(u32, u32, u32)> {
    // SAFETY: BY_HANDLE_FILE_INFORMATION is plain integers, for which all-zero is valid.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle stays open for the call (`file` is borrowed), and `info` is a live,
    // writable struct of the type the call fills.
    let ok = unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) };
    (ok != 0).then_some((
        info.dwVolumeSerialNumber,
        info.nFileIndexHigh,
        info.nFileIndexLow,
    ))
}

pub fn resident_fraction(_file: &File, _len: u64) -> io::Result<f64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "Windows has no page-cache residency query",
    ))
}
