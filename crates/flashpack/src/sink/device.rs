//! Device sinks: payload bytes land in page-locked (pinned) host staging buffers and are copied
//! to device memory asynchronously, double-buffered per reader thread.
//!
//! Each reader thread owns a stream and two staging buffers. While the copy of chunk *k* runs on
//! the thread's stream, the thread reads chunk *k+1* into the other buffer; before it reuses a
//! buffer it waits for the event recorded after that buffer's last copy. Host memory therefore
//! never holds more than `threads x 2` chunks, however large the model.
//!
//! Staging buffers come from a [`PinnedPool`]: bounded, reused across loads, and freeable.
//! The device itself is abstract ([`Device`]), so the staging logic is tested on any machine
//! (see `tests/device_sink.rs`) and the CUDA backend stays a thin layer of driver calls.
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{Fill, Sink};
use crate::{Error, Result};

/// Payload bytes `[offset, offset + len)` go to device address `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRegion {
    pub offset: u64,
    pub len: u64,
    pub dst: u64,
}

impl DeviceRegion {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Allocates and frees page-locked host memory (for example `cuMemHostAlloc`).
pub trait HostAllocator: Send + Sync {
    /// Allocates `len` bytes, aligned to at least 4 KiB (staging buffers take `O_DIRECT` reads).
    fn alloc(&self, len: usize) -> Result<NonNull<u8>>;
    /// Frees memory from [`HostAllocator::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc(len)` on this allocator, is freed once, and no copy still reads it.
    unsafe fn free(&self, ptr: NonNull<u8>, len: usize);
}

/// A device that copies host memory into its own memory asynchronously, in order per stream.
pub trait Device: Sync {
    type Stream: Send;
    type Event: Send;
    type Alloc: HostAllocator;

