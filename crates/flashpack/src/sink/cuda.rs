//! The CUDA backend of the device sink: driver API calls through cudarc's `result`/`sys` layers,
//! with the driver library loaded at run time (`libcuda.so.1` on Linux, `nvcuda.dll` on Windows).
//! macOS has no CUDA: there every entry point reports that the driver is not found.
//!
//! Copies go into memory someone else allocated (torch, or a [`DeviceBuffer`]) by raw device
//! address. This module works in each device's *primary* context, the one the CUDA runtime (and
//! so torch) uses, retained once per device for the life of the process so that pinned staging
//! memory allocated in it stays valid. A context is only ever pushed for the duration of one
//! call and popped before it returns, so the calling thread's current context (torch's current
//! device) is unchanged after every call, failed ones included.
//!
//! cudarc panics when `libcuda` cannot be loaded, so every entry point first checks the driver
//! and returns [`Error::Device`] instead.
//!
//! ```
//! use flashpack::sink::cuda::{driver_available, CudaDevice, DeviceBuffer};
//! if driver_available() {
//!     let dev = CudaDevice::new(0).unwrap();
//!     let buf = DeviceBuffer::alloc(&dev, 4096).unwrap();
//!     let mut back = vec![1u8; 16];
//!     buf.copy_to_host(0, &mut back).unwrap();
//! } else {
//!     assert!(CudaDevice::new(0).unwrap_err().to_string().contains("CUDA driver not found"));
//! }
//! ```
use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys;

use super::device::Device;
use super::pool::{HostAllocator, PinnedPool};
use crate::{Error, Result};

fn driver_error(what: &str, op: &str, e: DriverError) -> Error {
    let name = e.error_name().map(|c| c.to_string_lossy().into_owned());
    let text = e.error_string().map(|c| c.to_string_lossy().into_owned());
    Error::Device(format!(
        "{what}: {op} failed: {} ({})",
        name.unwrap_or_else(|_| format!("{:?}", e.0)),
        text.unwrap_or_default()
    ))
}

/// Loads the driver library and initialises it once; the outcome is remembered.
fn driver() -> Result<()> {
    static STATE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            if cfg!(target_os = "macos") {
                return Err(
                    "CUDA driver not found: macOS has no CUDA (load to the CPU instead, \
                     or from Python with device=\"mps\")"
                        .into(),
                );
            }
            // SAFETY: only tries to dlopen the driver library by its usual names.
            if !unsafe { sys::is_culib_present() } {
                let lib = if cfg!(windows) {
                    "nvcuda.dll"
                } else {
                    "libcuda"
                };
                return Err(format!("CUDA driver not found ({lib} could not be loaded)"));
            }
            // cudarc resolves each symbol on first use and panics if one is missing; a driver too
            // old to have cuInit's expected entry points is reported instead of aborting.
            match std::panic::catch_unwind(cu::init) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(driver_error("CUDA", "cuInit", e).to_string()),
                Err(_) => Err("CUDA driver not usable: missing driver entry points".into()),
            }
        })
        .clone()
        .map_err(Error::Device)
}

/// True when the CUDA driver loads and initialises.
pub fn driver_available() -> bool {
    driver().is_ok()
}

/// Number of CUDA devices visible to this process.
pub fn device_count() -> Result<usize> {
    driver()?;
    let n = cu::device::get_count().map_err(|e| driver_error("CUDA", "cuDeviceGetCount", e))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// A retained primary context. Contexts are plain handles that any thread may make current.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ctx(sys::CUcontext);
// SAFETY: a CUcontext is an opaque driver handle, valid from any thread of the process.
unsafe impl Send for Ctx {}
// SAFETY: as above; the driver serialises what needs serialising.
unsafe impl Sync for Ctx {}

fn primary_context(ordinal: usize) -> Result<Ctx> {
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, Ctx>>> = OnceLock::new();
    let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(&ordinal) {
        return Ok(*c);
    }
    let what = format!("cuda:{ordinal}");
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::Device(format!(
            "{what}: no such device ({count} CUDA devices visible)"
        )));
    }
    let ord = i32::try_from(ordinal).map_err(|_| Error::Device(format!("{what}: bad ordinal")))?;
    let dev = cu::device::get(ord).map_err(|e| driver_error(&what, "cuDeviceGet", e))?;
    // SAFETY: `dev` is a valid device handle; the retained context is never released, so it (and
    // pinned memory allocated in it) lives as long as the process.
    let ctx = unsafe { cu::primary_ctx::retain(dev) }
        .map_err(|e| driver_error(&what, "cuDevicePrimaryCtxRetain", e))?;
    map.insert(ordinal, Ctx(ctx));
    Ok(Ctx(ctx))
}

