//! FlashPack: model weights from a file into memory at the speed of the disk.
//!
//! A FlashPack file keeps a model's tensors as a few contiguous blocks (one per dtype) followed
//! by a JSON footer. This crate plans and writes such files ([`write`](mod@write)), validates their footers
//! ([`format`](mod@format)) and loads them ([`read`]): lazily through a private copy-on-write mapping, or
//! eagerly with a pool of reader threads that use `O_DIRECT` when the file is not cached.
//!
//! ```
//! use flashpack::{write::{pack, PackEntry, PackOptions}, read::{load, LoadOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! let w: Vec<u8> = (0..64u8).collect();
//! pack(&path, &[PackEntry::new("w", Dtype::F32, vec![4, 4], &w)], &PackOptions::default()).unwrap();
//! let loaded = load(&path, &LoadOptions::default()).unwrap();
//! assert_eq!(loaded.tensor_bytes("w").unwrap(), &w[..]);
//! ```
//!
//! ## Where to start
//!
//! - Any weight file (FlashPack or safetensors; a URL with the `remote` feature): open it with
//!   [`weights::WeightFile`], list its tensors, load them lazily, eagerly or onto a device,
//!   verify it, convert it. [`weights::Weights`] is what a load gives, whatever the format.
//! - A whole checkpoint (an index json and its shards): [`checkpoint`].
//! - Conversion between the formats, one file or a sharded checkpoint, with new shards or the
//!   source's: [`convert::convert`] (the `flashpack convert` command is a thin layer over it).
//! - FlashPack files themselves: [`write::pack`] (or [`write::pack_to_writer`] /
//!   [`write::pack_to_vec`], no file needed), [`read::load`] and [`read::verify`].
//!   [`read::Loaded`] is the FlashPack-level result under [`weights::Weights`]: the footer and
//!   the payload as one buffer (what the Python extension hands to torch without a copy).
//! - The format as values, no I/O: [`format::Footer`] (parse with [`Footer::decode`] or
//!   [`Footer::from_file_bytes`]), [`format::plan`], [`Dtype`].
//! - Errors: one [`Error`] enum; its variants are the kinds a caller acts on (I/O with the
//!   path, a corrupt file, out of memory, unsupported, a device, a caller mistake).
//!
//! The file format is specified in `docs/FORMAT.md` and the engine's design in
//! `docs/ARCHITECTURE.md`, both in the repository.
#![deny(missing_docs)]
// docs.rs builds every feature with `--cfg docsrs` on nightly: each feature-gated item is labelled
// with the feature it needs (rustdoc's automatic `doc(cfg)`), as `make lint` checks.
#![cfg_attr(docsrs, feature(doc_cfg))]
pub mod cancel;
#[cfg(feature = "candle")]
pub mod candle;
pub mod checkpoint;
pub mod convert;
mod error;
pub mod format;
pub mod os;
mod progress;
pub mod read;
pub mod remote;
mod settings;
pub mod sink;
pub mod source;
pub mod warning;
pub mod weights;
pub mod write;

pub use error::{CheckpointError, ConvertError, Error, Result, SafetensorsError};
pub use format::{Dtype, Footer, FormatError};

/// Internals the fuzz targets (crates/flashpack/fuzz) check directly. Built only under
/// `cargo fuzz`, which sets `--cfg fuzzing`: not part of the public API.
#[cfg(fuzzing)]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing {
    pub fn block_alignment(align_bytes: u64, elem_size: u64) -> Option<u64> {
        crate::format::block_alignment(align_bytes, elem_size)
    }
    pub fn element_alignment(align_bytes: u64, elem_size: u64) -> u64 {
        crate::format::element_alignment(align_bytes, elem_size)
    }
    pub fn numel(shape: &[u64]) -> Option<u64> {
        crate::format::numel(shape)
    }
    pub fn chunk_step(chunk_bytes: usize) -> u64 {
        crate::read::chunk_step(chunk_bytes)
    }
    pub fn plan_chunks(start: u64, end: u64, chunk_bytes: usize) -> Vec<crate::read::Chunk> {
        crate::read::plan_chunks(start, end, chunk_bytes)
    }
}
