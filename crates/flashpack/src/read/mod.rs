//! Loading: open and validate, then either map the file copy-on-write (lazy) or fill owned memory
//! with a pool of reader threads (eager).
//!
//! Lazy loads are private mappings: tensors read straight from the page cache, writes to them
//! make private copies of the touched pages and never reach the file. Eager loads return with every
//! byte resident. How they read (buffered with readahead, buffered, or `O_DIRECT`) follows the
//! reader policy in [`crate::settings`]; the bytes are identical either way.
//!
//! ```
//! use flashpack::{read::{load, IoMode, LoadOptions}, write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! let bytes = [1u8, 0, 0, 0, 2, 0, 0, 0];
//! pack(&path, &[PackEntry::new("w", Dtype::I32, vec![2], &bytes)], &PackOptions::default()).unwrap();
//! let mut lazy = load(&path, &LoadOptions::default()).unwrap();
//! lazy.payload_mut()[0] = 9; // private copy: the file keeps its bytes
//! let eager = load(&path, &LoadOptions { eager: true, io: IoMode::Buffered, ..Default::default() }).unwrap();
//! assert_eq!(eager.tensor_bytes("w").unwrap(), &bytes[..]);
//! ```
mod file;
pub mod job;
mod pool;
mod residency;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};

pub use file::{is_flashpack_file, open_regular, FlashFile};
pub use pool::{chunk_step, plan_chunks, Chunk, IoCounts, DIRECT_ALIGN};
pub use residency::resident_fraction;

use crate::cancel::Cancel;
use crate::progress::progress_bar;
#[cfg(feature = "cuda")]
use crate::sink::cuda::CudaDevice;
use crate::sink::{
    Device, DeviceRegion, DeviceSink, HostBuffer, HostSink, Regions, SLOTS_PER_WORKER,
};
use crate::{Error, Footer, Result};

/// Share of the payload that must be in the page cache for it to count as hot (plain buffered reads).
pub const HOT_FRACTION: f64 = 0.9;
/// Default eager chunk size.
pub const DEFAULT_READ_CHUNK_BYTES: usize = 16 << 20;

/// How the eager reader talks to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoMode {
    /// `O_DIRECT` unless the payload is mostly in the page cache (the policy and its
    /// measurements: [`crate::settings`]).
    #[default]
    Auto,
    /// `O_DIRECT` wherever the filesystem allows it.
    Direct,
    /// Always through the page cache (asking the OS to read ahead when the data is cold).
    Buffered,
}

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Fill owned memory now (true) or map the file copy-on-write (false).
    pub eager: bool,
    pub io: IoMode,
    /// Reader threads (0 = chosen from the core count and the I/O mode).
    pub threads: usize,
    pub chunk_bytes: usize,
    /// Show a progress bar on stderr for large loads.
    pub progress: bool,
    /// Ask for transparent huge pages on eager host memory (see [`HostBuffer::with_pages`]).
    pub huge_pages: bool,
    /// Check every payload chunk against the footer's checksums as it is loaded (an error if
    /// the file has none). Reads then go in the checksum chunks' size.
    pub verify: bool,
    /// Checked between chunks: once cancelled, the load stops its threads and returns
    /// [`Error::Cancelled`].
    pub cancel: Option<Cancel>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            eager: false,
            io: IoMode::Auto,
            threads: 0,
            chunk_bytes: DEFAULT_READ_CHUNK_BYTES,
            progress: false,
            huge_pages: false,
            verify: false,
            cancel: None,
        }
    }
}

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub phases: Vec<(&'static str, Duration)>,
    pub threads: usize,
    pub io: IoCounts,
}

#[derive(Debug)]
enum Memory {
    /// Private copy-on-write mapping of the whole file.
    Mapped(MmapMut),
    /// Owned memory holding the payload.
    Owned(HostBuffer),
}

/// A loaded file: its footer and its payload in memory.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub footer: Footer,
    pub footer_json: Vec<u8>,
    pub report: LoadReport,
    /// Never more than the memory holds (checked when the memory was made).
    payload_len: usize,
    memory: Memory,
}

