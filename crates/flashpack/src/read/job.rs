//! Loads of many byte ranges from many files as one job: one reader pool (and, for a device
//! load, one set of pinned staging buffers) for every file, the files read in parallel.
//!
//! Every load is such a job: plan (which files, which byte ranges) -> run -> result. A single
//! file ([`crate::read::load`], [`WeightFile::load`](crate::weights::WeightFile::load)), a slice
//! ([`crate::read::read_range`]), a check ([`crate::read::verify`]), a device load and a remote
//! object are plans of one file; a sharded checkpoint is a plan of its shards. The runs:
//! [`read_host`] (new owned memory) and `read_into` (the caller's memory, for an
//! exact plan: the piece read straight into its final buffer), `map_private` (a lazy load's
//! private copy-on-write mapping), [`verify`] (scratch buffers) and `read_device` (pinned
//! staging -> device).
//!
//! A job is a list of [`Piece`]s: byte ranges of [`JobFile`]s such as
//! [`WeightFile`](crate::weights::WeightFile)s (whole tensors, or the rows of one). [`JobPlan`]
//! merges the pieces of each file into spans and lays the spans out one after another in the job's
//! memory, each on a `DIRECT_ALIGN` (4096-byte) boundary (so the reads can use `O_DIRECT`); the
//! chunks of every span, interleaved across files, go to the reader threads. [`read_host`] fills
//! owned host memory; `read_device` streams through the pinned pool into device memory, bounded by
//! the pool's limit however many files there are.
//!
//! Files may be remote ([`WeightFile::open_location`](crate::weights::WeightFile::open_location)
//! with a URL, feature `remote`), alone or mixed with local ones: a remote file's chunks are ranged
//! GETs of its pinned version (of [`RemoteSettings::part_bytes`](crate::remote::RemoteSettings)
//! each, as many in flight as its `concurrency`), landing in the same sinks, so a device load of a
//! URL never holds more than the pinned pool's buffers in host memory. A plan made with
//! [`JobPlan::verified`] reads whole checksum chunks of the FlashPack files, checked as they arrive
//! when `opts.verify`.
//!
//! ```
//! use flashpack::read::job::{read_host, JobPlan, Piece};
//! use flashpack::read::LoadOptions;
//! use flashpack::weights::WeightFile;
//! use flashpack::{write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let mut files = Vec::new();
//! for (k, fill) in [(0, 1u8), (1, 2u8)] {
//!     let path = dir.path().join(format!("shard{k}.flashpack"));
//!     pack(&path, &[PackEntry::new("w", Dtype::U8, vec![3], &[fill; 3])], &PackOptions::default()).unwrap();
//!     let st = dir.path().join(format!("shard{k}.safetensors"));
//!     WeightFile::open(&path).unwrap().to_safetensors(&st).unwrap();
//!     files.push(WeightFile::open(&st).unwrap());
//! }
//! let files: Vec<&WeightFile> = files.iter().collect();
//! let pieces: Vec<Piece> = files.iter().enumerate().map(|(k, f)| {
//!     let t = f.tensor("w").unwrap();
//!     Piece { file: k, start: t.start, end: t.end }
//! }).collect();
//! let plan = JobPlan::new(&files, &pieces).unwrap();
//! let (memory, _report) = read_host(&files, &plan, &LoadOptions::default()).unwrap();
//! assert_eq!(plan.bytes(&memory, 1), &[2, 2, 2]);
//! ```
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::{MmapMut, MmapOptions};

use super::data::{device_error_in, reader_setup};
use super::data::{no_checksums, Backing};
use super::options::{IoCounts, LoadOptions, LoadReport};
use super::pool::{self, plan_chunks, Input, Item, Reader, Verifier, DIRECT_ALIGN};
use super::verify::{footer_verifier, verify_in_memory, VerifyReport};
use super::FlashFile;
use crate::format::tensors::Format;
#[cfg(feature = "cuda")]
use crate::sink::cuda::CudaDevice;
use crate::sink::{
    Device, DeviceRegion, DeviceSink, HostBuffer, HostSink, Regions, Sink, SLOTS_PER_WORKER,
};
use crate::{Error, Footer, Result};

/// A file a job reads: what [`JobPlan`] and the runs need of it.
/// [`WeightFile`](crate::weights::WeightFile) is one (and the only one: the trait's
/// `backing` names an engine-internal type, so it cannot be implemented outside the engine).
/// Jobs take it rather than a `WeightFile` so that the job runner sits below the weights layer.
pub trait JobFile {
    /// The file's path (a remote file's URL), for messages and to match a plan with its files.
    fn path(&self) -> &Path;
    /// The file's format.
    fn format(&self) -> Format;
    /// A FlashPack file's footer.
    fn footer(&self) -> Option<&Footer>;
    /// File offsets `[start, end)` of the tensor data.
    fn data_range(&self) -> (u64, u64);
    /// Whether every load checks the file's checksums, `verify` or not (see
    /// [`WeightFile::checks_by_default`](crate::weights::WeightFile::checks_by_default)).
    fn checks_by_default(&self) -> bool;
    /// How its bytes are read.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn backing(&self) -> Backing<'_>;
}

/// File bytes `[start, end)` of the job's file number `file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index of the file in the job.
    pub file: usize,
    /// First file byte.
    pub start: u64,
    /// One past the last file byte.
    pub end: u64,
}

/// A contiguous range of one file, read into job memory from `at` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    file: usize,
    start: u64,
    end: u64,
    at: u64,
}

