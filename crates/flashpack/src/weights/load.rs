//! Loaded tensors: [`Weights`] (a lazy mapping or owned memory) and [`TensorView`], a tensor's
//! bytes in memory.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::{MmapMut, MmapOptions};

use super::{Inner, TensorInfo, WeightFile};
use crate::read::{self, DataFile, LoadOptions, LoadReport, Loaded, TensorNames};
use crate::sink::HostBuffer;
use crate::{Dtype, Error, Result};

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
    /// Tensors held in owned memory that starts at file byte `base` (a remote load).
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn from_owned(
        path: PathBuf,
        tensors: Vec<TensorInfo>,
        memory: HostBuffer,
        base: u64,
        report: LoadReport,
    ) -> Weights {
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Weights {
            path,
            tensors,
            index,
            memory: Memory::Owned(memory),
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
    /// (per-thread scratch buffers): a local file as [`read::verify`] does, a remote one with
    /// parallel ranged GETs through the job reader. A file without checksums gets a report with
    /// no chunks checked; a safetensors file (no checksums at all) is an error.
    pub fn verify(&self, opts: &LoadOptions) -> Result<read::VerifyReport> {
        let Some(footer) = self.footer() else {
            return Err(crate::read::no_checksums(&self.path));
        };
        if !self.is_remote() {
            return read::verify(&self.path, opts);
        }
        let (start, end) = self.data_range();
        let checksums = footer.checksums();
        let mut report = read::VerifyReport {
            tensors: self.tensors.len(),
            payload_len: end,
            chunks_checked: 0,
            algorithm: checksums.map(|c| c.algorithm.clone()),
        };
        if let (Some(checksums), true) = (checksums, end > start) {
            use crate::read::job::{self, JobPlan, Piece};
            let pieces = [Piece {
                file: 0,
                start,
                end,
            }];
            let plan = JobPlan::verified(&[self], &pieces)?;
            job::verify(&[self], &plan, opts)?;
            report.chunks_checked = checksums.digests.len();
        }
        Ok(report)
    }

    /// A remote file's tensors fetched into owned host memory through the job reader.
    #[cfg(feature = "remote")]
    fn load_remote(self, opts: &LoadOptions) -> Result<Weights> {
        use crate::read::job::{read_host, JobPlan, Piece};
        let (start, end) = self.data_range();
        let pieces = [Piece {
            file: 0,
            start,
            end,
        }];
        let plan = if opts.verify {
            JobPlan::verified(&[&self], &pieces)?
        } else {
            JobPlan::new(&[&self], &pieces)?
        };
        let (memory, report) = read_host(&[&self], &plan, opts)?;
        // The piece lands at offset(0) of job memory: memory byte 0 is file byte `base`.
        let base = start - plan.offset(0).unwrap_or(0);
        Ok(Weights::from_owned(
            self.path,
            self.tensors,
            memory.into_buffer(),
            base,
            report,
        ))
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
        let (path, tensors, index) = (self.path, self.tensors, self.index);
        let (memory, base, report) = match self.inner {
            Inner::Flash(f) => {
                let loaded = read::load_open(f, opts)?;
                let report = loaded.report.clone();
                (Memory::Flash(Box::new(loaded)), 0, report)
            }
            Inner::Safetensors {
                file,
                file_len,
                data_start,
                ..
            } => {
                let data = DataFile {
                    path: &path,
                    file: &file,
                    end: file_len,
                    names: TensorNames::Tensors(&tensors),
                };
                load_safetensors(&data, data_start, opts)?
            }
            #[cfg(feature = "remote")]
            inner @ Inner::Remote(_) => {
                let file = WeightFile {
                    path,
                    inner,
                    tensors,
                    index,
                    unloadable: Vec::new(),
                };
                return file.load_remote(opts);
            }
        };
        Ok(Weights {
            path,
            tensors,
            index,
            memory,
            base,
            report,
        })
    }
}

/// A local safetensors file's tensors (file bytes `data_start..data.end`): a private mapping
/// of the whole file, or with `opts.eager` owned memory read by the parallel reader. Returns
/// the memory, the file offset of its first byte and the report.
fn load_safetensors(
    data: &DataFile<'_>,
    data_start: u64,
    opts: &LoadOptions,
) -> Result<(Memory, u64, LoadReport)> {
    if opts.verify {
        return Err(crate::read::no_checksums(data.path));
    }
    if opts.eager {
        let (buf, report) = read::read_owned(data, data_start, data.end, opts)?;
        return Ok((Memory::Owned(buf), data_start, report));
    }
    let t = Instant::now();
    // SAFETY: a private (copy-on-write) mapping, as for lazy FlashPack loads: writes never
    // reach the file; truncating the file while mapped would fault.
    let map = unsafe { MmapOptions::new().map_copy(data.file) }
        .map_err(|e| Error::io(data.path, "mmap", e))?;
    let report = LoadReport {
        phases: vec![("mmap_payload", t.elapsed())],
        ..Default::default()
    };
    Ok((Memory::Mapped(map), 0, report))
}
