//! The reader pool: threads that pull chunks of the payload off a shared counter and read each
//! into its sink, with `O_DIRECT` for the aligned part of a chunk when a direct handle is given and
//! buffered reads for everything else (unaligned tails, filesystems that refuse `O_DIRECT`).
//! Buffered reads of a cold file ask for readahead: sequential advice on the file, and before each
//! chunk a thread asks the OS to start reading the chunk `threads` places further on (the one a
//! thread will take after this round), so the device gets large requests ahead of the readers.
//! Each thread checks the source's [`Cancel`] before each chunk and between the [`READ_PIECE`]
//! reads a chunk is made of, so a cancelled load stops after at most one piece per thread.
//! A remote source (feature `remote`) reads each item with one ranged GET of its pinned object
//! (retried and resumed by the client) into the same sinks; a cancellation drops the requests
//! in flight, their retries and back-off waits at once (see [`crate::remote::RemoteFile`]), and
//! a failed part's error names the URL and the tensors it holds.
use super::options::IoCounts;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use indicatif::ProgressBar;

use crate::cancel::Cancel;
use crate::format::{Checksums, Footer};
use crate::os::Positioned;
use crate::sink::Sink;
use crate::{Error, Result};

/// Alignment `O_DIRECT` needs for file offset, length and memory address.
pub const DIRECT_ALIGN: u64 = 4096;
/// The most one read call asks for (a multiple of [`DIRECT_ALIGN`]): cancellation is checked
/// between such reads, so a load stops soon even with large chunks on a slow disk.
pub const READ_PIECE: usize = 4 << 20;

/// One chunk of payload to read: `[offset, offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: usize,
}

/// The chunk grid step for `chunk_bytes`: rounded up to [`DIRECT_ALIGN`], saturating at the
/// largest multiple of it (a caller's absurd chunk size must not wrap to 0).
pub fn chunk_step(chunk_bytes: usize) -> u64 {
    let c = (chunk_bytes as u64).max(DIRECT_ALIGN);
    c.div_ceil(DIRECT_ALIGN)
        .checked_mul(DIRECT_ALIGN)
        .unwrap_or(u64::MAX / DIRECT_ALIGN * DIRECT_ALIGN)
}

/// Splits `[start, end)` into chunks of `chunk_bytes` (rounded up to [`DIRECT_ALIGN`], see
/// [`chunk_step`]), cut at multiples of that step from offset 0 so that every chunk but the
/// edges is aligned. Works up to the end of the `u64` range.
pub fn plan_chunks(start: u64, end: u64, chunk_bytes: usize) -> Vec<Chunk> {
    let step = chunk_step(chunk_bytes);
    let mut out = Vec::new();
    let mut off = start;
    while off < end {
        // The next grid line, or the end of the u64 range when there is none.
        let next = (off / step + 1).saturating_mul(step);
        let stop = next.min(end);
        out.push(Chunk {
            offset: off,
            len: (stop - off) as usize,
        });
        off = stop;
    }
    out
}

/// One input of the reader pool: how one load reads one [`Source`](crate::source::Source)
/// (its open local file with the reader policy chosen for it, or its pinned remote object),
/// with the load's cancel and the source's verifier.
pub(crate) struct Input<'a> {
    /// The file's path, or a remote object's URL (named in errors).
    pub path: &'a Path,
    pub reader: Reader<'a>,
    pub cancel: Option<&'a Cancel>,
    /// Checks each chunk read from this source against its footer's checksums.
    pub verify: Option<&'a Verifier<'a>>,
}

/// How a source's bytes are read.
pub(crate) enum Reader<'a> {
    /// A local file: positioned reads, `O_DIRECT` through `direct` where it is given.
    Local {
        buffered: &'a File,
        direct: Option<File>,
        /// Ask the OS to read ahead (see the module doc); for buffered reads of a cold file.
        readahead: bool,
    },
    /// A remote object: each item is one ranged GET of the pinned version (retried and resumed
    /// by the client), the whole load bounded by `deadline`.
    #[cfg(feature = "remote")]
    Remote {
        file: &'a crate::remote::RemoteFile,
        deadline: std::time::Instant,
        /// The object's tensors, to name those of a part that failed.
        names: super::TensorNames<'a>,
    },
}

