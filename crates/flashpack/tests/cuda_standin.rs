//! The CUDA path with real driver calls, against the strict stand-in for the driver
//! (`crates/cuda-standin`): contexts, pinned memory, streams, events and late-completing copies
//! into tracked device allocations, with failures injected on demand.
//!
//! Run with `make test-cuda-standin` (part of `make test`), which builds the stand-in and puts it
//! first on `LD_LIBRARY_PATH`. Each test is `#[ignore]`d for a plain `cargo test` (no stand-in
//! there), and fails loudly if run without it. Nothing measured here is GPU evidence.
#![cfg(feature = "cuda")]

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cudarc::driver::sys;
use flashpack::read::{load_to_device, FlashFile, IoMode, LoadOptions, LoadReport};
use flashpack::sink::cuda::{
    device_count, driver_available, pinned_pool, release_pinned_pool, CudaDevice, DeviceBuffer,
};
use flashpack::sink::{DeviceRegion, DEFAULT_PINNED_LIMIT};
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};
use serde_json::Value;

const NEEDS: &str = "runs against the CUDA stand-in: make test-cuda-standin";

// ---------------------------------------------------------------------------------------------
// The stand-in's controls, and a lock: the driver state, the pinned pool and armed failures are
// process-wide, so these tests take turns.
// ---------------------------------------------------------------------------------------------

struct Standin {
    fail: unsafe extern "C" fn(*const c_char, u64) -> c_int,
    record: unsafe extern "C" fn(*mut c_char, usize) -> usize,
    reset: unsafe extern "C" fn(),
    set_delay_us: unsafe extern "C" fn(u64),
}

fn standin() -> Standin {
    assert!(
        driver_available(),
        "no CUDA driver could be loaded: this test {NEEDS}"
    );
    // SAFETY: the driver library is loaded (checked above); these symbols, when present, have
    // exactly these signatures (crates/cuda-standin/src/api.rs).
    unsafe {
        let lib = sys::culib();
        let sym = |name: &[u8]| {
            lib.get::<*const ()>(name).unwrap_or_else(|_| {
                panic!("the loaded libcuda is not the stand-in (a real driver?): this test {NEEDS}")
            })
        };
        let _ = sym(b"standin_record");
        Standin {
            fail: *lib.get(b"standin_fail").unwrap(),
            record: *lib.get(b"standin_record").unwrap(),
            reset: *lib.get(b"standin_reset").unwrap(),
            set_delay_us: *lib.get(b"standin_set_delay_us").unwrap(),
        }
    }
}

impl Standin {
    fn record(&self) -> Value {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: `buf` holds `buf.len()` writable bytes.
            let n = unsafe { (self.record)(buf.as_mut_ptr().cast(), buf.len()) };
            if n < buf.len() {
                return serde_json::from_slice(&buf[..n]).unwrap();
            }
            buf.resize(n + 1, 0);
        }
    }

    /// Makes the `nth` next call of `kind` fail.
    fn fail(&self, kind: &str, nth: u64) {
        let k = CString::new(kind).unwrap();
        // SAFETY: a NUL-terminated string.
        assert_eq!(unsafe { (self.fail)(k.as_ptr(), nth) }, 0, "{kind}");
    }

    fn calls(&self, name: &str) -> u64 {
        self.record()["calls"][name].as_u64().unwrap_or(0)
    }
}

/// One test at a time; on entry the stand-in is reset and the pool is back at its default limit.
struct Turn {
    s: Standin,
    _lock: MutexGuard<'static, ()>,
}

fn turn() -> Turn {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let s = standin();
    // SAFETY: plain control calls.
    unsafe {
        (s.reset)();
        (s.set_delay_us)(300);
    }
    pinned_pool().unwrap().set_limit(DEFAULT_PINNED_LIMIT);
    Turn { s, _lock: lock }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let r = self.s.record();
        assert_eq!(
            r["violations"],
            Value::Array(vec![]),
            "the stand-in saw misuse of the driver"
        );
    }
}

fn current_ctx() -> usize {
    let mut c: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: a valid output pointer.
    unsafe { sys::cuCtxGetCurrent(&mut c) }.result().unwrap();
    c as usize
}

/// Makes device `ordinal`'s primary context current on this thread (as torch does for its
/// current device) and returns it.
fn make_current(ordinal: i32) -> usize {
    let mut dev = 0;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: valid output pointers; the stand-in's primary contexts are never destroyed.
    unsafe {
        sys::cuDeviceGet(&mut dev, ordinal).result().unwrap();
        sys::cuDevicePrimaryCtxRetain(&mut ctx, dev)
            .result()
            .unwrap();
        sys::cuCtxSetCurrent(ctx).result().unwrap();
    }
    ctx as usize
}

