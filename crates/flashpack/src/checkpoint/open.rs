//! Opening a checkpoint from a location: a local path (a weight file, an index json or a
//! folder holding one, see [`locate()`](super::locate)) or a URL (feature `remote`) of a weight
//! file or of an index json whose shards are the objects beside it. Local or remote is decided
//! once, in [`Checkpoint::open_location_with`]; both end in the same checks
//! (`Checkpoint::from_index`).
use std::path::{Path, PathBuf};
#[cfg(feature = "remote")]
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(feature = "remote")]
use std::sync::Mutex;

use super::{index, locate, shard_names, Checkpoint, IndexFile, Located, OpenOptions};
use crate::error::CheckpointError;
use crate::remote::LocationOptions;
#[cfg(feature = "remote")]
use crate::remote::{RemoteSettings, RemoteUrl};
use crate::source::Source;
use crate::weights::WeightFile;
use crate::{Error, Result};

impl Checkpoint {
    /// Opens a weight file, an index json or a folder holding exactly one of those.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// As [`open`](Self::open), choosing a variant in a folder.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Checkpoint> {
        match locate(path.as_ref(), opts.variant.as_deref())? {
            Located::File(file) => {
                let wf = WeightFile::open(&file)?;
                Ok(Self::single(file, wf))
            }
            Located::Index(index) => {
                let parsed = read_index(&Source::open_local(&index)?)?;
                let folder = match index.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let names = shard_names(&parsed);
                let files = names
                    .iter()
                    .map(|name| WeightFile::open(folder.join(name)))
                    .collect();
                Self::from_index(index, parsed, files)
            }
        }
    }

    /// Opens a URL (`http(s)://`, `s3://`, `hf://`; feature `remote`) of a weight file or of
    /// an index json (a name ending in `.json`), or else a local path as
    /// [`open_with`](Self::open_with) does. An index's shards are the objects of the names it
    /// lists in the same folder; the index object is refused unread when larger than
    /// 100 MB (an index of millions of tensors is far smaller).
    pub fn open_location(location: &str, opts: &OpenOptions) -> Result<Checkpoint> {
        Self::open_location_with(location, opts, &LocationOptions::default())
    }

    /// As [`open_location`](Self::open_location), a URL opened with `location_opts` (its
    /// settings and cancellation). Local or remote is decided here, once: the one entry point
    /// for callers (the CLI, the Python extension) that take either.
    pub fn open_location_with(
        location: impl AsRef<Path>,
        opts: &OpenOptions,
        location_opts: &LocationOptions,
    ) -> Result<Checkpoint> {
        let location = location.as_ref();
        match crate::remote::url_of(location) {
            None => Self::open_with(location, opts),
            #[cfg(feature = "remote")]
            Some(url) => open_remote(url, location_opts.settings()?),
            #[cfg(not(feature = "remote"))]
            Some(url) => {
                let _ = location_opts;
                Err(Error::remote(url, crate::remote::RemoteError::NotBuilt))
            }
        }
    }

    /// As [`open_location`](Self::open_location) for a URL, with `settings`.
    #[cfg(feature = "remote")]
    pub fn open_url(url: &str, settings: crate::remote::RemoteSettings) -> Result<Checkpoint> {
        open_remote(url, settings)
    }
}

/// Reads and parses an index json (a local file or a remote object: one reader for both), its
/// size bounded before it is read.
fn read_index(src: &Source) -> Result<IndexFile> {
    let path = src.location();
    if src.len() > index::MAX_INDEX_BYTES {
        return Err(Error::checkpoint(
            path,
            CheckpointError::IndexTooLarge {
                size: src.len(),
                limit: index::MAX_INDEX_BYTES,
            },
        ));
    }
    // Bounded just above.
    let bytes = src.read_vec(0, src.len(), "read")?;
    IndexFile::parse(&bytes).map_err(|e| Error::checkpoint(path, e))
}

#[cfg(feature = "remote")]
/// Shards whose headers are fetched at once (each open is a HEAD and one or two small GETs).
const OPEN_IN_PARALLEL: usize = 8;

/// Opens the checkpoint at `url`: an index json when its name ends in `.json`, else one weight
/// file.
#[cfg(feature = "remote")]
fn open_remote(url: &str, settings: RemoteSettings) -> Result<Checkpoint> {
    let parsed = RemoteUrl::parse(url).map_err(|e| Error::remote(url, e))?;
    let name = parsed.key.rsplit('/').next().unwrap_or("");
    if !name.to_ascii_lowercase().ends_with(".json") {
        let file = WeightFile::open_url(url, settings)?;
        return Ok(Checkpoint::single(PathBuf::from(url), file));
    }
    let index = read_index(&Source::open_url(url, settings.clone())?)?;
    let names = shard_names(&index);
    let files = open_remote_shards(&parsed, &names, &settings);
    Checkpoint::from_index(PathBuf::from(url), index, files)
}

/// Opens the shards `names` beside `index` (their headers only), several at once; one result
/// per name, in order.
#[cfg(feature = "remote")]
fn open_remote_shards(
    index: &RemoteUrl,
    names: &[String],
    settings: &RemoteSettings,
) -> Vec<Result<WeightFile>> {
    let results: Vec<Mutex<Option<Result<WeightFile>>>> =
        names.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..OPEN_IN_PARALLEL.min(names.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(k) else { return };
                let opened = index
                    .sibling(name)
                    .map_err(|e| Error::remote(format!("{} ({name})", index.url), e))
                    .and_then(|u| WeightFile::open_url(&u.url, settings.clone()));
                if let Ok(mut slot) = results[k].lock() {
                    *slot = Some(opened);
                }
            });
        }
    });
    results
        .into_iter()
        .zip(names)
        .map(|(slot, name)| {
            slot.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(Error::Internal(format!(
                    "{}: shard '{name}' was not opened",
                    index.url
                )))
            })
        })
        .collect()
}
