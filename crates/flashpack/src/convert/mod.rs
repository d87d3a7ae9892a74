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
use std::path::Path;
use std::time::Instant;

use crate::checkpoint::{Checkpoint, Shard};
use crate::{Error, Result};

mod checkpoint;
mod file;
mod index;
mod options;
mod shards;

pub use crate::error::ConvertError;
pub use crate::format::tensors::Target;
pub use file::SafetensorsOptions;
pub use index::write_index;
pub use options::{ConvertOptions, Converted, Filter, Output};
pub use shards::{plan_shards, shard_file_name};

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
    use crate::weights::Format;
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
