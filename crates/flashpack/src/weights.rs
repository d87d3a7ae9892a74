//! One API over FlashPack and safetensors files: list tensors, load them lazily (a private
//! mapping) or eagerly (the parallel reader, `O_DIRECT` when cold), stream them to a device, and
//! convert either way, bit-exact.
//!
//! A safetensors file goes through the same engine as a FlashPack file: its header (parsed and
//! validated by the `safetensors` crate) becomes the same list of byte ranges, so an eager or
//! device load reads it at FlashPack speed without converting it first.
//!
//! ```
//! use flashpack::weights::{Format, WeightFile};
//! use flashpack::{read::LoadOptions, write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let fp = dir.path().join("m.flashpack");
//! let w: Vec<u8> = (0..24u8).collect();
//! pack(&fp, &[PackEntry::new("w", Dtype::F32, vec![2, 3], &w)], &PackOptions::default()).unwrap();
//!
//! // FlashPack -> safetensors -> FlashPack, and both load the same bytes.
//! let st = dir.path().join("m.safetensors");
//! WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
//! let file = WeightFile::open(&st).unwrap();
//! assert_eq!(file.format(), Format::Safetensors);
//! assert_eq!(file.tensor("w").unwrap().shape, vec![2, 3]);
//! let eager = file.load(&LoadOptions { eager: true, ..Default::default() }).unwrap();
//! assert_eq!(eager.get("w").unwrap().data, &w[..]);
//! ```
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::cancel::{self, Cancel};
use crate::format::MAGIC;
use crate::progress::progress_bar;
use crate::read::{
    self, open_regular, DataFile, FlashFile, LoadOptions, LoadReport, Loaded, TensorNames,
};
#[cfg(feature = "remote")]
use crate::remote::weights::{RemoteIndex, RemoteSource};
#[cfg(feature = "cuda")]
use crate::sink::cuda::CudaDevice;
use crate::sink::{DeviceRegion, HostBuffer};
use crate::write::{pack, prepare_destination, PackEntry, PackOptions, PackReport, Staged};
use crate::{Dtype, Error, Footer, Result};

/// FlashPack footer key holding a converted safetensors file's `__metadata__` strings.
pub const SAFETENSORS_METADATA_KEY: &str = "safetensors_metadata";

/// A weight file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    FlashPack,
    Safetensors,
}

/// One tensor of a file: where its bytes are (file offsets `[start, end)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

/// A tensor's bytes in memory.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

enum Inner {
    Flash(FlashFile),
    Safetensors {
        file: File,
        file_len: u64,
        data_start: u64,
        metadata: Option<HashMap<String, String>>,
    },
    /// A remote object (either format): its index fetched at open, its tensors on load.
    #[cfg(feature = "remote")]
    Remote(Box<RemoteSource>),
}

/// How a weight file's tensor bytes are read (for the reader pool and the job planner).
pub(crate) enum Backing<'a> {
    Local(DataFile<'a>),
    #[cfg(feature = "remote")]
    Remote {
        path: &'a Path,
        source: &'a RemoteSource,
        names: TensorNames<'a>,
    },
}

impl Backing<'_> {
    pub fn path(&self) -> &Path {
        match self {
            Backing::Local(d) => d.path,
            #[cfg(feature = "remote")]
            Backing::Remote { path, .. } => path,
        }
    }

    pub fn names(&self) -> TensorNames<'_> {
        match self {
            Backing::Local(d) => d.names,
            #[cfg(feature = "remote")]
            Backing::Remote { names, .. } => *names,
        }
    }
}

/// An open, validated weight file (FlashPack or safetensors), local or remote.
///
/// A remote one ([`WeightFile::open_location`] with a URL, feature `remote`) has only its
/// index in memory (a FlashPack footer or a safetensors header, fetched with ranged GETs); its
/// tensors are fetched with parallel ranged GETs when loaded, eagerly ([`WeightFile::load`])
/// or through a job ([`crate::read::job`]). Its [`path`](WeightFile::path) is its URL.
pub struct WeightFile {
    path: PathBuf,
    inner: Inner,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

/// A tensor's safetensors dtype and shape, or an error naming `file` and the tensor when
/// safetensors cannot store it (its dtype, or a dimension beyond `usize`).
pub(crate) fn safetensors_entry(
    file: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[u64],
) -> Result<(safetensors::Dtype, Vec<usize>)> {
    let st = to_safetensors_dtype(dtype).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: tensor '{name}': {dtype} cannot be stored in safetensors",
            file.display()
        ))
    })?;
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| Error::Invalid(format!("tensor '{name}': shape too large")))?;
    Ok((st, shape))
}

