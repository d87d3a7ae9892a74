//! The exported C ABI: the CUDA driver entry points the engine uses, and `standin_*` controls.
//!
//! # Safety
//! Every function has the contract of the driver function of the same name: pointer arguments
//! are null or valid for the sizes the driver documents. The stand-in checks what the real driver
//! checks (null pointers, handles, contexts, device ranges) and more, but cannot check that a
//! host pointer it is given is valid, exactly like the real driver.
// The driver's own names, and its documented contracts (above) for every function.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::driver::*;
use crate::handles::handles;
use crate::stream::{Event, Op, Stream};

pub type CUdevice = c_int;
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUdeviceptr = u64;

/// Counts the call, then runs it; the result code is what the caller sees.
fn call(name: &'static str, f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match driver().enter(name).and_then(|()| f()) {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

/// Writes an output argument.
unsafe fn out<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: non-null, and valid for a write per the driver contract (module docs).
    unsafe { p.write(v) };
    Ok(())
}

fn handle(h: *mut c_void) -> Result<usize, CUresult> {
    if h.is_null() {
        Err(INVALID_HANDLE)
    } else {
        Ok(h as usize)
    }
}

/// The stream `h`, which must belong to the current context.
fn stream_in_ctx(name: &str, h: CUstream) -> Result<std::sync::Arc<Stream>, CUresult> {
    let d = driver();
    let ctx = d.need_ctx()?;
    let h = handle(h).inspect_err(|_| d.violation(format!("{name}: null stream")))?;
    let st = handles().stream(h)?;
    if st.ctx != ctx {
        d.violation(format!("{name}: stream of another context"));
        return Err(INVALID_CONTEXT);
    }
    if st.is_broken() && name != "cuStreamDestroy" {
        return Err(LAUNCH_FAILED);
    }
    Ok(st)
}

fn event_in_ctx(name: &str, h: CUevent) -> Result<std::sync::Arc<Event>, CUresult> {
    let d = driver();
    let ctx = d.need_ctx()?;
    let ev = handles().event(handle(h)?)?;
    if ev.ctx != ctx {
        d.violation(format!("{name}: event of another context"));
        return Err(INVALID_CONTEXT);
    }
    Ok(ev)
}

// --- initialisation and devices ---