/// A context pushed onto the calling thread's context stack, popped when dropped: whatever was
/// current before (or nothing) is current again. Not `Send`: it must be popped where pushed.
pub(crate) struct CtxGuard(PhantomData<*const ()>);

impl CtxGuard {
    fn push(ctx: Ctx, what: &str) -> Result<CtxGuard> {
        // SAFETY: `ctx` is a retained primary context that is never destroyed.
        unsafe { sys::cuCtxPushCurrent_v2(ctx.0) }
            .result()
            .map_err(|e| driver_error(what, "cuCtxPushCurrent", e))?;
        Ok(CtxGuard(PhantomData))
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pops the context this guard pushed on this thread (guards are not Send, and
        // every push in this module is paired with its guard's drop, innermost first).
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// Page-locked host memory from `cuMemHostAlloc` (portable: usable with every context),
/// allocated in the calling thread's current context (a device sink binds its device first),
/// and freed with that same context current.
#[derive(Default)]
struct CudaHostAlloc {
    owners: Mutex<HashMap<usize, Ctx>>,
}

impl HostAllocator for CudaHostAlloc {
    fn alloc(&self, len: usize) -> Result<NonNull<u8>> {
        driver()?;
        let ctx = match cu::ctx::get_current() {
            Ok(Some(c)) => Ctx(c),
            _ => primary_context(0)?,
        };
        let _bound = CtxGuard::push(ctx, "pinned pool")?;
        // SAFETY: a plain allocation call with a current context; the memory is only used
        // through raw pointers by the staging code.
        let p = unsafe { cu::malloc_host(len.max(1), sys::CU_MEMHOSTALLOC_PORTABLE) }
            .map_err(|e| driver_error("pinned pool", "cuMemHostAlloc", e))?;
        let p = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::Device("pinned pool: cuMemHostAlloc returned null".into()))?;
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p.as_ptr() as usize, ctx);
        Ok(p)
    }

    unsafe fn free(&self, ptr: NonNull<u8>, _len: usize) {
        let owner = self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ptr.as_ptr() as usize));
        let _bound = owner.map(|ctx| CtxGuard::push(ctx, "pinned pool"));
        // SAFETY: per the trait contract `ptr` came from cuMemHostAlloc and is freed once, with
        // the context it was allocated in current.
        let _ = unsafe { cu::free_host(ptr.as_ptr().cast::<c_void>()) };
    }
}

/// The process-wide pool of pinned staging buffers for CUDA loads. Its limit is
/// `FLASHPACK_PINNED_POOL_BYTES` when the pool is first used (read once; an invalid value is an
/// error here), else 1 GiB; change it with [`PinnedPool::set_limit`].
pub fn pinned_pool() -> Result<&'static PinnedPool> {
    // The setting's error is kept as its parts (an `Error` is not `Clone`) and given to every
    // caller, as the pool is made once per process.
    type Setting = (String, Option<String>, String);
    static POOL: OnceLock<std::result::Result<PinnedPool, Setting>> = OnceLock::new();
    POOL.get_or_init(|| match crate::settings::pinned_pool_bytes() {
        Ok(limit) => Ok(PinnedPool::new(Box::new(CudaHostAlloc::default()), limit)),
        Err(Error::BadSetting { name, value, why }) => Err((name, value, why)),
        Err(e) => Err(("FLASHPACK_PINNED_POOL_BYTES".into(), None, e.to_string())),
    })
    .as_ref()
    .map_err(|(name, value, why)| Error::BadSetting {
        name: name.clone(),
        value: value.clone(),
        why: why.clone(),
    })
}

/// Frees the idle pinned staging buffers; returns the bytes freed.
pub fn release_pinned_pool() -> usize {
    match (driver(), pinned_pool()) {
        (Ok(()), Ok(pool)) => pool.release(),
        _ => 0,
    }
}

/// An owned CUDA stream (non-blocking with respect to the legacy default stream). Created and
/// destroyed with its device bound.
pub(crate) struct CudaStream(sys::CUstream);
// SAFETY: streams are driver handles usable from any thread with the context current.
unsafe impl Send for CudaStream {}
impl Drop for CudaStream {
    fn drop(&mut self) {
        // SAFETY: the stream was created by us and is destroyed once; work still pending (none
        // after the sink's synchronize) would still complete.
        let _ = unsafe { cu::stream::destroy(self.0) };
    }
}

