//! Runs a parsed command line: everything the engine can do is done here, for both commands;
//! what needs Python (torch files, `--dtype` casts, model folders through transformers or
//! diffusers, Hub ids) comes back as [`Outcome::NeedsPython`], which the Python command carries
//! out and the Rust binary refuses with a message saying where it works.
//!
//! ```text
//! convert model.safetensors [out.flashpack]     engine (bit-exact; keeps __metadata__)
//! convert model.flashpack out.safetensors       engine
//! convert ./sharded [out.flashpack]             engine (a folder or index json of weights)
//! convert m.flashpack ./out --sharded           engine (shards + index json)
//! convert weights.pt | org/repo                 Python
//! convert ./bert (a transformers config)        Python (the library saves it), unless the
//!                                               destination is a weight file or --sharded
//! convert ./folder-of-torch-files               Python
//! convert model.safetensors --dtype bf16        Python (torch's cast)
//! revert model.flashpack [x.safetensors]        engine;  revert model.flashpack x.pt: Python
//! revert m.flashpack ./out --sharded            engine (the shards it was converted from)
//! metadata / inspect / verify / bench           engine
//! ```
use std::path::{Path, PathBuf};

use flashpack::cancel::Cancel;
use flashpack::checkpoint::{locate, Checkpoint};
use flashpack::weights::Format;
use flashpack::CheckpointError;

use crate::args::{Cli, Command, ConvertArgs, RevertArgs};
use crate::convert::{self, Filter, Target};
use crate::error::{CliError, Result};
use crate::{bench, inspect, metadata, verify};

/// Files torch reads and writes (`torch.load` / `torch.save`).
pub const TORCH_SUFFIXES: [&str; 4] = ["bin", "pt", "pth", "ckpt"];

/// What running a command came to.
#[derive(Debug)]
pub enum Outcome {
    /// Finished: the text for stdout (may be empty) and the file written, if any.
    Done {
        stdout: String,
        written: Option<PathBuf>,
    },
    /// Only the Python package can do this, for the reason given.
    NeedsPython { reason: String },
}

impl Outcome {
    fn done(stdout: String) -> Result<Outcome> {
        Ok(Outcome::Done {
            stdout,
            written: None,
        })
    }

    fn python(reason: impl Into<String>) -> Result<Outcome> {
        Ok(Outcome::NeedsPython {
            reason: reason.into(),
        })
    }
}

/// The Rust binary's message for [`Outcome::NeedsPython`].
pub fn needs_python_message(reason: &str) -> String {
    format!(
        "{reason}: this needs Python; install the Python package (pip install flashpack) and run \
         its `flashpack` command, which takes the same subcommands and flags"
    )
}

/// Runs `cli`; `cancel` stops a conversion or verification between chunks (leaving any
/// destination as it was).
pub fn run(cli: &Cli, cancel: &Cancel) -> Result<Outcome> {
    let progress = !cli.quiet;
    match &cli.command {
        Command::Convert(args) => convert(cli, args, cancel),
        Command::Revert(args) => revert(cli, args, cancel),
        Command::Metadata {
            path,
            show_index,
            json,
        } => Outcome::done(metadata::render(path, *show_index, *json, cancel)?),
        Command::Inspect { file, index, json } => {
            Outcome::done(inspect::inspect(file, *index, *json, cancel)?)
        }
        Command::Verify { file } => Outcome::done(verify::check(file, progress, cancel)?),
        Command::Bench {
            file,
            repeats,
            json,
        } => {
            bench::run(&bench::Request {
                file: file.clone(),
                repeats: usize::try_from(*repeats).unwrap_or(1),
                json: *json,
                progress,
            })?;
            Outcome::done(String::new())
        }
    }
}