/// safetensors' dtype for ours, where safetensors has one.
pub fn to_safetensors_dtype(d: Dtype) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match d {
        Dtype::F64 => S::F64,
        Dtype::F32 => S::F32,
        Dtype::F16 => S::F16,
        Dtype::BF16 => S::BF16,
        Dtype::F8E4M3 => S::F8_E4M3,
        Dtype::F8E4M3Fnuz => S::F8_E4M3FNUZ,
        Dtype::F8E5M2 => S::F8_E5M2,
        Dtype::F8E5M2Fnuz => S::F8_E5M2FNUZ,
        Dtype::F8E8M0 => S::F8_E8M0,
        Dtype::C64 => S::C64,
        Dtype::I64 => S::I64,
        Dtype::U64 => S::U64,
        Dtype::I32 => S::I32,
        Dtype::U32 => S::U32,
        Dtype::I16 => S::I16,
        Dtype::U16 => S::U16,
        Dtype::I8 => S::I8,
        Dtype::U8 => S::U8,
        Dtype::Bool => S::BOOL,
        Dtype::C128 | Dtype::C32 => return None,
    })
}

/// Our dtype for safetensors', where the format stores it (sub-byte types are not stored).
pub fn from_safetensors_dtype(d: safetensors::Dtype) -> Option<Dtype> {
    Dtype::ALL
        .iter()
        .copied()
        .find(|&ours| to_safetensors_dtype(ours) == Some(d))
}

impl WeightFile {
    /// Opens a URL (`http://`, `https://`, `s3://`, `hf://`: see [`crate::remote`]; settings
    /// from the environment) or else a local path. A URL needs the `remote` cargo feature:
    /// without it, opening one is [`RemoteError::NotBuilt`](crate::remote::RemoteError).
    pub fn open_location(location: &str) -> Result<WeightFile> {
        if !crate::remote::is_remote(location) {
            return Self::open(location);
        }
        #[cfg(feature = "remote")]
        {
            Self::open_url(location, crate::remote::RemoteSettings::from_env()?)
        }
        #[cfg(not(feature = "remote"))]
        {
            Err(Error::remote(
                location,
                crate::remote::RemoteError::NotBuilt,
            ))
        }
    }

    /// Opens the remote object at `url` with `settings`: one HEAD (pinning its size and ETag)
    /// and at most three small ranged GETs for its index, validated as a local file's is.
    #[cfg(feature = "remote")]
    pub fn open_url(url: &str, settings: crate::remote::RemoteSettings) -> Result<WeightFile> {
        let file = crate::remote::RemoteFile::open_with(url, settings)?;
        let (source, tensors) = RemoteSource::open(file)?;
        Ok(Self::new(
            Path::new(url),
            Inner::Remote(Box::new(source)),
            tensors,
        ))
    }

    /// True for a remote object (opened from a URL).
    pub fn is_remote(&self) -> bool {
        match self.inner {
            #[cfg(feature = "remote")]
            Inner::Remote(_) => true,
            _ => false,
        }
    }

    /// The pinned remote object (size, ETag, settings), for a remote file.
    #[cfg(feature = "remote")]
    pub fn remote(&self) -> Option<&crate::remote::RemoteFile> {
        match &self.inner {
            Inner::Remote(r) => Some(&r.file),
            _ => None,
        }
    }

    /// Opens a FlashPack file (recognised by its trailing magic) or a safetensors file, and
    /// validates its index against the file's size before anything trusts it.
    pub fn open(path: impl AsRef<Path>) -> Result<WeightFile> {
        let path = path.as_ref();
        let file = open_regular(path)?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        let mut tail = [0u8; 8];
        let is_flash = file_len >= 16 && {
            use crate::os::Positioned;
            file.read_exact_at(&mut tail, file_len - 8).is_ok() && &tail == MAGIC
        };
        if is_flash {
            let f = FlashFile::from_file(path, file)?;
            let tensors = f
                .footer
                .records
                .iter()
                .map(|r| {
                    let (start, end) = f.footer.byte_range(r);
                    TensorInfo {
                        name: r.name.clone(),
                        dtype: f.footer.blocks[r.block].dtype,
                        shape: r.shape.clone(),
                        start,
                        end,
                    }
                })
                .collect();
            return Ok(Self::new(path, Inner::Flash(f), tensors));
        }
        Self::open_safetensors(path, file, file_len)
    }

