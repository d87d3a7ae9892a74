//! Loading: open and validate, then either map the file copy-on-write (lazy) or fill owned memory
//! with a pool of reader threads (eager).
//!
//! Lazy loads are private mappings: tensors read straight from the page cache, writes to them
//! make private copies of the touched pages and never reach the file. Eager loads return with every
//! byte resident. How they read (buffered with readahead, buffered, or `O_DIRECT`) follows the
//! reader policy in the crate's settings (`FLASHPACK_*` environment variables); the bytes are
//! identical either way. The format is specified in `docs/FORMAT.md`, the reader's design in
//! `docs/ARCHITECTURE.md`.
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
mod data;
mod device;
mod file;
mod host;
pub mod job;
mod pool;
mod residency;
mod verify;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

pub(crate) use data::{device_error_in, DataFile, TensorNames};
pub(crate) use device::stream_to_device;
pub use file::{is_flashpack_file, open_regular, FlashFile};
pub(crate) use host::read_owned;
#[cfg(any(fuzzing, test))]
pub(crate) use pool::plan_chunks;
pub use pool::IoCounts;
#[cfg(fuzzing)]
pub(crate) use pool::{chunk_step, Chunk};
pub(crate) use residency::resident_fraction;
pub use verify::VerifyReport;
// For the job reader (`job.rs`), which shares these steps.
use data::reader_setup;
use device::fit_staging;
use host::load_file;
use verify::footer_verifier;

use crate::cancel::Cancel;
use crate::format::Record;
#[cfg(feature = "cuda")]
use crate::sink::cuda::CudaDevice;
#[cfg(feature = "cuda")]
use crate::sink::DeviceRegion;
use crate::sink::HostBuffer;
use crate::{Error, Footer, Result};
use host::read_into;
use verify::verifier;

/// Share of the payload that must be in the page cache for it to count as hot (plain buffered reads).
pub(crate) const HOT_FRACTION: f64 = 0.9;
/// Default eager chunk size.
pub const DEFAULT_READ_CHUNK_BYTES: usize = 16 << 20;

/// How the eager reader talks to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoMode {
    /// `O_DIRECT` unless the payload is mostly in the page cache (the policy and its
    /// measurements: the crate's settings).
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
    /// How the eager reader reads.
    pub io: IoMode,
    /// Reader threads (0 = chosen from the core count and the I/O mode).
    pub threads: usize,
    /// Bytes each reader thread reads at a time.
    pub chunk_bytes: usize,
    /// Show a progress bar on stderr for large loads.
    pub progress: bool,
    /// Ask for transparent huge pages on eager host memory (on Linux, for buffers of 2 MiB and more).
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
    /// Each phase and how long it took, in order.
    pub phases: Vec<(&'static str, Duration)>,
    /// Reader threads used (0 for a lazy load).
    pub threads: usize,
    /// Bytes read each way.
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
    pub(crate) path: PathBuf,
    pub(crate) footer: Footer,
    pub(crate) footer_json: Vec<u8>,
    pub(crate) report: LoadReport,
    /// Never more than the memory holds (checked when the memory was made).
    payload_len: usize,
    memory: Memory,
}

impl Loaded {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's validated footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The footer JSON exactly as stored.
    pub fn footer_json(&self) -> &[u8] {
        &self.footer_json
    }

    /// How the load went: its phases, threads and I/O counts.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The tensor names, in the footer's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.footer.records.iter().map(|r| r.name.as_str())
    }

    /// Every tensor as `(record, stored bytes)`, in the footer's order.
    pub fn iter(&self) -> impl Iterator<Item = (&Record, &[u8])> {
        let payload = self.payload();
        self.footer.records.iter().map(move |r| {
            let (start, end) = r.byte_range();
            // In bounds by construction: the footer was validated against this payload's length.
            (r, &payload[start as usize..end as usize])
        })
    }

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

/// Checks a file without loading it anywhere: the footer and layout (as every open does), then
/// every payload chunk against its checksum, reading with the eager reader's threads and I/O
/// mode into small per-thread buffers. A file without checksums passes with
/// `chunks_checked == 0`; a bad chunk is an error naming the first tensor it holds.
pub fn verify(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<VerifyReport> {
    verify::verify_file(path.as_ref(), opts)
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

#[cfg(test)]
mod tests {
    use super::plan_chunks;
    use std::panic::catch_unwind;

    /// Rounding the chunk size up to 4 KiB overflows for sizes within 4 KiB of 2^64 (a multiply
    /// overflow in debug builds, a zero step and a division by zero in release builds). The size
    /// comes from the caller: Python's `chunk_bytes` and `FLASHPACK_READ_CHUNK_BYTES` reach it.
    /// (Moved from tests/fuzz_regressions.rs when plan_chunks became internal.)
    #[test]
    fn regression_plan_chunks_with_a_chunk_size_near_2_pow_64_does_not_panic() {
        for chunk_bytes in [usize::MAX, usize::MAX - 4094] {
            let r = catch_unwind(|| plan_chunks(0, 10_000, chunk_bytes));
            let chunks = r.unwrap_or_else(|_| {
                panic!("plan_chunks(0, 10000, {chunk_bytes}) panicked instead of making one chunk")
            });
            assert_eq!(chunks.len(), 1, "{chunks:?}");
            assert_eq!((chunks[0].offset, chunks[0].len), (0, 10_000));
        }
    }

    /// Found by the planner target: `Chunking { start: 2^64 - 256, len: .., chunk: Shift(0) }`, and a
    /// planned block of 2^64 - 2^62 bytes chunked at 2^62. The next chunk boundary after an offset
    /// within one chunk of 2^64 overflows: a panic in debug builds; in release builds it wraps to 0 and
    /// the loop never ends (so this runs in a child with a deadline and an address-space limit).
    #[test]
    #[cfg(unix)] // the child caps its address space with setrlimit
    fn regression_plan_chunks_near_the_end_of_the_u64_range_terminates() {
        use std::process::Command;
        use std::time::{Duration, Instant};
        const TEST: &str =
            "read::tests::regression_plan_chunks_near_the_end_of_the_u64_range_terminates";
        const CHILD_ENV: &str = "FLASHPACK_FUZZ_REGRESSION_CHILD";
        let cases: [(u64, u64, usize); 3] = [
            (u64::MAX - 255, u64::MAX, 4096),
            (3 << 62, u64::MAX - 7, 1 << 62),
            (0, u64::MAX, 1 << 62),
        ];
        if std::env::var_os(CHILD_ENV).is_some() {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            // SAFETY: setrlimit reads the struct; it lowers only this child process's own limit.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
            for (start, end, chunk) in cases {
                let chunks = plan_chunks(start, end, chunk);
                let mut at = start;
                for c in &chunks {
                    assert_eq!(
                        c.offset, at,
                        "plan_chunks({start}, {end}, {chunk}): {chunks:?}"
                    );
                    at += c.len as u64;
                }
                assert_eq!(at, end, "plan_chunks({start}, {end}, {chunk}): {chunks:?}");
            }
            return;
        }
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = proc.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = proc.kill();
                let _ = proc.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!(
                "plan_chunks on ranges ending near 2^64 failed in the child ({s:?}; its panic is \
                 printed above): the next chunk boundary overflows"
            ),
            None => panic!("plan_chunks on a range ending near 2^64 did not return within 20 s"),
        }
    }
}
