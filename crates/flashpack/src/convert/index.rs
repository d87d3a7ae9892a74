//! Writing an index json for a set of weight files: a safetensors index (as transformers writes
//! it) or a multi-file FlashPack index (`format`, `version`, and per shard its size and footer
//! digest, so a replaced shard is noticed on open). The index is written atomically, like a pack.
//!
//! ```
//! use flashpack::checkpoint::{Checkpoint, IndexKind};
//! use flashpack::convert::write_index;
//! use flashpack::write::{pack, PackEntry, PackOptions};
//! use flashpack::Dtype;
//! let dir = tempfile::tempdir().unwrap();
//! let (a, b) = (dir.path().join("a.flashpack"), dir.path().join("b.flashpack"));
//! pack(&a, &[PackEntry::new("x", Dtype::U8, vec![2], &[1, 2])], &PackOptions::default()).unwrap();
//! pack(&b, &[PackEntry::new("y", Dtype::U8, vec![1], &[3])], &PackOptions::default()).unwrap();
//! let index = dir.path().join("model.flashpack.index.json");
//! write_index(&index, IndexKind::FlashPack, &[a, b], serde_json::Map::new()).unwrap();
//! assert_eq!(Checkpoint::open(&index).unwrap().total_size(), 3);
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::ConvertError;
use crate::checkpoint::index::{
    check_shard_name, ShardRecord, FLASHPACK_INDEX_FORMAT, FLASHPACK_INDEX_VERSION,
};
use crate::checkpoint::{footer_digest, IndexKind};
use crate::error::CheckpointError;
use crate::weights::WeightFile;
use crate::write::{prepare_destination, Staged};
use crate::{Error, Result};

/// Writes the index `dest` for `files` (each inside `dest`'s folder; for
/// [`IndexKind::FlashPack`] each a FlashPack file). `metadata` is written as the index's
/// `metadata` with `total_size` set to the tensor bytes of all files, as transformers does.
/// Every file is opened and validated; a tensor in two files is an error naming both.
pub fn write_index(
    dest: &Path,
    kind: IndexKind,
    files: &[PathBuf],
    mut metadata: Map<String, Value>,
) -> Result<()> {
    let contents = IndexContents::of(dest, kind, files)?;
    metadata.insert("total_size".into(), contents.total.into());
    let doc = match kind {
        IndexKind::Safetensors => {
            json!({"metadata": metadata, "weight_map": contents.weight_map})
        }
        IndexKind::FlashPack => json!({
            "format": FLASHPACK_INDEX_FORMAT,
            "version": FLASHPACK_INDEX_VERSION,
            "metadata": metadata,
            "weight_map": contents.weight_map,
            "files": contents.records,
        }),
    };
    let mut text = serde_json::to_vec_pretty(&doc)
        .map_err(|source| Error::convert(dest, ConvertError::EncodeIndex { source }))?;
    text.push(b'\n');
    write_atomically(dest, &text)
}

/// What an index of some weight files says: which shard holds each tensor, each FlashPack
/// shard's size and footer digest, and the tensor bytes of all files.
struct IndexContents {
    weight_map: BTreeMap<String, String>,
    records: BTreeMap<String, ShardRecord>,
    total: u64,
}

impl IndexContents {
    /// Opens and validates every file (for an index to be written at `dest`): each a plain
    /// name inside the index's folder, a FlashPack file for a FlashPack index, no tensor in two.
    fn of(dest: &Path, kind: IndexKind, files: &[PathBuf]) -> Result<IndexContents> {
        let bad = |source| Error::checkpoint(dest, source);
        let folder = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut contents = IndexContents {
            weight_map: BTreeMap::new(),
            records: BTreeMap::new(),
            total: 0,
        };
        for path in files {
            let name = shard_name(&folder, path)?;
            let file = WeightFile::open(path)?;
            let first = file.tensors().first().map(|t| t.name.clone());
            check_shard_name(&name, first.as_deref().unwrap_or("")).map_err(bad)?;
            if kind == IndexKind::FlashPack {
                let Some(flash) = file.flashpack() else {
                    return Err(bad(CheckpointError::NotAFlashPackShard {
                        shard: name,
                        tensor: first.unwrap_or_default(),
                    }));
                };
                let record = ShardRecord {
                    size: flash.file_len,
                    footer_xxh3_64: footer_digest(&flash.footer_json),
                };
                contents.records.insert(name.clone(), record);
            }
            contents.add_tensors(&name, &file).map_err(bad)?;
        }
        if contents.weight_map.is_empty() {
            return Err(bad(CheckpointError::Empty));
        }
        Ok(contents)
    }