impl Loaded {
    /// Length of the payload in bytes.
    pub fn payload_len(&self) -> u64 {
        self.payload_len as u64
    }

    /// The payload bytes (every block lies inside).
    pub fn payload(&self) -> &[u8] {
        let n = self.payload_len;
        match &self.memory {
            Memory::Mapped(m) => &m[..n],
            Memory::Owned(b) => &b.as_slice()[..n],
        }
    }

    /// The payload, writable (a lazy load copies the touched pages privately).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let n = self.payload_len;
        match &mut self.memory {
            Memory::Mapped(m) => &mut m[..n],
            Memory::Owned(b) => &mut b.as_mut_slice()[..n],
        }
    }

    /// True when the payload is owned memory rather than a mapping.
    pub fn is_eager(&self) -> bool {
        matches!(self.memory, Memory::Owned(_))
    }

    /// The stored bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        let rec = self.footer.record(name)?;
        let (start, end) = self.footer.byte_range(rec);
        self.payload().get(start as usize..end as usize)
    }
}

/// Loads `path` as `opts` says.
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Loaded> {
    let t = Instant::now();
    let f = FlashFile::open(path.as_ref())?;
    load_file(f, opts, t.elapsed())
}

/// [`load`] for a file already opened (and validated) with [`FlashFile::open`].
pub fn load_open(f: FlashFile, opts: &LoadOptions) -> Result<Loaded> {
    load_file(f, opts, Duration::ZERO)
}

fn load_file(f: FlashFile, opts: &LoadOptions, open_time: Duration) -> Result<Loaded> {
    let path = f.path.clone();
    let path = path.as_path();
    let mut report = LoadReport {
        phases: vec![("read_metadata", open_time)],
        ..Default::default()
    };
    let payload_len = usize::try_from(f.payload_len).map_err(|_| {
        Error::Invalid(format!(
            "{}: payload too large for this platform",
            path.display()
        ))
    })?;

    let verifier = opts.verify.then(|| verifier(&f)).transpose()?;
    let memory = if !opts.eager {
        let t = Instant::now();
        // SAFETY: a private (copy-on-write) mapping: writes through it never reach the file. As with
        // any mapping, another process truncating the file while it is mapped would fault; the
        // file is only read here, and that risk is the documented contract of lazy loading.
        let map = unsafe { MmapOptions::new().map_copy(&f.file) }
            .map_err(|e| Error::io(path, "mmap", e))?;
        // The footer was checked against the file's size at open; a file that shrank since then
        // maps shorter than its payload.
        if map.len() < payload_len {
            return Err(Error::Invalid(format!(
                "{}: the file got shorter while loading ({} bytes mapped, the payload needs {payload_len})",
                path.display(),
                map.len()
            )));
        }
        report.phases.push(("mmap_payload", t.elapsed()));
        if let Some(v) = &verifier {
            let t = Instant::now();
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            verify_in_memory(path, &map[..payload_len], v, threads, opts.cancel.as_ref())?;
            report.phases.push(("verify_checksums", t.elapsed()));
        }
        Memory::Mapped(map)
    } else {
        let t = Instant::now();
        let mut buf = HostBuffer::with_pages(payload_len, opts.huge_pages)?;
        report.phases.push(("alloc_cpu", t.elapsed()));

        let r = read_into(&f.data(), 0, buf.as_mut_slice(), opts, verifier.as_ref())?;
        report.threads = r.threads;
        report.io = r.io;
        report.phases.extend(r.phases);
        Memory::Owned(buf)
    };
    Ok(Loaded {
        path: path.to_path_buf(),
        footer: f.footer,
        footer_json: f.footer_json,
        report,
        payload_len,
        memory,
    })
}

