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
//!
//! One concept per file: this module opens a file and answers what it holds;
//! `safetensors_file` parses and writes safetensors headers, `load` holds loaded tensors,
//! `cuda` loads straight to a GPU; writing either format from the other is [`crate::convert`].
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::read::{Backing, DataFile, FlashFile, TensorNames};
use crate::remote::LocationOptions;
use crate::source::header::{flash_tensors, read_index, WeightIndex};
use crate::source::{Parts, Source};
use crate::{Error, Footer, Result};

#[cfg(feature = "cuda")]
mod cuda;
mod load;
mod safetensors_file;

pub use crate::format::safetensors_header::{
    from_safetensors_dtype, safetensors_shape, to_safetensors_dtype,
};
pub use crate::format::tensors::{Format, TensorInfo, UnloadableTensor};
#[cfg(feature = "cuda")]
pub use cuda::CudaWeights;
pub use load::{TensorView, Weights};
pub(crate) use safetensors_file::{safetensors_entry, write_safetensors_file};

/// FlashPack footer key holding a converted safetensors file's `__metadata__` strings.
pub const SAFETENSORS_METADATA_KEY: &str = "safetensors_metadata";

/// An open weight file: a local source taken apart for the local readers (mapped, positioned,
/// `O_DIRECT`), a remote one kept whole.
enum Inner {
    /// A local FlashPack file (the local readers and [`WeightFile::flashpack`] take it).
    Flash(FlashFile),
    /// A local safetensors file.
    Safetensors {
        file: File,
        file_len: u64,
        data_start: u64,
        metadata: Option<HashMap<String, String>>,
    },
    /// A remote object (either format): its index read at open, its tensors on load.
    #[cfg(feature = "remote")]
    Remote(Box<Remote>),
}

/// A remote weight file: its pinned object and index.
#[cfg(feature = "remote")]
struct Remote {
    file: Box<crate::remote::RemoteFile>,
    index: Index,
}

/// The index of a remote weight file.
#[cfg(feature = "remote")]
enum Index {
    Flash(crate::source::header::FlashIndex),
    Safetensors {
        data_start: u64,
        metadata: Option<HashMap<String, String>>,
    },
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
    unloadable: Vec<UnloadableTensor>,
}

impl WeightFile {
    /// Opens a URL (`http://`, `https://`, `s3://`, `hf://`: see [`crate::remote`]; settings
    /// from the environment) or else a local path. A URL needs the `remote` cargo feature:
    /// without it, opening one is [`RemoteError::NotBuilt`](crate::remote::RemoteError).
    pub fn open_location(location: &str) -> Result<WeightFile> {
        Self::open_location_with(location, &LocationOptions::default())
    }

    /// As [`open_location`](Self::open_location), a URL opened with `opts` (its settings and
    /// cancellation). Local or remote is decided here, once: the one entry point for callers
    /// (the CLI, the Python extension) that take either.
    pub fn open_location_with(
        location: impl AsRef<Path>,
        opts: &LocationOptions,
    ) -> Result<WeightFile> {
        Self::from_source(Source::open(location, opts)?)
    }

    /// Opens the remote object at `url` with `settings`: one HEAD (pinning its size and ETag)
    /// and at most three small ranged GETs for its index, validated as a local file's is.
    #[cfg(feature = "remote")]
    pub fn open_url(url: &str, settings: crate::remote::RemoteSettings) -> Result<WeightFile> {
        Self::from_source(Source::open_url(url, settings)?)
    }

    /// Reads `source`'s index (a FlashPack footer or a safetensors header: the same ranged
    /// reads for a local file and a remote object) and validates it against the source's size.
    pub fn from_source(source: Source) -> Result<WeightFile> {
        let path = source.location().to_path_buf();
        let index = read_index(&source)?;
        let (inner, tensors, unloadable) = match (source.into_parts(), index) {
            (Parts::Local { path, file, len }, WeightIndex::Flash(f)) => {
                let tensors = flash_tensors(&f.footer);
                let flash = FlashFile::from_index(path, file, len, f);
                (Inner::Flash(flash), tensors, Vec::new())
            }
            (Parts::Local { file, len, .. }, WeightIndex::Safetensors(st)) => {
                let inner = Inner::Safetensors {
                    file,
                    file_len: len,
                    data_start: st.data_start,
                    metadata: st.metadata,
                };
                (inner, st.tensors, st.unloadable)
            }
            #[cfg(feature = "remote")]
            (Parts::Remote(file), WeightIndex::Flash(f)) => {
                let tensors = flash_tensors(&f.footer);
                let index = Index::Flash(f);
                (
                    Inner::Remote(Box::new(Remote { file, index })),
                    tensors,
                    Vec::new(),
                )
            }
            #[cfg(feature = "remote")]
            (Parts::Remote(file), WeightIndex::Safetensors(st)) => {
                let index = Index::Safetensors {
                    data_start: st.data_start,
                    metadata: st.metadata,
                };
                let inner = Inner::Remote(Box::new(Remote { file, index }));
                (inner, st.tensors, st.unloadable)
            }
        };
        Ok(Self::new(&path, inner, tensors).with_unloadable(unloadable))
    }

    /// True for a remote object (opened from a URL).
    pub fn is_remote(&self) -> bool {
        match self.inner {
            #[cfg(feature = "remote")]
            Inner::Remote(_) => true,
            _ => false,
        }
    }

