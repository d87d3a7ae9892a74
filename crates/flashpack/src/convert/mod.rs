//! Conversion: weights written as FlashPack or safetensors, bit-exact, whichever way round; one
//! file or a checkpoint of several (an index json and its shards) to one file, and any of them
//! to a folder of shards with their index (the source's own split, or a new one of bounded
//! size). Tensor bytes, names, dtypes and shapes are copied unchanged; a safetensors file's
//! `__metadata__` and a sharded source's index are kept in a pack's footer, so converting back
//! writes them again.
//!
//! One call, [`convert`], takes an opened [`Checkpoint`] (a single file is a checkpoint of one
//! shard), a destination and [`ConvertOptions`], and returns what it wrote as [`Converted`].
//! Nothing partial is ever left at the destination: one output file is written unnamed beside
//! it and linked over it once complete and synced; a folder of shards is written beside it
//! under a hidden name and renamed into place once every shard and the index are complete and
//! the result opens as a valid checkpoint. [`ConvertOptions::cancel`] stops it between chunks
//! with the destination as it was. What cannot be done as asked is an
//! [`crate::Error::Convert`] holding a [`ConvertError`].
//!
//! The pieces are public too: [`WeightFile::to_flashpack`](crate::weights::WeightFile::to_flashpack)
//! and [`to_safetensors`](crate::weights::WeightFile::to_safetensors) for one file,
//! [`write_index`] for an index over files already written, [`plan_shards`] and
//! [`shard_file_name`] for a split as transformers makes it.
//!
//! ```
//! use flashpack::checkpoint::Checkpoint;
//! use flashpack::convert::{convert, ConvertOptions, Output, Target};
//! use flashpack::write::{pack, PackEntry, PackOptions};
//! use flashpack::Dtype;
//! let dir = tempfile::tempdir().unwrap();
//! let fp = dir.path().join("m.flashpack");
//! let w: Vec<u8> = (0..64u8).collect();
//! let entries = [
//!     PackEntry::new("a", Dtype::F32, vec![8], &w[..32]),
//!     PackEntry::new("b", Dtype::F32, vec![8], &w[32..]),
//! ];
//! pack(&fp, &entries, &PackOptions::default()).unwrap();
//!
//! // One FlashPack file -> one safetensors file (the extension picks the format).
//! let st = dir.path().join("m.safetensors");
//! let done = convert(Checkpoint::open(&fp).unwrap(), Some(&st), &ConvertOptions::default()).unwrap();
//! assert_eq!((done.target, done.tensors, done.written.as_path()), (Target::Safetensors, 2, st.as_path()));
//!
//! // ... -> a folder of shards of at most 32 bytes each, with their index.
//! let out = dir.path().join("sharded");
//! let opts = ConvertOptions { max_shard_size: Some(32), ..ConvertOptions::default() };
//! let done = convert(Checkpoint::open(&st).unwrap(), Some(&out), &opts).unwrap();
//! assert!(matches!(&done.output, Output::Sharded { shards: 2, .. }));
//! let ckpt = Checkpoint::open(&out).unwrap();
//! assert_eq!((ckpt.len(), ckpt.shards().len()), (2, 2));
//! ```
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::checkpoint::{Checkpoint, Shard};
use crate::weights::Format;
use crate::{Error, Footer, Result};

mod checkpoint;
mod error;
mod file;
mod index;
mod shards;

pub use error::ConvertError;
pub use file::SafetensorsOptions;
pub use index::write_index;
pub use shards::{plan_shards, shard_file_name};

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A FlashPack file (`.flashpack`).
    Flashpack,
    /// A safetensors file (`.safetensors`).
    Safetensors,
}

impl Target {
    /// The file extension of this format, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Target::Flashpack => "flashpack",
            Target::Safetensors => "safetensors",
        }
    }

    /// The format `path`'s extension names (any case), if it names one.
    pub fn by_extension(path: &Path) -> Option<Target> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "flashpack" => Some(Target::Flashpack),
            "safetensors" => Some(Target::Safetensors),
            _ => None,
        }
    }

    /// The other format than `format`'s (what a conversion writes when nothing says).
    pub fn other_than(format: Format) -> Target {
        match format {
            Format::FlashPack => Target::Safetensors,
            Format::Safetensors => Target::Flashpack,
        }
    }
}