/// Where every piece of a job lands in the job's memory.
#[derive(Clone, Debug)]
pub struct JobPlan {
    /// The files the plan was made for, each as (path, tensor-data range): a job must be run
    /// with these files, in this order.
    files: Vec<(PathBuf, (u64, u64))>,
    spans: Vec<Span>,
    pieces: Vec<Piece>,
    /// Per piece, the job-memory offset of its first byte (0 for an empty piece).
    offsets: Vec<u64>,
    len: u64,
    /// Per file, the checksum chunk its spans are cut on (a plan made by [`JobPlan::verified`]
    /// for a file with checksums; `None` otherwise).
    grids: Vec<Option<u64>>,
}

impl JobPlan {
    /// Plans `pieces` of `files`. Pieces of one file closer than `DIRECT_ALIGN` (4096) bytes (or
    /// overlapping, e.g. tied tensors) are read as one span; every span starts on the
    /// `DIRECT_ALIGN` grid of its file, so up to 4095 bytes before a span are read too.
    /// A piece outside its file's tensor data is an error naming the file.
    pub fn new<F: JobFile>(files: &[&F], pieces: &[Piece]) -> Result<JobPlan> {
        // A remote FlashPack file whose version is not pinned by a strong ETag is checked
        // against its checksums on every load (see `WeightFile::checks_by_default`).
        Self::plan(
            files,
            pieces,
            grids(files, |f| f.checks_by_default())?,
            false,
        )
    }

    /// The plan of a load into memory laid out like the file: each piece read exactly (no
    /// alignment head, no checksum-grid growth), the pieces back to back in job memory. The
    /// single-file loads use it to read straight into their final buffer (the whole payload,
    /// a caller's slice), chunked on the file's own grid as every eager read is. With `verify`
    /// every piece must cover whole checksum chunks (else the reader refuses it), and a file
    /// without checksums is an error naming it.
    pub(crate) fn exact<F: JobFile>(
        files: &[&F],
        pieces: &[Piece],
        verify: bool,
    ) -> Result<JobPlan> {
        Self::plan(
            files,
            pieces,
            grids(files, |f| verify || f.checks_by_default())?,
            true,
        )
    }

    /// [`new`](Self::new) or, with `verify`, [`verified`](Self::verified).
    pub(crate) fn for_load<F: JobFile>(
        files: &[&F],
        pieces: &[Piece],
        verify: bool,
    ) -> Result<JobPlan> {
        match verify {
            true => Self::verified(files, pieces),
            false => Self::new(files, pieces),
        }
    }

    /// As [`new`](Self::new), for a load that checks the FlashPack checksums (`opts.verify`):
    /// the spans of each file grow to whole checksum chunks. A file that has no checksums
    /// (or is a safetensors file) is an error naming it, as for a verified load of one file.
    pub fn verified<F: JobFile>(files: &[&F], pieces: &[Piece]) -> Result<JobPlan> {
        Self::plan(files, pieces, grids(files, |_| true)?, false)
    }

    fn plan<F: JobFile>(
        files: &[&F],
        pieces: &[Piece],
        grids: Vec<Option<u64>>,
        exact: bool,
    ) -> Result<JobPlan> {
        for p in pieces {
            let f = files.get(p.file).ok_or_else(|| {
                Error::Invalid(format!(
                    "piece {}..{} names file {} of a {}-file job",
                    p.start,
                    p.end,
                    p.file,
                    files.len()
                ))
            })?;
            let (lo, hi) = f.data_range();
            if p.start > p.end || p.start < lo.min(p.end) || p.end > hi {
                return Err(Error::OutOfRange {
                    path: f.path().to_path_buf(),
                    offset: p.start,
                    len: p.end.wrapping_sub(p.start),
                    size: hi,
                    within: "file's tensor data",
                });
            }
        }
        let mut order: Vec<usize> = (0..pieces.len())
            .filter(|&i| pieces[i].end > pieces[i].start)
            .collect();
        order.sort_by_key(|&i| (pieces[i].file, pieces[i].start));
        let mut spans: Vec<Span> = Vec::new();
        let mut offsets = vec![0u64; pieces.len()];
        let mut span_of = vec![0usize; pieces.len()];
        for &i in &order {
            let p = pieces[i];
            // A verified file's spans are whole checksum chunks (the last one ends with the
            // payload), so every chunk read is checked whole.
            let (start, end) = match grids[p.file] {
                Some(g) if !exact => {
                    let (_, hi) = files[p.file].data_range();
                    (p.start / g * g, p.end.div_ceil(g).saturating_mul(g).min(hi))
                }
                _ => (p.start, p.end),
            };
            let gap = if exact { 0 } else { DIRECT_ALIGN };
            match spans.last_mut() {
                Some(s) if s.file == p.file && start <= s.end.saturating_add(gap) => {
                    s.end = s.end.max(end)
                }
                _ => spans.push(Span {
                    file: p.file,
                    start: if exact {
                        start
                    } else {
                        start / DIRECT_ALIGN * DIRECT_ALIGN
                    },
                    end,
                    at: 0,
                }),
            }
            span_of[i] = spans.len() - 1;
        }
        let mut at = 0u64;
        for s in &mut spans {
            s.at = at;
            at += s.end - s.start;
            if !exact {
                at = at.next_multiple_of(DIRECT_ALIGN);
            }
        }
        for &i in &order {
            let s = spans[span_of[i]];
            offsets[i] = s.at + (pieces[i].start - s.start);
        }
        Ok(JobPlan {
            files: files
                .iter()
                .map(|f| (f.path().to_path_buf(), f.data_range()))
                .collect(),
            spans,
            pieces: pieces.to_vec(),
            offsets,
            len: at,
            grids,
        })
    }

