//! Page-cache residency for the reader-policy tests (the engine's own query is internal).
#![cfg(target_os = "linux")]

/// Fraction of the first `len` bytes of `f` in the page cache (`mincore` on a mapping).
pub fn resident_fraction(f: &std::fs::File, len: u64) -> std::io::Result<f64> {
    // SAFETY: a read-only mapping of a file this test made and nobody truncates; its pages are
    // only queried, never read.
    let map = unsafe { memmap2::Mmap::map(f)? };
    let page = 4096usize;
    let pages = (len as usize).div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` spans at least `len` bytes and `vec` holds one byte per page of them.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            len as usize,
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok(resident as f64 / pages.max(1) as f64)
}