/// Tensor names to leave out: exact names, prefixes, suffixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Names left out.
    pub names: Vec<String>,
    /// Names starting with one of these are left out.
    pub prefixes: Vec<String>,
    /// Names ending with one of these are left out.
    pub suffixes: Vec<String>,
}

impl Filter {
    /// True when nothing is left out.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.prefixes.is_empty() && self.suffixes.is_empty()
    }

    /// True when the tensor `name` is left out.
    pub fn drops(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }
}

/// How [`convert`] writes (the `flashpack convert` flags of the same names).
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The output format; `None`: the destination's extension, else the other format than the
    /// source's.
    pub to: Option<Target>,
    /// FlashPack output: with xxh3-64 checksums (default true).
    pub checksums: bool,
    /// FlashPack output: the block alignment (`None`: the format's default).
    pub align_bytes: Option<u64>,
    /// Tensors to leave out (FlashPack output only).
    pub ignore: Filter,
    /// Show progress bars on stderr for large files.
    pub progress: bool,
    /// Stops the conversion between chunks, leaving the destination as it was.
    pub cancel: Option<Cancel>,
    /// Write a folder of shards with the source's own split (or the split a pack remembers).
    pub sharded: bool,
    /// Write a folder of shards of at most this many bytes each.
    pub max_shard_size: Option<u64>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            to: None,
            checksums: true,
            align_bytes: None,
            ignore: Filter::default(),
            progress: false,
            cancel: None,
            sharded: false,
            max_shard_size: None,
        }
    }
}