impl<'a> Input<'a> {
    /// True for a local file with a direct handle.
    fn reads_direct(&self) -> bool {
        matches!(
            self.reader,
            Reader::Local {
                direct: Some(_),
                ..
            }
        )
    }
}

/// `len` bytes of source number `file` from `file_offset` on, landing at sink offset `at`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub file: usize,
    pub file_offset: u64,
    pub at: u64,
    pub len: usize,
}

/// Checks each chunk against the footer's checksums right after it is read (before a device
/// sink copies it onward). Chunks must be exactly the checksum chunks.
pub(crate) struct Verifier<'a> {
    pub footer: &'a Footer,
    pub checksums: &'a Checksums,
    pub payload_len: u64,
}

impl Verifier<'_> {
    /// Checks every checksum chunk inside `bytes` (payload bytes from `offset`).
    fn check(&self, path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
        let cs = self.checksums;
        let end = offset + bytes.len() as u64;
        let on_grid = offset % cs.chunk_bytes == 0
            && (end % cs.chunk_bytes == 0 || end == self.payload_len)
            && end <= self.payload_len;
        if !on_grid {
            // The planners cut verified reads on the checksum grid: this is a bug, not a
            // caller's mistake.
            return Err(Error::Internal(format!(
                "{}: chunk {offset}+{} does not cover whole {}-byte checksum chunks",
                path.display(),
                bytes.len(),
                cs.chunk_bytes
            )));
        }
        match cs.first_mismatch(offset / cs.chunk_bytes, bytes) {
            None => Ok(()),
            Some(m) => Err(Error::format(
                path,
                self.footer.checksum_error(&m, self.payload_len),
            )),
        }
    }
}