/// An owned CUDA event (timing disabled: used only to know when a staging buffer is free).
pub(crate) struct CudaEvent(sys::CUevent);
// SAFETY: events are driver handles usable from any thread with the context current.
unsafe impl Send for CudaEvent {}
impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: created by us, destroyed once.
        let _ = unsafe { cu::event::destroy(self.0) };
    }
}

/// One CUDA device, in its primary context.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Ctx,
    name: String,
    pool: &'static PinnedPool,
}

impl CudaDevice {
    /// Opens device `ordinal` (as numbered under `CUDA_VISIBLE_DEVICES`, like torch's `cuda:N`).
    /// The calling thread's current context is left as it was.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        driver()?;
        let pool = pinned_pool()?;
        let ctx = primary_context(ordinal)?;
        Ok(CudaDevice {
            ordinal,
            ctx,
            name: format!("cuda:{ordinal}"),
            pool,
        })
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// `cuda:N`, as in messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

impl Device for CudaDevice {
    type Stream = CudaStream;
    type Event = CudaEvent;
    type Binding = CtxGuard;

    fn bind(&self) -> Result<CtxGuard> {
        CtxGuard::push(self.ctx, &self.name)
    }

    fn create_stream(&self) -> Result<CudaStream> {
        cu::stream::create(cu::stream::StreamKind::NonBlocking)
            .map(CudaStream)
            .map_err(|e| driver_error(&self.name, "cuStreamCreate", e))
    }

    fn create_event(&self) -> Result<CudaEvent> {
        cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map(CudaEvent)
            .map_err(|e| driver_error(&self.name, "cuEventCreate", e))
    }

    unsafe fn copy_async(
        &self,
        dst: u64,
        src: *const u8,
        len: usize,
        stream: &CudaStream,
    ) -> Result<()> {
        // SAFETY: the caller guarantees `src` stays valid until the copy completes and `dst` is
        // writable device memory of at least `len` bytes.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), len, stream.0) }
            .result()
            .map_err(|e| driver_error(&self.name, "cuMemcpyHtoDAsync", e))
    }

    fn record(&self, event: &CudaEvent, stream: &CudaStream) -> Result<()> {
        // SAFETY: both handles are live and belong to this device's context.
        unsafe { cu::event::record(event.0, stream.0) }
            .map_err(|e| driver_error(&self.name, "cuEventRecord", e))
    }

    fn wait_event(&self, event: &CudaEvent) -> Result<()> {
        // SAFETY: a live event handle.
        unsafe { cu::event::synchronize(event.0) }
            .map_err(|e| driver_error(&self.name, "cuEventSynchronize", e))
    }

    fn synchronize(&self, stream: &CudaStream) -> Result<()> {
        // SAFETY: a live stream handle.
        unsafe { cu::stream::synchronize(stream.0) }
            .map_err(|e| driver_error(&self.name, "cuStreamSynchronize", e))
    }

    fn pool(&self) -> &PinnedPool {
        self.pool
    }
}

/// Device memory owned by this crate (for Rust callers without a framework allocator): freed on
/// drop, in the context it was allocated in.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Ctx,
    name: String,
}

impl DeviceBuffer {
    /// Allocates `len` bytes on `device`.
    pub fn alloc(device: &CudaDevice, len: usize) -> Result<DeviceBuffer> {
        let _bound = device.bind()?;
        // SAFETY: a plain allocation with the device's context current; freed once in Drop.
        let ptr = unsafe { cu::malloc_sync(len.max(1)) }
            .map_err(|e| driver_error(&device.name, &format!("cuMemAlloc of {len} bytes"), e))?;
        Ok(DeviceBuffer {
            ptr,
            len,
            ctx: device.ctx,
            name: device.name.clone(),
        })
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-byte buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes `[offset, offset + out.len())` back to host memory (synchronously).
    pub fn copy_to_host(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(Error::OutOfRange {
                path: self.name.clone().into(),
                offset: offset as u64,
                len: out.len() as u64,
                size: self.len as u64,
                within: "buffer",
            });
        }
        if out.is_empty() {
            return Ok(());
        }
        let _bound = CtxGuard::push(self.ctx, &self.name)?;
        // SAFETY: the range was checked against the allocation, which lives as long as self.
        unsafe { cu::memcpy_dtoh_sync(out, self.ptr + offset as u64) }
            .map_err(|e| driver_error(&self.name, "cuMemcpyDtoH", e))
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer({}, {:#x}, {} bytes)",
            self.name, self.ptr, self.len
        )
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Ok(_bound) = CtxGuard::push(self.ctx, &self.name) {
            // SAFETY: allocated by cuMemAlloc in this context, freed once.
            let _ = unsafe { cu::free_sync(self.ptr) };
        }
    }
}
