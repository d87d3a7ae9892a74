//! SIGINT (Ctrl-C) and SIGTERM (on Windows: Ctrl-C and Ctrl-Break, reported as SIGINT) during a command that writes or reads a whole file (`convert`,
//! `verify`): the first one cancels it through the engine's [`Cancel`], so it stops between
//! chunks, removes its temporary file and leaves the destination as it was; the command then
//! exits with status 128 + the signal's number. A second signal ends the process at once (the
//! output file has no name until it is complete, so nothing is left behind either way). A
//! signal that arrives once the output is in place changes nothing: the command reports its
//! success.
//!
//! ```text
//! $ flashpack convert big.safetensors big.flashpack   # Ctrl-C
//! flashpack: big.flashpack: interrupted by SIGINT; nothing was changed
//! $ echo $?
//! 130
//! ```
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use flashpack::cancel::{Cancel, Poll};
#[cfg(unix)]
use signal_hook::consts::{SIGINT, SIGTERM};
#[cfg(unix)]
use signal_hook::iterator::Signals;

use crate::error::{CliError, Result};

/// The signal that cancelled the command (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
static CANCEL: OnceLock<Cancel> = OnceLock::new();

/// The C runtime's numbers for the two (Windows has no POSIX signals; the console's Ctrl-C and
/// Ctrl-Break events stand for SIGINT).
#[cfg(windows)]
const SIGINT: i32 = 2;
#[cfg(windows)]
const SIGTERM: i32 = 15;

/// What the watcher does with each signal: the first cancels, a second ends the process.
fn on_signal(watcher: &Cancel, signal: i32) {
    if RECEIVED.load(Ordering::SeqCst) != 0 {
        std::process::exit(128 + signal);
    }
    if watcher.poll(|| true) == Poll::Cancelled {
        RECEIVED.store(signal, Ordering::SeqCst);
    }
}

/// Starts watching for SIGINT and SIGTERM (once per process) and returns the [`Cancel`] they set.
#[cfg(unix)]
pub fn watch() -> Result<Cancel> {
    if let Some(c) = CANCEL.get() {
        return Ok(c.clone());
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| CliError::io("<signals>", "install the SIGINT/SIGTERM handler", e))?;
    let cancel = CANCEL.get_or_init(Cancel::new).clone();
    let watcher = cancel.clone();
    std::thread::Builder::new()
        .name("flashpack-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                on_signal(&watcher, signal);
            }
        })
        .map_err(|e| CliError::io("<signals>", "start the signal thread", e))?;
    Ok(cancel)
}

/// Starts watching for Ctrl-C / Ctrl-Break (once per process) and returns the [`Cancel`] they set.
#[cfg(windows)]
pub fn watch() -> Result<Cancel> {
    if let Some(c) = CANCEL.get() {
        return Ok(c.clone());
    }
    let cancel = CANCEL.get_or_init(Cancel::new).clone();
    let watcher = cancel.clone();
    ctrlc::set_handler(move || on_signal(&watcher, SIGINT)).map_err(|e| {
        CliError::io(
            "<signals>",
            "install the Ctrl-C handler",
            std::io::Error::other(e),
        )
    })?;
    Ok(cancel)
}

/// The signal that cancelled the command, as (number, name), if one did.
pub fn received() -> Option<(i32, &'static str)> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        SIGINT => Some((SIGINT, "SIGINT")),
        SIGTERM => Some((SIGTERM, "SIGTERM")),
        other => Some((other, "a signal")),
    }
}

/// For a command stopped by a signal: prints why on stderr and returns the exit status
/// (128 + the signal's number). `None` for any other error.
pub fn exit_for(e: &CliError) -> Option<std::process::ExitCode> {
    let CliError::Engine(flashpack::Error::Cancelled { path }) = e else {
        return None;
    };
    let (number, name) = received()?;
    eprintln!(
        "flashpack: {}: interrupted by {name}; nothing was changed",
        path.display()
    );
    Some(std::process::ExitCode::from(
        u8::try_from(128 + number).unwrap_or(1),
    ))
}
