//! Sinks: where the bytes of a load land.
//!
//! The reader pool splits the payload into chunks and hands each to a sink together with a
//! `fill` callback that reads that chunk's file bytes into whatever slice the sink provides.
//! The host sink hands out the destination memory itself, so file bytes land in place with no
//! staging copy; the device sink hands out a pinned staging buffer and copies it onward
//! ([`DeviceRegion`]s name where each payload range goes).
//!
//! Public here: the CUDA backend ([`cuda`], feature `cuda`), the pinned staging pool it draws
//! from ([`PinnedPool`]) and the [`DeviceRegion`]s a device load is given. The sinks themselves
//! hand out memory by raw pointer and are internal to the reader:
//! ```compile_fail,E0603
//! use flashpack::sink::HostSink;
//! ```
//!
//! ```
//! # #[cfg(feature = "cuda")] {
//! use flashpack::sink::{cuda, PoolStats};
//! // Without a CUDA driver every entry point is a typed error, never a panic.
//! if !cuda::driver_available() {
//!     assert!(cuda::CudaDevice::new(0).is_err());
//! }
//! let _: Option<PoolStats> = cuda::pinned_pool().ok().map(|p| p.stats());
//! # }
//! ```
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod host;
mod pool;

pub use crate::settings::DEFAULT_PINNED_LIMIT;
pub use device::DeviceRegion;
pub(crate) use device::{Device, DeviceSink, Regions, SLOTS_PER_WORKER};
pub(crate) use host::{HostBuffer, HostSink, ScratchSink};
pub use pool::{PinnedPool, PoolStats};

/// Reads a chunk's file bytes into the slice it is given. Its error is already the one to
/// report (naming the file and what failed); a sink returns it unchanged.
pub(crate) type Fill<'a> = &'a mut dyn FnMut(&mut [u8]) -> crate::Result<()>;

/// A destination for payload bytes, shared by all reader threads.
pub(crate) trait Sink: Sync {
    /// Lands payload bytes `[offset, offset + len)`; `worker` is the calling reader thread's index
    /// (for per-thread staging resources).
    ///
    /// # Safety
    /// Ranges given to concurrent calls do not overlap (a host sink hands out the destination
    /// memory of the range itself, as a `&mut [u8]`).
    unsafe fn write_chunk(
        &self,
        worker: usize,
        offset: u64,
        len: usize,
        fill: Fill<'_>,
    ) -> crate::Result<()>;
}