    /// Bytes of job memory.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the plan reads nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Job-memory offset of piece `i`'s first byte.
    pub fn offset(&self, i: usize) -> Option<u64> {
        self.offsets.get(i).copied()
    }

    /// Bytes read from the files (spans, with their alignment heads).
    pub fn bytes_to_read(&self) -> u64 {
        self.spans.iter().map(|s| s.end - s.start).sum()
    }

    /// Piece `i`'s bytes in job memory filled by [`read_host`] for this plan.
    pub fn bytes<'m>(&self, memory: &'m JobMemory, i: usize) -> &'m [u8] {
        let (Some(p), Some(&at)) = (self.pieces.get(i), self.offsets.get(i)) else {
            return &[];
        };
        let (a, n) = (at as usize, (p.end - p.start) as usize);
        memory.as_slice().get(a..a + n).unwrap_or(&[])
    }

    /// Refuses `files` unless they are the files this plan was made for (the same count, paths
    /// and tensor-data ranges, in order): the plan's spans index them.
    fn check_files<F: JobFile>(&self, files: &[&F]) -> Result<()> {
        let wrong = if files.len() != self.files.len() {
            Some(format!(
                "a job planned for {} files run with {}",
                self.files.len(),
                files.len()
            ))
        } else {
            files
                .iter()
                .zip(&self.files)
                .enumerate()
                .find(|(_, (f, (path, range)))| f.path() != path || f.data_range() != *range)
                .map(|(k, (f, (path, range)))| {
                    format!(
                        "file {k} of the job is {} (tensor data {:?}), but the plan was made \
                         for {} (tensor data {range:?})",
                        f.path().display(),
                        f.data_range(),
                        path.display()
                    )
                })
        };
        // A caller's contract broken (a plan run with other files): nothing to act on but fix
        // the call.
        wrong.map_or(Ok(()), |w| Err(Error::Invalid(w)))
    }

    /// A device error with where it happened: the file and tensors of the chunk being copied
    /// (`copying`, job-memory offsets), else every file of the job.
    fn device_error(&self, datas: &[Backing<'_>], e: Error, copying: Option<(u64, u64)>) -> Error {
        let Error::Device(msg) = e else { return e };
        let span = copying.and_then(|(a, b)| {
            self.spans
                .iter()
                .find(|s| s.at <= a && a < s.at + (s.end - s.start))
                .map(|s| (s, a, b))
        });
        match span {
            Some((s, a, b)) => {
                let end = s.start + (b - s.at).min(s.end - s.start);
                match datas.get(s.file) {
                    Some(d) => device_error_in(
                        d.path(),
                        &d.names(),
                        Error::Device(msg),
                        Some((s.start + (a - s.at), end)),
                    ),
                    None => Error::Device(msg),
                }
            }
            None => {
                let mut files: Vec<String> = datas
                    .iter()
                    .take(3)
                    .map(|d| d.path().display().to_string())
                    .collect();
                if datas.len() > 3 {
                    files.push(format!("and {} more files", datas.len() - 3));
                }
                Error::Device(format!("loading {}: {msg}", files.join(", ")))
            }
        }
    }

    /// The reads: chunks of file `k` of at most `chunk(k)` bytes cut on that grid of file
    /// offsets (so a verified file's chunks are whole checksum chunks, and every chunk but a
    /// span's edges is aligned for `O_DIRECT`), each (file, file offset, job offset, len),
    /// taken from the files in turn so that they are read in parallel.
    fn items(&self, chunk: impl Fn(usize) -> usize) -> Vec<Item> {
        let mut per_file: Vec<Vec<Item>> = Vec::new();
        for s in &self.spans {
            let list = match per_file.last_mut() {
                Some(v) if v.first().is_some_and(|i| i.file == s.file) => v,
                _ => {
                    per_file.push(Vec::new());
                    per_file.last_mut().expect("pushed just above")
                }
            };
            for c in plan_chunks(s.start, s.end, chunk(s.file)) {
                list.push(Item {
                    file: s.file,
                    file_offset: c.offset,
                    at: s.at + (c.offset - s.start),
                    len: c.len,
                });
            }
        }
        let mut out = Vec::with_capacity(per_file.iter().map(Vec::len).sum());
        let longest = per_file.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..longest {
            out.extend(per_file.iter().filter_map(|v| v.get(k).copied()));
        }
        out
    }
}

/// Owned, page-aligned host memory a job filled (see [`JobPlan::offset`]).
#[derive(Debug)]
pub struct JobMemory(HostBuffer);

impl JobMemory {
    pub(crate) fn into_buffer(self) -> HostBuffer {
        self.0
    }

    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The bytes read, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}

/// Reads every piece of `plan` into new owned host memory with one reader pool.
pub fn read_host<F: JobFile>(
    files: &[&F],
    plan: &JobPlan,
    opts: &LoadOptions,
) -> Result<(JobMemory, LoadReport)> {
    plan.check_files(files)?;
    let t = Instant::now();
    let len =
        usize::try_from(plan.len).map_err(|_| Error::out_of_memory(plan.len, "a job's pieces"))?;
    let mut buf = HostBuffer::with_pages(len, opts.huge_pages)?;
    let alloc = t.elapsed();
    let mut report = read_into(files, plan, buf.as_mut_slice(), opts)?;
    report.phases.insert(0, ("alloc_cpu", alloc));
    Ok((JobMemory(buf), report))
}

