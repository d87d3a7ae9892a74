//! The packer: tensors in, a FlashPack file out, atomically.
//!
//! The destination is checked first (see [`prepare_destination`]); then the payload is written by
//! several threads with positioned writes into a temporary file beside the destination, the
//! footer is appended, the file is fsynced and renamed over the destination. On any error, or
//! when [`PackOptions::cancel`] is cancelled before the rename, the temporary file is removed and
//! an existing destination is left untouched. Errors name the destination.
//!
//! ```
//! use flashpack::{write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! let ids = 7i64.to_le_bytes();
//! let report = pack(&path, &[PackEntry::new("step", Dtype::I64, vec![], &ids)], &PackOptions::default()).unwrap();
//! assert_eq!(report.payload_len, 8);
//! ```
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::os::Positioned;

use crate::format::{
    plan, Checksums, Footer, FormatError, Hasher, Layout, Order, Placement, TensorSpec,
    CHECKSUMS_KEY, CHECKSUM_CHUNK_ALIGN, DEFAULT_ALIGN_BYTES, DEFAULT_CHECKSUM_CHUNK, MAGIC,
    XXH3_64,
};
use crate::{Dtype, Error, Result};

use crate::progress::progress_bar;

mod staged;
pub use staged::prepare_destination;
pub(crate) use staged::Staged;

/// Footer keys the format itself writes; extra keys may not reuse them.
const RESERVED_KEYS: &[&str] = &[
    "format",
    "target_dtype",
    "align_bytes",
    "total_elems",
    "total_payload_bytes",
    "macroblocks",
    "index",
    CHECKSUMS_KEY,
];

/// Largest piece a writer thread copies at once before hashing and writing it.
const BOUNCE_BYTES: usize = 1 << 20;

/// One tensor to pack: its spec and its bytes (contiguous, little-endian, in the stored dtype).
#[derive(Clone, Debug)]
pub struct PackEntry<'a> {
    /// The tensor (name, dtype, shape, tie).
    pub spec: TensorSpec,
    /// Ignored (may be empty) when the tensor is tied to another.
    pub data: &'a [u8],
}

impl<'a> PackEntry<'a> {
    /// An untied tensor with its bytes.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<u64>, data: &'a [u8]) -> Self {
        PackEntry {
            spec: TensorSpec::new(name, dtype, shape),
            data,
        }
    }
}

/// How to pack.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Byte alignment of blocks and tensors (the original writer's 128 by default).
    pub align_bytes: u64,
    /// The order tensors are placed in.
    pub order: Order,
    /// Writer threads (0 = one per core, at most 8).
    pub threads: usize,
    /// Show a progress bar on stderr for large payloads.
    pub progress: bool,
    /// Extra footer keys to write (e.g. for extensions); must not collide with the format's keys.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Write per-chunk payload checksums (the `"checksums"` footer key), computed while writing.
    pub checksums: bool,
    /// Payload bytes per checksum (a multiple of 4096); also the unit each writer thread takes.
    pub chunk_bytes: u64,
    /// Checked before each chunk and before the new file replaces the destination: once
    /// cancelled, the pack stops with [`Error::Cancelled`] and leaves the destination as it was.
    /// A pack that has replaced the destination has succeeded, whatever comes after.
    pub cancel: Option<Cancel>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            align_bytes: DEFAULT_ALIGN_BYTES,
            order: Order::LargestFirst,
            threads: 0,
            progress: false,
            extra: serde_json::Map::new(),
            checksums: true,
            chunk_bytes: DEFAULT_CHECKSUM_CHUNK,
            cancel: None,
        }
    }
}

