//! Weights loaded straight into CUDA memory (feature `cuda`), streamed through the pinned
//! staging pool.
use std::collections::HashMap;

use super::{TensorInfo, WeightFile};
use crate::read::{LoadOptions, LoadReport};
use crate::sink::cuda::CudaDevice;
use crate::sink::DeviceRegion;
use crate::{Error, Result};

/// Tensors loaded into one CUDA allocation (feature `cuda`), see [`WeightFile::load_cuda`].
pub struct CudaWeights {
    /// The file the tensors were loaded from.
    path: std::path::PathBuf,
    /// The device memory holding the tensors.
    pub buffer: crate::sink::cuda::DeviceBuffer,
    /// File offset of the buffer's first byte.
    base: u64,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    /// How the load went.
    pub report: LoadReport,
}

impl CudaWeights {
    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's info and device address.
    pub fn get(&self, name: &str) -> Option<(&TensorInfo, u64)> {
        let t = &self.tensors[*self.index.get(name)?];
        Some((t, self.buffer.ptr() + (t.start - self.base)))
    }

    /// A tensor's bytes, copied back to the host.
    pub fn to_host(&self, name: &str) -> Result<Vec<u8>> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| Error::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let mut out = vec![0u8; (t.end - t.start) as usize];
        self.buffer
            .copy_to_host((t.start - self.base) as usize, &mut out)?;
        Ok(out)
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
}

impl WeightFile {
    /// Loads every tensor into one new allocation on CUDA device `ordinal`, streamed through the
    /// pinned staging pool (host memory never holds the whole file).
    pub fn load_cuda(&self, ordinal: usize, opts: &LoadOptions) -> Result<CudaWeights> {
        use crate::sink::cuda::DeviceBuffer;
        let device = CudaDevice::new(ordinal)?;
        let (start, end) = self.data_range();
        let len = usize::try_from(end - start).map_err(|_| {
            Error::out_of_memory(end - start, format!("{}: the tensors", self.path.display()))
        })?;
        let buffer = DeviceBuffer::alloc(&device, len)?;
        let region = DeviceRegion {
            offset: start,
            len: end - start,
            dst: buffer.ptr(),
        };
        // SAFETY: the region is exactly `buffer`, allocated just above on `device` and owned
        // here; nothing else can reach it until this returns.
        let report = unsafe { self.load_to_device(&device, vec![region], opts)? };
        Ok(CudaWeights {
            path: self.path.clone(),
            buffer,
            base: start,
            tensors: self.tensors.clone(),
            index: self.index.clone(),
            report,
        })
    }

    /// Streams file bytes to CUDA memory: region offsets are file offsets (see
    /// [`TensorInfo::start`]); `opts.verify` checks FlashPack checksums on the way.
    ///
    /// # Safety
    /// As for [`crate::read::load_to_device`]: every region's destination is device memory the caller
    /// owns and nothing else touches until this returns. [`WeightFile::load_cuda`] is the safe
    /// form, into memory this crate allocates.
    pub unsafe fn load_to_device(
        &self,
        device: &CudaDevice,
        regions: Vec<DeviceRegion>,
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        // Local or remote, either format: a plan of one piece per region, run by the job
        // runner through the pinned staging pool.
        crate::read::job::regions_to_device(self, device, regions, opts)
    }
}