/// Reads every piece of `plan` into `dst` (job memory: at least [`JobPlan::len`] bytes) with
/// one reader pool: the eager load's run, straight into the caller's final buffer.
pub(crate) fn read_into<F: JobFile>(
    files: &[&F],
    plan: &JobPlan,
    dst: &mut [u8],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    plan.check_files(files)?;
    if (dst.len() as u64) < plan.len {
        return Err(Error::Internal(format!(
            "a {}-byte job read into {} bytes",
            plan.len,
            dst.len()
        )));
    }
    let t = Instant::now();
    let datas: Vec<Backing<'_>> = files.iter().map(|f| f.backing()).collect();
    let verifiers = verifiers(files, plan, opts)?;
    let (sources, threads, chunks) = sources(&datas, &verifiers, plan, opts);
    let items = plan.items(|k| chunks[k]);
    let mut report = LoadReport {
        threads: threads.clamp(1, items.len().max(1)),
        ..Default::default()
    };
    let sink = HostSink::with_base(dst, 0);
    report.io = run(&sources, &items, &sink, report.threads, opts, "loading")?;
    report.phases.push(("read_payload", t.elapsed()));
    Ok(report)
}

/// The lazy load's run: a private copy-on-write mapping of the whole file `f` (nothing is read
/// until touched; writes never reach the file), checked to hold its tensor data, and checked
/// in memory against the checksums with `verify` (a file without them is an error naming it).
pub(crate) fn map_private<F: JobFile>(
    f: &F,
    verify: bool,
    opts: &LoadOptions,
) -> Result<(MmapMut, LoadReport)> {
    #[cfg_attr(not(feature = "remote"), allow(clippy::infallible_destructuring_match))]
    let d = match f.backing() {
        Backing::Local(d) => d,
        #[cfg(feature = "remote")]
        Backing::Remote { path, .. } => {
            return Err(Error::Unsupported(format!(
                "{}: a URL cannot be mapped; load it eagerly",
                path.display()
            )))
        }
    };
    let verifier = match (verify, f.footer()) {
        (false, _) => None,
        (true, Some(footer)) if f.format() == Format::FlashPack => {
            Some(footer_verifier(d.path, footer, d.end)?)
        }
        (true, _) => return Err(no_checksums(d.path)),
    };
    let mut report = LoadReport::default();
    let t = Instant::now();
    // SAFETY: a private (copy-on-write) mapping: writes through it never reach the file. As with
    // any mapping, another process truncating the file while it is mapped would fault; the
    // file is only read here, and that risk is the documented contract of lazy loading.
    let map =
        unsafe { MmapOptions::new().map_copy(d.file) }.map_err(|e| Error::io(d.path, "mmap", e))?;
    // The data range was checked against the file's size at open; a file that shrank since
    // then maps shorter than its data.
    if (map.len() as u64) < d.end {
        // As for a read that runs out of bytes (see pool::read_error).
        return Err(Error::io(
            d.path,
            format!(
                "map (the file got shorter while loading: {} bytes mapped, the payload needs {})",
                map.len(),
                d.end
            ),
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    report.phases.push(("mmap_payload", t.elapsed()));
    if let Some(v) = verifier {
        let t = Instant::now();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        // In bounds: d.end <= map.len() just above.
        let data = &map[..d.end as usize];
        verify_in_memory(d.path, data, &v, threads, opts.cancel.as_ref())?;
        report.phases.push(("verify_checksums", t.elapsed()));
    }
    Ok((map, report))
}

/// The check of one whole file (`flashpack verify`, [`crate::read::verify`],
/// [`WeightFile::verify`](crate::weights::WeightFile::verify)): its tensor data as one piece of
/// a verified plan, checked by [`verify`]. A FlashPack file without checksums passes with no
/// chunk checked; a safetensors file is an error ([`Error::NoChecksums`]).
pub(crate) fn verify_one<F: JobFile>(
    f: &F,
    tensors: usize,
    opts: &LoadOptions,
) -> Result<VerifyReport> {
    let Some(footer) = f.footer() else {
        return Err(no_checksums(f.path()));
    };
    let (start, end) = f.data_range();
    let mut report = VerifyReport {
        tensors,
        payload_len: end,
        chunks_checked: 0,
        algorithm: footer.checksums.as_ref().map(|c| c.algorithm.clone()),
    };
    let Some(checksums) = &footer.checksums else {
        return Ok(report);
    };
    if end > start {
        let pieces = [Piece {
            file: 0,
            start,
            end,
        }];
        let plan = JobPlan::verified(&[f], &pieces)?;
        verify(&[f], &plan, opts)?;
    }
    report.chunks_checked = checksums.digests.len();
    Ok(report)
}

/// Checks the pieces of a plan made by [`JobPlan::verified`] against the files' checksums
/// without keeping them: each reader thread reads into its own scratch buffer (one chunk), so
/// a file of any size, local or remote, is checked in bounded memory (`flashpack verify` of a
/// URL). The first bad chunk is an error naming the file and the tensors it holds.
pub fn verify<F: JobFile>(files: &[&F], plan: &JobPlan, opts: &LoadOptions) -> Result<LoadReport> {
    plan.check_files(files)?;
    let opts = LoadOptions {
        verify: true,
        ..opts.clone()
    };
    let t = Instant::now();
    let datas: Vec<Backing<'_>> = files.iter().map(|f| f.backing()).collect();
    let verifiers = verifiers(files, plan, &opts)?;
    let (sources, threads, chunks) = sources(&datas, &verifiers, plan, &opts);
    let items = plan.items(|k| chunks[k]);
    let mut report = LoadReport {
        threads: threads.clamp(1, items.len().max(1)),
        ..Default::default()
    };
    let largest = items.iter().map(|i| i.len).max().unwrap_or(0);
    let sink = crate::sink::ScratchSink::new(report.threads, largest)?;
    report.io = run(&sources, &items, &sink, report.threads, &opts, "verifying")?;
    report.phases.push(("verify_checksums", t.elapsed()));
    Ok(report)
}

/// Where piece `piece` of a job goes on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobRegion {
    /// Index of the piece in the job.
    pub piece: usize,
    /// Device address its first byte goes to.
    pub dst: u64,
}

/// Streams the pieces that `regions` name into CUDA memory through the pinned staging pool (one
/// set of staging buffers for the whole job, within the pool's limit); returns when every copy
/// has completed.
///
/// # Safety
/// As for [`super::load_to_device`]: every region's destination (`dst`, the piece's length) is
/// device memory the caller owns and that nothing else touches until this returns.
#[cfg(feature = "cuda")]
pub unsafe fn read_cuda<F: JobFile>(
    files: &[&F],
    plan: &JobPlan,
    device: &CudaDevice,
    regions: &[JobRegion],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    read_device(files, plan, device, regions, opts)
}

/// [`read_cuda`] for any [`Device`]; the caller upholds `read_cuda`'s contract (the copies are
/// enqueued through [`Device::copy_async`]).
pub(crate) fn read_device<D: Device, F: JobFile>(
    files: &[&F],
    plan: &JobPlan,
    device: &D,
    regions: &[JobRegion],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    plan.check_files(files)?;
    let t = Instant::now();
    let mut list = Vec::with_capacity(regions.len());
    for r in regions {
        let (Some(p), Some(offset)) = (plan.pieces.get(r.piece), plan.offset(r.piece)) else {
            return Err(Error::Invalid(format!(
                "device region for piece {} of a {}-piece job",
                r.piece,
                plan.pieces.len()
            )));
        };
        list.push(DeviceRegion {
            offset,
            len: p.end - p.start,
            dst: r.dst,
        });
    }
    let regions = Regions::new(list, plan.len, Path::new("device regions"), "job memory")?;
    let datas: Vec<Backing<'_>> = files.iter().map(|f| f.backing()).collect();
    let verifiers = verifiers(files, plan, opts)?;
    let (sources, threads, chunks) = sources(&datas, &verifiers, plan, opts);
    // One staging buffer size for every file: the largest chunk any file reads, fitted to the
    // pool (on every verified file's checksum grid), each file's chunks no larger.
    let grain = if verifiers.iter().any(Option::is_some) {
        plan.grids
            .iter()
            .zip(&verifiers)
            .filter_map(|(g, v)| v.as_ref().and(*g))
            .try_fold(DIRECT_ALIGN, lcm)
            .filter(|&g| g <= MAX_GRAIN as u64)
            .ok_or_else(|| {
                Error::Unsupported(
                    "the files' checksum chunks do not fit one staging buffer".into(),
                )
            })? as usize
    } else {
        DIRECT_ALIGN as usize
    };
    let largest = chunks.iter().copied().max().unwrap_or(opts.chunk_bytes);
    let pool = device.pool();
    let (threads, chunk) = fit_staging(threads, largest, grain, pool.budget()).map_err(|f| {
        let path = files
            .first()
            .map_or_else(PathBuf::new, |f| f.path().to_path_buf());
        f.into_error(path, pool.limit())
    })?;
    // Both are multiples of a verified file's grid, so their minimum is too.
    let items = plan.items(|k| chunks[k].min(chunk));
    let threads = threads.clamp(1, items.len().max(1));
    let mut report = LoadReport::default();
    report.phases.push(("plan", t.elapsed()));
    let t = Instant::now();
    let sink = DeviceSink::new(device, regions, threads, chunk)
        .map_err(|e| plan.device_error(&datas, e, None))?;
    report.threads = sink.workers();
    let read = run(&sources, &items, &sink, report.threads, opts, "loading");
    let copying = sink.failed_chunk();
    report.io = read.map_err(|e| plan.device_error(&datas, e, copying))?;
    sink.finish()
        .map_err(|e| plan.device_error(&datas, e, None))?;
    report.phases.push(("stream_to_device", t.elapsed()));
    Ok(report)
}

/// The device load of one file (local or remote, either format): `regions` (file offsets,
/// checked: inside the tensor data, not overlapping) become the pieces of a plan, streamed by
/// [`read_device`]. The caller upholds [`read_cuda`]'s contract on the destinations.
pub(crate) fn regions_to_device<D: Device, F: JobFile>(
    f: &F,
    device: &D,
    regions: Vec<DeviceRegion>,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let (_, end) = f.data_range();
    let regions = Regions::new(regions, end, f.path(), "payload")?;
    let (pieces, dsts): (Vec<Piece>, Vec<JobRegion>) = regions
        .as_slice()
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let piece = Piece {
                file: 0,
                start: r.offset,
                end: r.offset + r.len, // checked by Regions::new
            };
            (
                piece,
                JobRegion {
                    piece: k,
                    dst: r.dst,
                },
            )
        })
        .unzip();
    let plan = JobPlan::for_load(&[f], &pieces, opts.verify)?;
    read_device(&[f], &plan, device, &dsts, opts)
}