/// The reader policy for `d` ([`crate::settings::read_plan`]: direct or buffered reads,
/// readahead, threads) and the direct handle when the policy reads direct.
///
/// Direct reads (`O_DIRECT`, macOS `F_NOCACHE`, Windows `FILE_FLAG_NO_BUFFERING`: see
/// [`crate::os`]) may be refused by the filesystem (tmpfs) at open; reads then stay buffered. The
/// direct handle is opened by path, so it is only used if it is the same file as the one whose
/// footer was validated.
fn reader_setup(d: &DataFile<'_>, opts: &LoadOptions) -> (Option<File>, usize, bool) {
    use crate::settings::{read_plan, Residency};
    let residency = match resident_fraction(d.file, d.end) {
        Ok(r) => Residency::Fraction(r),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Residency::Unsupported,
        Err(_) => Residency::Unknown,
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let plan = read_plan(opts.io, residency, opts.threads, cores);
    let direct = plan
        .direct
        .then(|| crate::os::open_direct(d.path))
        .flatten()
        .filter(|x| crate::os::same_file(x, d.file));
    (direct, plan.threads, plan.readahead)
}

/// An open file whose bytes `[0, end)` hold tensor data (a FlashPack payload, or a whole
/// safetensors file), for the shared readers.
pub(crate) struct DataFile<'a> {
    pub path: &'a Path,
    pub file: &'a File,
    pub end: u64,
    /// The tensors in the data, to name in errors.
    pub names: TensorNames<'a>,
}

/// Where a [`DataFile`]'s tensors are, to name them in errors.
#[derive(Clone, Copy)]
pub(crate) enum TensorNames<'a> {
    Footer(&'a Footer),
    Tensors(&'a [crate::weights::TensorInfo]),
}

impl TensorNames<'_> {
    /// The tensors stored in data bytes `[start, end)`, e.g. "tensor 'w'".
    pub fn describe(&self, start: u64, end: u64) -> String {
        match self {
            TensorNames::Footer(f) => f.describe_range(start, end),
            TensorNames::Tensors(ts) => crate::format::describe_tensors(
                ts.iter()
                    .filter(|t| t.start < end && start < t.end)
                    .map(|t| (t.start, t.name.as_str())),
            ),
        }
    }
}

impl DataFile<'_> {
    /// A device error with the file it happened in, and the tensors of the bytes being copied
    /// when that is known.
    fn device_error(&self, e: Error, copying: Option<(u64, u64)>) -> Error {
        device_error_in(self.path, &self.names, e, copying)
    }
}

/// A device error with the file (or URL) it happened in, and the tensors of the bytes being
/// copied when that is known; other errors unchanged.
pub(crate) fn device_error_in(
    path: &Path,
    names: &TensorNames<'_>,
    e: Error,
    copying: Option<(u64, u64)>,
) -> Error {
    match e {
        Error::Device(msg) => Error::Device(match copying {
            Some((a, b)) => format!(
                "{}: {msg} (copying bytes {a}..{b}: {})",
                path.display(),
                names.describe(a, b)
            ),
            None => format!("{}: {msg}", path.display()),
        }),
        e => e,
    }
}

impl FlashFile {
    pub(crate) fn data(&self) -> DataFile<'_> {
        DataFile {
            path: &self.path,
            file: &self.file,
            end: self.payload_len,
            names: TensorNames::Footer(&self.footer),
        }
    }
}