    /// Name for messages, e.g. `cuda:0`.
    fn name(&self) -> String;
    /// Prepares the calling thread (e.g. makes the device's context current). Called by every
    /// thread before it creates streams or events or issues copies.
    fn bind_thread(&self) -> Result<()>;
    fn create_stream(&self) -> Result<Self::Stream>;
    fn create_event(&self) -> Result<Self::Event>;
    /// Enqueues a copy of `len` bytes from host `src` to device address `dst` on `stream`.
    ///
    /// # Safety
    /// `src..src + len` must stay valid and unchanged until an event recorded on `stream` after
    /// this call has completed, and `dst..dst + len` must be device memory the caller may write.
    unsafe fn copy_async(
        &self,
        dst: u64,
        src: *const u8,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<()>;
    /// Records `event` after the work enqueued so far on `stream`.
    fn record(&self, event: &Self::Event, stream: &Self::Stream) -> Result<()>;
    /// Blocks the calling thread until `event` has completed.
    fn wait_event(&self, event: &Self::Event) -> Result<()>;
    /// Blocks the calling thread until all work on `stream` has completed.
    fn synchronize(&self, stream: &Self::Stream) -> Result<()>;
    /// The pool staging buffers come from.
    fn pool(&self) -> &PinnedPool<Self::Alloc>;
}

/// One page-locked staging buffer.
#[derive(Debug)]
pub struct PinnedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: a PinnedBuf is the unique owner of its allocation (like a Box<[u8]>); page-locked
// memory may be used and freed from any thread.
unsafe impl Send for PinnedBuf {}

impl PinnedBuf {
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

/// Byte counts of a [`PinnedPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pinned bytes allocated now (in use plus idle).
    pub allocated: usize,
    /// Idle bytes, kept for the next load.
    pub idle: usize,
    /// Most bytes ever allocated at once.
    pub peak: usize,
    /// Upper bound on `allocated`.
    pub limit: usize,
}

struct PoolState {
    idle: Vec<PinnedBuf>,
    allocated: usize,
    peak: usize,
    limit: usize,
}

/// A bounded pool of pinned staging buffers, reused across loads.
///
/// `take` hands out buffers (allocating while under the limit, else waiting for other loads to
/// give theirs back); `give_back` keeps them for the next load; `release` frees the idle ones.
pub struct PinnedPool<A: HostAllocator> {
    alloc: A,
    state: Mutex<PoolState>,
    returned: Condvar,
}

/// Default bound on pinned staging memory: 1 GiB.
pub const DEFAULT_PINNED_LIMIT: usize = 1 << 30;

impl<A: HostAllocator> PinnedPool<A> {
    pub fn new(alloc: A, limit: usize) -> Self {
        PinnedPool {
            alloc,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                allocated: 0,
                peak: 0,
                limit,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave the counts inconsistent (every update is
        // a single assignment after the fallible call), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The allocator the pool draws from.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            allocated: s.allocated,
            idle: s.idle.iter().map(|b| b.cap).sum(),
            peak: s.peak,
            limit: s.limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Sets the bound; idle buffers beyond it are freed now, buffers in use when they return.
    pub fn set_limit(&self, limit: usize) {
        let mut s = self.lock();
        s.limit = limit;
        while s.allocated > s.limit {
            let Some(b) = s.idle.pop() else { break };
            s.allocated -= b.cap;
            // SAFETY: idle buffers are owned by the pool and no copy reads them.
            unsafe { self.alloc.free(b.ptr, b.cap) };
        }
    }

    /// Takes `n` buffers of at least `cap` bytes each. Fails when `n * cap` exceeds the limit;
    /// waits while other loads hold the memory it needs.
    pub fn take(&self, n: usize, cap: usize) -> Result<Vec<PinnedBuf>> {
        let need = n.checked_mul(cap).ok_or_else(|| {
            Error::Invalid(format!("{n} staging buffers of {cap} bytes overflow"))
        })?;
        let mut s = self.lock();
        if need > s.limit {
            return Err(Error::Invalid(format!(
                "{n} staging buffers of {cap} bytes need {need} bytes of pinned memory, over the \
                 pool's limit of {} bytes",
                s.limit
            )));
        }
        let mut out = Vec::with_capacity(n);
        loop {
            // Reuse idle buffers that are big enough.
            while out.len() < n {
                match s.idle.iter().position(|b| b.cap >= cap) {
                    Some(i) => out.push(s.idle.swap_remove(i)),
                    None => break,
                }
            }
            // Allocate the rest while under the limit, freeing idle buffers too small to use.
            while out.len() < n {
                if s.allocated + cap > s.limit {
                    match s.idle.pop() {
                        Some(b) => {
                            s.allocated -= b.cap;
                            // SAFETY: idle buffers are owned by the pool and no copy reads them.
                            unsafe { self.alloc.free(b.ptr, b.cap) };
                            continue;
                        }
                        None => break,
                    }
                }
                match self.alloc.alloc(cap) {
                    Ok(ptr) => {
                        s.allocated += cap;
                        s.peak = s.peak.max(s.allocated);
                        out.push(PinnedBuf { ptr, cap });
                    }
                    Err(e) => {
                        s.idle.extend(out);
                        self.returned.notify_all();
                        return Err(e);
                    }
                }
            }
            if out.len() == n {
                return Ok(out);
            }
            // Other loads hold the rest. Holding part while waiting could deadlock two loads, so
            // put it back and wait for buffers to come back.
            s.idle.append(&mut out);
            s = self.returned.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns buffers for reuse (freeing any that no longer fit under the limit).
    ///
    /// The caller guarantees no copy still reads them.
    pub fn give_back(&self, bufs: Vec<PinnedBuf>) {
        let mut s = self.lock();
        for b in bufs {
            if s.allocated > s.limit {
                s.allocated -= b.cap;
                // SAFETY: the caller hands back buffers no copy reads any more.
                unsafe { self.alloc.free(b.ptr, b.cap) };
            } else {
                s.idle.push(b);
            }
        }
        self.returned.notify_all();
    }

    /// Frees every idle buffer; returns the bytes freed. Buffers in use are unaffected.
    pub fn release(&self) -> usize {
        let mut s = self.lock();
        let mut freed = 0;
        for b in std::mem::take(&mut s.idle) {
            s.allocated -= b.cap;
            freed += b.cap;
            // SAFETY: idle buffers are owned by the pool and no copy reads them.
            unsafe { self.alloc.free(b.ptr, b.cap) };
        }
        freed
    }
}

impl<A: HostAllocator> Drop for PinnedPool<A> {
    fn drop(&mut self) {
        self.release();
    }
}

struct Slot<E> {
    buf: PinnedBuf,
    event: Option<E>,
    /// A copy from `buf` may still be running (an event was recorded after it).
    pending: bool,
}

struct Worker<S, E> {
    stream: Option<S>,
    slots: Vec<Slot<E>>,
    next: usize,
}

/// Staging buffers per reader thread: one being filled while the other's copy runs.
pub const SLOTS_PER_WORKER: usize = 2;

/// A [`Sink`] that stages chunks in pinned memory and copies them to device regions.
///
/// Call [`DeviceSink::finish`] after the reads: it waits for every copy. Dropping the sink
/// without `finish` (on an error path) also waits, so staging buffers are never reused or freed
/// while a copy reads them.
pub struct DeviceSink<'a, D: Device> {
    device: &'a D,
    regions: Vec<DeviceRegion>,
    workers: Vec<Mutex<Worker<D::Stream, D::Event>>>,
    chunk_cap: usize,
}

impl<'a, D: Device> DeviceSink<'a, D> {
    /// A sink for `workers` reader threads with chunks of at most `chunk_cap` bytes. `regions`
    /// must be sorted by offset and must not overlap (see [`check_regions`]).
    pub fn new(
        device: &'a D,
        regions: Vec<DeviceRegion>,
        workers: usize,
        chunk_cap: usize,
    ) -> Result<Self> {
        device.bind_thread()?;
        let workers = workers.max(1);
        let mut bufs = device
            .pool()
            .take(workers * SLOTS_PER_WORKER, chunk_cap)?
            .into_iter();
        let workers = (0..workers)
            .map(|_| {
                Mutex::new(Worker {
                    stream: None,
                    slots: bufs
                        .by_ref()
                        .take(SLOTS_PER_WORKER)
                        .map(|buf| Slot {
                            buf,
                            event: None,
                            pending: false,
                        })
                        .collect(),
                    next: 0,
                })
            })
            .collect();
        Ok(DeviceSink {
            device,
            regions,
            workers,
            chunk_cap,
        })
    }

    /// Waits for every copy; returns the first error a stream reports.
    pub fn finish(mut self) -> Result<()> {
        self.drain()
    }

    fn drain(&mut self) -> Result<()> {
        let mut first = Ok(());
        for w in &self.workers {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(stream) = &w.stream {
                let r = self.device.synchronize(stream);
                if r.is_ok() {
                    w.slots.iter_mut().for_each(|s| s.pending = false);
                }
                if first.is_ok() {
                    first = r;
                }
            }
        }
        first
    }
}

impl<D: Device> Drop for DeviceSink<'_, D> {
    fn drop(&mut self) {
        let _ = self.device.bind_thread();
        let _ = self.drain();
        let mut bufs = Vec::new();
        for w in self.workers.drain(..) {
            let w = w.into_inner().unwrap_or_else(|p| p.into_inner());
            for s in w.slots {
                // A buffer whose copy the device never confirmed finished is not handed back
                // (another load could overwrite memory a copy still reads): it is leaked, and
                // stays counted against the pool's limit. PinnedBuf has no Drop, so dropping it
                // here frees nothing.
                if !s.pending {
                    bufs.push(s.buf);
                }
            }
            // Events and streams are dropped here, after the synchronize above.
        }
        self.device.pool().give_back(bufs);
    }
}

impl<D: Device> Sink for DeviceSink<'_, D> {
    fn write_chunk(&self, worker: usize, offset: u64, len: usize, fill: Fill<'_>) -> Result<()> {
        let dev = self.device;
        let Some(w) = self.workers.get(worker) else {
            return Err(Error::Invalid(format!(
                "reader thread {worker} has no staging buffers ({} workers)",
                self.workers.len()
            )));
        };
        if len > self.chunk_cap {
            return Err(Error::Invalid(format!(
                "chunk of {len} bytes exceeds the {}-byte staging buffers",
                self.chunk_cap
            )));
        }
        let mut guard = w.lock().unwrap_or_else(|p| p.into_inner());
        let Worker {
            stream,
            slots,
            next,
        } = &mut *guard;
        let stream = match stream {
            Some(s) => s,
            None => {
                dev.bind_thread()?;
                for slot in slots.iter_mut() {
                    slot.event = Some(dev.create_event()?);
                }
                stream.insert(dev.create_stream()?)
            }
        };
        let k = *next;
        *next = (k + 1) % slots.len();
        let slot = &mut slots[k];
        let Some(event) = &slot.event else {
            return Err(Error::Invalid("staging slot without an event".into()));
        };
        if slot.pending {
            dev.wait_event(event)?;
            slot.pending = false;
        }
        // SAFETY: the buffer holds `cap >= len` bytes, is owned by this slot, and no copy reads it
        // any more (its last copy's event completed above).
        let host = unsafe { std::slice::from_raw_parts_mut(slot.buf.ptr.as_ptr(), len) };
        fill(host).map_err(|e| {
            Error::Invalid(format!("reading chunk at {offset} for {}: {e}", dev.name()))
        })?;
        let end = offset + len as u64;
        let first = self.regions.partition_point(|r| r.end() <= offset);
        let mut copied = false;
        for r in self.regions[first..].iter().take_while(|r| r.offset < end) {
            let s = r.offset.max(offset);
            let e = r.end().min(end);
            // SAFETY: `host[s - offset..e - offset]` lies inside the staging buffer, which stays
            // untouched until the event recorded below completes (checked before its next reuse,
            // and in finish/drop); the destination lies inside a region the caller handed over
            // as writable device memory.
            unsafe {
                dev.copy_async(
                    r.dst + (s - r.offset),
                    host.as_ptr().add((s - offset) as usize),
                    (e - s) as usize,
                    stream,
                )?;
            }
            copied = true;
        }
        if copied {
            dev.record(event, stream)?;
            slot.pending = true;
        }
        Ok(())
    }
}

/// Checks that regions are sorted, do not overlap and lie inside a payload of `payload_len`
/// bytes; empty regions are dropped.
pub fn check_regions(
    mut regions: Vec<DeviceRegion>,
    payload_len: u64,
) -> Result<Vec<DeviceRegion>> {
    regions.retain(|r| r.len > 0);
    regions.sort_by_key(|r| r.offset);
    let mut prev_end = 0u64;
    for r in &regions {
        let end = r.offset.checked_add(r.len).filter(|&e| e <= payload_len);
        let Some(end) = end else {
            return Err(Error::Invalid(format!(
                "destination region {}+{} lies outside the {payload_len}-byte payload",
                r.offset, r.len
            )));
        };
        if r.offset < prev_end {
            return Err(Error::Invalid(format!(
                "destination regions overlap at payload offset {}",
                r.offset
            )));
        }
        if r.dst.checked_add(r.len).is_none() {
            return Err(Error::Invalid(format!(
                "destination address {:#x}+{} overflows",
                r.dst, r.len
            )));
        }
        prev_end = end;
    }
    Ok(regions)
}
