//! Loading: open and validate, then either map the file copy-on-write (lazy) or fill owned memory
//! with a pool of reader threads (eager). Each function here plans a job of one file (its
//! payload, or the range asked for) and runs it with the one job runner in [`job`], as the
//! weights and checkpoint loads do.
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
mod file;
mod host;
pub mod job;
mod loaded;
mod options;
mod pool;
mod residency;
mod verify;

use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) use data::{no_checksums, Backing, DataFile, TensorNames};
pub use file::{is_flashpack_file, FlashFile};
use host::load_file;
pub use loaded::Loaded;
pub use options::{IoCounts, LoadOptions, LoadReport, DEFAULT_READ_CHUNK_BYTES};
#[cfg(any(fuzzing, test))]
pub(crate) use pool::plan_chunks;
#[cfg(fuzzing)]
pub(crate) use pool::{chunk_step, Chunk};
pub(crate) use residency::resident_fraction;
pub use verify::VerifyReport;

pub use crate::settings::IoMode;
#[cfg(feature = "cuda")]
use crate::sink::cuda::CudaDevice;
#[cfg(feature = "cuda")]
use crate::sink::DeviceRegion;
use crate::{Error, Result};
use job::{JobPlan, Piece};

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
    job::regions_to_device(f, device, regions, opts)
}

/// Checks a file without loading it anywhere: the footer and layout (as every open does), then
/// every payload chunk against its checksum, reading with the eager reader's threads and I/O
/// mode into small per-thread buffers. A file without checksums passes with
/// `chunks_checked == 0`; a bad chunk is an error naming the first tensor it holds.
pub fn verify(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<VerifyReport> {
    let f = FlashFile::open(path.as_ref())?;
    job::verify_one(&f, f.footer.records.len(), opts)
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
    let end = offset
        .checked_add(dst.len() as u64)
        .filter(|&e| e <= f.payload_len)
        .ok_or_else(|| Error::OutOfRange {
            path: f.path.clone(),
            offset,
            len: dst.len() as u64,
            size: f.payload_len,
            within: "payload",
        })?;
    let range = [Piece {
        file: 0,
        start: offset,
        end,
    }];
    // Exact: job memory is `dst`, read in place.
    let plan = JobPlan::exact(&[f], &range, opts.verify)?;
    job::read_into(&[f], &plan, dst, opts)
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