/// Streams the payload bytes that `regions` name from an open file into CUDA memory, through
/// pinned staging buffers; returns when every copy has completed. The calling thread's current
/// CUDA context is the same afterwards, whether the load succeeded or failed.
///
/// Regions may cover any part of the payload (typically one per macroblock); the bytes between
/// regions that lie within one chunk are read and skipped. Regions are checked (inside the
/// payload, no overlap) before anything is read. The staging memory is bounded by the pinned
/// pool: when `threads x 2 x chunk_bytes` would exceed what it can give, the chunk size (down to
/// 1 MiB) and then the thread count are reduced.
///
/// # Safety
/// For every region, `dst..dst + len` must be memory on `device` that the caller owns and that
/// nothing else reads or writes until this call returns (e.g. freshly allocated tensors after
/// the framework's stream was synchronized). Use [`WeightFile::load_cuda`] for a safe load into
/// memory this crate allocates.
///
/// [`WeightFile::load_cuda`]: crate::weights::WeightFile::load_cuda
///
/// Raw device addresses cannot reach a load from safe code:
/// ```compile_fail,E0133
/// use flashpack::read::{load_to_device, FlashFile, LoadOptions};
/// use flashpack::sink::{cuda::CudaDevice, DeviceRegion};
/// fn load(file: &FlashFile, dev: &CudaDevice) {
///     let region = DeviceRegion { offset: 0, len: 4, dst: 0x1000 };
///     let _ = load_to_device(file, dev, vec![region], &LoadOptions::default());
/// }
/// ```
#[cfg(feature = "cuda")]
pub unsafe fn load_to_device(
    f: &FlashFile,
    device: &CudaDevice,
    regions: Vec<DeviceRegion>,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let verifier = opts.verify.then(|| verifier(f)).transpose()?;
    stream_to_device(&f.data(), verifier.as_ref(), device, regions, opts)
}

/// The device load behind [`load_to_device`], for any [`Device`] and [`DataFile`]: region
/// offsets are offsets in `d`'s data, and the caller upholds `load_to_device`'s contract on
/// the destinations (the copies are enqueued through [`Device::copy_async`]).
pub(crate) fn stream_to_device<D: Device>(
    d: &DataFile<'_>,
    verifier: Option<&pool::Verifier<'_>>,
    device: &D,
    regions: Vec<DeviceRegion>,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let t = Instant::now();
    let path = d.path;
    let in_file = |e: Error| Error::Invalid(format!("{}: {e}", path.display()));
    let regions = Regions::new(regions, d.end).map_err(in_file)?;
    let (direct, threads, readahead) = reader_setup(d, opts);
    // Verified reads must be whole checksum chunks.
    let grain = verifier.map_or(DIRECT_ALIGN as usize, |v| v.read_chunk(1));
    let (threads, chunk) =
        fit_staging(threads, opts.chunk_bytes, grain, device.pool().budget()).map_err(in_file)?;
    let chunks = device_chunks(regions.as_slice(), chunk, verifier.is_some(), d.end);
    let threads = threads.min(chunks.len()).max(1);
    let mut report = LoadReport::default();
    report.phases.push(("plan", t.elapsed()));

    let t = Instant::now();
    let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
    let bar = progress_bar(opts.progress, total, "loading");
    // The sink may get staging buffers for fewer threads when other loads hold part of the pool.
    let sink = DeviceSink::new(device, regions, threads, chunk).map_err(|e| match e {
        Error::Invalid(_) => in_file(e),
        e => d.device_error(e, None),
    })?;
    report.threads = sink.workers();
    let src = pool::Source::local(
        path,
        d.file,
        direct,
        readahead,
        opts.cancel.as_ref(),
        verifier,
    );
    let read = pool::read_chunks(&src, &chunks, &sink, report.threads, bar.as_ref());
    let copying = sink.failed_chunk();
    report.io = read.map_err(|e| d.device_error(e, copying))?;
    sink.finish().map_err(|e| d.device_error(e, None))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report.phases.push(("stream_to_device", t.elapsed()));
    Ok(report)
}

/// Reads data bytes `[start, end)` of `d` into new owned host memory with the eager reader.
pub(crate) fn read_owned(
    d: &DataFile<'_>,
    start: u64,
    end: u64,
    opts: &LoadOptions,
) -> Result<(HostBuffer, LoadReport)> {
    let len = usize::try_from(end.saturating_sub(start))
        .map_err(|_| Error::Invalid(format!("{}: data too large", d.path.display())))?;
    let mut buf = HostBuffer::with_pages(len, opts.huge_pages)?;
    let report = read_into(d, start, buf.as_mut_slice(), opts, None)?;
    Ok((buf, report))
}

