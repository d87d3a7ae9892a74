//! What can stop a conversion before or while it writes: options that do not fit the source or
//! the destination, a source that cannot be written as asked, a destination that is not a new
//! file or an empty folder. Each is wrapped in [`Error::Convert`](crate::Error::Convert) with
//! the file or folder it concerns; the texts name the options as the `flashpack` command spells
//! them (`--to`, `--max-shard-size`, ...), which are [`ConvertOptions`](super::ConvertOptions)'s
//! fields.
//!
//! ```
//! use flashpack::convert::{ConvertError, Target};
//! use flashpack::Error;
//! let e = Error::convert("out.safetensors", ConvertError::TargetMismatch {
//!     to: Target::Flashpack,
//!     extension: Target::Safetensors,
//! });
//! assert_eq!(
//!     e.to_string(),
//!     "out.safetensors: --to flashpack does not match the destination's .safetensors extension"
//! );
//! ```
use std::collections::HashMap;

use super::Target;
use crate::checkpoint::CHECKPOINT_INDEX_KEY;
use crate::Error;

/// Why a conversion cannot be done as asked (see [`Error::Convert`], which names the file).
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The output format asked for (`to`) is not the one the destination's extension names.
    #[error(
        "--to {} does not match the destination's .{} extension",
        to.extension(),
        extension.extension()
    )]
    TargetMismatch {
        /// The format asked for.
        to: Target,
        /// The format the destination's extension names.
        extension: Target,
    },
    /// Checksums off, an alignment or tensors left out were asked of a safetensors output.
    #[error("--no-checksums, --align-bytes and --ignore-* apply to FlashPack output only")]
    FlashPackOnlyOptions,
    /// A sharded output was asked for without a destination folder.
    #[error("--sharded and --max-shard-size write a folder: give it as the destination")]
    NeedsDestinationFolder,
    /// The filter left no tensor to write.
    #[error("every tensor was left out by --ignore-names/--ignore-prefixes/--ignore-suffixes")]
    EverythingIgnored,
    /// A sharded output keeping the source's split, of a single file that remembers none.
    #[error(
        "one file, and not converted from a sharded checkpoint, so it has no split to keep: \
         give --max-shard-size"
    )]
    NoSplitToKeep,
    /// A tensor the remembered split does not place.
    #[error(
        "tensor '{tensor}' is not in the remembered shard split (footer key \
         '{CHECKPOINT_INDEX_KEY}'): give --max-shard-size"
    )]
    NotInRememberedSplit {
        /// The tensor concerned.
        tensor: String,
    },
    /// Shards with different safetensors `__metadata__` merged into one file.
    #[error(
        "shard '{shard}' has other safetensors __metadata__ than shard '{first}' ({metadata:?} \
         vs {first_metadata:?}), and one file can keep only one; convert with --sharded to keep \
         each"
    )]
    MixedMetadata {
        /// The shard whose metadata differ.
        shard: String,
        /// The first shard.
        first: String,
        /// `shard`'s `__metadata__`.
        metadata: Option<HashMap<String, String>>,
        /// The first shard's `__metadata__`.
        first_metadata: Option<HashMap<String, String>>,
    },
    /// A pack's footer key [`CHECKPOINT_INDEX_KEY`] is not an index it could remember.
    #[error("footer key '{CHECKPOINT_INDEX_KEY}' is not a remembered index: {why}")]
    BadRememberedIndex {
        /// What is wrong with it.
        why: String,
    },
    /// A file name to write (from a remembered index) that would leave the destination.
    #[error("refusing to write '{name}': not a file name inside the destination")]
    NotInsideDestination {
        /// The name refused.
        name: String,
    },
    /// Writing one file of a sharded output failed (`source`, told without the staging
    /// folder's name, which is gone once the conversion returns).
    #[error("writing {file}: {}", staged_text(source))]
    Writing {
        /// The file being written, as named inside the destination folder.
        file: String,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },
    /// The destination of a sharded output is a folder that already holds something.
    #[error(
        "the destination folder is not empty (a checkpoint of several files is written into a \
         new or empty folder)"
    )]
    DestinationNotEmpty,
    /// A file to index is not inside the index's folder.
    #[error("not inside the index's folder {}", folder.display())]
    OutsideIndexFolder {
        /// The index's folder.
        folder: std::path::PathBuf,
    },
    /// The source holds no weight file.
    #[error("no weight file")]
    NoWeightFile,
    /// The source has no file name to name the output after.
    #[error("has no file name")]
    NoFileName,
    /// A footer key could not be encoded as JSON.
    #[error("cannot encode footer key '{key}': {source}")]
    EncodeFooterKey {
        /// The footer key.
        key: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The index could not be encoded as JSON.
    #[error("cannot encode the index: {source}")]
    EncodeIndex {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl ConvertError {
    /// True unless the OS failed underneath (see [`Error::is_data_error`]).
    pub fn is_data_error(&self) -> bool {
        match self {
            ConvertError::Writing { source, .. } => source.is_data_error(),
            _ => true,
        }
    }
}

/// `e` as one line, without the staging folder's path where the engine names the file it wrote.
fn staged_text(e: &Error) -> String {
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = parts.join("; ");
    match text.split_once(": ") {
        Some((path, rest)) if path.contains(".packtmp_") => rest.to_string(),
        _ => text,
    }
}