fn clear_current() {
    // SAFETY: a null context clears this thread's current context.
    unsafe { sys::cuCtxSetCurrent(std::ptr::null_mut()) }
        .result()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Files and destinations
// ---------------------------------------------------------------------------------------------

/// xorshift bytes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every dtype (one block each), odd sizes that are multiples of neither 4 KiB nor any chunk, a
/// 0-dim tensor; small checksum chunks so a verified load's error can name one tensor.
fn make_file(dir: &Path) -> (PathBuf, FlashFile, Vec<u8>) {
    make_file_of(dir, Dtype::ALL)
}

fn make_file_of(dir: &Path, dtypes: &[Dtype]) -> (PathBuf, FlashFile, Vec<u8>) {
    let specs: Vec<(String, Dtype, Vec<u64>)> = dtypes
        .iter()
        .enumerate()
        .map(|(i, &dt)| {
            (
                format!("t{i}_{}", dt.name()),
                dt,
                vec![4099 * (i as u64 % 5 + 1) + 13],
            )
        })
        .chain([("big".to_string(), Dtype::F32, vec![333, 1001])])
        .chain([("scalar".to_string(), Dtype::I64, vec![])])
        .collect();
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, dt, shape))| {
            bytes(
                i as u64 + 7,
                shape.iter().product::<u64>() as usize * dt.size(),
            )
        })
        .collect();
    let entries: Vec<PackEntry<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((n, dt, shape), d)| PackEntry::new(n.clone(), *dt, shape.clone(), d))
        .collect();
    let path = dir.join("m.flashpack");
    let opts = PackOptions {
        chunk_bytes: 64 << 10,
        ..Default::default()
    };
    pack(&path, &entries, &opts).unwrap();
    let raw = std::fs::read(&path).unwrap();
    (path.clone(), FlashFile::open(&path).unwrap(), raw)
}

/// One device buffer per block, and the regions that send each block to its buffer.
fn block_buffers(dev: &CudaDevice, f: &FlashFile) -> (Vec<DeviceBuffer>, Vec<DeviceRegion>) {
    let bufs: Vec<DeviceBuffer> = f
        .footer()
        .blocks()
        .iter()
        .map(|b| DeviceBuffer::alloc(dev, b.length_bytes() as usize).unwrap())
        .collect();
    let regions = f
        .footer()
        .blocks()
        .iter()
        .zip(&bufs)
        .map(|(b, d)| DeviceRegion {
            offset: b.offset_bytes(),
            len: b.length_bytes(),
            dst: d.ptr(),
        })
        .collect();
    (bufs, regions)
}

fn opts(threads: usize, chunk_bytes: usize) -> LoadOptions {
    LoadOptions {
        threads,
        chunk_bytes,
        ..Default::default()
    }
}

/// Streams every block of `f` into new device buffers on `dev`, one per block.
fn load_blocks(
    dev: &CudaDevice,
    f: &FlashFile,
    opts: &LoadOptions,
) -> flashpack::Result<(Vec<DeviceBuffer>, LoadReport)> {
    let (bufs, regions) = block_buffers(dev, f);
    // SAFETY: the regions are exactly the buffers just allocated, which nothing else uses.
    let report = unsafe { load_to_device(f, dev, regions, opts) }?;
    Ok((bufs, report))
}

fn to_host(d: &DeviceBuffer) -> Vec<u8> {
    let mut out = vec![0u8; d.len()];
    d.copy_to_host(0, &mut out).unwrap();
    out
}

fn assert_blocks_land(f: &FlashFile, bufs: &[DeviceBuffer], raw: &[u8], what: &str) {
    for (b, d) in f.footer().blocks().iter().zip(bufs) {
        let want = &raw[b.offset_bytes() as usize..(b.offset_bytes() + b.length_bytes()) as usize];
        assert!(to_host(d) == want, "{what}: block {} differs", b.dtype());
    }
}

/// Sets the pool's limit to leave `bytes` for loads beside what earlier tests leaked (the pool
/// is process-wide, and leaked bytes stay counted against its limit for good).
fn set_budget(bytes: usize) {
    let pool = pinned_pool().unwrap();
    pool.set_limit(pool.stats().leaked + bytes);
}

fn assert_pool_at_rest(what: &str) {
    let st = pinned_pool().unwrap().stats();
    assert_eq!(
        st.allocated, st.idle,
        "{what}: a staging buffer is still held: {st:?}"
    );
    assert!(st.allocated + st.leaked <= st.limit, "{what}: {st:?}");
}

