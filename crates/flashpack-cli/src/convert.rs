//! `flashpack convert SRC DST` and `flashpack revert`: the arguments as a
//! [`flashpack::convert::ConvertOptions`], the source opened (a file, an index json, a folder
//! holding one, or a URL), the engine's [`flashpack::convert::convert`] run, and its result told
//! as one line. What is converted how (safetensors -> FlashPack, FlashPack -> safetensors, a
//! FlashPack repack, a checkpoint of several files to one file or to shards and an index) and
//! what is kept is the engine's, documented in [`flashpack::convert`].
//!
//! The output format is `--to`, else DST's extension (`.flashpack` / `.safetensors`), else the
//! other format than SRC's. A folder as DST receives `SRC-stem.<ext>`; without DST the output
//! goes beside SRC. `--ignore-*` leave tensors out of a FlashPack output. SRC may be a URL
//! (`https://`, `s3://`, `hf://`) of a file or an index: its tensors are fetched into memory
//! with parallel ranged GETs, then written as from a local file (default DST: the current
//! folder). A cancelled conversion (the Rust binary's SIGINT/SIGTERM, Ctrl-C in Python) stops
//! between chunks with DST as it was.
//!
//! ```text
//! $ flashpack convert model.safetensors model.flashpack
//! model.safetensors (safetensors) -> model.flashpack (FlashPack flashpack_v4): 104 tensors, 90,869,688 bytes, align_bytes 128, xxh3-64 checksums, 0.21 s
//! $ flashpack convert ./llama model.flashpack
//! ./llama/model.safetensors.index.json (safetensors, 2 shards) -> model.flashpack (FlashPack): 291 tensors, 6,738,415,616 bytes, 4.1 s
//! ```
use std::path::{Path, PathBuf};

use flashpack::cancel::Cancel;
use flashpack::checkpoint::OpenOptions;
use flashpack::convert::{self as engine, ConvertOptions, Output};
use flashpack::format::FormatVersion;
use flashpack::weights::Format;

pub use flashpack::convert::Filter;

use crate::error::Result;
use crate::format::grouped;

/// An output format, as `--to` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Flashpack,
    Safetensors,
}

impl From<Target> for engine::Target {
    fn from(t: Target) -> Self {
        match t {
            Target::Flashpack => engine::Target::Flashpack,
            Target::Safetensors => engine::Target::Safetensors,
        }
    }
}

impl Target {
    /// The format `path`'s extension names, if it names one.
    pub fn by_extension(path: &Path) -> Option<Target> {
        Some(match engine::Target::by_extension(path)? {
            engine::Target::Flashpack => Target::Flashpack,
            engine::Target::Safetensors => Target::Safetensors,
        })
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

/// A finished conversion: the line to print and the file written.
#[derive(Clone, Debug)]
pub struct Converted {
    pub report: String,
    pub written: PathBuf,
}

/// Opens `req.src` and converts it; returns the line to print and the file written.
pub fn convert(req: &Request) -> Result<Converted> {
    let open = OpenOptions {
        variant: req.variant.clone(),
    };
    let cancel = req.cancel.clone().unwrap_or_default();
    let ckpt = crate::location::open_checkpoint_with(&req.src, &open, &cancel)?;
    let opts = ConvertOptions {
        to: req.to.map(Into::into),
        checksums: req.checksums,
        align_bytes: req.align_bytes,
        ignore: req.ignore.clone(),
        progress: req.progress,
        cancel: req.cancel.clone(),
        sharded: req.sharded,
        max_shard_size: req.max_shard_size,
    };
    let done = engine::convert(ckpt, req.dst.as_deref(), &opts)?;
    Ok(Converted {
        report: report(&done, req.verbose),
        written: done.written,
    })
}

pub(crate) fn format_name(f: Format) -> &'static str {
    match f {
        Format::FlashPack => "FlashPack",
        Format::Safetensors => "safetensors",
    }
}

/// The line a conversion prints: source (format, shards) -> destination (format): what was
/// written, how long it took; with `verbose`, each pack phase's time on a line of its own. A
/// single file written from a single file names the FlashPack version, alignment and
/// checksums; from a checkpoint of several files, tensors and bytes only.
fn report(c: &engine::Converted, verbose: bool) -> String {
    let label = match c.source_shards {
        n if n > 1 => format!("{}, {n} shards", format_name(c.source_format)),
        _ => format_name(c.source_format).to_string(),
    };
    let from_checkpoint = c.source_indexed;
    let (kind, details) = match &c.output {
        Output::FlashPack { footer, file_len } if !from_checkpoint => {
            let version = match footer.version() {
                FormatVersion::V3 => flashpack::format::FILE_FORMAT_V3,
                FormatVersion::V4 => flashpack::format::FILE_FORMAT_V4,
            };
            let sums = match footer.checksums() {
                Some(s) => format!("{} checksums", s.algorithm),
                None => "no checksums".into(),
            };
            (
                format!("FlashPack {version}"),
                format!(
                    "{} tensors, {} bytes, align_bytes {}, {sums}",
                    c.tensors,
                    grouped(*file_len),
                    footer.align_bytes()
                ),
            )
        }
        Output::FlashPack { file_len, .. } => (
            "FlashPack".to_string(),
            format!("{} tensors, {} bytes", c.tensors, grouped(*file_len)),
        ),
        Output::Safetensors { file_len } if !from_checkpoint => (
            "safetensors".to_string(),
            format!("{} tensors, {} bytes", c.tensors, grouped(*file_len)),
        ),
        Output::Safetensors { .. } => (
            "safetensors".to_string(),
            format!(
                "{} tensors, {} data bytes",
                c.tensors,
                grouped(c.data_bytes)
            ),
        ),
        Output::Sharded { shards, index } => (
            format!("{}, sharded", format_name(target_format(c.target))),
            format!(
                "{shards} shards and {index}, {} tensors, {} data bytes",
                c.tensors,
                grouped(c.data_bytes)
            ),
        ),
    };
    let mut line = format!(
        "{} ({label}) -> {} ({kind}): {details}, {:.2} s",
        c.source.display(),
        c.written.display(),
        c.elapsed.as_secs_f64()
    );
    if verbose {
        for (name, took) in &c.phases {
            line.push_str(&format!("\n{name}: {:.2} ms", took.as_secs_f64() * 1e3));
        }
    }
    line
}

fn target_format(t: engine::Target) -> Format {
    match t {
        engine::Target::Flashpack => Format::FlashPack,
        engine::Target::Safetensors => Format::Safetensors,
    }
}