/// Staging that cannot fit the pinned pool: what [`fit_staging`] found, made an error naming
/// the file once the caller knows it.
#[derive(Debug)]
pub(super) struct StagingTooLarge {
    budget: usize,
    grain: usize,
}

impl StagingTooLarge {
    fn into_error(self, path: PathBuf, limit: usize) -> Error {
        Error::PinnedLimitTooSmall {
            path,
            buffers: SLOTS_PER_WORKER,
            buffer_bytes: self.grain,
            need: (SLOTS_PER_WORKER as u64).saturating_mul(self.grain as u64),
            available: self.budget as u64,
            limit: limit as u64,
            checksum_chunks: self.grain > DIRECT_ALIGN as usize,
        }
    }
}

/// Fits `threads x SLOTS_PER_WORKER` staging buffers of `chunk_bytes` (rounded up to a multiple
/// of `grain`) into `budget` bytes: shrinks the chunk (not below 1 MiB or one grain), then the
/// thread count, then the chunk again. Returns (threads, chunk).
pub(super) fn fit_staging(
    threads: usize,
    chunk_bytes: usize,
    grain: usize,
    budget: usize,
) -> std::result::Result<(usize, usize), StagingTooLarge> {
    const MIN_CHUNK: usize = 1 << 20;
    let grain = grain.max(1);
    let round = |n: usize| n.max(grain).div_ceil(grain).saturating_mul(grain);
    let fits = |threads: usize, chunk: usize| {
        threads
            .saturating_mul(SLOTS_PER_WORKER)
            .saturating_mul(chunk)
            <= budget
    };
    let threads = threads.max(1);
    let mut chunk = round(chunk_bytes);
    if fits(threads, chunk) {
        return Ok((threads, chunk));
    }
    let floor = round(MIN_CHUNK.min(chunk));
    chunk = (budget / (threads * SLOTS_PER_WORKER) / grain * grain).max(floor);
    if fits(threads, chunk) {
        return Ok((threads, chunk));
    }
    let fitted = budget / chunk.saturating_mul(SLOTS_PER_WORKER);
    if fitted >= 1 {
        return Ok((fitted, chunk));
    }
    chunk = budget / SLOTS_PER_WORKER / grain * grain;
    if chunk == 0 {
        return Err(StagingTooLarge { budget, grain });
    }
    Ok((1, chunk))
}

