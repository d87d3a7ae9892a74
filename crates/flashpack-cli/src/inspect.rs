//! `flashpack inspect FILE [--index] [--json]`: what a FlashPack or safetensors file holds,
//! without reading its tensor data (only the footer or header, validated on open). FILE may be
//! a URL (`https://`, `s3://`, `hf://`): only the footer or header is fetched, with ranged GETs.
//!
//! ```text
//! $ flashpack inspect model.flashpack
//! file: model.flashpack (90,869,688 bytes)
//! format: FlashPack flashpack_v4, align_bytes 128
//! tensors: 104 (90,856,960 data bytes, 22,713,728 elements)
//! checksums: xxh3-64, 22 chunks of 4,194,304 bytes
//! macroblocks:
//!   0: float32        at byte 0: 22,713,216 elements, 90,852,864 bytes
//!   1: int64          at byte 90,852,864: 512 elements, 4,096 bytes
//! ```
//!
//! An index json, or a folder holding one, is summarized as a checkpoint: the index, its
//! `metadata`, the totals, then each shard as above.
//!
//! ```text
//! $ flashpack inspect ./sharded
//! checkpoint: ./sharded/model.safetensors.index.json (safetensors index, 2 shards)
//! tensors: 3 (19 data bytes)
//! metadata total_size: 19
//! shard model-00001-of-00002.safetensors:
//!   file: ./sharded/model-00001-of-00002.safetensors (88 bytes)
//!   ...
//! ```
use std::collections::BTreeMap;
use std::path::Path;

use flashpack::checkpoint::IndexKind;
use flashpack::format::{FormatVersion, FILE_FORMAT_V3, FILE_FORMAT_V4};
use flashpack::weights::{Format, TensorInfo, WeightFile};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{CliError, Result};
use crate::format::{grouped, shape_text};
use flashpack::cancel::Cancel;

use crate::location::{open_checkpoint, open_file};

/// Everything `inspect --json` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub file: String,
    pub file_bytes: u64,
    /// "flashpack" or "safetensors".
    pub format: &'static str,
    pub tensor_count: usize,
    /// Bytes of tensor data, summed over the tensors (tied tensors each count).
    pub data_bytes: u64,
    pub total_elems: u64,
    /// Tensors and bytes per dtype.
    pub dtypes: BTreeMap<String, DtypeTotals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flashpack: Option<FlashPackInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<SafetensorsInfo>,
    /// Every tensor (only with `--index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorEntry>>,
}

