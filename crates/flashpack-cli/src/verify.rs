//! `flashpack verify FILE`: checks a FlashPack file's footer, layout and payload checksums (the
//! first bad chunk is an error naming the tensor it holds), or a safetensors file's header and
//! offsets (validated on open; safetensors files carry no checksums).
//!
//! ```text
//! $ flashpack verify model.flashpack
//! model.flashpack: OK: 104 tensors, 90,856,960 payload bytes, 22 xxh3-64 checksums match
//! ```
use std::path::Path;

use flashpack::read::{verify, LoadOptions};
use flashpack::weights::{Format, WeightFile};

use crate::error::Result;
use crate::format::grouped;

/// Checks `path`; returns the line to print on success.
pub fn check(path: &Path, progress: bool) -> Result<String> {
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