/// Runs `f` on another thread and gives up after `secs` (a hang is a failure, not a stuck run).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not finish within {secs} s"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn every_dtype_lands_bit_exact_in_every_io_mode_chunk_size_and_thread_count() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, raw) = make_file(dir.path());
    assert!(f.footer().blocks().len() >= 15, "many blocks");
    let dev = CudaDevice::new(0).unwrap();
    assert_eq!((dev.ordinal(), dev.name()), (0, "cuda:0"));
    for io in [IoMode::Buffered, IoMode::Direct, IoMode::Auto] {
        for chunk_bytes in [4096usize, 5000, 65536, 1 << 20] {
            for threads in [1usize, 3] {
                let what = format!("{io:?} chunk {chunk_bytes} threads {threads}");
                let opts = LoadOptions {
                    io,
                    threads,
                    chunk_bytes,
                    ..Default::default()
                };
                let (bufs, report) =
                    load_blocks(&dev, &f, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_blocks_land(&f, &bufs, &raw, &what);
                assert!(report.threads >= 1 && report.threads <= threads, "{what}");
                assert_pool_at_rest(&what);
            }
        }
    }
    let r = t.s.record();
    assert!(
        r["calls"]["cuMemcpyHtoDAsync"].as_u64().unwrap() > 500,
        "{r}"
    );
    assert!(
        r["calls"]["cuEventSynchronize"].as_u64().unwrap() > 100,
        "buffers were reused"
    );
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn only_the_named_ranges_are_written_and_unsorted_regions_are_sorted() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, raw) = make_file(dir.path());
    let dev = CudaDevice::new(0).unwrap();
    let whole = DeviceBuffer::alloc(&dev, f.payload_len() as usize).unwrap();
    let (first, last) = (&f.footer().blocks()[0], f.footer().blocks().last().unwrap());
    // Far apart, given last first.
    let a = (first.offset_bytes() + 777, 10_000u64);
    let z = (last.offset_bytes(), last.length_bytes());
    let regions = vec![
        DeviceRegion {
            offset: z.0,
            len: z.1,
            dst: whole.ptr() + z.0,
        },
        DeviceRegion {
            offset: a.0,
            len: a.1,
            dst: whole.ptr() + a.0,
        },
    ];
    let opts = LoadOptions {
        threads: 2,
        chunk_bytes: 8192,
        ..Default::default()
    };
    // SAFETY: both regions lie inside `whole`, owned here.
    let report = unsafe { load_to_device(&f, &dev, regions, &opts) }.unwrap();
    let got = to_host(&whole);
    for (i, (&g, &w)) in got.iter().zip(&raw).enumerate() {
        let i = i as u64;
        let named = (a.0..a.0 + a.1).contains(&i) || (z.0..z.0 + z.1).contains(&i);
        assert_eq!(g, if named { w } else { 0 }, "byte {i} (named: {named})");
    }
    let moved = report.io.direct_bytes + report.io.buffered_bytes;
    assert!(
        moved < f.payload_len() / 2,
        "read {moved} of {}",
        f.payload_len()
    );
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn repeated_loads_reuse_the_pool_and_a_tiny_limit_still_loads() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, raw) = make_file(dir.path());
    let dev = CudaDevice::new(0).unwrap();
    let pool = pinned_pool().unwrap();
    release_pinned_pool();
    // 4 threads x 2 slots x 16 MiB would need 128 MiB; the pool leaves 3 MiB.
    set_budget(3 << 20);
    let leaked = pool.stats().leaked;
    let opts = LoadOptions {
        threads: 4,
        chunk_bytes: 16 << 20,
        ..Default::default()
    };
    let mut allocs = 0;
    for round in 0..3 {
        let (bufs, _) = load_blocks(&dev, &f, &opts).unwrap();
        assert_blocks_land(&f, &bufs, &raw, &format!("round {round}"));
        let st = pool.stats();
        assert!(
            st.allocated > 0 && st.allocated <= 3 << 20,
            "round {round}: {st:?}"
        );
        assert_pool_at_rest(&format!("round {round}"));
        // The stand-in's own count of live pinned memory agrees with the pool's.
        let r = t.s.record();
        assert_eq!(
            r["pinned_bytes"].as_u64().unwrap() as usize,
            st.allocated + leaked,
            "{r}"
        );
        let n = t.s.calls("cuMemHostAlloc");
        if round > 0 {
            assert_eq!(n, allocs, "round {round} allocated anew instead of reusing");
        }
        allocs = n;
    }
    let held = pool.stats().allocated;
    assert_eq!(release_pinned_pool(), held, "release frees every idle byte");
    assert_eq!(
        t.s.record()["pinned_bytes"].as_u64().unwrap() as usize,
        leaked
    );
    // A pool that leaves less than two 4 KiB staging buffers cannot work: a clear error.
    set_budget(4096);
    let err = load_blocks(&dev, &f, &opts).unwrap_err().to_string();
    assert!(
        err.contains("pinned pool limit") && err.contains("m.flashpack"),
        "{err}"
    );
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn verify_passes_a_good_file_and_names_the_tensor_of_a_flipped_byte() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (path, f, raw) = make_file(dir.path());
    let dev = CudaDevice::new(0).unwrap();
    for chunk_bytes in [4096usize, 1 << 20] {
        let opts = LoadOptions {
            threads: 2,
            chunk_bytes,
            verify: true,
            ..Default::default()
        };
        let (bufs, _) = load_blocks(&dev, &f, &opts).unwrap();
        assert_blocks_land(&f, &bufs, &raw, &format!("verified, chunk {chunk_bytes}"));
    }
    let rec = f.footer().record("big").unwrap();
    let (start, end) = f.footer().byte_range(rec);
    let at = (start + end) / 2;
    {
        use flashpack::os::Positioned;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[raw[at as usize] ^ 0x40], at).unwrap();
    }
    let f = FlashFile::open(&path).unwrap();
    let opts = LoadOptions {
        threads: 3,
        verify: true,
        ..Default::default()
    };
    let err = load_blocks(&dev, &f, &opts).unwrap_err().to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("'big'"),
        "{err}"
    );
    assert!(err.contains("m.flashpack"), "{err}");
    assert_pool_at_rest("after a checksum error");
    // A pool too small for two checksum chunks cannot verify: a clear error.
    set_budget(64 << 10);
    let err = load_blocks(&dev, &f, &opts).unwrap_err().to_string();
    assert!(err.contains("checksum chunks"), "{err}");
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn bad_regions_are_rejected_before_any_device_work() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, _raw) = make_file(dir.path());
    let dev = CudaDevice::new(0).unwrap();
    let buf = DeviceBuffer::alloc(&dev, 64).unwrap();
    let dst = buf.ptr();
    let cases = [
        (
            vec![DeviceRegion {
                offset: f.payload_len() - 8,
                len: 16,
                dst,
            }],
            "outside",
        ),
        (
            vec![DeviceRegion {
                offset: u64::MAX - 4,
                len: 16,
                dst,
            }],
            "outside",
        ),
        (
            vec![
                DeviceRegion {
                    offset: 0,
                    len: 32,
                    dst,
                },
                DeviceRegion {
                    offset: 16,
                    len: 32,
                    dst,
                },
            ],
            "overlap",
        ),
        (
            vec![DeviceRegion {
                offset: 0,
                len: 32,
                dst: u64::MAX - 8,
            }],
            "overflows",
        ),
    ];
    for (regions, word) in cases {
        // SAFETY: rejected before any copy (what this test checks).
        let err = unsafe { load_to_device(&f, &dev, regions, &LoadOptions::default()) }
            .unwrap_err()
            .to_string();
        assert!(err.contains(word) && err.contains("m.flashpack"), "{err}");
    }
    assert_eq!(t.s.calls("cuStreamCreate"), 0, "nothing was started");
    assert_eq!(t.s.calls("cuMemcpyHtoDAsync"), 0);
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn a_load_leaves_the_callers_context_as_it_was_after_success_and_failure() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, raw) = make_file(dir.path());
    assert!(device_count().unwrap() >= 2, "the stand-in has two devices");
    let dev1 = CudaDevice::new(1).unwrap();
    let opts = LoadOptions {
        threads: 2,
        chunk_bytes: 65536,
        ..Default::default()
    };
    // With torch's device 0 current, and with nothing current.
    for before in [Some(0), None] {
        let ctx0 = match before {
            Some(d) => make_current(d),
            None => {
                clear_current();
                0
            }
        };
        let (bufs, regions) = block_buffers(&dev1, &f);
        assert_eq!(current_ctx(), ctx0, "allocating moved the current context");
        // SAFETY: the buffers just allocated.
        unsafe { load_to_device(&f, &dev1, regions, &opts) }.unwrap();
        assert_eq!(
            current_ctx(),
            ctx0,
            "a load moved the caller's current context"
        );
        assert_blocks_land(&f, &bufs, &raw, "cuda:1");
        assert_eq!(current_ctx(), ctx0, "a read-back moved the current context");
        for kind in ["copy", "record", "event", "sync", "stream"] {
            let (_bufs, regions) = block_buffers(&dev1, &f);
            t.s.fail(kind, 2);
            // SAFETY: the buffers just allocated.
            let err = unsafe { load_to_device(&f, &dev1, regions, &opts) }.unwrap_err();
            t.s.fail(kind, 0);
            assert!(matches!(err, Error::Device(_)), "{kind}: {err:?}");
            assert_eq!(
                current_ctx(),
                ctx0,
                "a failed load ({kind}) moved the current context"
            );
        }
        drop(bufs);
        assert_eq!(current_ctx(), ctx0, "freeing moved the current context");
    }
    clear_current();
    // Reader threads pushed and popped too: every thread that ever had a context has none now.
    let r = t.s.record();
    for (thread, ctx) in r["thread_contexts"].as_object().unwrap() {
        assert_eq!(ctx, 0, "{thread} was left with a context: {r}");
    }
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn each_injected_failure_is_a_prompt_error_naming_the_file_and_the_next_load_works() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (path, f, raw) = make_file(dir.path());
    let path = path.display().to_string();
    let f = std::sync::Arc::new(f);
    let raw = std::sync::Arc::new(raw);
    // A small pool, so leaked buffers would starve the next load if they stayed counted as busy.
    let pool = pinned_pool().unwrap();
    release_pinned_pool();
    set_budget(4 * 4 * 65536);
    let leaked = pool.stats().leaked;
    for (kind, nth) in [
        ("copy", 3),
        ("record", 2),
        ("event", 1),
        ("sync", 1),
        ("stream", 2),
        ("hostalloc", 1),
    ] {
        if kind == "hostalloc" {
            release_pinned_pool(); // so that the load must allocate
        }
        t.s.fail(kind, nth);
        let ff = f.clone();
        let started = Instant::now();
        let err = within(30, move || {
            load_blocks(&CudaDevice::new(0).unwrap(), &ff, &opts(3, 65536)).unwrap_err()
        });
        t.s.fail(kind, 0);
        let msg = err.to_string();
        assert!(matches!(err, Error::Device(_)), "{kind}: {err:?}");
        assert!(msg.contains(&path), "{kind}: {msg}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{kind}: took {:?}",
            started.elapsed()
        );
        if kind == "copy" {
            assert!(
                msg.contains("tensor"),
                "a failed copy names its tensor: {msg}"
            );
        }
        // The next load in the same process works, bit-exact, with what the pool has left.
        let (ff, rr) = (f.clone(), raw.clone());
        within(30, move || {
            let (bufs, _) = load_blocks(&CudaDevice::new(0).unwrap(), &ff, &opts(3, 65536))
                .unwrap_or_else(|e| panic!("after {kind}: {e}"));
            assert_blocks_land(&ff, &bufs, &rr, &format!("after {kind}"));
        });
        assert_pool_at_rest(&format!("after {kind}"));
    }
    let st = pool.stats();
    assert!(
        st.leaked > leaked,
        "the failed synchronize leaked the buffers it could not confirm: {st:?}"
    );
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn leaked_staging_never_starves_later_loads() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, raw) = make_file(dir.path());
    let f = std::sync::Arc::new(f);
    let raw = std::sync::Arc::new(raw);
    let pool = pinned_pool().unwrap();
    release_pinned_pool();
    set_budget(2 * 2 * 65536 + 2 * 65536);
    // Every failed synchronize leaks what it could not confirm; loads keep working on the rest,
    // and once nothing is left a load fails at once with a clear error instead of waiting.
    let mut refused = None;
    for i in 0..6 {
        t.s.fail("sync", 1);
        let ff = f.clone();
        let _ = within(30, move || {
            load_blocks(&CudaDevice::new(0).unwrap(), &ff, &opts(2, 65536)).err()
        });
        t.s.fail("sync", 0);
        let (ff, rr) = (f.clone(), raw.clone());
        let next = within(30, move || {
            load_blocks(&CudaDevice::new(0).unwrap(), &ff, &opts(2, 65536))
                .map(|(bufs, _)| assert_blocks_land(&ff, &bufs, &rr, "after a leak"))
        });
        if let Err(e) = next {
            refused = Some((i, e.to_string()));
            break;
        }
    }
    let (i, msg) = refused.expect("the leaks eventually exhaust a 384 KiB pool");
    assert!(i >= 1, "loads kept working while some staging was left");
    assert!(
        msg.contains("given up after failed device operations")
            || msg.contains("bytes the pinned pool limit of"),
        "{msg}"
    );
    // Raising the limit gives loads room again.
    pool.set_limit(DEFAULT_PINNED_LIMIT);
    let dev = CudaDevice::new(0).unwrap();
    let (bufs, _) = load_blocks(&dev, &f, &LoadOptions::default()).unwrap();
    assert_blocks_land(&f, &bufs, &raw, "after raising the limit");
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn weight_files_stream_and_load_to_cuda_for_both_formats() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let dtypes: Vec<Dtype> = Dtype::ALL
        .iter()
        .copied()
        .filter(|&d| flashpack::weights::to_safetensors_dtype(d).is_some())
        .collect();
    let (fp, _f, _raw) = make_file_of(dir.path(), &dtypes);
    let st = dir.path().join("m.safetensors");
    let wf = WeightFile::open(&fp).unwrap();
    wf.to_safetensors(&st).unwrap();
    let dev = CudaDevice::new(0).unwrap();
    for path in [&fp, &st] {
        let file = WeightFile::open(path).unwrap();
        let disk = std::fs::read(path).unwrap();
        // load_cuda: one allocation this crate owns.
        let w = file
            .load_cuda(
                0,
                &LoadOptions {
                    threads: 2,
                    chunk_bytes: 65536,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(w.tensors().len(), file.tensors().len());
        for ti in file.tensors() {
            let want = &disk[ti.start as usize..ti.end as usize];
            assert_eq!(
                w.to_host(&ti.name).unwrap(),
                want,
                "{}: {}",
                path.display(),
                ti.name
            );
            let (info, addr) = w.get(&ti.name).unwrap();
            assert_eq!(info, ti);
            assert!(
                addr >= w.buffer.ptr()
                    && addr + (ti.end - ti.start) <= w.buffer.ptr() + w.buffer.len() as u64
            );
        }
        // load_to_device: one region per tensor, by file offset, into buffers of our own.
        let bufs: Vec<DeviceBuffer> = file
            .tensors()
            .iter()
            .map(|ti| DeviceBuffer::alloc(&dev, (ti.end - ti.start) as usize).unwrap())
            .collect();
        let regions = file
            .tensors()
            .iter()
            .zip(&bufs)
            .map(|(ti, b)| DeviceRegion {
                offset: ti.start,
                len: ti.end - ti.start,
                dst: b.ptr(),
            })
            .collect();
        // SAFETY: the buffers just allocated.
        unsafe {
            file.load_to_device(
                &dev,
                regions,
                &LoadOptions {
                    threads: 3,
                    chunk_bytes: 8192,
                    ..Default::default()
                },
            )
        }
        .unwrap();
        for (ti, b) in file.tensors().iter().zip(&bufs) {
            assert_eq!(
                to_host(b),
                &disk[ti.start as usize..ti.end as usize],
                "{}",
                ti.name
            );
        }
    }
    // A failed copy into a safetensors file names the file and the tensor.
    t.s.fail("copy", 1);
    let file = WeightFile::open(&st).unwrap();
    let err = file
        .load_cuda(0, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    t.s.fail("copy", 0);
    assert!(
        err.contains("m.safetensors") && err.contains("tensor"),
        "{err}"
    );
    // A device allocation failure is a typed error too.
    t.s.fail("alloc", 1);
    let err = WeightFile::open(&fp)
        .unwrap()
        .load_cuda(0, &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Device(_)) && err.to_string().contains("cuMemAlloc"),
        "{err}"
    );
    // Out-of-range read-backs and devices are errors, not panics.
    let buf = DeviceBuffer::alloc(&dev, 16).unwrap();
    assert!(!buf.is_empty() && buf.len() == 16);
    assert!(buf.copy_to_host(10, &mut [0u8; 8]).is_err());
    assert!(CudaDevice::new(7)
        .err()
        .unwrap()
        .to_string()
        .contains("no such device"));
}

#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn a_device_range_outside_its_allocation_is_refused_not_written() {
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (_path, f, _raw) = make_file(dir.path());
    let dev = CudaDevice::new(0).unwrap();
    // The caller broke load_to_device's contract: a region longer than its buffer. The stand-in,
    // like compute-sanitizer, refuses the copy; the load is an error and nothing is written.
    let small = DeviceBuffer::alloc(&dev, 100).unwrap();
    let b = &f.footer().blocks()[0];
    let regions = vec![DeviceRegion {
        offset: b.offset_bytes(),
        len: b.length_bytes(),
        dst: small.ptr(),
    }];
    // SAFETY: deliberately not upheld; the stand-in checks every device range.
    let err = unsafe { load_to_device(&f, &dev, regions, &LoadOptions::default()) }.unwrap_err();
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    let r = t.s.record();
    let v = r["violations"].as_array().unwrap();
    assert!(
        v.iter()
            .any(|x| x.as_str().unwrap().contains("not inside one allocation")),
        "{r}"
    );
    assert_eq!(to_host(&small), vec![0u8; 100]);
    // SAFETY: plain control call; this test expected the violation.
    unsafe { (t.s.reset)() };
}