#[derive(Debug, Default, Serialize)]
pub struct DtypeTotals {
    pub tensors: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct FlashPackInfo {
    /// "flashpack_v3" or "flashpack_v4".
    pub format_version: &'static str,
    pub align_bytes: u64,
    pub payload_bytes: u64,
    pub footer_bytes: u64,
    pub macroblocks: Vec<BlockEntry>,
    /// `null` when the file was written without checksums.
    pub checksums: Option<ChecksumInfo>,
    /// Footer keys the format does not interpret.
    pub extra: Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct BlockEntry {
    pub dtype: String,
    pub offset_bytes: u64,
    pub length_bytes: u64,
    pub length_elems: u64,
}

#[derive(Debug, Serialize)]
pub struct ChecksumInfo {
    pub algorithm: String,
    pub chunk_bytes: u64,
    pub chunks: usize,
}

#[derive(Debug, Serialize)]
pub struct SafetensorsInfo {
    /// Bytes before the tensor data: the 8-byte length and the JSON header.
    pub header_bytes: u64,
    /// The `__metadata__` strings.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// One tensor: its bytes are `[start, end)` of the file.
#[derive(Debug, Serialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
    /// The macroblock that holds it (FlashPack files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macroblock: Option<usize>,
}

fn elems(t: &TensorInfo) -> u64 {
    // Validated on open, so this cannot overflow; 0 would only show a crafted file's lie.
    t.shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .unwrap_or(0)
}

/// Everything `inspect --json` prints for a checkpoint with an index.
#[derive(Debug, Serialize)]
pub struct CheckpointSummary {
    /// The index json.
    pub checkpoint: String,
    /// "safetensors" or "flashpack".
    pub index_format: &'static str,
    /// The index's `metadata` object, as stored.
    pub metadata: Option<Map<String, Value>>,
    pub shard_count: usize,
    pub tensor_count: usize,
    /// Bytes of tensor data over all shards.
    pub data_bytes: u64,
    /// Each shard, by the name the index gives it.
    pub shards: Vec<ShardSummary>,
}

#[derive(Debug, Serialize)]
pub struct ShardSummary {
    pub name: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// `inspect PATH`: the text (or JSON) to print for a weight file, an index json or a folder.
pub fn inspect(path: &Path, with_index: bool, json: bool, cancel: &Cancel) -> Result<String> {
    let ckpt = open_checkpoint(path, cancel)?;
    let Some(index) = ckpt.index_path() else {
        let Some(shard) = ckpt.shards().first() else {
            return Err(CliError::NoWeightFile {
                path: path.to_path_buf(),
            });
        };
        let s = summary_of(shard.file(), with_index);
        return if json {
            to_json(&s, path)
        } else {
            Ok(render(&s))
        };
    };
    let mut shards = Vec::with_capacity(ckpt.shards().len());
    for shard in ckpt.shards() {
        shards.push(ShardSummary {
            name: shard.name().to_string(),
            summary: summary_of(shard.file(), with_index),
        });
    }
    let c = CheckpointSummary {
        checkpoint: index.display().to_string(),
        index_format: match ckpt.index_kind() {
            Some(IndexKind::FlashPack) => "flashpack",
            _ => "safetensors",
        },
        metadata: ckpt.metadata().cloned(),
        shard_count: shards.len(),
        tensor_count: ckpt.len(),
        data_bytes: ckpt.total_size(),
        shards,
    };
    if json {
        return to_json(&c, path);
    }
    let mut out = vec![
        format!(
            "checkpoint: {} ({} index, {} shards)",
            c.checkpoint, c.index_format, c.shard_count
        ),
        format!(
            "tensors: {} ({} data bytes)",
            c.tensor_count,
            grouped(c.data_bytes)
        ),
    ];
    for (k, v) in c.metadata.iter().flatten() {
        out.push(format!("metadata {k}: {v}"));
    }
    for s in &c.shards {
        out.push(format!("shard {}:", s.name));
        out.extend(render(&s.summary).lines().map(|l| format!("  {l}")));
    }
    Ok(out.join("\n"))
}

/// Pretty JSON, an error naming `path` if it cannot be encoded.
fn to_json(value: &impl Serialize, path: &Path) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|source| CliError::Json {
        path: path.to_path_buf(),
        what: "cannot encode JSON",
        source,
    })
}

/// Reads the file's footer or header (validated by the engine) into a [`Summary`]; `path` may
/// be a URL.
pub fn summarize(path: &Path, with_index: bool, cancel: &Cancel) -> Result<Summary> {
    Ok(summary_of(&open_file(path, cancel)?, with_index))
}

/// An open file's [`Summary`] (from its footer or header only).
pub fn summary_of(wf: &WeightFile, with_index: bool) -> Summary {
    let file_bytes = wf.file_len();
    let tensors = wf.tensors();
    let mut dtypes: BTreeMap<String, DtypeTotals> = BTreeMap::new();
    for t in tensors {
        let d = dtypes.entry(t.dtype.name().to_string()).or_default();
        d.tensors += 1;
        d.bytes += t.end - t.start;
    }
    let flashpack = wf.footer().map(|footer| {
        let (_, payload_len) = wf.data_range();
        FlashPackInfo {
            format_version: match footer.version() {
                FormatVersion::V3 => FILE_FORMAT_V3,
                FormatVersion::V4 => FILE_FORMAT_V4,
            },
            align_bytes: footer.align_bytes(),
            payload_bytes: payload_len,
            footer_bytes: file_bytes.saturating_sub(payload_len),
            macroblocks: footer
                .blocks()
                .iter()
                .map(|b| BlockEntry {
                    dtype: b.dtype().name().to_string(),
                    offset_bytes: b.offset_bytes(),
                    length_bytes: b.length_bytes(),
                    length_elems: b.length_elems(),
                })
                .collect(),
            checksums: footer.checksums().as_ref().map(|c| ChecksumInfo {
                algorithm: c.algorithm.clone(),
                chunk_bytes: c.chunk_bytes,
                chunks: c.digests.len(),
            }),
            extra: footer.extra().clone(),
        }
    });
    let safetensors = (wf.format() == Format::Safetensors).then(|| SafetensorsInfo {
        header_bytes: wf.data_range().0,
        metadata: wf
            .safetensors_metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
    });
    let entries = with_index.then(|| {
        tensors
            .iter()
            .map(|t| TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype.name().to_string(),
                shape: t.shape.clone(),
                start: t.start,
                end: t.end,
                macroblock: wf
                    .footer()
                    .and_then(|f| f.record(&t.name))
                    .map(|r| r.block()),
            })
            .collect()
    });
    Summary {
        file: wf.path().display().to_string(),
        file_bytes,
        format: match wf.format() {
            Format::FlashPack => "flashpack",
            Format::Safetensors => "safetensors",
        },
        tensor_count: tensors.len(),
        data_bytes: tensors.iter().map(|t| t.end - t.start).sum(),
        total_elems: tensors.iter().map(elems).sum(),
        dtypes,
        flashpack,
        safetensors,
        tensors: entries,
    }
}

