//! Device sinks: payload bytes land in page-locked (pinned) host staging buffers and are copied
//! to device memory asynchronously, double-buffered per reader thread.
//!
//! Each reader thread owns a stream and two staging buffers. While the copy of chunk *k* runs on
//! the thread's stream, the thread reads chunk *k+1* into the other buffer; before it reuses a
//! buffer it waits for the event recorded after that buffer's last copy. Host memory therefore
//! never holds more than `threads x 2` chunks, however large the model.
//!
//! Every call that works with the device binds it to the calling thread only for its own
//! duration ([`Device::bind`]), so the caller's current device (torch's, say) is the same after a
//! load as before, whether the load succeeded or not. Staging buffers come from the device's
//! [`PinnedPool`]; one whose copy may still be running when a load fails is leaked, never reused.
//!
//! The device is abstract, so the staging logic is the same for every backend; the CUDA backend
//! (`sink::cuda`) is a thin layer of driver calls, exercised in `make test` against a strict
//! stand-in for the driver (`crates/cuda-standin`).
use std::path::Path;
use std::sync::Mutex;

use super::pool::{PinnedBuf, PinnedPool};
use super::{Fill, Sink};
use crate::{Error, Result};

/// Payload bytes `[offset, offset + len)` go to device address `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRegion {
    /// Offset of the first byte in the payload (or file, for a safetensors file).
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
    /// Device address the first byte goes to.
    pub dst: u64,
}

impl DeviceRegion {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Regions checked by [`Regions::new`]: non-empty, sorted by offset, not overlapping, inside
/// the data, destination ranges that do not wrap. Only checked regions reach a sink.
#[derive(Debug)]
pub(crate) struct Regions(Vec<DeviceRegion>);

impl Regions {
    /// Checks `regions` against data of `data_len` bytes (`within` says what that data is, `name`
    /// where it comes from, both for errors); empty regions are dropped.
    pub fn new(
        mut regions: Vec<DeviceRegion>,
        data_len: u64,
        name: &Path,
        within: &'static str,
    ) -> Result<Regions> {
        regions.retain(|r| r.len > 0);
        regions.sort_by_key(|r| r.offset);
        let mut prev_end = 0u64;
        for r in &regions {
            let end = r.offset.checked_add(r.len).filter(|&e| e <= data_len);
            let Some(end) = end else {
                return Err(Error::OutOfRange {
                    path: name.to_path_buf(),
                    offset: r.offset,
                    len: r.len,
                    size: data_len,
                    within,
                });
            };
            if r.offset < prev_end {
                return Err(Error::Invalid(format!(
                    "{}: destination regions overlap at {within} offset {}",
                    name.display(),
                    r.offset
                )));
            }
            if r.dst.checked_add(r.len).is_none() {
                return Err(Error::Invalid(format!(
                    "{}: destination address {:#x}+{} overflows",
                    name.display(),
                    r.dst,
                    r.len
                )));
            }
            prev_end = end;
        }
        Ok(Regions(regions))
    }

    pub fn as_slice(&self) -> &[DeviceRegion] {
        &self.0
    }
}

/// A device that copies host memory into its own memory asynchronously, in order per stream.
pub(crate) trait Device: Sync {
    type Stream: Send;
    type Event: Send;
    /// The device bound to a thread; dropping it restores what was bound before.
    type Binding;

    /// Binds the device to the calling thread (e.g. pushes its context) until the returned
    /// value is dropped. Every call below needs the device bound on the calling thread.
    fn bind(&self) -> Result<Self::Binding>;
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
    fn pool(&self) -> &PinnedPool;
}

struct Slot<'p, E> {
    buf: PinnedBuf<'p>,
    event: Option<E>,
    /// A copy from `buf` may still be running (an event was recorded after it).
    pending: bool,
}

struct Worker<'p, S, E> {
    stream: Option<S>,
    slots: Vec<Slot<'p, E>>,
    next: usize,
}

/// Staging buffers per reader thread: one being filled while the other's copy runs.
pub(crate) const SLOTS_PER_WORKER: usize = 2;

/// A [`Sink`] that stages chunks in pinned memory and copies them to device regions.
///
/// Call [`DeviceSink::finish`] after the reads: it waits for every copy. Dropping the sink
/// without `finish` (on an error path) also waits, so staging buffers are never reused or freed
/// while a copy reads them; those the device cannot confirm are leaked.
pub(crate) struct DeviceSink<'a, D: Device> {
    device: &'a D,
    regions: Regions,
    workers: Vec<Mutex<Worker<'a, D::Stream, D::Event>>>,
    chunk_cap: usize,
    /// Payload bytes of the first chunk whose device work failed.
    failed: Mutex<Option<(u64, u64)>>,
}

impl<'a, D: Device> DeviceSink<'a, D> {
    /// A sink for up to `workers` reader threads with chunks of at most `chunk_cap` bytes; it
    /// gets fewer when other loads hold part of the pool (see [`DeviceSink::workers`]).
    pub fn new(device: &'a D, regions: Regions, workers: usize, chunk_cap: usize) -> Result<Self> {
        let _bound = device.bind()?;
        let max = workers.max(1) * SLOTS_PER_WORKER;
        let bufs = device.pool().take(SLOTS_PER_WORKER, max, chunk_cap)?;
        let mut bufs = bufs.into_iter();
        let mut workers = Vec::new();
        while bufs.len() >= SLOTS_PER_WORKER {
            let slots = bufs
                .by_ref()
                .take(SLOTS_PER_WORKER)
                .map(|buf| Slot {
                    buf,
                    event: None,
                    pending: false,
                })
                .collect();
            workers.push(Mutex::new(Worker {
                stream: None,
                slots,
                next: 0,
            }));
        }
        Ok(DeviceSink {
            device,
            regions,
            workers,
            chunk_cap,
            failed: Mutex::new(None),
        })
    }