/// The reader pool: `threads` threads take the next item, read it from its source into the
/// sink (checking it when the source has a verifier), and all stop on the first error or
/// cancellation. Each thread returns its error as a value; the first one raised wins. It names
/// the item's file (a device error is left to the caller, which knows the failed chunk).
pub(crate) fn read_items(
    sources: &[Input<'_>],
    items: &[Item],
    sink: &dyn Sink,
    threads: usize,
    bar: Option<&ProgressBar>,
) -> Result<IoCounts> {
    let threads = threads.clamp(1, items.len().max(1));
    let pool = Pool {
        sources,
        items,
        sink,
        threads,
        bar,
        next: AtomicUsize::new(0),
        first_failed: AtomicUsize::new(NONE_FAILED),
        direct_ok: sources
            .iter()
            .map(|s| AtomicBool::new(s.reads_direct()))
            .collect(),
        counts: Counters::default(),
    };
    sources.iter().for_each(start_readahead);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|worker| {
                let pool = &pool;
                s.spawn(move || pool.run(worker))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let first = pool.first_failed.load(Ordering::Relaxed);
    if let Some(Err(e)) = results.into_iter().nth(first) {
        return Err(e);
    }
    Ok(pool.counts.into_counts())
}

/// No worker has failed (see [`Pool::first_failed`]).
const NONE_FAILED: usize = usize::MAX;

/// The shared state of one [`read_items`] call.
struct Pool<'a, 's> {
    sources: &'a [Input<'s>],
    items: &'a [Item],
    sink: &'a dyn Sink,
    threads: usize,
    bar: Option<&'a ProgressBar>,
    /// The next item to take.
    next: AtomicUsize,
    /// The worker whose error is reported: the first to fail. Once set, the others stop
    /// before their next item.
    first_failed: AtomicUsize,
    /// Per source: `O_DIRECT` still allowed (cleared when the filesystem refuses it).
    direct_ok: Vec<AtomicBool>,
    counts: Counters,
}

/// [`IoCounts`] shared by the reader threads.
#[derive(Default)]
struct Counters {
    direct: AtomicU64,
    buffered: AtomicU64,
    prefetched: AtomicU64,
    remote: AtomicU64,
}

impl Counters {
    fn into_counts(self) -> IoCounts {
        IoCounts {
            direct_bytes: self.direct.into_inner(),
            buffered_bytes: self.buffered.into_inner(),
            prefetched_bytes: self.prefetched.into_inner(),
            remote_bytes: self.remote.into_inner(),
        }
    }
}

impl Pool<'_, '_> {
    /// One reader thread: items until none is left or a worker failed. On its own failure it
    /// claims "first" if nobody has yet, which stops the others.
    fn run(&self, worker: usize) -> Result<()> {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.items.len() || self.first_failed.load(Ordering::Relaxed) != NONE_FAILED {
                return Ok(());
            }
            if let Err(e) = self.read_item(worker, i) {
                let _ = self.first_failed.compare_exchange(
                    NONE_FAILED,
                    worker,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return Err(e);
            }
        }
    }

    /// Item `i`: checks for cancellation, asks for readahead of the item this thread takes
    /// next round, and lands the item in the sink.
    fn read_item(&self, worker: usize, i: usize) -> Result<()> {
        let it = self.items[i];
        let src = &self.sources[it.file];
        crate::cancel::check(src.cancel, src.path)?;
        if let Some(ahead) = self.items.get(i + self.threads) {
            let s = &self.sources[ahead.file];
            prefetch(s, ahead.file_offset, ahead.len, &self.counts.prefetched);
        }
        let mut fill = |dst: &mut [u8]| self.fill(it, dst);
        // SAFETY: each item is taken once (fetch_add in `run`) and the planners give items
        // non-overlapping sink ranges, so concurrent calls get disjoint ranges.
        unsafe { self.sink.write_chunk(worker, it.at, it.len, &mut fill) }?;
        if let Some(b) = self.bar {
            b.inc(it.len as u64);
        }
        Ok(())
    }

    /// Reads item `it`'s bytes into `dst` (the sink's memory for it) and checks them when its
    /// source has a verifier. The error names the file (or URL) and keeps its source.
    fn fill(&self, it: Item, dst: &mut [u8]) -> Result<()> {
        let src = &self.sources[it.file];
        match &src.reader {
            Reader::Local { .. } => {
                let c = &self.counts;
                let ok = &self.direct_ok[it.file];
                read_pieces(src, ok, it.file_offset, dst, &c.direct, &c.buffered)
                    .map_err(|e| read_error(src, e))?
            }
            #[cfg(feature = "remote")]
            Reader::Remote {
                file,
                deadline,
                names,
            } => {
                file.read_until(dst, it.file_offset, *deadline, src.cancel)
                    .map_err(|e| {
                        let end = it.file_offset + dst.len() as u64;
                        let what = names.describe(it.file_offset, end);
                        remote_context(e, &format!("reading {what}"))
                    })?;
                self.counts
                    .remote
                    .fetch_add(dst.len() as u64, Ordering::Relaxed);
            }
        }
        match src.verify {
            Some(v) => v.check(src.path, it.file_offset, dst),
            None => Ok(()),
        }
    }
}

/// The error for a failed local read of `src`: cancellation when the read stopped for it, the
/// file shrinking when it ran out of bytes, otherwise the OS error.
fn read_error(src: &Input<'_>, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::Interrupted => crate::cancel::check(src.cancel, src.path)
            .err()
            .unwrap_or_else(|| Error::io(src.path, "read", e)),
        // Every read was checked against the file's length at open, so running out of bytes
        // means the file shrank during the load.
        std::io::ErrorKind::UnexpectedEof => {
            Error::io(src.path, "read (the file got shorter while loading)", e)
        }
        _ => Error::io(src.path, "read", e),
    }
}

