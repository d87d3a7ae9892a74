//! `flashpack convert SRC DST`: safetensors -> FlashPack, FlashPack -> safetensors, or a
//! FlashPack repack (e.g. to add or drop checksums, or change the alignment). Tensor bytes,
//! names, dtypes and shapes are copied unchanged; the output is written to an unnamed temporary
//! file beside DST and linked over it only once complete and synced, so DST is either the old
//! file or the new one and nothing else is left behind, whenever the command is killed. A
//! cancelled conversion (the Rust binary's SIGINT/SIGTERM, Ctrl-C in Python) stops between
//! chunks with DST as it was.
//!
//! The output format is `--to`, else DST's extension (`.flashpack` / `.safetensors`), else the
//! other format than SRC's. A folder as DST receives `SRC-stem.<ext>`; without DST the output
//! goes beside SRC. A FlashPack repack keeps the footer's extra keys (those the format does not
//! interpret). `--ignore-*` leave tensors out of a FlashPack output. A checkpoint of several
//! files (an index json, or a folder holding one), and any output of several files
//! (`--sharded`, `--max-shard-size`), go through [`crate::checkpoint`]. SRC may be a URL
//! (`https://`, `s3://`, `hf://`) of a file or an index: its tensors are fetched into memory
//! with parallel ranged GETs, then written as from a local file (default DST: the current
//! folder).
//!
//! ```text
//! $ flashpack convert model.safetensors model.flashpack
//! model.safetensors (safetensors) -> model.flashpack (FlashPack flashpack_v4): 104 tensors, 90,869,688 bytes, align_bytes 128, xxh3-64 checksums, 0.21 s
//! ```
use std::path::{Path, PathBuf};
use std::time::Instant;

use flashpack::cancel::Cancel;
use flashpack::checkpoint::{OpenOptions, Shard};
use flashpack::format::{FormatVersion, DEFAULT_ALIGN_BYTES};
use flashpack::read::LoadOptions;
use flashpack::weights::{Format, SafetensorsOptions, WeightFile, SAFETENSORS_METADATA_KEY};
use flashpack::write::{pack, PackEntry, PackOptions, PackReport};

use crate::error::{CliError, Result};
use crate::format::grouped;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Flashpack,
    Safetensors,
}

impl Target {
    pub fn extension(self) -> &'static str {
        match self {
            Target::Flashpack => "flashpack",
            Target::Safetensors => "safetensors",
        }
    }

    pub fn by_extension(path: &Path) -> Option<Target> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "flashpack" => Some(Target::Flashpack),
            "safetensors" => Some(Target::Safetensors),
            _ => None,
        }
    }
}

/// What to convert, and how.
#[derive(Clone, Debug)]
pub struct Request {
    pub src: PathBuf,
    /// The output file or a folder; `None`: beside `src`, with the output's extension.
    pub dst: Option<PathBuf>,
    pub to: Option<Target>,
    pub checksums: bool,
    pub align_bytes: Option<u64>,
    /// Tensors to leave out (FlashPack output only).
    pub ignore: Filter,
    pub progress: bool,
    /// Append each phase's time to the report.
    pub verbose: bool,
    /// Stops the conversion between chunks, leaving the destination as it was.
    pub cancel: Option<Cancel>,
    /// Write a checkpoint of several files with the source's own split.
    pub sharded: bool,
    /// Write a checkpoint of several files of at most this many bytes each.
    pub max_shard_size: Option<u64>,
    /// In a folder, the weights variant (e.g. `fp16`).
    pub variant: Option<String>,
}

impl Request {
    /// True when the output is a checkpoint of several files (a folder).
    pub fn sharded_output(&self) -> bool {
        self.sharded || self.max_shard_size.is_some()
    }
}

/// Names to leave out: exact names, prefixes, suffixes.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub names: Vec<String>,
    pub prefixes: Vec<String>,
    pub suffixes: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.prefixes.is_empty() && self.suffixes.is_empty()
    }

    pub fn drops(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }
}

/// A finished conversion: the line to print and the file written.
#[derive(Clone, Debug)]
pub struct Converted {
    pub report: String,
    pub written: PathBuf,
}

pub(crate) fn format_name(f: Format) -> &'static str {
    match f {
        Format::FlashPack => "FlashPack",
        Format::Safetensors => "safetensors",
    }
}

/// Converts; returns the line to print and the file written.
pub fn convert(req: &Request) -> Result<Converted> {
    let opts = OpenOptions {
        variant: req.variant.clone(),
    };
    let cancel = req.cancel.clone().unwrap_or_default();
    let ckpt = crate::location::open_checkpoint_with(&req.src, &opts, &cancel)?;
    if ckpt.index_path().is_some() || req.sharded_output() {
        return crate::checkpoint::convert(req, ckpt);
    }
    let src_path = ckpt.path().to_path_buf();
    let file = ckpt.into_shards().pop().map(Shard::into_file);
    let src =
        file.ok_or_else(|| CliError::Invalid(format!("{}: no weight file", req.src.display())))?;
    convert_file(
        &Request {
            src: src_path,
            ..req.clone()
        },
        src,
    )
}

