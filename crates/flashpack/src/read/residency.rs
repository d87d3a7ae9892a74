//! Page-cache residency: how much of a file range is already in memory (`mincore`).
//!
//! The eager reader uses it to choose buffered reads (cheap copies out of the cache) or
//! `O_DIRECT` (no double copy, no cache pollution) for a file that must come from disk.
//!
//! ```
//! use std::io::Write;
//! let mut f = tempfile::NamedTempFile::new().unwrap();
//! f.write_all(&[7u8; 8192]).unwrap();
//! let frac = flashpack::read::resident_fraction(f.as_file(), 8192).unwrap();
//! assert!((0.0..=1.0).contains(&frac));
//! ```
use std::fs::File;

use memmap2::MmapOptions;

/// Fraction (0..=1) of the first `len` bytes of `file` that sit in the page cache.
pub fn resident_fraction(file: &File, len: u64) -> std::io::Result<f64> {
    if len == 0 {
        return Ok(1.0);
    }
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a read-only shared mapping that is never dereferenced; it only gives mincore an
    // address range backed by the file.
    let map = unsafe { MmapOptions::new().len(len).map(file)? };
    let page = page_size();
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `len` bytes starting at a page boundary, and `vec` has one
    // byte per page of it, as mincore(2) requires.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok(resident as f64 / pages as f64)
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}
