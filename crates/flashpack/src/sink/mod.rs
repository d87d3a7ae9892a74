//! Sinks: where the bytes of a load land.
//!
//! The reader pool splits the payload into chunks and hands each to [`Sink::write_chunk`] together
//! with a `fill` callback that reads that chunk's file bytes into whatever slice the sink provides.
//! [`HostSink`] hands out the destination memory itself, so file bytes land in place with no staging
//! copy; a device sink hands out a pinned staging buffer and copies it onward.
//!
//! ```
//! use flashpack::sink::{HostBuffer, HostSink, Sink};
//! let mut buf = HostBuffer::new(8).unwrap();
//! let sink = HostSink::new(buf.as_mut_slice());
//! sink.write_chunk(0, 4, 4, &mut |dst: &mut [u8]| { dst.copy_from_slice(&[1, 2, 3, 4]); Ok(()) }).unwrap();
//! drop(sink);
//! assert_eq!(&buf.as_slice()[..8], &[0, 0, 0, 0, 1, 2, 3, 4]);
//! ```
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod host;

pub use device::{
    check_regions, Device, DeviceRegion, DeviceSink, HostAllocator, PinnedBuf, PinnedPool,
    PoolStats, DEFAULT_PINNED_LIMIT, SLOTS_PER_WORKER,
};
pub use host::{HostBuffer, HostSink, ScratchSink};

/// Reads a chunk's file bytes into the slice it is given.
pub type Fill<'a> = &'a mut dyn FnMut(&mut [u8]) -> std::io::Result<()>;

/// A destination for payload bytes, shared by all reader threads.
pub trait Sink: Sync {
    /// Lands payload bytes `[offset, offset + len)`; `worker` is the calling reader thread's index
    /// (for per-thread staging resources). Chunks given to concurrent calls never overlap.
    fn write_chunk(
        &self,
        worker: usize,
        offset: u64,
        len: usize,
        fill: Fill<'_>,
    ) -> crate::Result<()>;
}