/// The summary as text, the way the Python `flashpack metadata` prints a footer.
pub fn render(s: &Summary) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "file: {} ({} bytes)",
        s.file,
        grouped(s.file_bytes)
    ));
    match (&s.flashpack, &s.safetensors) {
        (Some(f), _) => {
            out.push(format!(
                "format: FlashPack {}, align_bytes {}",
                f.format_version, f.align_bytes
            ));
            out.push(tensor_line(s));
            out.push(match &f.checksums {
                Some(c) => format!(
                    "checksums: {}, {} chunks of {} bytes",
                    c.algorithm,
                    c.chunks,
                    grouped(c.chunk_bytes)
                ),
                None => "checksums: none (written without them; `verify` checks only the footer and layout)".into(),
            });
            for (k, v) in &f.extra {
                out.push(format!("{k}: {v}"));
            }
            out.push("macroblocks:".into());
            for (i, b) in f.macroblocks.iter().enumerate() {
                out.push(format!(
                    "  {i}: {:<14} at byte {}: {} elements, {} bytes",
                    b.dtype,
                    grouped(b.offset_bytes),
                    grouped(b.length_elems),
                    grouped(b.length_bytes)
                ));
            }
        }
        (None, Some(st)) => {
            out.push(format!(
                "format: safetensors, header {} bytes",
                grouped(st.header_bytes)
            ));
            out.push(tensor_line(s));
            if let Some(m) = &st.metadata {
                for (k, v) in m {
                    out.push(format!("metadata {k}: {v}"));
                }
            }
            out.push("dtypes:".into());
            for (d, t) in &s.dtypes {
                out.push(format!(
                    "  {d:<14} {} tensors, {} bytes",
                    t.tensors,
                    grouped(t.bytes)
                ));
            }
        }
        (None, None) => out.push(tensor_line(s)),
    }
    if let Some(tensors) = &s.tensors {
        out.push("index:".into());
        let width = tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in tensors {
            let block = t
                .macroblock
                .map_or_else(String::new, |b| format!("  block {b}"));
            out.push(format!(
                "  {:<width$}  {:<10} {:<16} bytes {}..{}{block}",
                t.name,
                t.dtype,
                shape_text(&t.shape),
                t.start,
                t.end
            ));
        }
    }
    out.join("\n")
}

fn tensor_line(s: &Summary) -> String {
    format!(
        "tensors: {} ({} data bytes, {} elements)",
        s.tensor_count,
        grouped(s.data_bytes),
        grouped(s.total_elems)
    )
}