#[no_mangle]
pub unsafe extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    call("cuInit", || {
        driver().init();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    // SAFETY: output pointer per the driver contract.
    call("cuDriverGetVersion", || unsafe { out(version, 12080) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    let n = driver().device_count() as c_int;
    // SAFETY: output pointer per the driver contract.
    call("cuDeviceGetCount", || unsafe { out(count, n) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    call("cuDeviceGet", || {
        if ordinal < 0 || ordinal as usize >= driver().device_count() {
            return Err(INVALID_DEVICE);
        }
        // SAFETY: output pointer per the driver contract.
        unsafe { out(device, ordinal) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    call("cuDeviceGetName", || {
        if dev < 0 || dev as usize >= driver().device_count() {
            return Err(INVALID_DEVICE);
        }
        let text = format!("CUDA stand-in {dev}\0");
        if name.is_null() || len <= 0 {
            return Err(INVALID_VALUE);
        }
        let n = text.len().min(len as usize);
        // SAFETY: `name` holds `len` bytes per the driver contract; at most that many are written,
        // and the last one written is a NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), name.cast::<u8>(), n);
            *name.add(n - 1) = 0;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    call("cuDevicePrimaryCtxRetain", || {
        if pctx.is_null() || dev < 0 {
            return Err(if dev < 0 {
                INVALID_DEVICE
            } else {
                INVALID_VALUE
            });
        }
        let ctx = driver().primary_ctx(dev as usize)?;
        // SAFETY: output pointer per the driver contract.
        unsafe { out(pctx, ctx as CUcontext) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    call("cuDevicePrimaryCtxRelease", || {
        driver().release_primary(usize::try_from(dev).map_err(|_| INVALID_DEVICE)?)
    })
}

// --- contexts: one stack per thread ---

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    let cur = driver().current().unwrap_or(0);
    // SAFETY: output pointer per the driver contract.
    call("cuCtxGetCurrent", || unsafe { out(pctx, cur as CUcontext) })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    call("cuCtxSetCurrent", || {
        let d = driver();
        if ctx.is_null() {
            d.with_stack(|st| st.pop());
            return Ok(());
        }
        d.check_ctx(ctx as usize)?;
        d.with_stack(|st| match st.last_mut() {
            Some(top) => *top = ctx as usize,
            None => st.push(ctx as usize),
        });
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    call("cuCtxPushCurrent", || {
        let d = driver();
        d.check_ctx(handle(ctx).map_err(|_| INVALID_CONTEXT)?)?;
        d.with_stack(|st| st.push(ctx as usize));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult {
    call("cuCtxPopCurrent", || {
        let popped = driver().with_stack(|st| st.pop()).ok_or(INVALID_CONTEXT)?;
        if !pctx.is_null() {
            // SAFETY: non-null output pointer per the driver contract.
            unsafe { out(pctx, popped as CUcontext)? };
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    call("cuCtxGetDevice", || {
        let d = driver();
        let dev = d.device_of(d.need_ctx()?) as CUdevice;
        // SAFETY: output pointer per the driver contract.
        unsafe { out(device, dev) }
    })
}

// --- pinned host memory ---

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    bytes: usize,
    _flags: c_uint,
) -> CUresult {
    call("cuMemHostAlloc", || {
        let d = driver();
        d.need_ctx()?;
        if pp.is_null() {
            return Err(INVALID_VALUE);
        }
        if d.injected("hostalloc") {
            return Err(OUT_OF_MEMORY);
        }
        let p = d.host_alloc(bytes)?;
        // SAFETY: output pointer per the driver contract.
        unsafe { out(pp, p.cast::<c_void>()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    call("cuMemFreeHost", || {
        let d = driver();
        d.need_ctx()?;
        d.host_free(p as usize)
    })
}

// --- device memory and copies ---

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    call("cuMemAlloc", || {
        let d = driver();
        let ctx = d.need_ctx()?;
        if dptr.is_null() || bytes == 0 {
            return Err(INVALID_VALUE);
        }
        if d.injected("alloc") {
            return Err(OUT_OF_MEMORY);
        }
        let p = d.mem_alloc(ctx, bytes)?;
        // SAFETY: output pointer per the driver contract.
        unsafe { out(dptr, p) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    call("cuMemFree", || {
        let d = driver();
        d.need_ctx()?;
        d.mem_free(dptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    call("cuMemcpyHtoD", || {
        let d = driver();
        d.need_ctx()?;
        if src.is_null() {
            return Err(INVALID_VALUE);
        }
        let (alloc, off) = d.device_range("cuMemcpyHtoD", dst, n)?;
        let mut data = alloc.data.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `src` holds `n` readable bytes per the driver contract; the destination range
        // was checked against its allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(src.cast::<u8>(), data[off..off + n].as_mut_ptr(), n)
        };
        Ok(())
    })
}

/// Synchronous, and (as on the real driver) not ordered after work on non-blocking streams: a
/// caller that reads back before synchronizing its streams sees stale bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    call("cuMemcpyDtoH", || {
        let d = driver();
        d.need_ctx()?;
        if dst.is_null() {
            return Err(INVALID_VALUE);
        }
        let (alloc, off) = d.device_range("cuMemcpyDtoH", src, n)?;
        let data = alloc.data.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `dst` holds `n` writable bytes per the driver contract; the source range was
        // checked against its allocation.
        unsafe { std::ptr::copy_nonoverlapping(data[off..off + n].as_ptr(), dst.cast::<u8>(), n) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    stream: CUstream,
) -> CUresult {
    call("cuMemcpyHtoDAsync", || {
        let d = driver();
        let st = stream_in_ctx("cuMemcpyHtoDAsync", stream)?;
        if src.is_null() {
            return Err(INVALID_VALUE);
        }
        if d.injected("copy") {
            return Err(LAUNCH_FAILED);
        }
        let (alloc, off) = d.device_range("cuMemcpyHtoDAsync", dst, n)?;
        if alloc.ctx != st.ctx {
            d.violation(format!(
                "cuMemcpyHtoDAsync: {dst:#x} belongs to another context"
            ));
            return Err(INVALID_VALUE);
        }
        let Some(pinned) = d.pin_source(src as usize, n) else {
            d.violation(format!(
                "cuMemcpyHtoDAsync: source {:#x}+{n} is not pinned memory from cuMemHostAlloc \
                 (the real driver would silently copy synchronously)",
                src as usize
            ));
            return Err(INVALID_VALUE);
        };
        // SAFETY: `src..src + n` lies inside a live pinned allocation (checked just above).
        let digest = xxh3_64(unsafe { std::slice::from_raw_parts(src.cast::<u8>(), n) });
        st.push(Op::Copy {
            src: src as usize,
            len: n,
            pinned,
            dst: alloc,
            dst_off: off,
            due: Instant::now() + delay(),
            digest,
        });
        Ok(())
    })
}

// --- streams ---

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ps: *mut CUstream, _flags: c_uint) -> CUresult {
    call("cuStreamCreate", || {
        let d = driver();
        let ctx = d.need_ctx()?;
        if ps.is_null() {
            return Err(INVALID_VALUE);
        }
        if d.injected("stream") {
            return Err(OUT_OF_MEMORY);
        }
        let st = Stream::start(ctx).ok_or(OUT_OF_MEMORY)?;
        let h = handles().add_stream(st);
        // SAFETY: output pointer per the driver contract.
        unsafe { out(ps, h as CUstream) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    call("cuStreamDestroy", || {
        stream_in_ctx("cuStreamDestroy", stream)?;
        handles().remove_stream(stream as usize)?.close();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    call("cuStreamSynchronize", || {
        let st = stream_in_ctx("cuStreamSynchronize", stream)?;
        if driver().injected("sync") {
            st.set_broken();
            return Err(LAUNCH_FAILED);
        }
        st.synchronize();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: CUstream) -> CUresult {
    call("cuStreamQuery", || {
        let st = stream_in_ctx("cuStreamQuery", stream)?;
        if st.idle() {
            Ok(())
        } else {
            Err(NOT_READY)
        }
    })
}

// --- events ---

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(pe: *mut CUevent, _flags: c_uint) -> CUresult {
    call("cuEventCreate", || {
        let d = driver();
        let ctx = d.need_ctx()?;
        if pe.is_null() {
            return Err(INVALID_VALUE);
        }
        let h = handles().add_event(Event::new(ctx));
        // SAFETY: output pointer per the driver contract.
        unsafe { out(pe, h as CUevent) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    call("cuEventDestroy", || {
        event_in_ctx("cuEventDestroy", event)?;
        handles().remove_event(event as usize).map(drop)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult {
    call("cuEventRecord", || {
        let ev = event_in_ctx("cuEventRecord", event)?;
        let st = stream_in_ctx("cuEventRecord", stream)?;
        if driver().injected("record") {
            return Err(LAUNCH_FAILED);
        }
        let gen = ev.record();
        st.push(Op::Signal { event: ev, gen });
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    call("cuEventSynchronize", || {
        let ev = event_in_ctx("cuEventSynchronize", event)?;
        if driver().injected("event") {
            return Err(LAUNCH_FAILED);
        }
        ev.wait();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    call("cuEventQuery", || {
        if event_in_ctx("cuEventQuery", event)?.is_complete() {
            Ok(())
        } else {
            Err(NOT_READY)
        }
    })
}

// --- error text ---

fn error_text(
    code: CUresult,
    pick: fn(&(CUresult, &'static str, &'static str)) -> &'static str,
) -> Option<*const c_char> {
    ERRORS
        .iter()
        .find(|e| e.0 == code)
        .map(|e| pick(e).as_ptr().cast::<c_char>())
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, s: *mut *const c_char) -> CUresult {
    call("cuGetErrorName", || {
        let text = error_text(code, |e| e.1);
        // SAFETY: output pointer per the driver contract; the strings are static and NUL-ended.
        unsafe { out(s, text.unwrap_or(std::ptr::null()))? };
        text.map(drop).ok_or(INVALID_VALUE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(code: CUresult, s: *mut *const c_char) -> CUresult {
    call("cuGetErrorString", || {
        let text = error_text(code, |e| e.2);
        // SAFETY: as for cuGetErrorName.
        unsafe { out(s, text.unwrap_or(std::ptr::null()))? };
        text.map(drop).ok_or(INVALID_VALUE)
    })
}

// --- controls for tests (not driver API) ---

/// Makes the `nth` next call of `kind` (see the crate docs) fail; `nth == 0` disarms it.
/// Returns 0, or -1 for an unknown kind.
#[no_mangle]
pub unsafe extern "C" fn standin_fail(kind: *const c_char, nth: u64) -> c_int {
    if kind.is_null() {
        return -1;
    }
    // SAFETY: a NUL-terminated string per this function's contract.
    let kind = unsafe { CStr::from_ptr(kind) }.to_string_lossy();
    if driver().arm(&kind, nth) {
        0
    } else {
        -1
    }
}

/// Sets how long after it is enqueued a copy completes.
#[no_mangle]
pub extern "C" fn standin_set_delay_us(us: u64) {
    set_delay(Duration::from_micros(us));
}

/// Clears call counts, violations and armed failures.
#[no_mangle]
pub extern "C" fn standin_reset() {
    driver().reset();
}

/// Writes the JSON record into `buf` (at most `cap` bytes, NUL-terminated when it fits) and
/// returns its length; call again with a larger buffer when the length is `>= cap`.
#[no_mangle]
pub unsafe extern "C" fn standin_record(buf: *mut c_char, cap: usize) -> usize {
    let json = driver().record(handles().counts());
    if !buf.is_null() && cap > 0 {
        let n = json.len().min(cap - 1);
        // SAFETY: `buf` holds `cap` writable bytes per this function's contract; n + 1 <= cap.
        unsafe {
            std::ptr::copy_nonoverlapping(json.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    json.len()
}