fn convert(cli: &Cli, a: &ConvertArgs, cancel: &Cancel) -> Result<Outcome> {
    let src = &a.path_or_repo_id;
    let mut engine_src = src.clone();
    if crate::location::url(src).is_some() {
        // A URL names a weight file or an index: read by the engine, like a local file.
        if a.use_transformers || a.use_diffusers || a.subfolder.is_some() {
            return Err(CliError::OptionsDoNotApply {
                path: src.clone(),
                options: "--use-transformers, --use-diffusers and --subfolder",
                why: "need a model folder or a Hub id, not a URL",
            });
        }
    } else {
        match std::fs::metadata(src) {
            Ok(m) if m.is_dir() => match folder_route(a)? {
                FolderRoute::Python(reason) => return Outcome::python(reason),
                FolderRoute::Engine(folder) => engine_src = folder,
            },
            // A FIFO, socket or device: the engine's own refusal (never opened blocking).
            Ok(m) if !m.is_file() => {
                return Err(flashpack::source::open_regular(src).err().map_or_else(
                    || CliError::NotAFileOrFolder { path: src.clone() },
                    CliError::from,
                ))
            }
            Ok(_) => {
                if a.use_transformers || a.use_diffusers {
                    return Err(CliError::OptionsDoNotApply {
                        path: src.clone(),
                        options: "--use-transformers/--use-diffusers",
                        why: "need a model folder or a Hub id, not a file",
                    });
                }
                if a.subfolder.is_some() || a.variant.is_some() {
                    return Err(CliError::OptionsDoNotApply {
                        path: src.clone(),
                        options: "--subfolder and --variant",
                        why: "apply to model folders and Hub ids, not a file",
                    });
                }
                if has_suffix(src, &TORCH_SUFFIXES) {
                    return Outcome::python(format!("{}: reading a torch file", src.display()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !looks_like_a_path(src) => {
                return Outcome::python(format!(
                    "{}: no such file or folder here, so a Hugging Face Hub repository id",
                    src.display()
                ))
            }
            Err(e) => return Err(CliError::io(src, "open", e)),
        }
    }
    if let Some(dtype) = &a.dtype {
        return Outcome::python(format!(
            "{}: casting to {dtype} with torch (--dtype)",
            src.display()
        ));
    }
    engine_convert(convert::Request {
        src: engine_src,
        dst: a.destination_path.clone(),
        to: a.to,
        checksums: !a.no_checksums,
        align_bytes: a.align_bytes,
        ignore: Filter {
            names: a.ignore_names.clone(),
            prefixes: a.ignore_prefixes.clone(),
            suffixes: a.ignore_suffixes.clone(),
        },
        progress: !cli.quiet,
        verbose: cli.verbose,
        cancel: Some(cancel.clone()),
        sharded: a.sharded,
        max_shard_size: a.max_shard_size,
        variant: a.variant.clone(),
    })
}

/// Who converts a folder.
enum FolderRoute {
    /// The engine, bit-exact: a folder of weights (one index or one weight file).
    Engine(PathBuf),
    Python(String),
}

/// A folder goes to Python when a library must load it (`--use-transformers`/`--use-diffusers`,
/// or a transformers or diffusers config without a request for plain weight files: those are
/// saved as the library saves them), when torch must cast it (`--dtype`), or when it holds no
/// weights the engine reads (torch files). Everything else is the engine's.
fn folder_route(a: &ConvertArgs) -> Result<FolderRoute> {
    let src = &a.path_or_repo_id;
    let python = |why: &str| {
        Ok(FolderRoute::Python(format!(
            "{}: converting a model folder ({why})",
            src.display()
        )))
    };
    if a.use_transformers || a.use_diffusers {
        return python("its library's loader");
    }
    let folder = match &a.subfolder {
        Some(sub) => src.join(sub),
        None => src.clone(),
    };
    let wants_weight_files = a.sharded
        || a.max_shard_size.is_some()
        || a.to == Some(Target::Safetensors)
        || a.destination_path
            .as_deref()
            .and_then(Target::by_extension)
            .is_some();
    if a.dtype.is_some() || (library_config(&folder) && !wants_weight_files) {
        return python("its library's loader, or its weight files");
    }
    match locate(&folder, a.variant.as_deref()) {
        Err(flashpack::Error::Checkpoint { source, .. })
            if matches!(*source, CheckpointError::NothingFound { .. }) =>
        {
            python("no safetensors or FlashPack weights in it, so torch files")
        }
        _ => Ok(FolderRoute::Engine(folder)),
    }
}

/// True when `folder/config.json` names transformers or diffusers (the Python command then
/// loads the model with that library).
fn library_config(folder: &Path) -> bool {
    let Ok(text) = std::fs::read(folder.join("config.json")) else {
        return false;
    };
    let Ok(serde_json::Value::Object(config)) = serde_json::from_slice(&text) else {
        return false;
    };
    [
        "_diffusers_version",
        "_class_name",
        "transformers_version",
        "model_type",
    ]
    .iter()
    .any(|k| config.contains_key(*k))
}

fn revert(cli: &Cli, a: &RevertArgs, cancel: &Cancel) -> Result<Outcome> {
    let src = &a.path;
    let ckpt = Checkpoint::open(src)?;
    if !ckpt.is_all(Format::FlashPack) {
        return Err(CliError::NotAFlashPack {
            path: ckpt.path().to_path_buf(),
            hint: "`flashpack convert` converts safetensors files",
        });
    }
    let sharded = a.sharded || a.max_shard_size.is_some();
    let single = ckpt.index_path().is_none();
    drop(ckpt);
    let dst = match &a.destination_path {
        Some(d) => Some(d.clone()),
        None if single && !sharded && src.is_file() => Some(src.with_extension("safetensors")),
        None => None,
    };
    if let Some(dst) = &dst {
        if has_suffix(dst, &TORCH_SUFFIXES) {
            return Outcome::python(format!("{}: writing a torch file", dst.display()));
        }
        if !sharded && !dst.is_dir() && Target::by_extension(dst) != Some(Target::Safetensors) {
            return Err(CliError::RevertDestination { path: dst.clone() });
        }
    }
    engine_convert(convert::Request {
        src: src.clone(),
        dst,
        to: Some(Target::Safetensors),
        checksums: true,
        align_bytes: None,
        ignore: Filter::default(),
        progress: !cli.quiet,
        verbose: cli.verbose,
        cancel: Some(cancel.clone()),
        sharded: a.sharded,
        max_shard_size: a.max_shard_size,
        variant: None,
    })
}

fn engine_convert(req: convert::Request) -> Result<Outcome> {
    let done = convert::convert(&req)?;
    Ok(Outcome::Done {
        stdout: done.report,
        written: Some(done.written),
    })
}

fn has_suffix(path: &Path, suffixes: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| suffixes.contains(&e.to_ascii_lowercase().as_str()))
}

/// A name that can only be meant as a local path (so a missing one is an error, not a Hub id):
/// a weight-file extension, a leading `/`, `.` or `~`, or more than one `/`.
fn looks_like_a_path(path: &Path) -> bool {
    let text = path.to_string_lossy();
    has_suffix(path, &TORCH_SUFFIXES)
        || has_suffix(path, &["safetensors", "flashpack"])
        || text.starts_with(['/', '.', '~'])
        || text.matches('/').count() > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        for hub in ["org/model", "model", "stabilityai/sd-2.1"] {
            assert!(!looks_like_a_path(Path::new(hub)), "{hub}");
        }
        for path in ["m.safetensors", "./model", "/abs/x", "a/b/c", "w.PT", "~/m"] {
            assert!(looks_like_a_path(Path::new(path)), "{path}");
        }
    }
}