/// A FlashPack file opened on its own ([`FlashFile::open`]) is a job's file like a
/// [`WeightFile`](crate::weights::WeightFile): its tensor data is its payload.
impl JobFile for FlashFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> Format {
        Format::FlashPack
    }
    fn footer(&self) -> Option<&Footer> {
        Some(&self.footer)
    }
    fn data_range(&self) -> (u64, u64) {
        (0, self.payload_len)
    }
    fn checks_by_default(&self) -> bool {
        false
    }
    #[allow(private_interfaces)]
    fn backing(&self) -> Backing<'_> {
        Backing::Local(self.data())
    }
}

/// Per file, the checksum grid its spans are cut on where `wanted` (see [`grid`]), else `None`.
fn grids<F: JobFile>(files: &[&F], wanted: impl Fn(&F) -> bool) -> Result<Vec<Option<u64>>> {
    files
        .iter()
        .map(|f| match wanted(f) {
            true => grid(*f).map(Some),
            false => Ok(None),
        })
        .collect()
}

/// The grid a verified read of `f` is cut on: its checksum chunks and the `O_DIRECT` alignment.
/// A file without checksums (or a safetensors file) is an error naming it.
fn grid<F: JobFile>(f: &F) -> Result<u64> {
    let footer = match (f.format(), f.footer()) {
        (Format::FlashPack, Some(footer)) => footer,
        _ => return Err(no_checksums(f.path())),
    };
    let (_, payload_len) = f.data_range();
    let v = footer_verifier(f.path(), footer, payload_len)?;
    lcm(v.checksums.chunk_bytes.max(1), DIRECT_ALIGN)
        .filter(|&g| g <= MAX_GRAIN as u64)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: checksum chunks of {} bytes are too large to read whole",
                f.path().display(),
                v.checksums.chunk_bytes
            ))
        })
}

/// The largest checksum grid a device job reads on (its staging buffers are multiples of it).
const MAX_GRAIN: usize = 1 << 30;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> Option<u64> {
    (a / gcd(a, b).max(1)).checked_mul(b)
}

/// Per file, its checksum verifier when the load verifies (`opts.verify`, which needs a plan
/// made by [`JobPlan::verified`]), or, without `opts.verify`, for each file checked by default
/// (a remote FlashPack file not pinned by a strong ETag, its plan cut on its checksum grid).
fn verifiers<'a, F: JobFile>(
    files: &[&'a F],
    plan: &JobPlan,
    opts: &LoadOptions,
) -> Result<Vec<Option<Verifier<'a>>>> {
    if !opts.verify {
        return files
            .iter()
            .zip(&plan.grids)
            .map(|(f, g)| match (f.checks_by_default(), g, f.footer()) {
                (true, Some(_), Some(footer)) => {
                    footer_verifier(f.path(), footer, f.data_range().1).map(Some)
                }
                _ => Ok(None),
            })
            .collect();
    }
    if plan.grids.iter().any(Option::is_none) {
        return Err(Error::Invalid(
            "a verified load needs a plan made by JobPlan::verified (whole checksum chunks)".into(),
        ));
    }
    files
        .iter()
        .map(|f| match f.footer() {
            Some(footer) => footer_verifier(f.path(), footer, f.data_range().1).map(Some),
            None => Err(no_checksums(f.path())),
        })
        .collect()
}

