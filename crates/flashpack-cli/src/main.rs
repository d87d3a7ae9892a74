//! `flashpack`: convert, revert, inspect, verify and bench FlashPack and safetensors files
//! without Python (the same command as the Python package's; see [`flashpack_cli::args`]).
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
//! a terminal unless `--quiet`. What needs Python (torch files, `--dtype`, model folders, Hub
//! ids) is refused with a message pointing to the Python package's command.
use std::process::ExitCode;

use clap::Parser;
use flashpack_cli::args::Cli;
use flashpack_cli::error::print_line;
use flashpack_cli::run::{needs_python_message, run, Outcome};

fn main() -> ExitCode {
    let result = run(&Cli::parse()).and_then(|outcome| match outcome {
        Outcome::Done { stdout, .. } => {
            if !stdout.is_empty() {
                print_line(&stdout)?;
            }
            Ok(None)
        }
        Outcome::NeedsPython { reason } => Ok(Some(needs_python_message(&reason))),
    });
    let message = match result {
        Ok(None) => return ExitCode::SUCCESS,
        Ok(Some(message)) => message,
        Err(e) => e.one_line(),
    };
    eprintln!("flashpack: error: {message}");
    ExitCode::FAILURE
}
