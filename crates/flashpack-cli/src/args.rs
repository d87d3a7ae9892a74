//! The command line of `flashpack`, the one definition both commands parse: the Rust binary and
//! the Python package's console script (which hands its arguments to this parser through
//! `flashpack._core`). It has the original Python package's subcommands and flags (`convert`,
//! `revert`, `metadata`) and the engine's (`inspect`, `verify`, `bench`). A few flags need Python
//! (torch, transformers, diffusers, the Hub); the binary says so when they are used.
//!
//! ```text
//! flashpack convert model.safetensors                          # -> model.flashpack, bit-exact
//! flashpack convert ./bert ./bert-fp --use-transformers        # Python command only
//! flashpack revert model.flashpack model.safetensors
//! flashpack metadata model.flashpack -i
//! flashpack inspect model.safetensors --json
//! flashpack verify model.flashpack
//! flashpack inspect https://example.com/model.safetensors      # the header only, ranged GETs
//! ```
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::convert::Target;

/// `flashpack [-q] [-v] <command> ...`
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "flashpack",
    version,
    about = "Convert, revert, inspect, verify and bench FlashPack and safetensors files."
)]
pub struct Cli {
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print each phase's time (and, in the Python command, a traceback with an error).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Command {
    /// Convert weights to FlashPack (or between FlashPack and safetensors): a file, a model
    /// folder or a Hugging Face Hub repository id.
    Convert(ConvertArgs),
    /// Write a FlashPack file back as .safetensors (bit-exact) or a torch file (.pt/.bin/.pth/.ckpt).
    Revert(RevertArgs),
    /// Print a FlashPack file's footer (the original package's command).
    Metadata {
        /// A FlashPack file (or its URL).
        path: PathBuf,
        /// List every tensor.
        #[arg(short = 'i', long)]
        show_index: bool,
        /// Print the footer as JSON.
        #[arg(short, long)]
        json: bool,
    },
    /// Summarize a FlashPack footer or a safetensors header: format, blocks, checksums, tensors;
    /// for a checkpoint of several files, each shard and the total.
    Inspect {
        /// A FlashPack or safetensors file, an index json, or a folder holding one of those; or
        /// the URL (https://, s3://, hf://org/repo/path) of a file or an index.
        file: PathBuf,
        /// List every tensor: name, dtype, shape and byte range in the file.
        #[arg(short, long, visible_alias = "show-index")]
        index: bool,
        /// Print machine-readable JSON.
        #[arg(short, long)]
        json: bool,
    },
    /// Check a FlashPack file's footer, layout and checksums, or a safetensors file's header;
    /// for a checkpoint of several files, its index against its shards, then each shard.
    Verify {
        /// A FlashPack or safetensors file, an index json, or a folder holding one of those; or
        /// the URL (https://, s3://, hf://org/repo/path) of a file or an index.
        file: PathBuf,
    },
    /// Load throughput of one file (hot page cache, every byte touched) vs the peers.
    Bench {
        /// A FlashPack or safetensors file (peers run on safetensors files only).
        file: PathBuf,
        /// Runs per row; the best is reported.
        #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        repeats: u64,
        /// Print machine-readable JSON.
        #[arg(short, long)]
        json: bool,
    },
}

