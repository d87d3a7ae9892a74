//! Linux only: `O_DIRECT` reads, readahead hints (`posix_fadvise`), unnamed `O_TMPFILE` staging
//! files, `sync_file_range` writeback hints and `MADV_POPULATE_WRITE`.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_NONBLOCK)
        .open(path)
        .ok()
}

/// `POSIX_FADV_SEQUENTIAL` on the whole file: this open file's readahead window doubles.
pub fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor that `file` keeps open for the whole call; it reads
    // no memory of ours. A hint: its result is ignored (reads work the same without it).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// `POSIX_FADV_WILLNEED` on `[offset, offset + len)`: the kernel starts reading the range into the
/// page cache in large requests and returns without waiting for them. True when it accepted.
pub fn prefetch(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: as in `advise_sequential`.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED) == 0 }
}

pub fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor that `file` keeps open for the whole call; it reads
    // no memory of ours. Its result is ignored on purpose (a hint; the fsync reports errors).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Measured ~1.8x faster eager loads into fresh memory on the 2-core VM (3.0 -> 5.4 GB/s, 2 GiB,
/// page cache hot): the kernel populates the pages in a loop instead of taking one fault per page
/// inside the read's copy. Kernels without `MADV_POPULATE_WRITE` (before 5.14) fault as usual.
pub fn populate(dst: &mut [u8]) {
    const PAGE: usize = 4096;
    if dst.is_empty() {
        return;
    }
    let start = dst.as_mut_ptr() as usize;
    let aligned = start & !(PAGE - 1);
    let len = start + dst.len() - aligned;
    // SAFETY: the range covers `dst` (which we may write) widened down to its page start; pages of
    // the same anonymous mapping. MADV_POPULATE_WRITE only faults pages in as if written, without
    // changing their contents, so bytes outside `dst` that other threads fill are not disturbed.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE);
    }
}

/// An `O_TMPFILE` in `dir`, when the filesystem supports it and `/proc/self/fd` can link it.
pub fn unnamed_tmpfile(dir: &Path) -> Option<File> {
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)
        .ok()
}

/// Gives an `O_TMPFILE` a fresh `.packtmp_*` name in `dir` (via its `/proc/self/fd` link).
pub fn link_tmpfile(file: &File, dir: &Path) -> io::Result<PathBuf> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let src =
        CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(io::Error::other)?;
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = dir.join(format!(
            ".packtmp_{}_{nanos:08x}_{attempt}",
            std::process::id()
        ));
        let dst = CString::new(name.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: path contains a NUL byte", name.display()),
            )
        })?;
        // SAFETY: two valid NUL-terminated paths; linkat reads them and touches no other memory.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(name);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::AlreadyExists {
            return Err(err);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temporary name in {}", dir.display()),
    ))
}
