//! Parallel ranged GETs into a [`Sink`](crate::sink::Sink): the same sinks local reads fill
//! (owned host memory in place; pinned staging buffers copied on to a device), so a device load
//! never holds more than the pinned pool's buffers in host memory.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::ProgressBar;

use super::RemoteFile;
use crate::cancel::{self, Cancel};
use crate::format::Checksums;
use crate::sink::Sink;
use crate::{Error, Footer, Result};

/// Object bytes `[offset, offset + len)` of `files[file]`, landing at sink offset `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub file: usize,
    pub offset: u64,
    pub at: u64,
    pub len: usize,
}

/// A FlashPack file's checksums, checked on each part as it arrives (before a device sink
/// copies it onward). Parts must cover whole checksum chunks.
#[derive(Clone, Copy)]
pub(crate) struct PartCheck<'a> {
    pub footer: &'a Footer,
    pub checksums: &'a Checksums,
    pub payload_len: u64,
}

impl PartCheck<'_> {
    fn check(&self, file: &RemoteFile, offset: u64, bytes: &[u8]) -> Result<()> {
        let cs = self.checksums;
        let end = offset + bytes.len() as u64;
        if offset % cs.chunk_bytes != 0 || (end % cs.chunk_bytes != 0 && end != self.payload_len) {
            return Err(Error::Invalid(format!(
                "{}: part {offset}+{} does not cover whole {}-byte checksum chunks",
                file.url(),
                bytes.len(),
                cs.chunk_bytes
            )));
        }
        match cs.first_mismatch(offset / cs.chunk_bytes, bytes) {
            None => Ok(()),
            Some(m) => Err(Error::format(
                file.url(),
                self.footer.checksum_error(&m, self.payload_len),
            )),
        }
    }
}

/// Splits object bytes `[start, end)` of file `file` into parts of at most `part` bytes cut on
/// multiples of `part` (so parts stay on a checksum grid that divides `part`), landing from
/// sink offset `at` on.
pub(crate) fn split(file: usize, start: u64, end: u64, at: u64, part: usize) -> Vec<Part> {
    let step = part.max(1) as u64;
    let mut out = Vec::new();
    let mut off = start;
    while off < end {
        let stop = (off / step + 1).saturating_mul(step).min(end);
        out.push(Part {
            file,
            offset: off,
            at: at + (off - start),
            len: (stop - off) as usize,
        });
        off = stop;
    }
    out
}

/// Everything [`read_parts`] needs besides the parts and the sink.
pub(crate) struct PartJob<'a> {
    pub files: &'a [&'a RemoteFile],
    /// Per file, its checksums when the load verifies them.
    pub checks: &'a [Option<PartCheck<'a>>],
    pub threads: usize,
    pub bar: Option<&'a ProgressBar>,
    pub cancel: Option<&'a Cancel>,
    /// The whole load ends by then (an error naming the file being read).
    pub deadline: Instant,
}

/// Fetches every part into `sink` with `job.threads` requests in flight; the first error stops
/// the others and is returned (the caller drops what was filled: no partial result).
pub(crate) fn read_parts(job: &PartJob<'_>, parts: &[Part], sink: &dyn Sink) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let threads = job.threads.clamp(1, parts.len().max(1));
    let fail = |e: Error| {
        stop.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    std::thread::scope(|s| {
        for worker in 0..threads {
            let (next, stop, fail) = (&next, &stop, &fail);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= parts.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let p = parts[i];
                let Some(file) = job.files.get(p.file) else {
                    return fail(Error::Invalid(format!(
                        "part of file {} of {}",
                        p.file,
                        job.files.len()
                    )));
                };
                if let Err(e) = cancel::check(job.cancel, std::path::Path::new(file.url())) {
                    return fail(e);
                }
                // The sink only learns that the fill failed; the typed error is kept here.
                let mut error = None;
                let mut fill = |dst: &mut [u8]| -> std::io::Result<()> {
                    let checked = file.read_until(dst, p.offset, job.deadline).and_then(|()| {
                        match job.checks.get(p.file).copied().flatten() {
                            Some(c) => c.check(file, p.offset, dst),
                            None => Ok(()),
                        }
                    });
                    checked.map_err(|e| {
                        error = Some(e);
                        std::io::Error::other("remote read failed")
                    })
                };
                // SAFETY: each part index is taken once (fetch_add above) and the parts of a
                // job land in disjoint sink ranges, so concurrent calls get disjoint ranges.
                let result = unsafe { sink.write_chunk(worker, p.at, p.len, &mut fill) };
                if let Err(e) = result {
                    return fail(error.unwrap_or(e));
                }
                if let Some(b) = job.bar {
                    b.inc(p.len as u64);
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_range_on_the_grid() {
        let parts = split(3, 5, 25, 100, 8);
        let spans: Vec<(u64, u64, usize)> = parts.iter().map(|p| (p.offset, p.at, p.len)).collect();
        assert_eq!(
            spans,
            vec![(5, 100, 3), (8, 103, 8), (16, 111, 8), (24, 119, 1)]
        );
        assert!(parts.iter().all(|p| p.file == 3));
        assert!(split(0, 7, 7, 0, 8).is_empty());
    }
}
