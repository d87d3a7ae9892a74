//! Conversion: a weight file written as FlashPack or safetensors, bytes unchanged.
use std::path::Path;

use memmap2::Mmap;

use super::safetensors_file::{safetensors_entry, write_safetensors_file};
use super::{TensorInfo, TensorView, WeightFile, SAFETENSORS_METADATA_KEY};
use crate::cancel::Cancel;
use crate::sink::HostBuffer;
use crate::write::{pack, prepare_destination, PackEntry, PackOptions, PackReport};
use crate::{Error, Result};

/// How [`WeightFile::to_safetensors_with`] writes.
#[derive(Clone, Debug, Default)]
pub struct SafetensorsOptions {
    /// Show a progress bar on stderr for large files.
    pub progress: bool,
    /// Checked between pieces and before the new file replaces the destination.
    pub cancel: Option<Cancel>,
}

impl WeightFile {
    /// Writes these tensors as a FlashPack file (bytes unchanged; `opts` as for [`pack`]). A
    /// safetensors file's `__metadata__` goes into the footer key [`SAFETENSORS_METADATA_KEY`],
    /// so converting back restores it.
    ///
    /// A remote file's tensors are fetched into memory first (the conversion needs them all).
    pub fn to_flashpack(&self, dest: impl AsRef<Path>, opts: &PackOptions) -> Result<PackReport> {
        self.check_loadable()?;
        let data = self.data_bytes(opts.progress, opts.cancel.as_ref())?;
        let mut opts = opts.clone();
        if let Some(meta) = self.safetensors_metadata() {
            let value = serde_json::to_value(meta).map_err(|e| {
                Error::Internal(format!("{}: __metadata__: {e}", self.path.display()))
            })?;
            opts.extra.insert(SAFETENSORS_METADATA_KEY.into(), value);
        }
        let entries = self
            .tensors
            .iter()
            .map(|t| {
                let bytes = data.tensor(&self.path, t)?;
                Ok(PackEntry::new(
                    t.name.clone(),
                    t.dtype,
                    t.shape.clone(),
                    bytes,
                ))
            })
            .collect::<Result<Vec<PackEntry<'_>>>>()?;
        pack(dest.as_ref(), &entries, &opts)
    }

    /// Writes these tensors as a safetensors file (bytes unchanged), atomically: see
    /// [`to_safetensors_with`](Self::to_safetensors_with).
    pub fn to_safetensors(&self, dest: impl AsRef<Path>) -> Result<()> {
        self.to_safetensors_with(dest, &SafetensorsOptions::default())
    }

    /// Writes these tensors as a safetensors file, laid out as the `safetensors` crate lays it
    /// out (tensors by dtype alignment, then name). Atomic like a pack: the file is written
    /// unnamed beside `dest` and linked over it only when complete and synced, so a process
    /// killed at any point leaves nothing behind; `opts.cancel` stops it between 4 MiB pieces,
    /// leaving `dest` as it was.
    pub fn to_safetensors_with(
        &self,
        dest: impl AsRef<Path>,
        opts: &SafetensorsOptions,
    ) -> Result<()> {
        // Refused before anything is fetched or written: a tensor safetensors cannot store
        // (naming this file), a destination that cannot be written.
        self.check_loadable()?;
        for t in &self.tensors {
            safetensors_entry(&self.path, &t.name, t.dtype, &t.shape)?;
        }
        prepare_destination(dest.as_ref())?;
        let cancel = opts.cancel.as_ref();
        let data = self.data_bytes(opts.progress, cancel)?;
        let views = self
            .tensors
            .iter()
            .map(|t| {
                Ok(TensorView {
                    name: &t.name,
                    dtype: t.dtype,
                    shape: &t.shape,
                    data: data.tensor(&self.path, t)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = self.safetensors_metadata();
        write_safetensors_file(dest.as_ref(), &views, metadata, cancel, opts.progress)
    }

    /// Every tensor's bytes: a read-only mapping of a local file, or a remote file's tensor data
    /// fetched into owned memory (with a progress bar when asked; stopped by `cancel`).
    fn data_bytes(&self, progress: bool, cancel: Option<&Cancel>) -> Result<DataBytes> {
        #[cfg(feature = "remote")]
        if self.is_remote() {
            use crate::read::job::{read_host, JobPlan, Piece};
            use crate::read::LoadOptions;
            let (start, end) = self.data_range();
            let pieces = [Piece {
                file: 0,
                start,
                end,
            }];
            let plan = JobPlan::new(&[self], &pieces)?;
            let opts = LoadOptions {
                progress,
                cancel: cancel.cloned(),
                ..LoadOptions::default()
            };
            let (memory, _) = read_host(&[self], &plan, &opts)?;
            let base = start - plan.offset(0).unwrap_or(0);
            return Ok(DataBytes::Owned {
                memory: memory.into_buffer(),
                base,
            });
        }
        let _ = (progress, cancel);
        Ok(DataBytes::Mapped(self.map_readonly()?))
    }
}

/// A whole file's tensor bytes, to convert it (see `WeightFile::data_bytes`).
enum DataBytes {
    /// A read-only mapping of the whole file (checked to hold every tensor).
    Mapped(Mmap),
    /// Owned memory whose first byte is file byte `base`, holding every tensor.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    Owned { memory: HostBuffer, base: u64 },
}

impl DataBytes {
    /// Tensor `t`'s bytes (of the file at `path`, named in the error of a range not held).
    fn tensor(&self, path: &Path, t: &TensorInfo) -> Result<&[u8]> {
        let (bytes, base) = match self {
            DataBytes::Mapped(m) => (&m[..], 0),
            DataBytes::Owned { memory, base } => (memory.as_slice(), *base),
        };
        let range = t
            .start
            .checked_sub(base)
            .zip(t.end.checked_sub(base))
            .and_then(|(a, b)| Some(usize::try_from(a).ok()?..usize::try_from(b).ok()?));
        range.and_then(|r| bytes.get(r)).ok_or_else(|| {
            Error::Internal(format!(
                "{}: tensor '{}' (bytes {}..{}) is not in the data read",
                path.display(),
                t.name,
                t.start,
                t.end
            ))
        })
    }
}
