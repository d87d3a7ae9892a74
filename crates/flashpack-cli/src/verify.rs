//! `flashpack verify PATH`: checks a FlashPack file's footer, layout and payload checksums (the
//! first bad chunk is an error naming the tensor it holds), or a safetensors file's header and
//! offsets (validated on open; safetensors files carry no checksums). A checkpoint of several
//! files (an index json, or a folder holding one) is checked as a whole first (every listed
//! tensor in its shard and in no other, a FlashPack index's recorded shard sizes and footer
//! digests), then shard by shard, with a line per shard and one for the total. Only regular
//! files are opened (a FIFO is refused, never waited on); a cancelled check (the Rust binary's
//! SIGINT/SIGTERM, Ctrl-C in Python) stops between chunks. PATH may be a URL (`https://`,
//! `s3://`, `hf://`) of a file or an index: a FlashPack object's payload is fetched with
//! parallel ranged GETs and checked as it arrives, never held whole in memory.
//!
//! ```text
//! $ flashpack verify model.flashpack
//! model.flashpack: OK: 104 tensors, 90,856,960 payload bytes, 22 xxh3-64 checksums match
//! $ flashpack verify ./sharded
//! ./sharded/model.flashpack.index.json: index OK: 2 shards, 3 tensors, 19 data bytes
//!   ./sharded/model-00001-of-00002.flashpack: OK: 1 tensors, 8 payload bytes, 1 xxh3-64 checksums match
//!   ./sharded/model-00002-of-00002.flashpack: OK: 2 tensors, 24 payload bytes, 1 xxh3-64 checksums match
//! OK: 2 shards, 2 with checksums that match
//! ```
use std::path::Path;

use flashpack::cancel::Cancel;
use flashpack::read::LoadOptions;
use flashpack::weights::{Format, WeightFile};
use flashpack::CheckpointError;

use crate::error::{CliError, Result};
use crate::format::grouped;
use crate::location::{open_checkpoint, open_file};

/// Checks `path` (a weight file, an index json or a folder holding one); returns the text to
/// print on success.
pub fn check(path: &Path, progress: bool, cancel: &Cancel) -> Result<String> {
    let ckpt = open_checkpoint(path, cancel)?;
    let Some(index) = ckpt.index_path() else {
        let Some(shard) = ckpt.shards().first() else {
            return Err(CliError::NoWeightFile {
                path: path.to_path_buf(),
            });
        };
        return check_weight_file(shard.file(), progress, cancel);
    };
    // Loads take a stale index's unlisted tensors from their shards (as the libraries do);
    // `verify` says the index is incomplete.
    if let Some((tensor, shard)) = ckpt.unlisted().first() {
        return Err(flashpack::Error::checkpoint(
            index,
            CheckpointError::TensorNotInIndex {
                tensor: tensor.clone(),
                shard: shard.clone(),
            },
        )
        .into());
    }
    let mut lines = vec![format!(
        "{}: index OK: {} shards, {} tensors, {} data bytes",
        index.display(),
        ckpt.shards().len(),
        ckpt.len(),
        grouped(ckpt.total_size())
    )];
    let mut with_checksums = 0;
    for shard in ckpt.shards() {
        let line = check_weight_file(shard.file(), progress, cancel)?;
        if line.contains(" checksums match") {
            with_checksums += 1;
        }
        lines.push(format!("  {line}"));
    }
    lines.push(format!(
        "OK: {} shards, {with_checksums} with checksums that match",
        ckpt.shards().len()
    ));
    Ok(lines.join("\n"))
}

/// Checks one weight file (a path or a URL); returns the line to print on success.
pub fn check_file(path: &Path, progress: bool, cancel: &Cancel) -> Result<String> {
    check_weight_file(&open_file(path, cancel)?, progress, cancel)
}

/// Checks an open weight file; returns the line to print on success.
pub fn check_weight_file(wf: &WeightFile, progress: bool, cancel: &Cancel) -> Result<String> {
    let path = wf.path();
    if wf.format() == Format::Safetensors {
        let (start, end) = wf.data_range();
        return Ok(format!(
            "{}: safetensors header and offsets OK ({} tensors, {} data bytes); safetensors \
             files carry no checksums, so its bytes were not checked",
            path.display(),
            wf.tensors().len(),
            grouped(end - start)
        ));
    }
    let opts = LoadOptions {
        progress,
        cancel: Some(cancel.clone()),
        ..LoadOptions::default()
    };
    let r = wf.verify(&opts)?;
    let size = format!("{} payload bytes", grouped(r.payload_len));
    Ok(match r.algorithm {
        Some(alg) => format!(
            "{}: OK: {} tensors, {size}, {} {alg} checksums match",
            path.display(),
            r.tensors,
            r.chunks_checked
        ),
        None => format!(
            "{}: footer and layout OK ({} tensors, {size}); the file has no checksums, so its \
             bytes were not checked",
            path.display(),
            r.tensors
        ),
    })
}