/// The eager reader: data bytes `[start, start + dst.len())` of `d` into `dst` with the reader
/// pool (checked against the checksums when a verifier is given; reads then go in multiples of
/// the checksum chunk).
fn read_into(
    d: &DataFile<'_>,
    start: u64,
    dst: &mut [u8],
    opts: &LoadOptions,
    verifier: Option<&pool::Verifier<'_>>,
) -> Result<LoadReport> {
    let t = Instant::now();
    let end = start + dst.len() as u64;
    let chunk = verifier.map_or(opts.chunk_bytes, |v| v.read_chunk(opts.chunk_bytes));
    let (direct, threads, readahead) = reader_setup(d, opts);
    let chunks = plan_chunks(start, end, chunk);
    let mut report = LoadReport {
        threads: threads.clamp(1, chunks.len().max(1)),
        ..Default::default()
    };
    let bar = progress_bar(opts.progress, end - start, "loading");
    let src = pool::Source::local(
        d.path,
        d.file,
        direct,
        readahead,
        opts.cancel.as_ref(),
        verifier,
    );
    let sink = HostSink::with_base(dst, start);
    report.io = pool::read_chunks(&src, &chunks, &sink, report.threads, bar.as_ref())?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report.phases.push(("read_payload", t.elapsed()));
    Ok(report)
}

/// Fits `threads x SLOTS_PER_WORKER` staging buffers of `chunk_bytes` (rounded up to a multiple
/// of `grain`) into `budget` bytes: shrinks the chunk (not below 1 MiB or one grain), then the
/// thread count, then the chunk again. Returns (threads, chunk).
fn fit_staging(
    threads: usize,
    chunk_bytes: usize,
    grain: usize,
    budget: usize,
) -> Result<(usize, usize)> {
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
        return Err(Error::Invalid(format!(
            "the pinned pool limit leaves {budget} bytes, too few for {SLOTS_PER_WORKER} \
             staging buffers of {grain} bytes{}",
            if grain > DIRECT_ALIGN as usize {
                " (the file's checksum chunks, which verified reads need whole)"
            } else {
                ""
            }
        )));
    }
    Ok((1, chunk))
}

/// Chunks covering `regions` (sorted, non-overlapping): regions closer than a chunk are read as
/// one span; each span starts on a [`DIRECT_ALIGN`] boundary so its reads can use `O_DIRECT`, or,
/// with `whole` (verification), on the chunk grid and ends on it (or at the payload's end).
fn device_chunks(
    regions: &[DeviceRegion],
    chunk: usize,
    whole: bool,
    payload_len: u64,
) -> Vec<Chunk> {
    let grain = if whole { chunk as u64 } else { DIRECT_ALIGN };
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for r in regions {
        let start = r.offset / grain * grain;
        let end = if whole {
            (r.offset + r.len)
                .div_ceil(grain)
                .saturating_mul(grain)
                .min(payload_len)
        } else {
            r.offset + r.len
        };
        match spans.last_mut() {
            Some(last) if start <= last.1.saturating_add(chunk as u64) => last.1 = last.1.max(end),
            _ => spans.push((start, end)),
        }
    }
    spans
        .into_iter()
        .flat_map(|(s, e)| plan_chunks(s, e, chunk))
        .collect()
}

fn verifier(f: &FlashFile) -> Result<pool::Verifier<'_>> {
    footer_verifier(&f.path, &f.footer, f.payload_len)
}

/// The checker of a FlashPack payload against its footer's checksums; an error naming `path`
/// when the file has none or an algorithm this build does not know.
pub(crate) fn footer_verifier<'a>(
    path: &Path,
    footer: &'a Footer,
    payload_len: u64,
) -> Result<pool::Verifier<'a>> {
    let path = path.display();
    let Some(cs) = &footer.checksums else {
        return Err(Error::Invalid(format!(
            "{path}: the file has no checksums to verify (it was written without them)"
        )));
    };
    if !cs.is_supported() {
        return Err(Error::Invalid(format!(
            "{path}: checksum algorithm {:?} is not supported by this version",
            cs.algorithm
        )));
    }
    Ok(pool::Verifier {
        footer,
        checksums: cs,
        payload_len,
    })
}

