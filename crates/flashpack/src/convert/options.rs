//! What a conversion is asked to do ([`ConvertOptions`], with its tensor [`Filter`]) and what it
//! did ([`Converted`], [`Output`]): plain values shared by the single-file and the checkpoint
//! conversion.
use std::path::PathBuf;
use std::time::Duration;

use crate::cancel::Cancel;
use crate::format::tensors::{Format, Target};
use crate::Footer;

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

/// How [`convert`](super::convert) writes (the `flashpack convert` flags of the same names).
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