/// A job over several safetensors files (`read::job`, what `load_checkpoint(device="cuda")`
/// runs): every tensor lands bit-exact through one set of staging buffers within the pool's
/// limit; an injected copy failure is a prompt error naming the shard and the tensor, a failed
/// synchronize names the job's files, and the next job works.
#[test]
#[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
fn a_job_over_many_files_lands_bit_exact_and_its_failures_name_the_shard() {
    use flashpack::read::job::{read_cuda, JobPlan, JobRegion, Piece};
    let t = turn();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for k in 0..3u64 {
        let fp = dir.path().join(format!("s{k}.flashpack"));
        let data: Vec<Vec<u8>> = (0..4u64)
            .map(|i| bytes(k * 10 + i, 70_001 + 4096 * i as usize))
            .collect();
        let entries: Vec<PackEntry<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| PackEntry::new(format!("s{k}.t{i}"), Dtype::U8, vec![d.len() as u64], d))
            .collect();
        pack(&fp, &entries, &PackOptions::default()).unwrap();
        let st = dir.path().join(format!("model-{k}.safetensors"));
        WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
        files.push(WeightFile::open(&st).unwrap());
    }
    let refs: Vec<&WeightFile> = files.iter().collect();
    let mut pieces = Vec::new();
    let mut want = Vec::new();
    for (k, f) in refs.iter().enumerate() {
        let raw = std::fs::read(f.path()).unwrap();
        for t in f.tensors() {
            pieces.push(Piece {
                file: k,
                start: t.start,
                end: t.end,
            });
            want.push(raw[t.start as usize..t.end as usize].to_vec());
        }
    }
    let plan = JobPlan::new(&refs, &pieces).unwrap();
    let dev = CudaDevice::new(0).unwrap();
    release_pinned_pool();
    set_budget(4 * 2 * 65536);
    let run = |fail: Option<(&str, u64)>| {
        let bufs: Vec<DeviceBuffer> = want
            .iter()
            .map(|w| DeviceBuffer::alloc(&dev, w.len()).unwrap())
            .collect();
        let regions: Vec<JobRegion> = bufs
            .iter()
            .enumerate()
            .map(|(piece, b)| JobRegion {
                piece,
                dst: b.ptr(),
            })
            .collect();
        if let Some((kind, nth)) = fail {
            t.s.fail(kind, nth);
        }
        // SAFETY: every region is one of the buffers just allocated, which nothing else uses.
        let r = unsafe { read_cuda(&refs, &plan, &dev, &regions, &opts(4, 65536)) };
        if let Some((kind, _)) = fail {
            t.s.fail(kind, 0);
        }
        (r, bufs)
    };
    let (r, bufs) = run(None);
    r.unwrap();
    for (i, (b, w)) in bufs.iter().zip(&want).enumerate() {
        assert!(to_host(b) == *w, "piece {i} differs");
    }
    assert_pool_at_rest("after a job");
    let (r, _) = run(Some(("copy", 5)));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("model-") && msg.contains("tensor") && msg.contains("'s"),
        "{msg}"
    );
    let (r, _) = run(Some(("sync", 1)));
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("model-0.safetensors"), "{msg}");
    let (r, bufs) = run(None);
    r.unwrap();
    assert!(to_host(&bufs[7]) == want[7], "after the failures");
    assert_pool_at_rest("after the failed jobs");
}