/// `flashpack convert`.
#[derive(Debug, Args, Serialize)]
pub struct ConvertArgs {
    /// A .safetensors or .flashpack file, a sharded checkpoint's index json, a folder of
    /// weights (one index or one weight file), a torch file (.bin/.pt/.pth/.ckpt), a model
    /// folder, a Hugging Face Hub repository id, or the URL (https://, s3://, hf://) of a
    /// weight file or an index json.
    pub path_or_repo_id: PathBuf,
    /// The output file (written atomically), or a folder: for a file, default beside it with
    /// the output's extension; for a model folder, the folder itself. With --sharded or
    /// --max-shard-size, a new (or empty) folder that receives the shards and their index.
    pub destination_path: Option<PathBuf>,
    /// Output format for a file; default: the destination's extension, else the other format
    /// than the source's.
    #[arg(long, value_enum)]
    pub to: Option<Target>,
    /// FlashPack output: write no payload checksums.
    #[arg(long)]
    pub no_checksums: bool,
    /// FlashPack output: alignment of tensors in bytes (default 128).
    #[arg(long, value_name = "N")]
    pub align_bytes: Option<u64>,
    /// Write a checkpoint of several files (shards and an index json) with the source's own
    /// split: its shards, or those a pack converted from a sharded checkpoint remembers.
    #[arg(long)]
    pub sharded: bool,
    /// Write a checkpoint of several files, each at most this size (e.g. 5GB, 500MiB, bytes);
    /// a larger tensor gets a file of its own.
    #[arg(long, value_name = "SIZE", value_parser = crate::format::parse_size)]
    pub max_shard_size: Option<u64>,
    /// Leave out this tensor (repeatable).
    #[arg(long, value_name = "NAME", action = clap::ArgAction::Append)]
    pub ignore_names: Vec<String>,
    /// Leave out tensors whose name starts with this (repeatable).
    #[arg(long, value_name = "PREFIX", action = clap::ArgAction::Append)]
    pub ignore_prefixes: Vec<String>,
    /// Leave out tensors whose name ends with this (repeatable).
    #[arg(long, value_name = "SUFFIX", action = clap::ArgAction::Append)]
    pub ignore_suffixes: Vec<String>,
    /// Cast floating-point tensors to this dtype, e.g. bfloat16 (torch's cast: Python command).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Model folders and Hub ids: the model's subfolder, e.g. unet (Python command).
    #[arg(long)]
    pub subfolder: Option<String>,
    /// Model folders and Hub ids: the weights variant, e.g. fp16 (Python command).
    #[arg(long)]
    pub variant: Option<String>,
    /// Load the folder or Hub id as a transformers model (Python command).
    #[arg(long, conflicts_with = "use_diffusers")]
    pub use_transformers: bool,
    /// Load the folder or Hub id as a diffusers model (Python command).
    #[arg(long)]
    pub use_diffusers: bool,
}

/// `flashpack revert`.
#[derive(Debug, Args, Serialize)]
pub struct RevertArgs {
    /// The FlashPack file, a multi-file FlashPack index, or a folder holding one of those.
    pub path: PathBuf,
    /// The output: .safetensors (default, beside the source) or a torch file (Python command);
    /// with --sharded or --max-shard-size, a new (or empty) folder.
    pub destination_path: Option<PathBuf>,
    /// Write sharded safetensors (shards and a model.safetensors.index.json) with the source's
    /// own split: its shards, or those a pack converted from a sharded checkpoint remembers.
    #[arg(long)]
    pub sharded: bool,
    /// Write sharded safetensors, each file at most this size (e.g. 5GB, 500MiB, bytes).
    #[arg(long, value_name = "SIZE", value_parser = crate::format::parse_size)]
    pub max_shard_size: Option<u64>,
}

/// A command line parsed, or what clap has to say instead (help, version, a usage error).
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Cli>),
    /// Print `text` (on stderr when `to_stderr`) and exit with `code`.
    Exit {
        code: i32,
        text: String,
        to_stderr: bool,
    },
}

/// Parses `args` (without the program name).
pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from("flashpack"))
        .chain(args.into_iter().map(Into::into));
    match Cli::try_parse_from(argv) {
        Ok(cli) => Parsed::Run(Box::new(cli)),
        Err(e) => Parsed::Exit {
            code: e.exit_code(),
            text: e.render().to_string(),
            to_stderr: e.use_stderr(),
        },
    }
}

impl Cli {
    /// The parsed command line as JSON (what the Python command receives for
    /// [`crate::run::Outcome::NeedsPython`]): `{"quiet", "verbose", "command": {"command":
    /// "convert", "path_or_repo_id", ...}}`, paths as strings.
    pub fn to_json(&self) -> crate::error::Result<String> {
        serde_json::to_string(self)
            .map_err(|source| crate::error::CliError::ArgumentsToPython { source })
    }
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Convert(_) => "convert",
            Command::Revert(_) => "revert",
            Command::Metadata { .. } => "metadata",
            Command::Inspect { .. } => "inspect",
            Command::Verify { .. } => "verify",
            Command::Bench { .. } => "bench",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_original_flags_parse() {
        let cli = Cli::try_parse_from([
            "flashpack",
            "convert",
            "org/repo",
            "out",
            "--subfolder",
            "unet",
            "--dtype",
            "bf16",
            "--ignore-names",
            "a",
            "--ignore-names",
            "b",
            "--use-diffusers",
            "-v",
        ])
        .unwrap();
        let Command::Convert(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.ignore_names, ["a", "b"]);
        assert!(cli.verbose && args.use_diffusers);
        let cli =
            Cli::try_parse_from(["flashpack", "metadata", "m.flashpack", "-i", "-j"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Metadata {
                show_index: true,
                json: true,
                ..
            }
        ));
        assert!(Cli::try_parse_from([
            "flashpack",
            "convert",
            "x",
            "--use-transformers",
            "--use-diffusers"
        ])
        .is_err());
    }
}