    /// The reader threads this sink has staging buffers for.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Payload bytes `[start, end)` of the first chunk whose device work failed, if any.
    pub fn failed_chunk(&self) -> Option<(u64, u64)> {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for every copy; returns the first error a stream reports.
    pub fn finish(mut self) -> Result<()> {
        let _bound = self.device.bind()?;
        self.drain()
    }

    /// Synchronizes every stream (the device must be bound); a stream that synchronized has no
    /// copy left that reads its buffers.
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
        // Streams and events are destroyed below, while the device is bound.
        let _bound = self.device.bind();
        let _ = self.drain();
        for w in self.workers.drain(..) {
            let w = w.into_inner().unwrap_or_else(|p| p.into_inner());
            for s in w.slots {
                // A buffer whose copy the device never confirmed finished must not be reused
                // (another load could overwrite memory a copy still reads): it is leaked.
                // The others go back to the pool as they drop.
                if s.pending {
                    s.buf.leak();
                }
            }
        }
    }
}

impl<D: Device> Sink for DeviceSink<'_, D> {
    unsafe fn write_chunk(
        &self,
        worker: usize,
        offset: u64,
        len: usize,
        fill: Fill<'_>,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's own contract.
        let r = unsafe { self.stage(worker, offset, len, fill) };
        if let Err(Error::Device(_)) = &r {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert((offset, offset + len as u64));
        }
        r
    }
}

impl<'a, D: Device> DeviceSink<'a, D> {
    /// Fills this worker's next staging buffer with the chunk and enqueues its copies.
    ///
    /// # Safety
    /// As [`Sink::write_chunk`].
    unsafe fn stage(&self, worker: usize, offset: u64, len: usize, fill: Fill<'_>) -> Result<()> {
        let w = self.worker(worker, len)?;
        let _bound = self.device.bind()?;
        let mut guard = w.lock().unwrap_or_else(|p| p.into_inner());
        let (stream, slot) = self.ready_slot(&mut guard)?;
        // SAFETY: the buffer holds `capacity() >= len` bytes (checked in `worker`), is owned by
        // this slot (whose worker lock we hold), and no copy reads it any more (`ready_slot`
        // waited for its last copy's event).
        let host = unsafe { std::slice::from_raw_parts_mut(slot.buf.as_ptr(), len) };
        fill(host)?;
        // SAFETY: `host` is this slot's staging buffer, left untouched until the event
        // recorded after these copies completes; the regions are the caller's writable device
        // memory (this function's contract).
        unsafe { self.enqueue_copies(host, offset, stream, slot) }
    }

    /// Reader thread `worker`'s staging buffers, for a chunk of `len` bytes.
    fn worker(&self, worker: usize, len: usize) -> Result<&Mutex<Worker<'a, D::Stream, D::Event>>> {
        let Some(w) = self.workers.get(worker) else {
            return Err(Error::Internal(format!(
                "reader thread {worker} has no staging buffers ({} workers)",
                self.workers.len()
            )));
        };
        if len > self.chunk_cap {
            return Err(Error::Internal(format!(
                "chunk of {len} bytes exceeds the {}-byte staging buffers",
                self.chunk_cap
            )));
        }
        Ok(w)
    }

    /// The worker's stream (created with its events on first use) and its next slot, free:
    /// the copies that last read it have completed. The device must be bound.
    fn ready_slot<'w>(
        &self,
        w: &'w mut Worker<'a, D::Stream, D::Event>,
    ) -> Result<(&'w D::Stream, &'w mut Slot<'a, D::Event>)> {
        let dev = self.device;
        let Worker {
            stream,
            slots,
            next,
        } = w;
        let stream = match stream {
            Some(s) => s,
            None => {
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
            return Err(Error::Internal("staging slot without an event".into()));
        };
        if slot.pending {
            dev.wait_event(event)?;
            slot.pending = false;
        }
        Ok((stream, slot))
    }

    /// Enqueues the copies of the staged chunk (payload bytes `[offset, offset + host.len())`)
    /// to every region it overlaps, then records the slot's event after them.
    ///
    /// # Safety
    /// `host` is `slot`'s buffer and stays untouched until the recorded event completes; every
    /// region's destination is device memory the caller may write.
    unsafe fn enqueue_copies(
        &self,
        host: &[u8],
        offset: u64,
        stream: &D::Stream,
        slot: &mut Slot<'a, D::Event>,
    ) -> Result<()> {
        let dev = self.device;
        let end = offset + host.len() as u64;
        let regions = self.regions.as_slice();
        let first = regions.partition_point(|r| r.end() <= offset);
        let mut copied = false;
        for r in regions[first..].iter().take_while(|r| r.offset < end) {
            let s = r.offset.max(offset);
            let e = r.end().min(end);
            // Marked before the copy is enqueued: if enqueueing fails part-way, the sink still
            // treats the buffer as read by a copy (waited for, or leaked), never as free.
            slot.pending = true;
            // SAFETY: `host[s - offset..e - offset]` lies inside the staging buffer, which stays
            // untouched until the event recorded below completes (checked before its next reuse,
            // and in finish/drop); the destination lies inside a region the caller handed over
            // as writable device memory (the contract of the public load functions).
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
        if let (true, Some(event)) = (copied, &slot.event) {
            dev.record(event, stream)?;
        }
        Ok(())
    }
}