impl ConvertOptions {
    /// True when the output is a checkpoint of several files (a folder).
    pub fn sharded_output(&self) -> bool {
        self.sharded || self.max_shard_size.is_some()
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub enum Output {
    /// One FlashPack file: its footer as written, and its length.
    FlashPack {
        /// The footer written (version, alignment, checksums, tensors).
        footer: Box<Footer>,
        /// Bytes of the whole file.
        file_len: u64,
    },
    /// One safetensors file, of `file_len` bytes.
    Safetensors {
        /// Bytes of the whole file.
        file_len: u64,
    },
    /// A folder of `shards` files and their index json `index` (a name inside the folder).
    Sharded {
        /// How many shard files.
        shards: usize,
        /// The index's file name.
        index: String,
    },
}

/// A finished conversion.
#[derive(Clone, Debug)]
pub struct Converted {
    /// The source as opened: the single weight file, or the index json.
    pub source: PathBuf,
    /// The source's format (its first shard's).
    pub source_format: Format,
    /// How many files the source has.
    pub source_shards: usize,
    /// True when the source is a checkpoint with an index json (not a single file).
    pub source_indexed: bool,
    /// The file (or folder, for a sharded output) written.
    pub written: PathBuf,
    /// The format written.
    pub target: Target,
    /// What was written.
    pub output: Output,
    /// Tensors written.
    pub tensors: usize,
    /// Tensor bytes written.
    pub data_bytes: u64,
    /// The pack's phases and how long each took, in order (a single FlashPack output from a
    /// single file; empty otherwise).
    pub phases: Vec<(&'static str, Duration)>,
    /// How long the conversion took.
    pub elapsed: Duration,
}

/// Converts `src` as `opts` asks, writing `dest`: a weight file, or a folder (which receives
/// `{source stem}.{ext}`, or the shards and index of a sharded output); `None`: beside the
/// source (a URL's output: the current folder). See the module doc.
pub fn convert(src: Checkpoint, dest: Option<&Path>, opts: &ConvertOptions) -> Result<Converted> {
    let t = Instant::now();
    let mut done = if src.index_path().is_some() || opts.sharded_output() {
        checkpoint::convert(src, dest, opts)?
    } else {
        let path = src.path().to_path_buf();
        let file = src.into_shards().pop().map(Shard::into_file);
        let file = file.ok_or_else(|| Error::convert(&path, ConvertError::NoWeightFile))?;
        file::convert(&path, file, dest, opts)?
    };
    done.elapsed = t.elapsed();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{pack, PackEntry, PackOptions};
    use crate::Dtype;

    /// `Error::Convert` for `path`, its `ConvertError`; panics on any other error.
    fn refusal(e: Error, path: &Path) -> ConvertError {
        match e {
            Error::Convert { path: p, source } if p == path => *source,
            other => panic!("not a conversion refusal for {}: {other}", path.display()),
        }
    }

    #[test]
    fn refusals_are_typed_and_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fp = dir.path().join("m.flashpack");
        let w: Vec<u8> = (0..16u8).collect();
        pack(
            &fp,
            &[PackEntry::new("w", Dtype::U8, vec![16], &w)],
            &PackOptions::default(),
        )
        .unwrap();
        let open = || Checkpoint::open(&fp).unwrap();

        let st = dir.path().join("x.safetensors");
        let opts = ConvertOptions {
            to: Some(Target::Flashpack),
            ..ConvertOptions::default()
        };
        let e = convert(open(), Some(&st), &opts).unwrap_err();
        assert!(matches!(
            refusal(e, &st),
            ConvertError::TargetMismatch {
                to: Target::Flashpack,
                extension: Target::Safetensors
            }
        ));

        let opts = ConvertOptions {
            checksums: false,
            ..ConvertOptions::default()
        };
        let e = convert(open(), Some(&st), &opts).unwrap_err();
        assert!(matches!(
            refusal(e, &st),
            ConvertError::FlashPackOnlyOptions
        ));

        let opts = ConvertOptions {
            ignore: Filter {
                prefixes: vec![String::new()],
                ..Filter::default()
            },
            ..ConvertOptions::default()
        };
        let out = dir.path().join("y.flashpack");
        let e = convert(open(), Some(&out), &opts).unwrap_err();
        assert!(matches!(refusal(e, &fp), ConvertError::EverythingIgnored));

        let opts = ConvertOptions {
            sharded: true,
            ..ConvertOptions::default()
        };
        let e = convert(open(), None, &opts).unwrap_err();
        assert!(matches!(
            refusal(e, &fp),
            ConvertError::NeedsDestinationFolder
        ));
        let e = convert(open(), Some(&dir.path().join("new")), &opts).unwrap_err();
        assert!(matches!(refusal(e, &fp), ConvertError::NoSplitToKeep));
        let opts = ConvertOptions {
            max_shard_size: Some(8),
            ..ConvertOptions::default()
        };
        let e = convert(open(), Some(dir.path()), &opts).unwrap_err();
        assert!(matches!(
            refusal(e, dir.path()),
            ConvertError::DestinationNotEmpty
        ));
        assert!(!out.exists() && !st.exists() && !dir.path().join("new").exists());
    }

    #[test]
    fn a_single_file_round_trips_and_reports_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let fp = dir.path().join("m.flashpack");
        let w: Vec<u8> = (0..32u8).collect();
        pack(
            &fp,
            &[PackEntry::new("w", Dtype::F32, vec![8], &w)],
            &PackOptions::default(),
        )
        .unwrap();
        // No destination: beside the source, the other format.
        let done = convert(
            Checkpoint::open(&fp).unwrap(),
            None,
            &ConvertOptions::default(),
        )
        .unwrap();
        let st = dir.path().join("m.safetensors");
        assert_eq!(done.written, st);
        assert_eq!(
            (done.source_format, done.source_shards),
            (Format::FlashPack, 1)
        );
        assert!(!done.source_indexed);
        assert_eq!((done.tensors, done.data_bytes), (1, 32));
        assert!(matches!(done.output, Output::Safetensors { file_len } if file_len > 32));

        let again = dir.path().join("again.flashpack");
        let done = convert(
            Checkpoint::open(&st).unwrap(),
            Some(&again),
            &ConvertOptions::default(),
        )
        .unwrap();
        assert!(
            matches!(done.output, Output::FlashPack { ref footer, .. } if footer.records().len() == 1)
        );
        assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&fp).unwrap());
    }
}
