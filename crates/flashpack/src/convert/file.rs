//! One weight file to one file of either format: [`WeightFile::to_flashpack`],
//! [`WeightFile::to_safetensors`], and the single-file route of [`convert`](super::convert)
//! (the destination and format chosen as the options say, a FlashPack repack keeping the
//! footer's extra keys, tensors left out by a filter).
//!
//! ```
//! use flashpack::weights::WeightFile;
//! use flashpack::write::{pack, PackEntry, PackOptions};
//! use flashpack::Dtype;
//! let dir = tempfile::tempdir().unwrap();
//! let (fp, st) = (dir.path().join("m.flashpack"), dir.path().join("m.safetensors"));
//! let w: Vec<u8> = (0..16u8).collect();
//! pack(&fp, &[PackEntry::new("w", Dtype::U8, vec![16], &w)], &PackOptions::default()).unwrap();
//! WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
//! let again = dir.path().join("again.flashpack");
//! WeightFile::open(&st).unwrap().to_flashpack(&again, &PackOptions::default()).unwrap();
//! assert_eq!(std::fs::read(&fp).unwrap(), std::fs::read(&again).unwrap());
//! ```
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{ConvertError, ConvertOptions, Converted, Filter, Output, Target};
use crate::cancel::Cancel;
use crate::format::DEFAULT_ALIGN_BYTES;
use crate::read::LoadOptions;
use crate::sink::HostBuffer;
use crate::weights::{
    safetensors_entry, write_safetensors_file, Format, TensorInfo, TensorView, WeightFile,
    SAFETENSORS_METADATA_KEY,
};
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
            insert_json(&mut opts, self.path(), SAFETENSORS_METADATA_KEY, &meta)?;
        }
        let entries = self
            .tensors()
            .iter()
            .map(|t| {
                let bytes = data.tensor(self.path(), t)?;
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
        for t in self.tensors() {
            safetensors_entry(self.path(), &t.name, t.dtype, &t.shape)?;
        }
        prepare_destination(dest.as_ref())?;
        let cancel = opts.cancel.as_ref();
        let data = self.data_bytes(opts.progress, cancel)?;
        let views = self
            .tensors()
            .iter()
            .map(|t| {
                Ok(TensorView {
                    name: &t.name,
                    dtype: t.dtype,
                    shape: &t.shape,
                    data: data.tensor(self.path(), t)?,
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

/// Sets footer key `key` of `opts` to `value` as JSON (an error naming `path` if it cannot be
/// encoded).
pub(super) fn insert_json(
    opts: &mut PackOptions,
    path: &Path,
    key: &str,
    value: &impl serde::Serialize,
) -> Result<()> {
    let value = serde_json::to_value(value).map_err(|source| {
        Error::convert(
            path,
            ConvertError::EncodeFooterKey {
                key: key.to_string(),
                source,
            },
        )
    })?;
    opts.extra.insert(key.into(), value);
    Ok(())
}

/// Converts the one weight file `src` (opened from `path`, a file or a URL) as `opts` asks.
pub(super) fn convert(
    path: &Path,
    src: WeightFile,
    dest: Option<&Path>,
    opts: &ConvertOptions,
) -> Result<Converted> {
    // Beside the source; a URL's output goes to the current folder.
    let mut dst = dest
        .map(Path::to_path_buf)
        .unwrap_or_else(|| match path.parent() {
            _ if src.is_remote() => PathBuf::from("."),
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
    let by_ext = if dst.is_dir() {
        None
    } else {
        Target::by_extension(&dst)
    };
    if let (Some(to), Some(extension)) = (opts.to, by_ext) {
        if to != extension {
            return Err(Error::convert(
                &dst,
                ConvertError::TargetMismatch { to, extension },
            ));
        }
    }
    let source_format = src.format();
    let target = opts
        .to
        .or(by_ext)
        .unwrap_or(Target::other_than(source_format));
    if dst.is_dir() {
        let stem = path
            .file_stem()
            .ok_or_else(|| Error::convert(path, ConvertError::NoFileName))?;
        let mut name = stem.to_os_string();
        name.push(".");
        name.push(target.extension());
        dst = dst.join(name);
    }
    if target == Target::Safetensors
        && (!opts.checksums || opts.align_bytes.is_some() || !opts.ignore.is_empty())
    {
        return Err(Error::convert(&dst, ConvertError::FlashPackOnlyOptions));
    }
    let bytes_of = |tensors: &[TensorInfo], keep: &dyn Fn(&str) -> bool| -> u64 {
        tensors
            .iter()
            .filter(|t| keep(&t.name))
            .map(|t| t.end - t.start)
            .sum()
    };
    let (output, tensors, data_bytes, phases) = match target {
        Target::Flashpack => {
            let pack_opts = PackOptions {
                align_bytes: opts.align_bytes.unwrap_or(DEFAULT_ALIGN_BYTES),
                checksums: opts.checksums,
                progress: opts.progress,
                // A repack keeps the footer keys the format does not interpret.
                extra: src.footer().map(|f| f.extra().clone()).unwrap_or_default(),
                cancel: opts.cancel.clone(),
                ..PackOptions::default()
            };
            let bytes = bytes_of(src.tensors(), &|name| !opts.ignore.drops(name));
            let report = if opts.ignore.is_empty() {
                src.to_flashpack(&dst, &pack_opts)?
            } else {
                pack_filtered(src, &dst, pack_opts, &opts.ignore)?
            };
            let tensors = report.footer.records().len();
            let output = Output::FlashPack {
                footer: Box::new(report.footer),
                file_len: report.file_len,
            };
            (output, tensors, bytes, report.phases)
        }
        Target::Safetensors => {
            let st_opts = SafetensorsOptions {
                progress: opts.progress,
                cancel: opts.cancel.clone(),
            };
            src.to_safetensors_with(&dst, &st_opts)?;
            let file_len = std::fs::metadata(&dst)
                .map_err(|e| Error::io(&dst, "stat", e))?
                .len();
            let bytes = bytes_of(src.tensors(), &|_| true);
            (
                Output::Safetensors { file_len },
                src.tensors().len(),
                bytes,
                Vec::new(),
            )
        }
    };
    Ok(Converted {
        source: path.to_path_buf(),
        source_format,
        source_shards: 1,
        source_indexed: false,
        written: dst,
        target,
        output,
        tensors,
        data_bytes,
        phases,
        elapsed: Default::default(),
    })
}

/// Packs the tensors of `src` that `ignore` keeps (bytes unchanged), with the footer keys
/// `to_flashpack` would keep: a safetensors file's `__metadata__`, a FlashPack file's extras.
fn pack_filtered(
    src: WeightFile,
    dst: &Path,
    mut opts: PackOptions,
    ignore: &Filter,
) -> Result<PackReport> {
    let path = src.path().to_path_buf();
    if let (Format::Safetensors, Some(meta)) = (src.format(), src.safetensors_metadata()) {
        insert_json(&mut opts, &path, SAFETENSORS_METADATA_KEY, &meta)?;
    }
    let weights = src.load(&LoadOptions::default())?;
    let entries: Vec<PackEntry<'_>> = weights
        .iter()
        .filter(|t| !ignore.drops(t.name))
        .map(|t| PackEntry::new(t.name, t.dtype, t.shape.to_vec(), t.data))
        .collect();
    if entries.is_empty() {
        return Err(Error::convert(&path, ConvertError::EverythingIgnored));
    }
    pack(dst, &entries, &opts)
}
