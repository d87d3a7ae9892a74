//! The stand-in's process-wide state: devices, contexts, allocations, handles, call counts,
//! injected failures and the violations it saw.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// A driver result code (`CUresult`); only values the real driver defines are ever returned.
pub type CUresult = u32;
pub const SUCCESS: CUresult = 0;
pub const INVALID_VALUE: CUresult = 1;
pub const OUT_OF_MEMORY: CUresult = 2;
pub const NOT_INITIALIZED: CUresult = 3;
pub const INVALID_DEVICE: CUresult = 101;
pub const INVALID_CONTEXT: CUresult = 201;
pub const INVALID_HANDLE: CUresult = 400;
pub const NOT_READY: CUresult = 600;
pub const LAUNCH_FAILED: CUresult = 719;

/// `(code, name, description)` of every code the stand-in returns.
pub const ERRORS: &[(CUresult, &str, &str)] = &[
    (SUCCESS, "CUDA_SUCCESS\0", "no error\0"),
    (
        INVALID_VALUE,
        "CUDA_ERROR_INVALID_VALUE\0",
        "invalid argument\0",
    ),
    (
        OUT_OF_MEMORY,
        "CUDA_ERROR_OUT_OF_MEMORY\0",
        "out of memory\0",
    ),
    (
        NOT_INITIALIZED,
        "CUDA_ERROR_NOT_INITIALIZED\0",
        "initialization error\0",
    ),
    (
        INVALID_DEVICE,
        "CUDA_ERROR_INVALID_DEVICE\0",
        "invalid device ordinal\0",
    ),
    (
        INVALID_CONTEXT,
        "CUDA_ERROR_INVALID_CONTEXT\0",
        "invalid device context\0",
    ),
    (
        INVALID_HANDLE,
        "CUDA_ERROR_INVALID_HANDLE\0",
        "invalid resource handle\0",
    ),
    (NOT_READY, "CUDA_ERROR_NOT_READY\0", "device not ready\0"),
    (
        LAUNCH_FAILED,
        "CUDA_ERROR_LAUNCH_FAILED\0",
        "unspecified launch failure\0",
    ),
];

/// Primary context handles are `CTX_BASE + ordinal`: never dereferenced, never null.
const CTX_BASE: usize = 0xC7_0000;
/// Device addresses start here and are spaced so that an overrun lands in no allocation.
const DPTR_BASE: u64 = 0x5d00_0000_0000;
const DPTR_GAP: u64 = 1 << 20;
/// Calls whose N-th occurrence can be made to fail.
pub const FAIL_KINDS: &[&str] = &[
    "copy",
    "sync",
    "event",
    "record",
    "hostalloc",
    "alloc",
    "stream",
];

/// One `cuMemAlloc` allocation: host memory standing for device memory.
pub struct DeviceAlloc {
    pub base: u64,
    pub ctx: usize,
    pub data: Mutex<Vec<u8>>,
}

/// One `cuMemHostAlloc` allocation.
struct HostAlloc {
    len: usize,
    /// Enqueued copies that still read this memory.
    pending: usize,
}

struct State {
    initialized: bool,
    calls: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    /// Kind -> calls left until the one that fails.
    inject: BTreeMap<String, u64>,
    retained: Vec<u64>,
    host: BTreeMap<usize, HostAlloc>,
    device: BTreeMap<u64, Arc<DeviceAlloc>>,
    device_used: Vec<u64>,
    next_dptr: u64,
    thread_ctx: BTreeMap<String, usize>,
}

pub struct Driver {
    devices: usize,
    device_bytes: u64,
    state: Mutex<State>,
    /// Signalled when copies that read pinned memory complete.
    host_done: Condvar,
}

static DELAY_US: AtomicU64 = AtomicU64::new(300);

/// Sets how long after it is enqueued a copy completes (streams read it as they run).
pub fn set_delay(d: Duration) {
    DELAY_US.store(d.as_micros() as u64, Ordering::Relaxed);
}

