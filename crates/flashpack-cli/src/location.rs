//! What the commands read: a local path, or a URL (`http(s)://`, `s3://`, `hf://`) of a weight
//! file or an index json, read with ranged GETs (the engine's `remote` feature, on in the CLI's
//! default `remote` feature; without it a URL is an error saying so).
use std::path::Path;

use flashpack::checkpoint::{Checkpoint, OpenOptions};
use flashpack::weights::WeightFile;

use crate::error::Result;

/// The URL that `path` spells, if it is one.
pub fn url(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| flashpack::remote::is_remote(s))
}

/// Opens a weight file, an index json or a folder holding one; or a URL of a file or an index.
pub fn open_checkpoint(path: &Path) -> Result<Checkpoint> {
    Ok(match url(path) {
        Some(u) => Checkpoint::open_location(u, &OpenOptions::default())?,
        None => Checkpoint::open(path)?,
    })
}

/// Opens one weight file, local or at a URL (only its footer or header is read).
pub fn open_file(path: &Path) -> Result<WeightFile> {
    Ok(match url(path) {
        Some(u) => WeightFile::open_location(u)?,
        None => WeightFile::open(path)?,
    })
}