/// One read source per file (a local file with direct reads where `reader_setup` chooses them,
/// and none for a file the plan does not read; a remote object with ranged GETs bounded by its
/// settings' timeout from now), the thread count (the largest any file asks for: a remote
/// file its `concurrency`) and each file's chunk size (a remote file's `part_bytes`; with a
/// verifier, rounded up to whole checksum chunks).
fn sources<'a>(
    datas: &'a [Backing<'a>],
    verifiers: &'a [Option<Verifier<'a>>],
    plan: &JobPlan,
    opts: &'a LoadOptions,
) -> (Vec<Input<'a>>, usize, Vec<usize>) {
    let mut threads = 1;
    let mut chunks = Vec::with_capacity(datas.len());
    let mut sources = Vec::with_capacity(datas.len());
    for (k, d) in datas.iter().enumerate() {
        let used = plan.spans.iter().any(|s| s.file == k);
        let verify = verifiers.get(k).and_then(Option::as_ref);
        let (reader, chunk) = match d {
            Backing::Local(d) => {
                let (direct, readahead) = if used {
                    let (direct, n, readahead) = reader_setup(d, opts);
                    threads = threads.max(n);
                    (direct, readahead)
                } else {
                    (None, false)
                };
                let reader = Reader::Local {
                    buffered: d.file,
                    direct,
                    readahead,
                };
                (reader, opts.chunk_bytes)
            }
            #[cfg(feature = "remote")]
            Backing::Remote { file, names, .. } => {
                let settings = file.settings();
                if used {
                    threads = threads.max(settings.concurrency);
                }
                let reader = Reader::Remote {
                    file,
                    deadline: Instant::now() + settings.timeout,
                    names: *names,
                };
                (reader, settings.part_bytes)
            }
        };
        // A verified file's chunks: whole multiples of its grid (see JobPlan::verified).
        let chunk = match plan.grids.get(k).copied().flatten() {
            Some(g) if verify.is_some() => {
                let g = g as usize; // at most MAX_GRAIN
                chunk.max(1).div_ceil(g).saturating_mul(g)
            }
            _ => chunk,
        };
        chunks.push(chunk);
        sources.push(Input {
            path: d.path(),
            reader,
            cancel: opts.cancel.as_ref(),
            verify,
        });
    }
    (sources, threads, chunks)
}

