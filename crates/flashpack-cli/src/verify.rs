//! `flashpack verify FILE`: checks a FlashPack file's footer, layout and payload checksums (the
//! first bad chunk is an error naming the tensor it holds), or a safetensors file's header and
//! offsets (validated on open; safetensors files carry no checksums). Only regular files are
//! opened (a FIFO is refused, never waited on); a cancelled check (the Rust binary's
//! SIGINT/SIGTERM, Ctrl-C in Python) stops between chunks.
//!
//! ```text
//! $ flashpack verify model.flashpack
//! model.flashpack: OK: 104 tensors, 90,856,960 payload bytes, 22 xxh3-64 checksums match
//! ```
use std::path::Path;

use flashpack::cancel::Cancel;
use flashpack::read::{verify, LoadOptions};
use flashpack::weights::{Format, WeightFile};

use crate::error::Result;
use crate::format::grouped;

/// Checks `path`; returns the line to print on success.
pub fn check(path: &Path, progress: bool, cancel: &Cancel) -> Result<String> {
    let wf = WeightFile::open(path)?;
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
    drop(wf);
    let opts = LoadOptions {
        progress,
        cancel: Some(cancel.clone()),
        ..LoadOptions::default()
    };
    let r = verify(path, &opts)?;
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