/// How long after it is enqueued a copy completes.
pub fn delay() -> Duration {
    Duration::from_micros(DELAY_US.load(Ordering::Relaxed))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The process-wide driver state.
pub fn driver() -> &'static Driver {
    static DRIVER: OnceLock<Driver> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let devices = env_u64("CUDA_STANDIN_DEVICES", 2) as usize;
        set_delay(Duration::from_micros(env_u64("CUDA_STANDIN_DELAY_US", 300)));
        let mut inject = BTreeMap::new();
        for item in std::env::var("CUDA_STANDIN_FAIL")
            .unwrap_or_default()
            .split(',')
        {
            if let Some((kind, n)) = item.trim().split_once(':') {
                if let (true, Ok(n)) = (FAIL_KINDS.contains(&kind), n.parse::<u64>()) {
                    inject.insert(kind.to_string(), n);
                }
            }
        }
        Driver {
            devices,
            device_bytes: env_u64("CUDA_STANDIN_DEVICE_BYTES", 4 << 30),
            state: Mutex::new(State {
                initialized: false,
                calls: BTreeMap::new(),
                violations: Vec::new(),
                inject,
                retained: vec![0; devices],
                host: BTreeMap::new(),
                device: BTreeMap::new(),
                device_used: vec![0; devices],
                next_dptr: DPTR_BASE,
                thread_ctx: BTreeMap::new(),
            }),
            host_done: Condvar::new(),
        }
    })
}

