//! What the commands read: a local path, or a URL (`http(s)://`, `s3://`, `hf://`) of a weight
//! file or an index json, read with ranged GETs (the engine's `remote` feature, on in the CLI's
//! default `remote` feature; without it a URL is an error saying so).
use std::path::Path;

use flashpack::cancel::Cancel;
use flashpack::checkpoint::{Checkpoint, OpenOptions};
use flashpack::weights::WeightFile;

use crate::error::Result;

/// The URL that `path` spells, if it is one.
pub fn url(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| flashpack::remote::is_remote(s))
}

/// Opens a weight file, an index json or a folder holding one; or a URL of a file or an index
/// (`cancel` stops its requests at once, e.g. at a stalled server).
pub fn open_checkpoint(path: &Path, cancel: &Cancel) -> Result<Checkpoint> {
    open_checkpoint_with(path, &OpenOptions::default(), cancel)
}

/// As [`open_checkpoint`], choosing a variant in a local folder.
pub fn open_checkpoint_with(
    path: &Path,
    opts: &OpenOptions,
    cancel: &Cancel,
) -> Result<Checkpoint> {
    Ok(match url(path) {
        Some(u) => open_checkpoint_url(u, cancel)?,
        None => Checkpoint::open_with(path, opts)?,
    })
}

/// Opens one weight file, local or at a URL (only its footer or header is read; `cancel` stops
/// the requests at once).
pub fn open_file(path: &Path, cancel: &Cancel) -> Result<WeightFile> {
    Ok(match url(path) {
        Some(u) => open_file_url(u, cancel)?,
        None => WeightFile::open(path)?,
    })
}

/// Settings from the environment, stopped by `cancel`.
#[cfg(feature = "remote")]
fn settings(cancel: &Cancel) -> flashpack::Result<flashpack::remote::RemoteSettings> {
    Ok(flashpack::remote::RemoteSettings::from_env()?.with_cancel(Some(cancel.clone())))
}

#[cfg(feature = "remote")]
fn open_checkpoint_url(url: &str, cancel: &Cancel) -> flashpack::Result<Checkpoint> {
    Checkpoint::open_url(url, settings(cancel)?)
}

#[cfg(feature = "remote")]
fn open_file_url(url: &str, cancel: &Cancel) -> flashpack::Result<WeightFile> {
    WeightFile::open_url(url, settings(cancel)?)
}

/// Without the `remote` feature a URL is an error saying so.
#[cfg(not(feature = "remote"))]
fn open_checkpoint_url(url: &str, _cancel: &Cancel) -> flashpack::Result<Checkpoint> {
    Checkpoint::open_location(url, &OpenOptions::default())
}

/// Without the `remote` feature a URL is an error saying so.
#[cfg(not(feature = "remote"))]
fn open_file_url(url: &str, _cancel: &Cancel) -> flashpack::Result<WeightFile> {
    WeightFile::open_location(url)
}