/// What a pack did and how long each phase took.
#[derive(Clone, Debug)]
pub struct PackReport {
    /// The footer written (with its checksums).
    pub footer: Footer,
    /// Payload bytes.
    pub payload_len: u64,
    /// Bytes of the whole file.
    pub file_len: u64,
    /// Each phase and how long it took, in order.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Writes `entries` to `dest` as a FlashPack file.
pub fn pack(dest: &Path, entries: &[PackEntry<'_>], opts: &PackOptions) -> Result<PackReport> {
    let mut phases = Vec::new();
    let t = Instant::now();
    let mut layout = layout_for(dest, entries, opts)?;
    phases.push(("build_index", t.elapsed()));

    let t = Instant::now();
    let tmp = create_staged(dest, layout.payload_len, opts)?;
    phases.push(("create_file", t.elapsed()));

    let t = Instant::now();
    let digests = write_payload(
        tmp.file(),
        dest,
        entries,
        &layout.placements,
        layout.payload_len,
        opts,
    )?;
    layout.footer.checksums = checksums(digests, opts);
    phases.push(("write_payload", t.elapsed()));

    let t = Instant::now();
    crate::cancel::check(opts.cancel.as_ref(), dest)?;
    let trailer_len = append_footer(tmp.file(), dest, &layout)?;
    phases.push(("append_footer", t.elapsed()));

    let t = Instant::now();
    match opts.cancel.as_ref() {
        Some(c) => c.commit(dest, || tmp.commit(dest))?,
        None => tmp.commit(dest)?,
    }
    phases.push(("atomic_rename", t.elapsed()));

    Ok(PackReport {
        footer: layout.footer,
        payload_len: layout.payload_len,
        file_len: layout.payload_len + trailer_len,
        phases,
    })
}

/// The new file next to `dest` (renamed over it only once complete), `payload_len` bytes long.
fn create_staged(dest: &Path, payload_len: u64, opts: &PackOptions) -> Result<Staged> {
    let dir = prepare_destination(dest)?;
    crate::cancel::check(opts.cancel.as_ref(), dest)?;
    let tmp = Staged::create(&dir, dest)?;
    tmp.file()
        .set_len(payload_len)
        .map_err(|e| Error::io(dest, "set the new file's length", e))?;
    Ok(tmp)
}

/// Writes the footer and trailer after the payload and makes the file durable; returns their
/// length.
fn append_footer(file: &File, dest: &Path, layout: &Layout) -> Result<u64> {
    let trailer = trailer(&layout.footer).map_err(|e| Error::format(dest, e))?;
    let mut f: &File = file;
    f.write_all_at(&trailer, layout.payload_len)
        .map_err(|e| Error::io(dest, "write footer", e))?;
    f.flush().map_err(|e| Error::io(dest, "flush", e))?;
    file.sync_all().map_err(|e| Error::io(dest, "fsync", e))?;
    Ok(trailer.len() as u64)
}

/// The name errors of [`pack_to_writer`] give the destination.
const WRITER: &str = "<writer>";

/// Writes `entries` as a FlashPack file to any [`Write`], in order, with one thread: the same
/// bytes [`pack`] puts in a file (planning, checksums and footer are shared). Nothing is
/// written before the layout is checked; an error after that leaves `out` partly written.
/// `opts.threads` and `opts.progress` do not apply; `opts.cancel` is checked before each chunk.
///
/// ```
/// use flashpack::{format::Footer, write::{pack_to_writer, PackEntry, PackOptions}, Dtype};
/// let mut out = Vec::new();
/// let w = [1u8, 2, 3, 4];
/// let report = pack_to_writer(&mut out, &[PackEntry::new("w", Dtype::U8, vec![4], &w)], &PackOptions::default()).unwrap();
/// assert_eq!(report.file_len, out.len() as u64);
/// assert_eq!(Footer::from_file_bytes(&out).unwrap(), report.footer);
/// ```
pub fn pack_to_writer(
    mut out: impl Write,
    entries: &[PackEntry<'_>],
    opts: &PackOptions,
) -> Result<PackReport> {
    let dest = Path::new(WRITER);
    let mut phases = Vec::new();
    let t = Instant::now();
    let mut layout = layout_for(dest, entries, opts)?;
    phases.push(("build_index", t.elapsed()));

    let t = Instant::now();
    let segments = segments(entries, &layout.placements);
    let step = opts.chunk_bytes;
    let jobs = chunk_jobs(dest, layout.payload_len, step)?;
    let mut digests = Vec::with_capacity(if opts.checksums { jobs } else { 0 });
    let mut bounce = Vec::new();
    let mut pos = 0u64;
    let mut put = |at: u64, bytes: &[u8]| -> std::io::Result<()> {
        write_zeros(&mut out, at - pos)?;
        out.write_all(bytes)?;
        pos = at + bytes.len() as u64;
        Ok(())
    };
    for k in 0..jobs {
        crate::cancel::check(opts.cancel.as_ref(), dest)?;
        let digest = write_chunk(
            &segments,
            k,
            step,
            layout.payload_len,
            opts.checksums,
            &mut bounce,
            &mut put,
        )
        .map_err(|e| Error::io(dest, "write payload", e))?;
        digests.extend(digest);
    }
    write_zeros(&mut out, layout.payload_len - pos)
        .map_err(|e| Error::io(dest, "write payload", e))?;
    layout.footer.checksums = checksums(opts.checksums.then_some(digests), opts);
    phases.push(("write_payload", t.elapsed()));

    let t = Instant::now();
    let trailer = trailer(&layout.footer).map_err(|e| Error::format(dest, e))?;
    out.write_all(&trailer)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io(dest, "write footer", e))?;
    phases.push(("append_footer", t.elapsed()));

    let file_len = layout.payload_len + trailer.len() as u64;
    Ok(PackReport {
        footer: layout.footer,
        payload_len: layout.payload_len,
        file_len,
        phases,
    })
}

/// Packs `entries` into a new `Vec<u8>` (see [`pack_to_writer`]).
///
/// ```
/// use flashpack::{format::Footer, write::{pack_to_vec, PackEntry, PackOptions}, Dtype};
/// let bytes = pack_to_vec(&[PackEntry::new("step", Dtype::I64, vec![], &7i64.to_le_bytes())], &PackOptions::default()).unwrap();
/// let footer = Footer::from_file_bytes(&bytes).unwrap();
/// let (start, end) = footer.record("step").unwrap().byte_range();
/// assert_eq!(&bytes[start as usize..end as usize], &7i64.to_le_bytes());
/// ```
pub fn pack_to_vec(entries: &[PackEntry<'_>], opts: &PackOptions) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    pack_to_writer(&mut out, entries, opts)?;
    Ok(out)
}

/// Plans the file for `entries` and checks them and the options against it (errors name
/// `dest`): every tensor's data has the size its shape needs, no extra key is one of the
/// format's own, the checksum chunk is a multiple of [`CHECKSUM_CHUNK_ALIGN`].
fn layout_for(dest: &Path, entries: &[PackEntry<'_>], opts: &PackOptions) -> Result<Layout> {
    let specs: Vec<TensorSpec> = entries.iter().map(|e| e.spec.clone()).collect();
    let mut layout =
        plan(&specs, opts.align_bytes, opts.order).map_err(|e| Error::format(dest, e))?;
    for p in &layout.placements {
        let e = &entries[p.spec];
        if e.data.len() as u64 != p.nbytes {
            return Err(Error::format(
                dest,
                FormatError::tensor(
                    &e.spec.name,
                    format!(
                        "has {} bytes of data but shape {:?} of {} needs {}",
                        e.data.len(),
                        e.spec.shape,
                        e.spec.dtype,
                        p.nbytes
                    ),
                ),
            ));
        }
    }
    if let Some(key) = opts
        .extra
        .keys()
        .find(|k| RESERVED_KEYS.contains(&k.as_str()))
    {
        return Err(Error::BadOption {
            path: dest.to_path_buf(),
            option: "extra footer key",
            value: format!("{key:?}"),
            why: "is one of the format's own keys".into(),
        });
    }
    if opts.chunk_bytes == 0 || opts.chunk_bytes % CHECKSUM_CHUNK_ALIGN != 0 {
        return Err(Error::BadOption {
            path: dest.to_path_buf(),
            option: "chunk_bytes",
            value: opts.chunk_bytes.to_string(),
            why: format!("is not a positive multiple of {CHECKSUM_CHUNK_ALIGN}"),
        });
    }
    layout.footer.extra = opts.extra.clone();
    Ok(layout)
}

/// The footer's checksums from the chunk digests (when they were computed).
fn checksums(digests: Option<Vec<u64>>, opts: &PackOptions) -> Option<Checksums> {
    digests.map(|digests| Checksums {
        algorithm: XXH3_64.into(),
        chunk_bytes: opts.chunk_bytes,
        digests,
    })
}

/// What follows the payload: the footer JSON, its u64 LE length and the magic.
fn trailer(footer: &Footer) -> std::result::Result<Vec<u8>, FormatError> {
    let mut trailer = footer.encode()?;
    let json_len = trailer.len() as u64;
    trailer.extend_from_slice(&json_len.to_le_bytes());
    trailer.extend_from_slice(MAGIC);
    Ok(trailer)
}

/// Non-empty, non-tied tensors as `(payload offset, bytes)`, by offset (tied records share
/// another's bytes).
fn segments<'a>(entries: &[PackEntry<'a>], placements: &[Placement]) -> Vec<(u64, &'a [u8])> {
    let mut segments: Vec<(u64, &[u8])> = placements
        .iter()
        .filter(|p| p.nbytes > 0 && entries[p.spec].spec.tied_to.is_none())
        .map(|p| (p.byte_offset, entries[p.spec].data))
        .collect();
    segments.sort_by_key(|s| s.0);
    segments
}

/// The number of `step`-byte chunks of the payload, as a count of jobs.
fn chunk_jobs(dest: &Path, payload_len: u64, step: u64) -> Result<usize> {
    usize::try_from(Checksums::chunk_count(payload_len, step)).map_err(|_| {
        Error::Unsupported(format!(
            "{}: payload too large for this platform",
            dest.display()
        ))
    })
}

/// Hands payload chunk `k` (bytes `[k * step, min((k + 1) * step, payload_len))`) to `put` as
/// `(payload offset, bytes)` pieces in order, the gaps between them being zeros, and returns the
/// chunk's digest when `hash` is on. With `hash` on, each piece is first copied into `bounce`,
/// and that copy is both hashed and put: the caller's memory may change under us (a Python
/// tensor another thread writes to while the GIL is released), and the digest must describe
/// exactly the bytes that are written.
fn write_chunk(
    segments: &[(u64, &[u8])],
    k: usize,
    step: u64,
    payload_len: u64,
    hash: bool,
    bounce: &mut Vec<u8>,
    put: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<Option<u64>> {
    let start = k as u64 * step;
    let end = (start + step).min(payload_len);
    let mut hasher = hash.then(Hasher::default);
    let mut pos = start;
    let first = segments.partition_point(|(off, d)| off + d.len() as u64 <= start);
    for &(off, data) in segments[first..].iter().take_while(|(off, _)| *off < end) {
        let (s, e) = (off.max(start), (off + data.len() as u64).min(end));
        let piece = &data[(s - off) as usize..(e - off) as usize];
        match hasher.as_mut() {
            None => put(s, piece)?,
            Some(h) => {
                h.update_zeros(s.saturating_sub(pos));
                let mut at = s;
                for part in piece.chunks(BOUNCE_BYTES) {
                    bounce.clear();
                    bounce.extend_from_slice(part);
                    h.update(bounce);
                    put(at, bounce)?;
                    at += part.len() as u64;
                }
            }
        }
        pos = e;
    }
    Ok(hasher.map(|mut h| {
        h.update_zeros(end.saturating_sub(pos));
        h.finish()
    }))
}

/// Writes `n` zero bytes (alignment padding) to a stream.
fn write_zeros(out: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Writes every tensor's bytes at its placement, one payload chunk per job (so threads share
/// big tensors evenly), and returns each chunk's digest when checksums are on. A chunk's digest
/// covers its bytes in order, zero padding included, hashed from the very copy that is written.
/// Each writer thread returns its error as a value; the first one raised wins and stops the
/// others before their next chunk.
fn write_payload(
    file: &File,
    dest: &Path,
    entries: &[PackEntry<'_>],
    placements: &[Placement],
    payload_len: u64,
    opts: &PackOptions,
) -> Result<Option<Vec<u64>>> {
    let step = opts.chunk_bytes;
    let jobs = chunk_jobs(dest, payload_len, step)?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8),
        n => n,
    }
    .clamp(1, jobs.max(1));
    let w = PayloadWriter {
        file,
        dest,
        segments: segments(entries, placements),
        step,
        payload_len,
        jobs,
        opts,
        digests: (0..if opts.checksums { jobs } else { 0 })
            .map(|_| AtomicU64::new(0))
            .collect(),
        bar: progress_bar(opts.progress, payload_len, "packing"),
        next: AtomicUsize::new(0),
        first_failed: AtomicUsize::new(NONE_FAILED),
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|worker| {
                let w = &w;
                s.spawn(move || w.run(worker))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        dest,
                        "write payload",
                        std::io::Error::other("writer thread panicked"),
                    ))
                })
            })
            .collect()
    });
    if let Some(b) = &w.bar {
        b.finish_and_clear();
    }
    // The first failure; else (none claimed first) a thread that panicked.
    let first = w.first_failed.load(Ordering::Relaxed);
    let mut errors: Vec<(usize, Error)> = results
        .into_iter()
        .enumerate()
        .filter_map(|(k, r)| r.err().map(|e| (k, e)))
        .collect();
    if !errors.is_empty() {
        let at = errors.iter().position(|(k, _)| *k == first).unwrap_or(0);
        return Err(errors.swap_remove(at).1);
    }
    Ok(opts
        .checksums
        .then(|| w.digests.into_iter().map(AtomicU64::into_inner).collect()))
}

