//! Checkpoints at a URL: a weight file, or an index json whose shards are the objects beside it
//! (see [`Checkpoint::open_location`]).
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{index, shard_names, Checkpoint, IndexFile};
use crate::error::CheckpointError;
use crate::remote::{RemoteFile, RemoteSettings, RemoteUrl};
use crate::weights::WeightFile;
use crate::{Error, Result};

/// Shards whose headers are fetched at once (each open is a HEAD and one or two small GETs).
const OPEN_IN_PARALLEL: usize = 8;

/// Opens the checkpoint at `url`: an index json when its name ends in `.json`, else one weight
/// file.
pub(super) fn open(url: &str, settings: RemoteSettings) -> Result<Checkpoint> {
    let parsed = RemoteUrl::parse(url).map_err(|e| Error::remote(url, e))?;
    let name = parsed.key.rsplit('/').next().unwrap_or("");
    if !name.to_ascii_lowercase().ends_with(".json") {
        let file = WeightFile::open_url(url, settings)?;
        return Ok(Checkpoint::single(PathBuf::from(url), file));
    }
    let index = read_index(url, &settings)?;
    let names = shard_names(&index);
    let files = open_shards(&parsed, &names, &settings);
    Checkpoint::from_index(PathBuf::from(url), index, files)
}

/// Fetches and parses an index object, refused unread when larger than
/// [`index::MAX_INDEX_BYTES`].
fn read_index(url: &str, settings: &RemoteSettings) -> Result<IndexFile> {
    let file = RemoteFile::open_with(url, settings.clone())?;
    if file.len() > index::MAX_INDEX_BYTES {
        return Err(Error::checkpoint(
            url,
            CheckpointError::IndexTooLarge {
                size: file.len(),
                limit: index::MAX_INDEX_BYTES,
            },
        ));
    }
    // Bounded just above.
    let mut bytes = vec![0u8; file.len() as usize];
    file.read_exact_at(&mut bytes, 0)?;
    IndexFile::parse(&bytes).map_err(|e| Error::checkpoint(url, e))
}

/// Opens the shards `names` beside `index` (their headers only), several at once; one result
/// per name, in order.
fn open_shards(
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