/// A remote error with what was being done added to its message (other errors unchanged).
#[cfg(feature = "remote")]
fn remote_context(e: Error, what: &str) -> Error {
    match e {
        Error::Remote { url, source } => Error::remote(url, source.with_context(what)),
        other => other,
    }
}

/// Sequential advice on a source that reads ahead (nothing for the others).
pub(super) fn start_readahead(src: &Input<'_>) {
    if let Reader::Local {
        buffered,
        readahead: true,
        ..
    } = &src.reader
    {
        crate::os::advise_sequential(buffered);
    }
}

/// Asks the OS to start reading `[offset, offset + len)` of a source that reads ahead (a reader
/// thread does this for the chunk `threads` places after the one it takes), counting the bytes.
pub(super) fn prefetch(src: &Input<'_>, offset: u64, len: usize, counted: &AtomicU64) {
    if let Reader::Local {
        buffered,
        readahead: true,
        ..
    } = &src.reader
    {
        if crate::os::prefetch(buffered, offset, len as u64) {
            counted.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
}

/// Reads `dst` from `offset` in [`READ_PIECE`]s, stopping with `ErrorKind::Interrupted` between
/// two pieces once the source's [`Cancel`] is cancelled.
pub(super) fn read_pieces(
    src: &Input<'_>,
    direct_ok: &AtomicBool,
    offset: u64,
    dst: &mut [u8],
    direct_bytes: &AtomicU64,
    buffered_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let mut at = offset;
    for (k, piece) in dst.chunks_mut(READ_PIECE).enumerate() {
        if k > 0 && src.cancel.is_some_and(Cancel::is_cancelled) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "cancelled",
            ));
        }
        read_one(src, direct_ok, at, piece, direct_bytes, buffered_bytes)?;
        at += piece.len() as u64;
    }
    Ok(())
}

#[cfg_attr(not(feature = "remote"), allow(irrefutable_let_patterns))]
fn read_one(
    src: &Input<'_>,
    direct_ok: &AtomicBool,
    offset: u64,
    dst: &mut [u8],
    direct_bytes: &AtomicU64,
    buffered_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let Reader::Local {
        buffered, direct, ..
    } = &src.reader
    else {
        return Err(std::io::Error::other("not a local file"));
    };
    let mut done = 0usize;
    if let Some(direct) = direct {
        let aligned = offset % DIRECT_ALIGN == 0 && (dst.as_ptr() as u64) % DIRECT_ALIGN == 0;
        let n = (dst.len() as u64 / DIRECT_ALIGN * DIRECT_ALIGN) as usize;
        if aligned && n > 0 && direct_ok.load(Ordering::Relaxed) {
            match direct.read_exact_at(&mut dst[..n], offset) {
                Ok(()) => {
                    done = n;
                    direct_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                // The filesystem (or this range) refuses O_DIRECT: read the same bytes buffered.
                Err(e) if crate::os::direct_refused(&e) => {
                    direct_ok.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(e),
            }
        }
    }
    if done < dst.len() {
        buffered.read_exact_at(&mut dst[done..], offset + done as u64)?;
        buffered_bytes.fetch_add((dst.len() - done) as u64, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_exactly_and_inner_edges_are_aligned() {
        for &(start, end, cb) in &[
            (0u64, 1u64, 4096usize),
            (0, 10_000_000, 1 << 20),
            (100, 9000, 4096),
            (0, 8192, 5000),
        ] {
            let chunks = plan_chunks(start, end, cb);
            assert_eq!(chunks.first().map(|c| c.offset), Some(start));
            let mut at = start;
            for c in &chunks {
                assert_eq!(c.offset, at);
                assert!(c.len > 0);
                at += c.len as u64;
            }
            assert_eq!(at, end);
            for c in chunks.iter().skip(1) {
                assert_eq!(c.offset % DIRECT_ALIGN, 0);
            }
        }
        assert!(plan_chunks(5, 5, 4096).is_empty());
    }
}