/// Checks a payload held in memory (e.g. a mapping) chunk by chunk with `threads` threads;
/// the first bad chunk (lowest offset among those found) is the error.
fn verify_in_memory(
    path: &Path,
    payload: &[u8],
    v: &pool::Verifier<'_>,
    threads: usize,
    cancel: Option<&Cancel>,
) -> Result<()> {
    let cs = v.checksums;
    let n = cs.digests.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worst = std::sync::Mutex::new(None::<crate::format::ChunkMismatch>);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= n || cancel.is_some_and(Cancel::is_cancelled) {
                    return;
                }
                let (a, b) = cs.chunk_range(k as u64, v.payload_len);
                let bytes = payload.get(a as usize..b as usize).unwrap_or(&[]);
                if let Err(m) = cs.check_chunk(k as u64, bytes) {
                    let mut w = worst.lock().unwrap_or_else(|p| p.into_inner());
                    if w.is_none_or(|old| m.chunk < old.chunk) {
                        *w = Some(m);
                    }
                }
            });
        }
    });
    crate::cancel::check(cancel, path)?;
    match worst.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(m) => Err(Error::format(
            path,
            v.footer.checksum_error(&m, v.payload_len),
        )),
        None => Ok(()),
    }
}

/// What [`verify`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub tensors: usize,
    pub payload_len: u64,
    /// Chunks whose digest was checked (0 when the file has no checksums).
    pub chunks_checked: usize,
    /// The checksum algorithm, when the file has checksums.
    pub algorithm: Option<String>,
}

/// Checks a file without loading it anywhere: the footer and layout (as every open does), then
/// every payload chunk against its checksum, reading with the eager reader's threads and I/O
/// mode into small per-thread buffers. A file without checksums passes with
/// `chunks_checked == 0`; a bad chunk is an error naming the first tensor it holds.
pub fn verify(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<VerifyReport> {
    let f = FlashFile::open(path.as_ref())?;
    let mut report = VerifyReport {
        tensors: f.footer.records.len(),
        payload_len: f.payload_len,
        chunks_checked: 0,
        algorithm: f.footer.checksums.as_ref().map(|c| c.algorithm.clone()),
    };
    if f.footer.checksums.is_none() {
        return Ok(report);
    }
    let v = verifier(&f)?;
    let chunk = v.read_chunk(opts.chunk_bytes);
    let (direct, threads, readahead) = reader_setup(&f.data(), opts);
    let chunks = plan_chunks(0, f.payload_len, chunk);
    let threads = threads.clamp(1, chunks.len().max(1));
    let sink = crate::sink::ScratchSink::new(threads, chunk)?;
    let bar = progress_bar(opts.progress, f.payload_len, "verifying");
    let src = pool::Source::local(
        &f.path,
        &f.file,
        direct,
        readahead,
        opts.cancel.as_ref(),
        Some(&v),
    );
    pool::read_chunks(&src, &chunks, &sink, threads, bar.as_ref())?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report.chunks_checked = v.checksums.digests.len();
    Ok(report)
}

/// Reads payload bytes `[offset, offset + dst.len())` of an open file into `dst` with the eager
/// reader (threads, `O_DIRECT` when the file is not cached), e.g. one rank's shard of a
/// distributed load. With `opts.verify` the range must start on the checksum grid and end on it
/// (or at the payload's end), and every checksum chunk in it is checked.
pub fn read_range(
    f: &FlashFile,
    offset: u64,
    dst: &mut [u8],
    opts: &LoadOptions,
) -> Result<LoadReport> {
    offset
        .checked_add(dst.len() as u64)
        .filter(|&e| e <= f.payload_len)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: range {offset}+{} lies outside the {}-byte payload",
                f.path.display(),
                dst.len(),
                f.payload_len
            ))
        })?;
    let verifier = opts.verify.then(|| verifier(f)).transpose()?;
    read_into(&f.data(), offset, dst, opts, verifier.as_ref())
}
