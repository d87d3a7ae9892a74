//! Page-cache residency: how much of a file range is already in memory (`mincore` on Linux and
//! macOS; see [`crate::os`]).
//!
//! The eager reader uses it to choose buffered reads (cheap copies out of the cache) or
//! `O_DIRECT` (no double copy, no cache pollution) for a file that must come from disk.

use std::fs::File;

/// Fraction (0..=1) of the first `len` bytes of `file` that sit in the page cache. Windows has no
/// such query: there it is an `Unsupported` error (and automatic I/O reads buffered).
pub(crate) fn resident_fraction(file: &File, len: u64) -> std::io::Result<f64> {
    crate::os::resident_fraction(file, len)
}
