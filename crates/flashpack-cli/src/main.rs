//! `flashpack`: convert, revert, inspect, verify and bench FlashPack and safetensors files
//! without Python (the same command as the Python package's; see [`flashpack_cli::args`]).
//!
//! ```text
//! flashpack inspect model.flashpack --index          # footer: version, blocks, checksums, tensors
//! flashpack inspect model.safetensors --json         # the same for a safetensors file, as JSON
//! flashpack verify model.flashpack                   # footer, layout and checksums
//! flashpack convert model.safetensors model.flashpack
//! flashpack convert model.flashpack model.safetensors
//! flashpack convert ./sharded one.flashpack          # a checkpoint of several files (folder or index json)
//! flashpack revert one.flashpack ./again --sharded   # the same shards and index again
//! flashpack verify ./sharded                         # the index against its shards, then each shard
//! flashpack bench model.safetensors --repeats 3      # ours vs the safetensors crate and candle
//! ```
//!
//! Failures print one line on stderr (`flashpack: error: <file>: <what>`) and exit with status 1;
//! usage errors are clap's (status 2). Long packs, loads and verifications draw progress bars on
//! a terminal unless `--quiet`. What needs Python (torch files, `--dtype`, model folders, Hub
//! ids) is refused with a message pointing to the Python package's command. SIGINT or SIGTERM
//! stops `convert`, `revert` and `verify` cleanly (exit status 128 + the signal's number; see
//! [`flashpack_cli::interrupt`]).
use std::process::ExitCode;

use clap::Parser;
use flashpack::cancel::Cancel;
use flashpack_cli::args::{Cli, Command};
use flashpack_cli::error::{print_line, Result};
use flashpack_cli::interrupt;
use flashpack_cli::run::{needs_python_message, run, Outcome};

/// Commands that read or write whole files, and those that read a URL, stop cleanly on
/// SIGINT/SIGTERM (a URL's requests are dropped at once, exit status 130 for SIGINT); the
/// others keep the default behaviour of those signals (they write nothing).
fn cancel_for(cli: &Cli) -> Result<Cancel> {
    match &cli.command {
        Command::Convert(_) | Command::Revert(_) | Command::Verify { .. } => interrupt::watch(),
        Command::Inspect { file: p, .. } | Command::Metadata { path: p, .. }
            if flashpack_cli::location::url(p).is_some() =>
        {
            interrupt::watch()
        }
        _ => Ok(Cancel::new()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cancel_for(&cli).and_then(|cancel| run(&cli, &cancel));
    let result = result.and_then(|outcome| match outcome {
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
        Err(e) => match interrupt::exit_for(&e) {
            Some(status) => return status,
            None => e.one_line(),
        },
    };
    eprintln!("flashpack: error: {message}");
    ExitCode::FAILURE
}
