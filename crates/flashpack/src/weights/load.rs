//! Loaded tensors: [`Weights`] (a lazy mapping or owned memory) and [`TensorView`], a tensor's
//! bytes in memory.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::{Inner, TensorInfo, WeightFile};
use crate::read::{self, LoadOptions, LoadReport, Loaded};
use crate::sink::HostBuffer;
use crate::{Dtype, Result};

/// A tensor's bytes in memory.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Its stored element type.
    pub dtype: Dtype,
    /// Its shape (`[]` for a scalar).
    pub shape: &'a [u64],
    /// Its stored bytes (little-endian).
    pub data: &'a [u8],
}

enum Memory {
    Flash(Box<Loaded>),
    Mapped(MmapMut),
    Owned(HostBuffer),
}

/// Loaded tensors (a FlashPack or safetensors file), by name.
pub struct Weights {
    path: PathBuf,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    memory: Memory,
    /// File offset of the memory's first byte.
    base: u64,
    /// How the load went.
    pub report: LoadReport,
}

impl Weights {
    /// Tensors held in `memory`, whose first byte is file byte `base`.
    fn new(
        path: PathBuf,
        tensors: Vec<TensorInfo>,
        index: HashMap<String, usize>,
        memory: Memory,
        base: u64,
        report: LoadReport,
    ) -> Weights {
        Weights {
            path,
            tensors,
            index,
            memory,
            base,
            report,
        }
    }

    /// The file the tensors were loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the bytes are owned memory rather than a mapping of the file.
    pub fn is_eager(&self) -> bool {
        match &self.memory {
            Memory::Flash(l) => l.is_eager(),
            Memory::Mapped(_) => false,
            Memory::Owned(_) => true,
        }
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn bytes(&self) -> &[u8] {
        match &self.memory {
            Memory::Flash(l) => l.payload(),
            Memory::Mapped(m) => m,
            Memory::Owned(b) => b.as_slice(),
        }
    }

    fn view<'a>(&'a self, t: &'a TensorInfo) -> Option<TensorView<'a>> {
        let start = usize::try_from(t.start.checked_sub(self.base)?).ok()?;
        let end = usize::try_from(t.end.checked_sub(self.base)?).ok()?;
        Some(TensorView {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: self.bytes().get(start..end)?,
        })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.index
            .get(name)
            .and_then(|&i| self.view(&self.tensors[i]))
    }

    /// Every tensor, in file order.
    pub fn iter(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.tensors.iter().filter_map(|t| self.view(t))
    }
}

impl WeightFile {
    /// Checks a FlashPack file's payload against its footer's checksums without keeping it
    /// (per-thread scratch buffers), local or remote, as one verified job
    /// ([`read::job::verify`]). A file without checksums gets a report with no chunks checked;
    /// a safetensors file (no checksums at all) is an error.
    pub fn verify(&self, opts: &LoadOptions) -> Result<read::VerifyReport> {
        read::job::verify_one(self, self.tensors.len(), opts)
    }

    /// Loads every tensor: lazily (a private copy-on-write mapping) or, with `opts.eager`, into
    /// owned memory with the parallel reader. `opts.verify` needs a FlashPack file with checksums.
    ///
    /// A remote file is always loaded eagerly (there is nothing to map), with parallel ranged
    /// GETs ([`crate::remote::RemoteSettings`]), its checksums checked part by part with
    /// `opts.verify`. A safetensors tensor the engine cannot load ([`UnloadableTensor`](super::UnloadableTensor)) fails
    /// it, naming the tensor, as `safetensors.torch.load_file` fails.
    pub fn load(self, opts: &LoadOptions) -> Result<Weights> {
        self.check_loadable()?;
        let WeightFile {
            path,
            inner,
            tensors,
            index,
            unloadable,
        } = self;
        let inner = match inner {
            Inner::Flash(f) => {
                let loaded = read::load_open(f, opts)?;
                let report = loaded.report.clone();
                let memory = Memory::Flash(Box::new(loaded));
                return Ok(Weights::new(path, tensors, index, memory, 0, report));
            }
            inner => inner,
        };
        let file = WeightFile {
            path,
            inner,
            tensors,
            index,
            unloadable,
        };
        let (memory, base, report) = file.load_tensor_data(opts)?;
        Ok(Weights::new(
            file.path,
            file.tensors,
            file.index,
            memory,
            base,
            report,
        ))
    }

    /// A safetensors file's or a remote file's tensor data as one job: a private mapping of the
    /// whole local file (lazy), or one piece, the tensor data, read into new owned memory.
    /// Returns the memory, the file offset of its first byte and the report.
    fn load_tensor_data(&self, opts: &LoadOptions) -> Result<(Memory, u64, LoadReport)> {
        use crate::read::job::{self, JobPlan, Piece};
        if !opts.eager && !self.is_remote() {
            if opts.verify {
                return Err(crate::read::no_checksums(&self.path));
            }
            let (map, report) = job::map_private(self, false, opts)?;
            return Ok((Memory::Mapped(map), 0, report));
        }
        let (start, end) = self.data_range();
        let data = [Piece {
            file: 0,
            start,
            end,
        }];
        // A local file's data is read exactly into the final buffer; a remote one's on the
        // plan's aligned grid (its checksum chunks when it is checked).
        let plan = match self.is_remote() {
            false => JobPlan::exact(&[self], &data, opts.verify)?,
            true => JobPlan::for_load(&[self], &data, opts.verify)?,
        };
        let (memory, report) = job::read_host(&[self], &plan, opts)?;
        // The piece lands at offset(0) of job memory: memory byte 0 is file byte `base`.
        let base = start - plan.offset(0).unwrap_or(0);
        Ok((Memory::Owned(memory.into_buffer()), base, report))
    }
}