/// The reader pool over every file, with one progress bar for the job.
fn run(
    sources: &[Input<'_>],
    items: &[Item],
    sink: &dyn Sink,
    threads: usize,
    opts: &LoadOptions,
    what: &'static str,
) -> Result<IoCounts> {
    let total = items.iter().map(|i| i.len as u64).sum();
    let bar = crate::progress::progress_bar(opts.progress, total, what);
    let io = pool::read_items(sources, items, sink, threads, bar.as_ref());
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightFile;
    use crate::write::{pack, PackEntry, PackOptions};
    use crate::Dtype;

    fn file(dir: &std::path::Path, name: &str, tensors: &[(&str, Vec<u8>)]) -> WeightFile {
        let fp = dir.join(format!("{name}.flashpack"));
        let entries: Vec<_> = tensors
            .iter()
            .map(|(n, b)| PackEntry::new(*n, Dtype::U8, vec![b.len() as u64], b))
            .collect();
        pack(&fp, &entries, &PackOptions::default()).unwrap();
        let st = dir.join(format!("{name}.safetensors"));
        WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
        WeightFile::open(&st).unwrap()
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn pieces_of_many_files_land_bit_exact_with_small_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(
            dir.path(),
            "a",
            &[("x", bytes(10_000, 1)), ("y", bytes(77, 2))],
        );
        let b = file(dir.path(), "b", &[("z", bytes(50_001, 3)), ("e", vec![])]);
        let files = [&a, &b];
        let mut pieces = Vec::new();
        let mut want = Vec::new();
        for (k, f) in files.iter().enumerate() {
            for t in f.tensors() {
                pieces.push(Piece {
                    file: k,
                    start: t.start,
                    end: t.end,
                });
                want.push(
                    std::fs::read(f.path()).unwrap()[t.start as usize..t.end as usize].to_vec(),
                );
            }
        }
        // A row range inside a tensor, and the same tensor twice.
        let z = b.tensor("z").unwrap();
        pieces.push(Piece {
            file: 1,
            start: z.start + 100,
            end: z.start + 300,
        });
        want.push(bytes(50_001, 3)[100..300].to_vec());
        pieces.push(pieces[0]);
        want.push(want[0].clone());
        let plan = JobPlan::new(&files, &pieces).unwrap();
        let opts = LoadOptions {
            chunk_bytes: 4096,
            threads: 3,
            ..Default::default()
        };
        let (mem, report) = read_host(&files, &plan, &opts).unwrap();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(plan.bytes(&mem, i), &w[..], "piece {i}");
        }
        assert_eq!(
            report.io.direct_bytes + report.io.buffered_bytes,
            plan.bytes_to_read()
        );
        assert_eq!(plan.len() % DIRECT_ALIGN, 0);
    }

    #[test]
    fn a_row_range_reads_only_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a", &[("big", bytes(1 << 20, 5))]);
        let t = a.tensor("big").unwrap().clone();
        let pieces = [Piece {
            file: 0,
            start: t.start + 300_000,
            end: t.start + 310_000,
        }];
        let plan = JobPlan::new(&[&a], &pieces).unwrap();
        // The piece, plus at most the alignment head before it.
        assert!(plan.bytes_to_read() < 10_000 + DIRECT_ALIGN);
        let (mem, _) = read_host(&[&a], &plan, &LoadOptions::default()).unwrap();
        assert_eq!(plan.bytes(&mem, 0), &bytes(1 << 20, 5)[300_000..310_000]);
    }

    #[test]
    fn pieces_outside_the_data_or_the_job_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a", &[("x", bytes(100, 1))]);
        let (_, hi) = a.data_range();
        let e = JobPlan::new(
            &[&a],
            &[Piece {
                file: 0,
                start: 0,
                end: hi + 1,
            }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("a.safetensors"), "{e}");
        assert!(JobPlan::new(
            &[&a],
            &[Piece {
                file: 1,
                start: 0,
                end: 1
            }]
        )
        .is_err());
        assert!(JobPlan::new(
            &[&a],
            &[Piece {
                file: 0,
                start: 9,
                end: 8
            }]
        )
        .is_err());
    }

    #[test]
    fn a_plan_run_with_other_files_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a", &[("x", bytes(100, 1))]);
        let b = file(dir.path(), "b", &[("y", bytes(5000, 2))]);
        let pieces: Vec<Piece> = [&a, &b]
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let t = &f.tensors()[0];
                Piece {
                    file: k,
                    start: t.start,
                    end: t.end,
                }
            })
            .collect();
        let plan = JobPlan::new(&[&a, &b], &pieces).unwrap();
        let opts = LoadOptions::default();
        let e = read_host(&[&a], &plan, &opts).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(
            e.to_string().contains("planned for 2 files run with 1"),
            "{e}"
        );
        // The same count, other files (b's data is longer than a's).
        let e = read_host(&[&b, &a], &plan, &opts).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(e.to_string().contains("b.safetensors"), "{e}");
        assert!(read_host(&[&a, &b], &plan, &opts).is_ok());
    }

    #[test]
    fn a_cancelled_job_stops_with_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a", &[("x", bytes(100_000, 1))]);
        let t = a.tensor("x").unwrap().clone();
        let plan = JobPlan::new(
            &[&a],
            &[Piece {
                file: 0,
                start: t.start,
                end: t.end,
            }],
        )
        .unwrap();
        let cancel = crate::cancel::Cancel::new();
        cancel.cancel();
        let opts = LoadOptions {
            cancel: Some(cancel),
            ..Default::default()
        };
        let e = read_host(&[&a], &plan, &opts).unwrap_err();
        assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    }

    #[test]
    fn an_exact_plan_reads_just_its_piece_into_the_callers_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.flashpack");
        let data = bytes(20_000, 7);
        let entry = PackEntry::new("w", Dtype::U8, vec![data.len() as u64], &data);
        pack(&path, &[entry], &PackOptions::default()).unwrap();
        let f = FlashFile::open(&path).unwrap();
        let raw = std::fs::read(&path).unwrap();
        let piece = [Piece {
            file: 0,
            start: 1,
            end: 5001,
        }];
        let plan = JobPlan::exact(&[&f], &piece, false).unwrap();
        // No alignment head, no padding: job memory is the piece.
        assert_eq!(
            (plan.len(), plan.bytes_to_read(), plan.offset(0)),
            (5000, 5000, Some(0))
        );
        let mut dst = vec![0u8; 5000];
        let opts = LoadOptions {
            chunk_bytes: 4096,
            threads: 2,
            ..Default::default()
        };
        let report = read_into(&[&f], &plan, &mut dst, &opts).unwrap();
        assert_eq!(dst, raw[1..5001]);
        assert_eq!(report.io.direct_bytes + report.io.buffered_bytes, 5000);
        // A piece past the payload is a typed OutOfRange naming the file.
        let past = [Piece {
            file: 0,
            start: 0,
            end: f.payload_len() + 1,
        }];
        let e = JobPlan::exact(&[&f], &past, false).unwrap_err();
        assert!(
            matches!(e, Error::OutOfRange { ref path, .. } if path == f.path()),
            "{e:?}"
        );
    }

    #[test]
    fn verified_runs_of_a_file_without_checksums_are_no_checksums_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = file(dir.path(), "a", &[("x", bytes(100, 1))]);
        let (lo, hi) = st.data_range();
        let piece = [Piece {
            file: 0,
            start: lo,
            end: hi,
        }];
        let safetensors = |e: Error| matches!(e, Error::NoChecksums { ref path, safetensors: true } if path == st.path());
        assert!(safetensors(JobPlan::verified(&[&st], &piece).unwrap_err()));
        assert!(safetensors(
            JobPlan::exact(&[&st], &piece, true).unwrap_err()
        ));
        let opts = LoadOptions::default();
        assert!(safetensors(map_private(&st, true, &opts).unwrap_err()));
        assert!(safetensors(verify_one(&st, 1, &opts).unwrap_err()));
    }

    #[test]
    fn staging_that_cannot_fit_the_pool_is_pinned_limit_too_small() {
        assert_eq!(
            fit_staging(4, 1 << 20, 4096, 64 << 20).ok(),
            Some((4, 1 << 20))
        );
        let e = fit_staging(4, 1 << 20, 65536, 65536)
            .unwrap_err()
            .into_error(PathBuf::from("m.flashpack"), 1 << 20);
        match e {
            Error::PinnedLimitTooSmall {
                ref path,
                buffers,
                buffer_bytes,
                available,
                limit,
                checksum_chunks,
                ..
            } => {
                assert_eq!(path, Path::new("m.flashpack"));
                assert_eq!((buffers, buffer_bytes), (SLOTS_PER_WORKER, 65536));
                assert_eq!((available, limit), (65536, 1 << 20));
                assert!(checksum_chunks);
            }
            e => panic!("{e:?}"),
        }
    }
}
