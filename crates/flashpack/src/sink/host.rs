//! Host memory as a load destination: page-aligned owned buffers, filled in place.
use std::marker::PhantomData;

use memmap2::MmapMut;

use super::{Fill, Sink};
use crate::{Error, Result};

/// Owned, page-aligned, zero-initialised host memory (an anonymous mapping, so `O_DIRECT` reads
/// can land in it directly and large buffers can use transparent huge pages).
#[derive(Debug)]
pub struct HostBuffer {
    map: MmapMut,
    len: usize,
}

impl HostBuffer {
    /// Allocates `len` bytes.
    pub fn new(len: usize) -> Result<HostBuffer> {
        let map = MmapMut::map_anon(len.max(1)).map_err(|e| {
            Error::Invalid(format!("cannot allocate {len} bytes of host memory: {e}"))
        })?;
        #[cfg(target_os = "linux")]
        if len >= 2 << 20 {
            // Huge pages cut page-fault and TLB cost when filling large buffers; a kernel that
            // refuses the advice just leaves normal pages, so the result is ignored.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(HostBuffer { map, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }
}

/// A [`Sink`] writing straight into a host slice.
pub struct HostSink<'a> {
    ptr: *mut u8,
    len: usize,
    _dest: PhantomData<&'a mut [u8]>,
}

// SAFETY: the sink holds the only (mutable) borrow of its slice for 'a, and `write_chunk` only
// creates sub-slices for the disjoint ranges the reader pool hands to concurrent callers.
unsafe impl Sync for HostSink<'_> {}

impl<'a> HostSink<'a> {
    pub fn new(dest: &'a mut [u8]) -> Self {
        HostSink {
            ptr: dest.as_mut_ptr(),
            len: dest.len(),
            _dest: PhantomData,
        }
    }
}

impl Sink for HostSink<'_> {
    fn write_chunk(&self, _worker: usize, offset: u64, len: usize, fill: Fill<'_>) -> Result<()> {
        let start = usize::try_from(offset)
            .map_err(|_| Error::Invalid(format!("chunk offset {offset} is out of range")))?;
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::Invalid(format!(
                "chunk {start}+{len} is outside the {}-byte destination",
                self.len
            )));
        }
        // SAFETY: the range was bounds-checked above, the pointer comes from a live `&'a mut [u8]`,
        // and concurrent callers get disjoint ranges (see the Sync impl).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) };
        fill(dst).map_err(|e| Error::Invalid(format!("reading chunk at {offset}: {e}")))
    }
}