    fn open_safetensors(path: &Path, file: File, file_len: u64) -> Result<WeightFile> {
        let bad = |why: String| {
            Error::Invalid(format!(
                "{}: not a FlashPack file (no magic) nor a valid safetensors file: {why}",
                path.display()
            ))
        };
        if file_len < 8 {
            return Err(bad(format!("{file_len} bytes is too small")));
        }
        // SAFETY: a read-only private mapping used only to hand the safetensors parser a slice of
        // the whole file (it checks the header and every offset against the file's length); only
        // the header's pages are read here.
        let map: Mmap =
            unsafe { MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, "mmap", e))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            let why = match explain_safetensors_error(&e, &map) {
                Some(what) => format!("{e}: {what}"),
                None => e.to_string(),
            };
            bad(why)
        })?;
        let data_start = 8 + n as u64;
        let mut tensors = Vec::new();
        for (name, info) in meta.tensors() {
            let dtype = from_safetensors_dtype(info.dtype).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: tensor '{name}': dtype {:?} is not supported",
                    path.display(),
                    info.dtype
                ))
            })?;
            tensors.push(TensorInfo {
                name,
                dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                start: data_start + info.data_offsets.0 as u64,
                end: data_start + info.data_offsets.1 as u64,
            });
        }
        tensors.sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        let inner = Inner::Safetensors {
            file,
            file_len,
            data_start,
            metadata: meta.metadata().clone(),
        };
        Ok(Self::new(path, inner, tensors))
    }

    fn new(path: &Path, inner: Inner, tensors: Vec<TensorInfo>) -> WeightFile {
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        WeightFile {
            path: path.to_path_buf(),
            inner,
            tensors,
            index,
        }
    }

    /// The file's path; a remote file's URL.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        match &self.inner {
            Inner::Flash(_) => Format::FlashPack,
            Inner::Safetensors { .. } => Format::Safetensors,
            #[cfg(feature = "remote")]
            Inner::Remote(r) => match r.index {
                RemoteIndex::Flash { .. } => Format::FlashPack,
                RemoteIndex::Safetensors { .. } => Format::Safetensors,
            },
        }
    }

    /// The file's size in bytes when it was opened.
    pub fn file_len(&self) -> u64 {
        match &self.inner {
            Inner::Flash(f) => f.file_len,
            Inner::Safetensors { file_len, .. } => *file_len,
            #[cfg(feature = "remote")]
            Inner::Remote(r) => r.file.len(),
        }
    }

    /// A FlashPack file's footer (local or remote).
    pub fn footer(&self) -> Option<&Footer> {
        match &self.inner {
            Inner::Flash(f) => Some(&f.footer),
            Inner::Safetensors { .. } => None,
            #[cfg(feature = "remote")]
            Inner::Remote(r) => match &r.index {
                RemoteIndex::Flash { footer, .. } => Some(footer),
                RemoteIndex::Safetensors { .. } => None,
            },
        }
    }

    /// A FlashPack file's footer JSON exactly as stored (local or remote).
    pub fn footer_json(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Flash(f) => Some(&f.footer_json),
            Inner::Safetensors { .. } => None,
            #[cfg(feature = "remote")]
            Inner::Remote(r) => match &r.index {
                RemoteIndex::Flash { footer_json, .. } => Some(footer_json),
                RemoteIndex::Safetensors { .. } => None,
            },
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The local FlashPack file (footer, checksums), when this is one ([`footer`](Self::footer)
    /// for a remote one too).
    pub fn flashpack(&self) -> Option<&FlashFile> {
        match &self.inner {
            Inner::Flash(f) => Some(f),
            _ => None,
        }
    }

    /// The safetensors `__metadata__` strings: a safetensors file's own, or those a FlashPack
    /// file kept from the safetensors file it was converted from.
    pub fn safetensors_metadata(&self) -> Option<HashMap<String, String>> {
        match &self.inner {
            Inner::Safetensors { metadata, .. } => metadata.clone(),
            #[cfg(feature = "remote")]
            Inner::Remote(r) => match &r.index {
                RemoteIndex::Safetensors { metadata, .. } => metadata.clone(),
                RemoteIndex::Flash { .. } => self.footer().and_then(kept_safetensors_metadata),
            },
            Inner::Flash(f) => kept_safetensors_metadata(&f.footer),
        }
    }

    /// File bytes `[start, end)` that hold every tensor.
    pub fn data_range(&self) -> (u64, u64) {
        match &self.inner {
            Inner::Flash(f) => (0, f.payload_len),
            Inner::Safetensors {
                file_len,
                data_start,
                ..
            } => (*data_start, *file_len),
            #[cfg(feature = "remote")]
            Inner::Remote(r) => r.data_range(),
        }
    }

    /// Where the tensor bytes are read from.
    pub(crate) fn backing(&self) -> Backing<'_> {
        match &self.inner {
            Inner::Flash(f) => Backing::Local(f.data()),
            Inner::Safetensors { file, file_len, .. } => Backing::Local(DataFile {
                path: &self.path,
                file,
                end: *file_len,
                names: TensorNames::Tensors(&self.tensors),
            }),
            #[cfg(feature = "remote")]
            Inner::Remote(r) => Backing::Remote {
                path: &self.path,
                source: r,
                names: match &r.index {
                    RemoteIndex::Flash { footer, .. } => TensorNames::Footer(footer),
                    RemoteIndex::Safetensors { .. } => TensorNames::Tensors(&self.tensors),
                },
            },
        }
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
    /// `opts.verify`.
    pub fn load(self, opts: &LoadOptions) -> Result<Weights> {
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
                if opts.verify {
                    return Err(Error::Invalid(format!(
                        "{}: safetensors files carry no checksums to verify",
                        path.display()
                    )));
                }
                if opts.eager {
                    let d = DataFile {
                        path: &path,
                        file: &file,
                        end: file_len,
                        names: TensorNames::Tensors(&tensors),
                    };
                    let (buf, report) = read::read_owned(&d, data_start, file_len, opts)?;
                    (Memory::Owned(buf), data_start, report)
                } else {
                    let t = Instant::now();
                    // SAFETY: a private (copy-on-write) mapping, as for lazy FlashPack loads:
                    // writes never reach the file; truncating the file while mapped would fault.
                    let map = unsafe { MmapOptions::new().map_copy(&file) }
                        .map_err(|e| Error::io(&path, "mmap", e))?;
                    let report = LoadReport {
                        phases: vec![("mmap_payload", t.elapsed())],
                        ..Default::default()
                    };
                    (Memory::Mapped(map), 0, report)
                }
            }
            #[cfg(feature = "remote")]
            inner @ Inner::Remote(_) => {
                let file = WeightFile {
                    path,
                    inner,
                    tensors,
                    index,
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

    /// Streams file bytes to CUDA memory: region offsets are file offsets (see
    /// [`TensorInfo::start`]); `opts.verify` checks FlashPack checksums on the way.
    ///
    /// # Safety
    /// As for [`read::load_to_device`]: every region's destination is device memory the caller
    /// owns and nothing else touches until this returns. [`WeightFile::load_cuda`] is the safe
    /// form, into memory this crate allocates.
    #[cfg(feature = "cuda")]
    pub unsafe fn load_to_device(
        &self,
        device: &CudaDevice,
        regions: Vec<DeviceRegion>,
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        match &self.inner {
            // SAFETY: the caller upholds this function's contract, which is load_to_device's.
            Inner::Flash(f) => unsafe { read::load_to_device(f, device, regions, opts) },
            Inner::Safetensors { .. } if opts.verify => Err(Error::Invalid(format!(
                "{}: safetensors files carry no checksums to verify",
                self.path.display()
            ))),
            Inner::Safetensors { file, file_len, .. } => {
                let d = DataFile {
                    path: &self.path,
                    file,
                    end: *file_len,
                    names: TensorNames::Tensors(&self.tensors),
                };
                read::stream_to_device(&d, None, device, regions, opts)
            }
            // SAFETY: the caller upholds this function's contract, which is read_cuda's for the
            // regions' destinations.
            #[cfg(feature = "remote")]
            Inner::Remote(_) => unsafe { self.remote_to_device(device, &regions, opts) },
        }
    }

    /// [`load_to_device`](Self::load_to_device) of a remote file: a job of one piece per
    /// region, streamed through the pinned staging pool.
    ///
    /// # Safety
    /// As for `load_to_device`.
    #[cfg(all(feature = "cuda", feature = "remote"))]
    unsafe fn remote_to_device(
        &self,
        device: &CudaDevice,
        regions: &[DeviceRegion],
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        use crate::read::job::{read_cuda, JobPlan, JobRegion, Piece};
        let mut pieces = Vec::with_capacity(regions.len());
        let mut dsts = Vec::with_capacity(regions.len());
        for (k, r) in regions.iter().enumerate() {
            let end = r.offset.checked_add(r.len).ok_or_else(|| {
                Error::Invalid(format!("{}: region {k} overflows", self.path.display()))
            })?;
            pieces.push(Piece {
                file: 0,
                start: r.offset,
                end,
            });
            dsts.push(JobRegion {
                piece: k,
                dst: r.dst,
            });
        }
        let plan = if opts.verify {
            JobPlan::verified(&[self], &pieces)?
        } else {
            JobPlan::new(&[self], &pieces)?
        };
        // SAFETY: the caller upholds read_cuda's contract on every region's destination.
        unsafe { read_cuda(&[self], &plan, device, &dsts, opts) }
    }

    /// Writes these tensors as a FlashPack file (bytes unchanged; `opts` as for [`pack`]). A
    /// safetensors file's `__metadata__` goes into the footer key [`SAFETENSORS_METADATA_KEY`],
    /// so converting back restores it.
    ///
    /// A remote file's tensors are fetched into memory first (the conversion needs them all).
    pub fn to_flashpack(&self, dest: impl AsRef<Path>, opts: &PackOptions) -> Result<PackReport> {
        let data = self.data_bytes(opts.progress, opts.cancel.as_ref())?;
        let mut opts = opts.clone();
        if let Some(meta) = self.safetensors_metadata() {
            let value = serde_json::to_value(meta).map_err(|e| {
                Error::Invalid(format!("{}: __metadata__: {e}", self.path.display()))
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
        let dest = dest.as_ref();
        let mut order = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let (dtype, shape) = safetensors_entry(&self.path, &t.name, t.dtype, &t.shape)?;
            order.push((t, dtype, shape));
        }
        order.sort_by(|(a, da, _), (b, db, _)| db.cmp(da).then_with(|| a.name.cmp(&b.name)));
        let (header, data_len) = safetensors_header(&order, self.safetensors_metadata())
            .map_err(|e| Error::Invalid(format!("{}: {e}", dest.display())))?;

        let dir = prepare_destination(dest)?;
        let cancel = opts.cancel.as_ref();
        cancel::check(cancel, dest)?;
        let data = self.data_bytes(opts.progress, cancel)?;
        let tmp = Staged::create(&dir, dest)?;
        let file = tmp.file();
        let total = header.len() as u64 + data_len;
        file.set_len(total)
            .map_err(|e| Error::io(dest, "set the new file's length", e))?;
        let write = |bytes: &[u8], at: u64| {
            use crate::os::Positioned;
            file.write_all_at(bytes, at)
                .map_err(|e| Error::io(dest, "write", e))
        };
        write(&header, 0)?;
        let bar = progress_bar(opts.progress, total, "writing");
        let mut at = header.len() as u64;
        for (t, _, _) in &order {
            for piece in data.tensor(&self.path, t)?.chunks(SAFETENSORS_PIECE) {
                cancel::check(cancel, dest)?;
                write(piece, at)?;
                crate::os::start_writeback(file, at, piece.len());
                at += piece.len() as u64;
                if let Some(b) = &bar {
                    b.inc(piece.len() as u64);
                }
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        cancel::check(cancel, dest)?;
        file.sync_all().map_err(|e| Error::io(dest, "fsync", e))?;
        match cancel {
            Some(c) => c.commit(dest, || tmp.commit(dest)),
            None => tmp.commit(dest),
        }
    }

    /// A private copy-on-write mapping of the whole file (a lazy load: nothing is read until
    /// touched; writes never reach the file), checked to hold every tensor.
    pub fn map_private(&self) -> Result<MmapMut> {
        let file = self.local_file()?;
        // SAFETY: a private (copy-on-write) mapping, as for lazy loads: writes never reach the
        // file; truncating the file while it is mapped would fault on access (the documented
        // contract of lazy loading), truncation before this point is checked just below.
        let map = unsafe { MmapOptions::new().map_copy(file) }
            .map_err(|e| Error::io(&self.path, "mmap", e))?;
        self.check_mapped_len(map.len())?;
        Ok(map)
    }

    /// Every tensor's bytes: a read-only mapping of a local file, or a remote file's tensor data
    /// fetched into owned memory (with a progress bar when asked; stopped by `cancel`).
    fn data_bytes(&self, progress: bool, cancel: Option<&Cancel>) -> Result<DataBytes> {
        #[cfg(feature = "remote")]
        if self.is_remote() {
            use crate::read::job::{read_host, JobPlan, Piece};
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

    /// The open local file; a remote one is an error (it cannot be mapped).
    fn local_file(&self) -> Result<&File> {
        match &self.inner {
            Inner::Flash(f) => Ok(&f.file),
            Inner::Safetensors { file, .. } => Ok(file),
            #[cfg(feature = "remote")]
            Inner::Remote(_) => Err(Error::Invalid(format!(
                "{}: a URL cannot be mapped; load it eagerly",
                self.path.display()
            ))),
        }
    }

    /// A mapping of `len` bytes holds every tensor the file had when opened, or the file got
    /// shorter since (an error, never a slice past the mapping).
    fn check_mapped_len(&self, len: usize) -> Result<()> {
        let (_, end) = self.data_range();
        if (len as u64) < end {
            return Err(Error::Invalid(format!(
                "{}: the file got shorter since it was opened ({len} bytes, its tensors need {end})",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// A read-only mapping of the whole file, at least as long as the data it had when opened
    /// (every tensor range was checked against that), so tensor slices of it cannot fail.
    fn map_readonly(&self) -> Result<Mmap> {
        let file = self.local_file()?;
        // SAFETY: a read-only mapping of a file we only read; as for every mapping, truncating
        // the file while it is mapped would fault on access (checked against just below, for
        // truncation before this point).
        let map = unsafe { MmapOptions::new().map(file) }
            .map_err(|e| Error::io(&self.path, "mmap", e))?;
        self.check_mapped_len(map.len())?;
        Ok(map)
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
            Error::Invalid(format!(
                "{}: tensor '{}' (bytes {}..{}) is not in the data read",
                path.display(),
                t.name,
                t.start,
                t.end
            ))
        })
    }
}

/// The safetensors `__metadata__` a FlashPack footer kept from a conversion.
fn kept_safetensors_metadata(footer: &Footer) -> Option<HashMap<String, String>> {
    footer
        .extra
        .get(SAFETENSORS_METADATA_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The largest header the `safetensors` crate parses (100 MB); larger is `HeaderTooLarge`.
const MAX_SAFETENSORS_HEADER: usize = 100_000_000;

/// The tensor a `safetensors` error is about, for the errors that do not name it (a bad tensor
/// entry, a range past the end of the file); `None` for every other error, so that the header
/// is parsed again only where the crate already accepted its size.
fn explain_safetensors_error(e: &safetensors::SafeTensorError, file: &[u8]) -> Option<String> {
    use safetensors::SafeTensorError as E;
    match e {
        E::TensorInvalidInfo | E::MetadataIncompleteBuffer | E::ValidationOverflow => {
            explain_bad_tensor(file)
        }
        _ => None,
    }
}

/// Names the first tensor (by offset) of a safetensors header that makes it invalid, and why:
/// a shape and dtype that do not match its byte range, or a range past the end of the file
/// (the `safetensors` crate's errors for these do not name the tensor). A header longer than
/// [`MAX_SAFETENSORS_HEADER`] is not parsed.
fn explain_bad_tensor(file: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(file.get(..8)?.try_into().ok()?)).ok()?;
    if n > MAX_SAFETENSORS_HEADER {
        return None;
    }
    let data_start = 8usize.checked_add(n)?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(file.get(8..data_start)?).ok()?;
    let mut tensors: Vec<(&String, safetensors::tensor::TensorInfo)> = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, v)| Some((name, serde_json::from_value(v.clone()).ok()?)))
        .collect();
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    tensors.into_iter().find_map(|(name, t)| {
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()));
        let (s, e) = t.data_offsets;
        let end = data_start.saturating_add(e);
        match bits {
            Some(b) if b % 8 == 0 && e.checked_sub(s) == Some(b / 8) => (end > file.len())
                .then(|| {
                    format!(
                        "tensor '{name}' ends at byte {end}, past the end of the {}-byte file (truncated?)",
                        file.len()
                    )
                }),
            _ => Some(format!(
                "tensor '{name}': its shape {:?} and dtype {:?} do not fit its data_offsets {s}..{e}",
                t.shape, t.dtype
            )),
        }
    })
}

/// How [`WeightFile::to_safetensors_with`] writes.
#[derive(Clone, Debug, Default)]
pub struct SafetensorsOptions {
    /// Show a progress bar on stderr for large files.
    pub progress: bool,
    /// Checked between pieces and before the new file replaces the destination.
    pub cancel: Option<Cancel>,
}

/// Tensor bytes written per call (and per cancellation check).
const SAFETENSORS_PIECE: usize = 4 << 20;
/// The largest header the `safetensors` crate writes or reads.
const SAFETENSORS_MAX_HEADER: usize = 100_000_000;

/// A safetensors file's first bytes (u64 header length, JSON header padded with spaces to a
/// multiple of 8) for tensors in `order`, and the length of the data after it. The JSON comes
/// from the `safetensors` crate's own `Metadata`, so the file is the one it would write.
fn safetensors_header(
    order: &[(&TensorInfo, safetensors::Dtype, Vec<usize>)],
    metadata: Option<HashMap<String, String>>,
) -> std::result::Result<(Vec<u8>, u64), String> {
    use safetensors::tensor::{Metadata, TensorInfo as StInfo};
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(order.len());
    for (t, dtype, shape) in order {
        let len = usize::try_from(t.end - t.start).map_err(|e| e.to_string())?;
        let info = StInfo {
            dtype: *dtype,
            shape: shape.clone(),
            data_offsets: (offset, offset + len),
        };
        offset += len;
        infos.push((t.name.clone(), info));
    }
    let metadata = Metadata::new(metadata, infos).map_err(|e| e.to_string())?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    if json.len() > SAFETENSORS_MAX_HEADER {
        return Err(format!(
            "the safetensors header would be {} bytes, over the format's limit of {SAFETENSORS_MAX_HEADER}",
            json.len()
        ));
    }
    let mut header = (json.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&json);
    Ok((header, offset as u64))
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

/// Tensors loaded into one CUDA allocation (feature `cuda`), see [`WeightFile::load_cuda`].
#[cfg(feature = "cuda")]
pub struct CudaWeights {
    pub buffer: crate::sink::cuda::DeviceBuffer,
    /// File offset of the buffer's first byte.
    base: u64,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    pub report: LoadReport,
}

#[cfg(feature = "cuda")]
impl CudaWeights {
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
            .ok_or_else(|| Error::Invalid(format!("no tensor '{name}'")))?;
        let mut out = vec![0u8; (t.end - t.start) as usize];
        self.buffer
            .copy_to_host((t.start - self.base) as usize, &mut out)?;
        Ok(out)
    }

    fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
}

#[cfg(feature = "cuda")]
impl WeightFile {
    /// Loads every tensor into one new allocation on CUDA device `ordinal`, streamed through the
    /// pinned staging pool (host memory never holds the whole file).
    pub fn load_cuda(&self, ordinal: usize, opts: &LoadOptions) -> Result<CudaWeights> {
        use crate::sink::cuda::DeviceBuffer;
        let device = CudaDevice::new(ordinal)?;
        let (start, end) = self.data_range();
        let len = usize::try_from(end - start)
            .map_err(|_| Error::Invalid(format!("{}: data too large", self.path.display())))?;
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
            buffer,
            base: start,
            tensors: self.tensors.clone(),
            index: self.index.clone(),
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensorError as E;

    /// A safetensors file whose tensor 'w' says F32 [4] (16 bytes) over an 8-byte range.
    fn bad_entry() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0; 8]);
        file
    }

    #[test]
    fn only_the_errors_about_a_tensor_parse_the_header_again() {
        let file = bad_entry();
        let why = explain_safetensors_error(&E::TensorInvalidInfo, &file).unwrap();
        assert!(why.contains("tensor 'w'"), "{why}");
        for e in [E::HeaderTooLarge, E::HeaderTooSmall, E::InvalidHeaderLength] {
            assert_eq!(explain_safetensors_error(&e, &file), None, "{e:?}");
        }
    }
}
