//! `flashpack convert SRC DST`: safetensors -> FlashPack, FlashPack -> safetensors, or a
//! FlashPack repack (e.g. to add or drop checksums, or change the alignment). Tensor bytes,
//! names, dtypes and shapes are copied unchanged; the output is written to an unnamed temporary
//! file beside DST and linked over it only once complete and synced, so DST is either the old
//! file or the new one and nothing else is left behind, whenever the command is killed.
//! SIGINT/SIGTERM stop it between chunks with DST as it was.
//!
//! The output format is `--to`, else DST's extension (`.flashpack` / `.safetensors`), else the
//! other format than SRC's. A folder as DST receives `SRC-stem.<ext>`. A FlashPack repack keeps
//! the footer's extra keys (those the format does not interpret).
//!
//! ```text
//! $ flashpack convert model.safetensors model.flashpack
//! model.safetensors (safetensors) -> model.flashpack (FlashPack flashpack_v4): 104 tensors, 90,869,688 bytes, align_bytes 128, xxh3-64 checksums, 0.21 s
//! ```
use std::path::{Path, PathBuf};
use std::time::Instant;

use flashpack::format::{FormatVersion, DEFAULT_ALIGN_BYTES};
use flashpack::weights::{Format, SafetensorsOptions, WeightFile};
use flashpack::write::PackOptions;

use crate::error::{print_line, CliError, Result};
use crate::format::grouped;
use crate::interrupt;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Flashpack,
    Safetensors,
}

impl Target {
    fn extension(self) -> &'static str {
        match self {
            Target::Flashpack => "flashpack",
            Target::Safetensors => "safetensors",
        }
    }

    fn by_extension(path: &Path) -> Option<Target> {
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
    pub dst: PathBuf,
    pub to: Option<Target>,
    pub checksums: bool,
    pub align_bytes: Option<u64>,
    pub progress: bool,
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::FlashPack => "FlashPack",
        Format::Safetensors => "safetensors",
    }
}

/// Converts; returns the line to print.
pub fn convert(req: &Request) -> Result<String> {
    let t = Instant::now();
    let cancel = interrupt::watch()?;
    let src = WeightFile::open(&req.src)?;
    let mut dst = req.dst.clone();
    let by_ext = Target::by_extension(&dst);
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
    if target == Target::Safetensors && (!req.checksums || req.align_bytes.is_some()) {
        return Err(CliError::Invalid(format!(
            "{}: --no-checksums and --align-bytes apply to FlashPack output only",
            dst.display()
        )));
    }
    let (kind, details) = match target {
        Target::Flashpack => {
            let opts = PackOptions {
                align_bytes: req.align_bytes.unwrap_or(DEFAULT_ALIGN_BYTES),
                checksums: req.checksums,
                progress: req.progress,
                // A repack keeps the footer keys the format does not interpret.
                extra: src
                    .flashpack()
                    .map(|f| f.footer.extra.clone())
                    .unwrap_or_default(),
                cancel: Some(cancel),
                ..PackOptions::default()
            };
            let report = src.to_flashpack(&dst, &opts)?;
            let version = match report.footer.version {
                FormatVersion::V3 => flashpack::format::FILE_FORMAT_V3,
                FormatVersion::V4 => flashpack::format::FILE_FORMAT_V4,
            };
            let sums = match &report.footer.checksums {
                Some(c) => format!("{} checksums", c.algorithm),
                None => "no checksums".into(),
            };
            (
                format!("FlashPack {version}"),
                format!(
                    "{} tensors, {} bytes, align_bytes {}, {sums}",
                    report.footer.records.len(),
                    grouped(report.file_len),
                    report.footer.align_bytes
                ),
            )
        }
        Target::Safetensors => {
            let opts = SafetensorsOptions {
                progress: req.progress,
                cancel: Some(cancel),
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
    Ok(format!(
        "{} ({}) -> {} ({kind}): {details}, {:.2} s",
        req.src.display(),
        format_name(src.format()),
        dst.display(),
        t.elapsed().as_secs_f64()
    ))
}

/// Runs the subcommand.
pub fn run(req: &Request) -> Result<()> {
    print_line(&convert(req)?)?;
    Ok(())
}