thread_local! {
    /// This thread's context stack (top = current).
    static STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn thread_label() -> String {
    let t = std::thread::current();
    format!("{:?} {}", t.id(), t.name().unwrap_or(""))
}

impl Driver {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call; fails with NOT_INITIALIZED before `cuInit`.
    pub fn enter(&self, name: &'static str) -> Result<(), CUresult> {
        let mut s = self.lock();
        *s.calls.entry(name).or_insert(0) += 1;
        if s.initialized || name == "cuInit" || name.starts_with("cuGetError") {
            Ok(())
        } else {
            Err(NOT_INITIALIZED)
        }
    }

    pub fn init(&self) {
        self.lock().initialized = true;
    }

    /// True when this call of `kind` is the one set to fail.
    pub fn injected(&self, kind: &str) -> bool {
        let mut s = self.lock();
        match s.inject.get_mut(kind) {
            Some(n) if *n <= 1 => {
                s.inject.remove(kind);
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    /// Arms `kind` to fail on its `nth` next call (1 = the next); false for an unknown kind.
    pub fn arm(&self, kind: &str, nth: u64) -> bool {
        if !FAIL_KINDS.contains(&kind) {
            return false;
        }
        let mut s = self.lock();
        if nth == 0 {
            s.inject.remove(kind);
        } else {
            s.inject.insert(kind.to_string(), nth);
        }
        true
    }

    /// Clears call counts, violations and armed failures (allocations and handles stay).
    pub fn reset(&self) {
        let mut s = self.lock();
        s.calls.clear();
        s.violations.clear();
        s.inject.clear();
    }

    /// Records a misuse the real driver would report (or, worse, hide).
    pub fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }

    pub fn device_count(&self) -> usize {
        self.devices
    }

    // --- contexts ---

    pub fn primary_ctx(&self, dev: usize) -> Result<usize, CUresult> {
        if dev >= self.devices {
            return Err(INVALID_DEVICE);
        }
        let mut s = self.lock();
        s.retained[dev] += 1;
        Ok(CTX_BASE + dev)
    }

    pub fn release_primary(&self, dev: usize) -> Result<(), CUresult> {
        let mut s = self.lock();
        match s.retained.get_mut(dev) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Ok(())
            }
            Some(_) => Err(INVALID_CONTEXT),
            None => Err(INVALID_DEVICE),
        }
    }

    /// A context handle that is a retained primary context.
    pub fn check_ctx(&self, ctx: usize) -> Result<usize, CUresult> {
        let dev = ctx.wrapping_sub(CTX_BASE);
        let s = self.lock();
        match s.retained.get(dev) {
            Some(&n) if n > 0 => Ok(dev),
            _ => Err(INVALID_CONTEXT),
        }
    }

    pub fn current(&self) -> Option<usize> {
        STACK.with(|st| st.borrow().last().copied())
    }

    /// The current context, which calls that work in a context need.
    pub fn need_ctx(&self) -> Result<usize, CUresult> {
        let ctx = self.current().ok_or(INVALID_CONTEXT)?;
        self.check_ctx(ctx)?;
        Ok(ctx)
    }

    /// Changes this thread's stack with `f` and records its new current context.
    pub fn with_stack<T>(&self, f: impl FnOnce(&mut Vec<usize>) -> T) -> T {
        let (out, top) = STACK.with(|st| {
            let mut st = st.borrow_mut();
            let out = f(&mut st);
            (out, st.last().copied().unwrap_or(0))
        });
        self.lock().thread_ctx.insert(thread_label(), top);
        out
    }

    pub fn device_of(&self, ctx: usize) -> usize {
        ctx - CTX_BASE
    }

    // --- pinned host memory ---

    pub fn host_alloc(&self, len: usize) -> Result<*mut u8, CUresult> {
        let layout =
            std::alloc::Layout::from_size_align(len.max(1), 4096).map_err(|_| INVALID_VALUE)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(OUT_OF_MEMORY);
        }
        self.lock()
            .host
            .insert(p as usize, HostAlloc { len, pending: 0 });
        Ok(p)
    }

    /// Frees a pinned allocation; freeing memory that enqueued copies still read is a violation,
    /// and then waits for them (so the harness itself never reads freed memory).
    pub fn host_free(&self, p: usize) -> Result<(), CUresult> {
        let mut s = self.lock();
        let Some(pending) = s.host.get(&p).map(|h| h.pending) else {
            return Err(INVALID_VALUE);
        };
        if pending > 0 {
            s.violations.push(format!(
                "cuMemFreeHost({p:#x}) while {pending} enqueued copies still read it"
            ));
            while s.host.get(&p).is_some_and(|h| h.pending > 0) {
                s = self.host_done.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
        let Some(h) = s.host.remove(&p) else {
            return Err(INVALID_VALUE);
        };
        drop(s);
        // SAFETY: allocated in host_alloc with this layout, removed from the table just above so
        // it is freed once, and no enqueued copy reads it any more.
        unsafe {
            std::alloc::dealloc(
                p as *mut u8,
                std::alloc::Layout::from_size_align_unchecked(h.len.max(1), 4096),
            )
        };
        Ok(())
    }

    /// The pinned allocation holding `[p, p + len)`, marked as read by one more pending copy.
    pub fn pin_source(&self, p: usize, len: usize) -> Option<usize> {
        let mut s = self.lock();
        let (&start, h) = s.host.range_mut(..=p).next_back()?;
        if p.checked_add(len)? > start + h.len {
            return None;
        }
        h.pending += 1;
        Some(start)
    }

    pub fn unpin_source(&self, start: usize) {
        let mut s = self.lock();
        if let Some(h) = s.host.get_mut(&start) {
            h.pending -= 1;
        }
        self.host_done.notify_all();
    }

    // --- device memory ---

    pub fn mem_alloc(&self, ctx: usize, len: usize) -> Result<u64, CUresult> {
        let dev = self.device_of(ctx);
        let mut s = self.lock();
        if s.device_used[dev] + len as u64 > self.device_bytes {
            return Err(OUT_OF_MEMORY);
        }
        let base = s.next_dptr;
        s.next_dptr += (len as u64).div_ceil(DPTR_GAP) * DPTR_GAP + DPTR_GAP;
        s.device_used[dev] += len as u64;
        let alloc = DeviceAlloc {
            base,
            ctx,
            data: Mutex::new(vec![0u8; len]),
        };
        s.device.insert(base, Arc::new(alloc));
        Ok(base)
    }

    pub fn mem_free(&self, dptr: u64) -> Result<(), CUresult> {
        let mut s = self.lock();
        let a = s.device.remove(&dptr).ok_or(INVALID_VALUE)?;
        let len = a.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        let dev = self.device_of(a.ctx);
        s.device_used[dev] -= len;
        Ok(())
    }

    /// The allocation holding `[dptr, dptr + len)` and the offset of `dptr` in it; a range that
    /// leaves its allocation is a violation.
    pub fn device_range(
        &self,
        what: &str,
        dptr: u64,
        len: usize,
    ) -> Result<(Arc<DeviceAlloc>, usize), CUresult> {
        let found = {
            let s = self.lock();
            s.device.range(..=dptr).next_back().map(|(_, a)| a.clone())
        };
        let inside = found.and_then(|a| {
            let size = a.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
            let off = dptr - a.base;
            let end = off.checked_add(len as u64)?;
            (end <= size).then_some((a, off as usize))
        });
        inside.ok_or_else(|| {
            self.violation(format!(
                "{what}: device range {dptr:#x}+{len} is not inside one allocation"
            ));
            INVALID_VALUE
        })
    }

    /// The JSON record tests read.
    pub fn record(&self, handles: (usize, usize)) -> String {
        let s = self.lock();
        let device_bytes: u64 = s.device_used.iter().sum();
        serde_json::json!({
            "calls": s.calls,
            "violations": s.violations,
            "pinned_allocs": s.host.len(),
            "pinned_bytes": s.host.values().map(|h| h.len).sum::<usize>(),
            "device_allocs": s.device.len(),
            "device_bytes": device_bytes,
            "streams": handles.0,
            "events": handles.1,
            "retained": s.retained,
            "armed": s.inject,
            "thread_contexts": s.thread_ctx,
            "delay_us": delay().as_micros() as u64,
        })
        .to_string()
    }
}
