//! What the commands read: a local path, or a URL (`http(s)://`, `s3://`, `hf://`) of a weight
//! file or an index json, read with ranged GETs (the engine's `remote` feature, on in the CLI's
//! default `remote` feature; without it a URL is an error saying so).
use std::path::Path;

use flashpack::cancel::Cancel;
use flashpack::checkpoint::{Checkpoint, OpenOptions};
use flashpack::remote::LocationOptions;
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
    let location = LocationOptions::cancelled_by(cancel);
    Ok(Checkpoint::open_location_with(path, opts, &location)?)
}

/// Opens one weight file, local or at a URL (only its footer or header is read; `cancel` stops
/// the requests at once).
pub fn open_file(path: &Path, cancel: &Cancel) -> Result<WeightFile> {
    let location = LocationOptions::cancelled_by(cancel);
    Ok(WeightFile::open_location_with(path, &location)?)
}
