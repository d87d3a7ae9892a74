//! Host memory as a load destination: page-aligned owned buffers, filled in place by the reader
//! pool ([`HostSink`]), or per-thread scratch buffers that only look at the bytes ([`ScratchSink`]).
use std::marker::PhantomData;

use memmap2::MmapMut;

use super::{Fill, Sink};
use crate::{Error, Result};

/// Owned, page-aligned, zero-initialised host memory (an anonymous mapping, so `O_DIRECT` reads
/// can land in it directly and large buffers can use transparent huge pages).
#[derive(Debug)]
pub(crate) struct HostBuffer {
    map: MmapMut,
    len: usize,
}

impl HostBuffer {
    /// Allocates `len` bytes with normal pages.
    pub fn new(len: usize) -> Result<HostBuffer> {
        Self::with_pages(len, false)
    }

    /// Allocates `len` bytes, asking for transparent huge pages when `huge_pages` is true.
    ///
    /// Huge pages cut page-fault and TLB cost on bare metal. On VMs that hand free memory back
    /// to the hypervisor (free page reporting, as on the 2-core CI machines) they were measured
    /// 3-4x *slower* to fill than normal pages populated in batches, so they are opt-in
    /// (`LoadOptions::huge_pages`, `FLASHPACK_HUGE_PAGES=1`).
    pub fn with_pages(len: usize, huge_pages: bool) -> Result<HostBuffer> {
        let map = MmapMut::map_anon(len.max(1))
            .map_err(|e| Error::out_of_memory(len as u64, format!("a load ({e})")))?;
        #[cfg(target_os = "linux")]
        if huge_pages && len >= 2 << 20 {
            // A kernel that refuses the advice just leaves normal pages: the result is ignored.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = huge_pages;
        Ok(HostBuffer { map, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }
}

/// A [`Sink`] writing straight into a host slice that holds payload bytes from `base` on.
pub(crate) struct HostSink<'a> {
    ptr: *mut u8,
    len: usize,
    base: u64,
    _dest: PhantomData<&'a mut [u8]>,
}

// SAFETY: the sink holds the only (mutable) borrow of its slice for 'a, and `write_chunk` (an
// unsafe fn) only creates sub-slices for the disjoint ranges its contract requires of concurrent
// callers.
unsafe impl Sync for HostSink<'_> {}

impl<'a> HostSink<'a> {
    /// A sink for part of the payload: `dest[i]` is payload byte `base + i`.
    pub fn with_base(dest: &'a mut [u8], base: u64) -> Self {
        HostSink {
            ptr: dest.as_mut_ptr(),
            len: dest.len(),
            base,
            _dest: PhantomData,
        }
    }
}

impl Sink for HostSink<'_> {
    unsafe fn write_chunk(
        &self,
        _worker: usize,
        offset: u64,
        len: usize,
        fill: Fill<'_>,
    ) -> Result<()> {
        let start = offset
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| Error::Internal(format!("chunk offset {offset} is out of range")))?;
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::Internal(format!(
                "chunk {start}+{len} is outside the {}-byte destination",
                self.len
            )));
        }
        // SAFETY: the range was bounds-checked above, the pointer comes from a live `&'a mut [u8]`,
        // and concurrent callers get disjoint ranges (this function's contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) };
        crate::os::populate(dst);
        fill(dst)
    }
}

/// A [`Sink`] that only looks at the bytes: each reader thread fills its own page-aligned scratch
/// buffer (reused chunk after chunk), e.g. for verifying a file without loading it.
pub(crate) struct ScratchSink {
    bufs: Vec<std::sync::Mutex<HostBuffer>>,
}

impl ScratchSink {
    /// Scratch for `workers` threads, `chunk` bytes each.
    pub fn new(workers: usize, chunk: usize) -> Result<Self> {
        let bufs = (0..workers.max(1))
            .map(|_| HostBuffer::new(chunk).map(std::sync::Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(ScratchSink { bufs })
    }
}

impl Sink for ScratchSink {
    unsafe fn write_chunk(
        &self,
        worker: usize,
        _offset: u64,
        len: usize,
        fill: Fill<'_>,
    ) -> Result<()> {
        let slot = self.bufs.get(worker).ok_or_else(|| {
            Error::Internal(format!("reader thread {worker} has no scratch buffer"))
        })?;
        let mut buf = slot.lock().unwrap_or_else(|p| p.into_inner());
        let dst = buf.as_mut_slice().get_mut(..len).ok_or_else(|| {
            Error::Internal(format!("chunk of {len} bytes exceeds the scratch buffer"))
        })?;
        fill(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::HostBuffer;
    use crate::Error;

    /// Host memory that cannot be had is `OutOfMemory` (Python's MemoryError), not a caller
    /// error: more than any 64-bit address space holds is refused by every kernel.
    #[test]
    fn an_allocation_no_address_space_holds_is_out_of_memory() {
        let e = HostBuffer::with_pages(usize::MAX / 2, false)
            .map(drop)
            .unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot allocate"), "{e}");
    }
}