/// Converts the one weight file `src` (opened from `req.src`).
fn convert_file(req: &Request, src: WeightFile) -> Result<Converted> {
    let t = Instant::now();
    // Beside the source; a URL's output goes to the current folder.
    let mut dst = req.dst.clone().unwrap_or_else(|| match req.src.parent() {
        _ if src.is_remote() => PathBuf::from("."),
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let by_ext = if dst.is_dir() {
        None
    } else {
        Target::by_extension(&dst)
    };
    if let (Some(to), Some(ext)) = (req.to, by_ext) {
        if to != ext {
            return Err(CliError::Invalid(format!(
                "{}: --to {} does not match the destination's .{} extension",
                dst.display(),
                to.extension(),
                ext.extension()
            )));
        }
    }
    let target = req.to.or(by_ext).unwrap_or(match src.format() {
        Format::FlashPack => Target::Safetensors,
        Format::Safetensors => Target::Flashpack,
    });
    if dst.is_dir() {
        let stem = req
            .src
            .file_stem()
            .ok_or_else(|| CliError::Invalid(format!("{}: has no file name", req.src.display())))?;
        let mut name = stem.to_os_string();
        name.push(".");
        name.push(target.extension());
        dst = dst.join(name);
    }
    if target == Target::Safetensors
        && (!req.checksums || req.align_bytes.is_some() || !req.ignore.is_empty())
    {
        return Err(CliError::Invalid(format!(
            "{}: --no-checksums, --align-bytes and --ignore-* apply to FlashPack output only",
            dst.display()
        )));
    }
    let mut phases = Vec::new();
    let (kind, details) = match target {
        Target::Flashpack => {
            let opts = PackOptions {
                align_bytes: req.align_bytes.unwrap_or(DEFAULT_ALIGN_BYTES),
                checksums: req.checksums,
                progress: req.progress,
                // A repack keeps the footer keys the format does not interpret.
                extra: src.footer().map(|f| f.extra().clone()).unwrap_or_default(),
                cancel: req.cancel.clone(),
                ..PackOptions::default()
            };
            let report = if req.ignore.is_empty() {
                src.to_flashpack(&dst, &opts)?
            } else {
                pack_filtered(
                    crate::location::open_file(&req.src, &req.cancel.clone().unwrap_or_default())?,
                    &dst,
                    opts,
                    &req.ignore,
                )?
            };
            phases.clone_from(&report.phases);
            let version = match report.footer.version() {
                FormatVersion::V3 => flashpack::format::FILE_FORMAT_V3,
                FormatVersion::V4 => flashpack::format::FILE_FORMAT_V4,
            };
            let sums = match &report.footer.checksums() {
                Some(c) => format!("{} checksums", c.algorithm),
                None => "no checksums".into(),
            };
            (
                format!("FlashPack {version}"),
                format!(
                    "{} tensors, {} bytes, align_bytes {}, {sums}",
                    report.footer.records().len(),
                    grouped(report.file_len),
                    report.footer.align_bytes()
                ),
            )
        }
        Target::Safetensors => {
            let opts = SafetensorsOptions {
                progress: req.progress,
                cancel: req.cancel.clone(),
            };
            src.to_safetensors_with(&dst, &opts)?;
            let len = std::fs::metadata(&dst)
                .map_err(|e| CliError::io(&dst, "stat", e))?
                .len();
            (
                "safetensors".to_string(),
                format!("{} tensors, {} bytes", src.tensors().len(), grouped(len)),
            )
        }
    };
    let mut report = format!(
        "{} ({}) -> {} ({kind}): {details}, {:.2} s",
        req.src.display(),
        format_name(src.format()),
        dst.display(),
        t.elapsed().as_secs_f64()
    );
    if req.verbose {
        for (name, took) in &phases {
            report.push_str(&format!("\n{name}: {:.2} ms", took.as_secs_f64() * 1e3));
        }
    }
    Ok(Converted {
        report,
        written: dst,
    })
}

/// Packs the tensors of `src` that `ignore` keeps (bytes unchanged), with the footer keys
/// `to_flashpack` would keep: a safetensors file's `__metadata__`, a FlashPack file's extras.
fn pack_filtered(
    src: WeightFile,
    dst: &Path,
    mut opts: PackOptions,
    ignore: &Filter,
) -> Result<PackReport> {
    let path = src.path().to_path_buf();
    if let (Format::Safetensors, Some(meta)) = (src.format(), src.safetensors_metadata()) {
        let value = serde_json::to_value(meta)
            .map_err(|e| CliError::Invalid(format!("{}: __metadata__: {e}", path.display())))?;
        opts.extra.insert(SAFETENSORS_METADATA_KEY.into(), value);
    }
    let weights = src.load(&LoadOptions::default())?;
    let entries: Vec<PackEntry<'_>> = weights
        .iter()
        .filter(|t| !ignore.drops(t.name))
        .map(|t| PackEntry::new(t.name, t.dtype, t.shape.to_vec(), t.data))
        .collect();
    if entries.is_empty() {
        return Err(CliError::Invalid(format!(
            "{}: every tensor was left out by --ignore-names/--ignore-prefixes/--ignore-suffixes",
            path.display()
        )));
    }
    Ok(pack(dst, &entries, &opts)?)
}