    /// True for a remote FlashPack file with checksums whose server offers no strong ETag to
    /// pin its version by (only a Last-Modified of one-second resolution, a weak ETag, or
    /// nothing): every load checks its checksums as the parts arrive, `verify` or not, so a
    /// replacement the validators cannot see is still an error, never a mix of versions.
    pub fn checks_by_default(&self) -> bool {
        #[cfg(feature = "remote")]
        if let Some(r) = self.remote() {
            let has_checksums = self
                .footer()
                .and_then(|f| f.checksums.as_ref())
                .is_some_and(|c| c.is_supported());
            return has_checksums && r.version_pin() != crate::remote::VersionPin::ETag;
        }
        false
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
        Self::from_source(Source::open_local(path)?)
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
            unloadable: Vec::new(),
        }
    }

    fn with_unloadable(mut self, unloadable: Vec<UnloadableTensor>) -> WeightFile {
        self.unloadable = unloadable;
        self
    }

    /// The file's path; a remote file's URL.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        match &self.inner {
            Inner::Flash(_) => Format::FlashPack,
            Inner::Safetensors { .. } => Format::Safetensors,
            #[cfg(feature = "remote")]
            Inner::Remote(r) => match r.index {
                Index::Flash(_) => Format::FlashPack,
                Index::Safetensors { .. } => Format::Safetensors,
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
                Index::Flash(f) => Some(&f.footer),
                Index::Safetensors { .. } => None,
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
                Index::Flash(f) => Some(&f.footer_json),
                Index::Safetensors { .. } => None,
            },
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensors of a safetensors file that cannot be loaded (in file order), not among
    /// [`tensors`](Self::tensors): see [`UnloadableTensor`].
    pub fn unloadable(&self) -> &[UnloadableTensor] {
        &self.unloadable
    }

    /// True when the file holds a tensor called `name`, loadable or not.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.unloadable.iter().any(|u| u.name == name)
    }

    /// Every tensor can be loaded, or the error of the first that cannot (what loading or
    /// converting the whole file fails with, as `safetensors.torch.load_file` does).
    pub fn check_loadable(&self) -> Result<()> {
        match self.unloadable.first() {
            Some(t) => Err(self.unloadable_error(t)),
            None => Ok(()),
        }
    }

    /// The error of asking for unloadable tensor `t`: [`Error::Unsupported`] naming the file,
    /// the tensor, its dtype and why.
    pub fn unloadable_error(&self, t: &UnloadableTensor) -> Error {
        Error::Unsupported(format!(
            "{}: tensor '{}': {}",
            self.path.display(),
            t.name,
            t.reason
        ))
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
                Index::Safetensors { metadata, .. } => metadata.clone(),
                Index::Flash(f) => kept_safetensors_metadata(&f.footer),
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
            Inner::Remote(r) => match &r.index {
                Index::Flash(f) => (0, f.payload_len),
                Index::Safetensors { data_start, .. } => (*data_start, r.file.len()),
            },
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
                file: &r.file,
                names: match &r.index {
                    Index::Flash(f) => TensorNames::Footer(&f.footer),
                    Index::Safetensors { .. } => TensorNames::Tensors(&self.tensors),
                },
            },
        }
    }

    /// A private copy-on-write mapping of the whole file (a lazy load: nothing is read until
    /// touched; writes never reach the file), checked to hold every tensor.
    pub fn map_private(&self) -> Result<MmapMut> {
        // The lazy load's own mapping (one place that maps and checks the file's length).
        let opts = crate::read::LoadOptions::default();
        crate::read::job::map_private(self, false, &opts).map(|(map, _)| map)
    }

    /// The open local file; a remote one is an error (it cannot be mapped).
    fn local_file(&self) -> Result<&File> {
        match &self.inner {
            Inner::Flash(f) => Ok(&f.file),
            Inner::Safetensors { file, .. } => Ok(file),
            #[cfg(feature = "remote")]
            Inner::Remote(_) => Err(Error::Unsupported(format!(
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
            // As for a read that runs out of bytes (see read::pool).
            return Err(Error::io(
                &self.path,
                format!(
                    "map (the file got shorter since it was opened: {len} bytes, its tensors need {end})"
                ),
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        Ok(())
    }

    /// A read-only mapping of the whole file, at least as long as the data it had when opened
    /// (every tensor range was checked against that), so tensor slices of it cannot fail.
    pub(crate) fn map_readonly(&self) -> Result<Mmap> {
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

/// The safetensors `__metadata__` a FlashPack footer kept from a conversion.
fn kept_safetensors_metadata(footer: &Footer) -> Option<HashMap<String, String>> {
    footer
        .extra
        .get(SAFETENSORS_METADATA_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

impl crate::read::job::JobFile for WeightFile {
    fn path(&self) -> &Path {
        WeightFile::path(self)
    }
    fn format(&self) -> Format {
        WeightFile::format(self)
    }
    fn footer(&self) -> Option<&Footer> {
        WeightFile::footer(self)
    }
    fn data_range(&self) -> (u64, u64) {
        WeightFile::data_range(self)
    }
    fn checks_by_default(&self) -> bool {
        WeightFile::checks_by_default(self)
    }
    #[allow(private_interfaces)]
    fn backing(&self) -> Backing<'_> {
        WeightFile::backing(self)
    }
}