    /// Maps `file`'s tensors to shard `name`, refusing a tensor already mapped to another.
    fn add_tensors(
        &mut self,
        name: &str,
        file: &WeightFile,
    ) -> std::result::Result<(), CheckpointError> {
        for t in file.tensors() {
            self.total += t.end - t.start;
            if let Some(listed) = self.weight_map.insert(t.name.clone(), name.to_string()) {
                return Err(CheckpointError::TensorInTwoShards {
                    tensor: t.name.clone(),
                    listed,
                    other: name.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// `path`'s name relative to the index's `folder`, with `/` separators. The folders are
/// compared resolved (`canonicalize`: relative or absolute, `.`/`..`, symlinked folders are the
/// same folder); the file's own name is kept as given (a shard may be a symlink).
fn shard_name(folder: &Path, path: &Path) -> Result<String> {
    let outside = || {
        Error::convert(
            path,
            ConvertError::OutsideIndexFolder {
                folder: folder.to_path_buf(),
            },
        )
    };
    let resolve = |dir: &Path| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::canonicalize(dir).map_err(|e| Error::io(dir, "resolve the folder of", e))
    };
    let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(outside());
    };
    let folder = resolve(folder)?;
    let relative = resolve(parent)?
        .strip_prefix(&folder)
        .map_err(|_| outside())?
        .join(file_name);
    let parts: Option<Vec<&str>> = relative.iter().map(|c| c.to_str()).collect();
    Ok(parts.ok_or_else(outside)?.join("/"))
}

/// Writes `bytes` as `dest`: complete and synced before it replaces what was there.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    use crate::os::Positioned;
    let dir = prepare_destination(dest)?;
    let tmp = Staged::create(&dir, dest)?;
    let file = tmp.file();
    file.write_all_at(bytes, 0)
        .map_err(|e| Error::io(dest, "write", e))?;
    file.sync_all().map_err(|e| Error::io(dest, "fsync", e))?;
    tmp.commit(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::packs;
    use crate::checkpoint::Checkpoint;

    /// The index's folder and its files spelled differently (`..` in one of them, a symlink to the
    /// folder) are still the same folder, and the names written stay relative.
    #[test]
    fn write_index_compares_folders_not_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        std::fs::create_dir(&ck).unwrap();
        let files = packs(&ck);
        let names = ["m-00001-of-00002.flashpack", "m-00002-of-00002.flashpack"];
        let dotted = dir.path().join("ck/../ck/m.flashpack.index.json");
        #[cfg(unix)]
        let indexes = {
            std::os::unix::fs::symlink(&ck, dir.path().join("link")).unwrap();
            vec![dotted, dir.path().join("link/m.flashpack.index.json")]
        };
        #[cfg(not(unix))]
        let indexes = vec![dotted];
        for index in indexes {
            write_index(&index, IndexKind::FlashPack, &files, serde_json::Map::new())
                .unwrap_or_else(|e| panic!("{}: {e}", index.display()));
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
            let mut listed: Vec<&str> = doc["weight_map"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            listed.dedup();
            assert_eq!(listed, names, "{}", index.display());
            assert_eq!(Checkpoint::open(&index).unwrap().len(), 3);
        }
    }

    /// A file outside the index's folder is a typed refusal naming the file and the folder,
    /// and nothing is written.
    #[test]
    fn a_file_outside_the_index_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        std::fs::create_dir(&ck).unwrap();
        let files = packs(dir.path());
        let index = ck.join("m.flashpack.index.json");
        let e = write_index(&index, IndexKind::FlashPack, &files, Map::new()).unwrap_err();
        match &e {
            Error::Convert { path, source } => {
                assert_eq!(path, &files[0]);
                assert!(
                    matches!(**source, ConvertError::OutsideIndexFolder { ref folder } if folder == &ck),
                    "{e}"
                );
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().contains("not inside the index's folder"),
            "{e}"
        );
        assert!(!index.exists());
    }
}