/// Remote files to the device (`remote` feature): parts fetched with ranged GETs land in the
/// pinned staging buffers and are copied on, so a file larger than the pool's limit loads
/// without ever being whole in host memory; checksums are checked as the parts arrive; a
/// server fault ends bit-exact (retried) or in an error naming the URL with the pool at rest.
#[cfg(feature = "remote")]
mod remote {
    use super::*;
    use flashpack::read::job::{read_cuda, JobPlan, JobRegion, Piece};
    use flashpack::remote::RemoteSettings;

    #[path = "../remote/server.rs"]
    mod server;
    use server::{Fault, Server};

    fn settings() -> RemoteSettings {
        RemoteSettings {
            concurrency: 4,
            part_bytes: 65536,
            retries: 3,
            timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            cancel: None,
        }
    }

    /// A 2 MiB FlashPack file with checksums (64 KiB chunks), and the same as safetensors.
    fn files(dir: &Path) -> (PathBuf, PathBuf) {
        let data: Vec<Vec<u8>> = (0..4u64).map(|i| bytes(i, 512 << 10)).collect();
        let entries: Vec<PackEntry<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| PackEntry::new(format!("t{i}"), Dtype::U8, vec![d.len() as u64], d))
            .collect();
        let fp = dir.join("r.flashpack");
        let opts = PackOptions {
            checksums: true,
            chunk_bytes: 65536,
            ..Default::default()
        };
        pack(&fp, &entries, &opts).unwrap();
        let st = dir.join("r.safetensors");
        WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
        (fp, st)
    }

    #[test]
    #[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
    fn a_remote_file_larger_than_the_pool_lands_bit_exact_verified() {
        let _t = turn();
        let dir = tempfile::tempdir().unwrap();
        let (fp, _) = files(dir.path());
        let disk = std::fs::read(&fp).unwrap();
        // Staging for 2 threads x 2 slots of 64 KiB: a quarter of the file's 2 MiB.
        release_pinned_pool();
        set_budget(4 * 65536);
        for fault in [Fault::None, Fault::DropMidBody(3)] {
            let server = Server::start(disk.clone(), fault);
            let file = WeightFile::open_url(&server.url("r.flashpack"), settings()).unwrap();
            let opts = LoadOptions {
                verify: true,
                ..Default::default()
            };
            let w = file.load_cuda(0, &opts).unwrap();
            for ti in file.tensors() {
                let want = &disk[ti.start as usize..ti.end as usize];
                assert!(
                    w.to_host(&ti.name).unwrap() == want,
                    "{fault:?}: {}",
                    ti.name
                );
            }
            assert!(w.report.io.remote_bytes >= file.data_range().1);
            assert_pool_at_rest("after a remote load");
            let st = pinned_pool().unwrap().stats();
            assert!(
                (st.limit - st.leaked) < disk.len() / 4,
                "the staging limit {st:?} is below the file's size"
            );
        }
    }

    #[test]
    #[ignore = "runs against the CUDA stand-in: make test-cuda-standin"]
    fn a_job_mixing_remote_and_local_files_lands_bit_exact_and_a_replaced_object_fails() {
        let _t = turn();
        let dir = tempfile::tempdir().unwrap();
        let (fp, st) = files(dir.path());
        let st_bytes = std::fs::read(&st).unwrap();
        let fp_bytes = std::fs::read(&fp).unwrap();
        release_pinned_pool();
        set_budget(8 * 65536);
        let dev = CudaDevice::new(0).unwrap();
        for fault in [Fault::None, Fault::ReplaceAfter(5)] {
            let server = Server::start(st_bytes.clone(), fault);
            let url = server.url("r.safetensors");
            let remote = WeightFile::open_url(&url, settings()).unwrap();
            let local = WeightFile::open(&fp).unwrap();
            let files = [&remote, &local];
            let raws = [&st_bytes, &fp_bytes];
            let mut pieces = Vec::new();
            let mut want = Vec::new();
            for (k, f) in files.iter().enumerate() {
                for t in f.tensors() {
                    pieces.push(Piece {
                        file: k,
                        start: t.start,
                        end: t.end,
                    });
                    want.push(raws[k][t.start as usize..t.end as usize].to_vec());
                }
            }
            let plan = JobPlan::new(&files, &pieces).unwrap();
            let bufs: Vec<DeviceBuffer> = want
                .iter()
                .map(|w| DeviceBuffer::alloc(&dev, w.len()).unwrap())
                .collect();
            let regions: Vec<JobRegion> = bufs
                .iter()
                .enumerate()
                .map(|(piece, b)| JobRegion {
                    piece,
                    dst: b.ptr(),
                })
                .collect();
            // SAFETY: every region is one of the buffers just allocated, which nothing else uses.
            let r = unsafe { read_cuda(&files, &plan, &dev, &regions, &opts(2, 65536)) };
            match fault {
                Fault::None => {
                    r.unwrap();
                    for (i, (b, w)) in bufs.iter().zip(&want).enumerate() {
                        assert!(to_host(b) == *w, "piece {i} differs");
                    }
                }
                _ => {
                    let msg = r.unwrap_err().to_string();
                    assert!(
                        msg.starts_with(&url) && msg.contains("changed while it was being read"),
                        "{msg}"
                    );
                }
            }
            assert_pool_at_rest("after a remote job");
        }
    }
}