/// No writer thread has failed (see [`PayloadWriter::first_failed`]).
const NONE_FAILED: usize = usize::MAX;

/// The shared state of one [`write_payload`].
struct PayloadWriter<'a, 'e> {
    file: &'a File,
    dest: &'a Path,
    /// `(payload offset, bytes)` of every stored tensor, in payload order.
    segments: Vec<(u64, &'e [u8])>,
    step: u64,
    payload_len: u64,
    jobs: usize,
    opts: &'a PackOptions,
    /// Per chunk: its digest (when checksums are on).
    digests: Vec<AtomicU64>,
    bar: Option<indicatif::ProgressBar>,
    /// The next chunk to write.
    next: AtomicUsize,
    /// The thread whose error is reported: the first to fail. Once set, the others stop.
    first_failed: AtomicUsize,
}

impl PayloadWriter<'_, '_> {
    /// One writer thread: chunks until none is left or a thread failed.
    fn run(&self, worker: usize) -> Result<()> {
        let mut bounce = Vec::new();
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            if k >= self.jobs || self.first_failed.load(Ordering::Relaxed) != NONE_FAILED {
                return Ok(());
            }
            if let Err(e) = self.write_job(k, &mut bounce) {
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

    /// Writes chunk `k` (after checking for cancellation), keeps its digest and starts its
    /// writeback.
    fn write_job(&self, k: usize, bounce: &mut Vec<u8>) -> Result<()> {
        crate::cancel::check(self.opts.cancel.as_ref(), self.dest)?;
        let mut put = |at: u64, bytes: &[u8]| self.file.write_all_at(bytes, at);
        let digest = write_chunk(
            &self.segments,
            k,
            self.step,
            self.payload_len,
            self.opts.checksums,
            bounce,
            &mut put,
        )
        .map_err(|e| Error::io(self.dest, "write payload", e))?;
        if let Some(d) = digest {
            self.digests[k].store(d, Ordering::Relaxed);
        }
        let start = k as u64 * self.step;
        let end = (start + self.step).min(self.payload_len);
        crate::os::start_writeback(self.file, start, (end - start) as usize);
        if let Some(b) = &self.bar {
            b.inc(end - start);
        }
        Ok(())
    }
}
