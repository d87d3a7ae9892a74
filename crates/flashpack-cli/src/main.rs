//! `flashpack`: inspect, verify, convert and bench FlashPack and safetensors files from Rust.
//!
//! ```text
//! flashpack inspect model.flashpack --index          # footer: version, blocks, checksums, tensors
//! flashpack inspect model.safetensors --json         # the same for a safetensors file, as JSON
//! flashpack verify model.flashpack                   # footer, layout and checksums
//! flashpack convert model.safetensors model.flashpack
//! flashpack convert model.flashpack model.safetensors
//! flashpack bench model.safetensors --repeats 3      # ours vs the safetensors crate and candle
//! ```
//!
//! Failures print one line on stderr (`flashpack: error: <file>: <what>`) and exit with status 1;
//! usage errors are clap's (status 2). Long packs, loads and verifications draw progress bars on
//! a terminal unless `--quiet`. SIGINT or SIGTERM stops `convert` and `verify` cleanly (exit
//! status 128 + the signal's number; see `interrupt.rs`).
mod bench;
mod convert;
mod error;
mod format;
mod inspect;
mod interrupt;
mod touch;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::convert::Target;
use crate::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "flashpack",
    version,
    about = "Inspect, verify, convert and bench FlashPack and safetensors files."
)]
struct Cli {
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a FlashPack footer or a safetensors header: format, blocks, checksums, tensors.
    Inspect {
        /// A FlashPack or safetensors file.
        file: PathBuf,
        /// List every tensor: name, dtype, shape and byte range in the file.
        #[arg(short, long)]
        index: bool,
        /// Print machine-readable JSON.
        #[arg(short, long)]
        json: bool,
    },
    /// Check a FlashPack file's footer, layout and checksums, or a safetensors file's header.
    Verify {
        /// A FlashPack or safetensors file.
        file: PathBuf,
    },
    /// Convert between safetensors and FlashPack, bit-exact (or repack a FlashPack file).
    Convert {
        /// The source file (its format is detected).
        src: PathBuf,
        /// The output file (written atomically), or a folder to put `SRC-stem.<ext>` in.
        dst: PathBuf,
        /// Output format; default: DST's extension, else the other format than SRC's.
        #[arg(long, value_enum)]
        to: Option<Target>,
        /// FlashPack output: write no payload checksums.
        #[arg(long)]
        no_checksums: bool,
        /// FlashPack output: alignment of tensors in bytes (default 128).
        #[arg(long, value_name = "N")]
        align_bytes: Option<u64>,
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

fn run(cli: Cli) -> Result<()> {
    let progress = !cli.quiet;
    match cli.command {
        Command::Inspect { file, index, json } => inspect::run(&file, index, json),
        Command::Verify { file } => verify::run(&file, progress),
        Command::Convert {
            src,
            dst,
            to,
            no_checksums,
            align_bytes,
        } => convert::run(&convert::Request {
            src,
            dst,
            to,
            checksums: !no_checksums,
            align_bytes,
            progress,
        }),
        Command::Bench {
            file,
            repeats,
            json,
        } => bench::run(&bench::Request {
            file,
            repeats: usize::try_from(repeats).unwrap_or(1),
            json,
            progress,
        }),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => interrupt::exit_for(&e).unwrap_or_else(|| {
            eprintln!("flashpack: error: {}", e.one_line());
            ExitCode::FAILURE
        }),
    }
}
