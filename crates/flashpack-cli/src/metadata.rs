//! `flashpack metadata FILE [-i] [-j]`: the original package's command, a FlashPack file's footer
//! as stored (validated by the engine first). `--json` prints the footer object (without the
//! tensor index unless `--show-index`), so scripts written for the original keep working;
//! `inspect` is the summary that also reads safetensors files.
//!
//! ```text
//! $ flashpack metadata model.flashpack
//! file: model.flashpack (90,869,688 bytes)
//! align_bytes: 128
//! format: flashpack_v4
//! tensors: 104
//! macroblocks:
//!   0: float32        at byte 0: 22,713,216 elements, 90,852,864 bytes
//! ```
use std::path::Path;

use serde_json::Value;

use crate::error::{CliError, Result};
use crate::format::{grouped, shape_text};
use flashpack::cancel::Cancel;

use crate::location::open_file;

/// The text (or JSON) `metadata` prints for `path`.
pub fn render(path: &Path, show_index: bool, json: bool, cancel: &Cancel) -> Result<String> {
    let wf = open_file(path, cancel)?;
    let (Some(f), Some(footer_json)) = (wf.footer(), wf.footer_json()) else {
        return Err(CliError::NotAFlashPack {
            path: path.to_path_buf(),
            hint: "`flashpack inspect` reads safetensors headers",
        });
    };
    let mut footer: serde_json::Map<String, Value> =
        serde_json::from_slice(footer_json).map_err(|source| CliError::Json {
            path: path.to_path_buf(),
            what: "footer JSON",
            source,
        })?;
    let index = footer.remove("index");
    if json {
        if show_index {
            if let Some(index) = index {
                footer.insert("index".into(), index);
            }
        }
        return serde_json::to_string_pretty(&footer).map_err(|source| CliError::Json {
            path: path.to_path_buf(),
            what: "cannot encode JSON",
            source,
        });
    }

    let mut out = vec![format!(
        "file: {} ({} bytes)",
        path.display(),
        grouped(wf.file_len())
    )];
    for (key, value) in &footer {
        match (key.as_str(), &f.checksums()) {
            ("macroblocks", _) => {}
            ("checksums", Some(c)) => out.push(format!(
                "checksums: {}, {} chunks of {} bytes",
                c.algorithm,
                c.digests.len(),
                grouped(c.chunk_bytes)
            )),
            _ => out.push(format!("{key}: {}", plain(value))),
        }
    }
    out.push(format!("tensors: {}", f.records().len()));
    out.push("macroblocks:".into());
    for (i, b) in f.blocks().iter().enumerate() {
        out.push(format!(
            "  {i}: {:<14} at byte {}: {} elements, {} bytes",
            b.dtype().name(),
            grouped(b.offset_bytes()),
            grouped(b.length_elems()),
            grouped(b.length_bytes())
        ));
    }
    if show_index {
        out.push("index:".into());
        let width = f
            .records()
            .iter()
            .map(|r| r.name().len())
            .max()
            .unwrap_or(0);
        for r in f.records() {
            let dtype = f.blocks().get(r.block()).map_or("?", |b| b.dtype().name());
            out.push(format!(
                "  {:<width$}  {dtype:<10} {:<16} block {} elements {}..{}",
                r.name(),
                shape_text(r.shape()),
                r.block(),
                r.offset(),
                r.offset().saturating_add(r.length())
            ));
        }
    }
    Ok(out.join("\n"))
}

/// A footer value as text: strings without quotes, the rest as compact JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
