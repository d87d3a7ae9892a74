//! Checkpoints of one or many files: a weight file, a sharded safetensors checkpoint
//! (`model.safetensors.index.json` and its shards), a multi-file FlashPack checkpoint
//! (`model.flashpack.index.json`, specified in the section "Multi-file checkpoints" of
//! `docs/FORMAT.md` in this repository), or a folder holding one of those.
//!
//! [`Checkpoint::open`] resolves the path ([`locate()`]), reads the index ([`IndexFile`]), opens every
//! shard (each validated as a [`WeightFile`]: a FlashPack footer or a safetensors header, the
//! format read from the content) and checks that the index and the shards agree: every listed
//! tensor is in its shard, no tensor is in two shards, no shard name leaves the index's folder.
//! A tensor that a listed shard holds but the index does not list (a stale index) is loaded
//! from that shard, as transformers and diffusers load every tensor of each listed shard;
//! [`Checkpoint::unlisted`] names them (`flashpack verify` refuses them). Each failure is an
//! [`Error::Checkpoint`] naming the index file, the shard and the tensor. The result is a
//! read-only value: shards in order (sorted by name, as transformers loads them), tensor name
//! to shard, the index's `metadata`, the total tensor bytes. [`write_index`](crate::convert::write_index) writes an index
//! for a set of files; [`crate::convert`] splits tensors into shards and writes them.
//!
//! [`Checkpoint::open_location`] also takes a URL (feature `remote`, see [`crate::remote`]) of
//! a weight file or of an index json, whose shards are the objects of the same names beside it
//! (each opened with ranged GETs of its header only, in parallel); every check above applies, a
//! shard the server does not have is [`CheckpointError::ShardMissing`]. A URL cannot name a
//! folder (there is no listing to choose an index from).
//!
//! ```
//! use flashpack::checkpoint::{Checkpoint, IndexKind};
//! use flashpack::convert::write_index;
//! use flashpack::write::{pack, PackEntry, PackOptions};
//! use flashpack::Dtype;
//! let dir = tempfile::tempdir().unwrap();
//! let (a, b) = (dir.path().join("m-1.flashpack"), dir.path().join("m-2.flashpack"));
//! pack(&a, &[PackEntry::new("x", Dtype::U8, vec![2], &[1, 2])], &PackOptions::default()).unwrap();
//! pack(&b, &[PackEntry::new("y", Dtype::U8, vec![3], &[3, 4, 5])], &PackOptions::default()).unwrap();
//! let index = dir.path().join("m.flashpack.index.json");
//! write_index(&index, IndexKind::FlashPack, &[a, b], serde_json::Map::new()).unwrap();
//!
//! let ckpt = Checkpoint::open(dir.path()).unwrap(); // the folder: its one index
//! assert_eq!(ckpt.index_path(), Some(index.as_path()));
//! assert_eq!(ckpt.shards().len(), 2);
//! assert_eq!(ckpt.shard_of("y").unwrap().name(), "m-2.flashpack");
//! assert_eq!(ckpt.total_size(), 5);
//! assert_eq!(ckpt.metadata().unwrap()["total_size"], 5);
//! ```
pub(crate) mod index;
pub(crate) mod locate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::CheckpointError;
use crate::format::digest;
use crate::weights::{Format, TensorInfo, WeightFile};
use crate::{Error, Result};

pub use index::{IndexFile, IndexKind, ShardRecord};
pub use locate::{locate, Located};

/// How [`Checkpoint::open_with`] chooses in a folder.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The weights variant, e.g. `fp16`: in a folder, use `*.safetensors.index.fp16.json` or
    /// `*.fp16.safetensors`. Ignored when the path names a file.
    pub variant: Option<String>,
}

/// One file of a checkpoint, open and validated.
pub struct Shard {
    name: String,
    file: WeightFile,
}

impl Shard {
    /// The name as the index writes it (relative to the index's folder); a single weight
    /// file's own file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checkpoint's index file (or folder, or single weight file), as opened.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The open file: its format, tensors and byte ranges, ready to load.
    pub fn file(&self) -> &WeightFile {
        &self.file
    }

    /// The single weight file of a one-file checkpoint.
    pub fn into_file(self) -> WeightFile {
        self.file
    }

    /// Bytes of tensor data in this shard.
    pub fn tensor_bytes(&self) -> u64 {
        self.file.tensors().iter().map(|t| t.end - t.start).sum()
    }
}

/// A validated checkpoint (see the module doc).
pub struct Checkpoint {
    path: PathBuf,
    kind: Option<IndexKind>,
    shards: Vec<Shard>,
    /// Tensor name -> (shard, position in that shard's tensors).
    by_name: HashMap<String, (usize, usize)>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// (tensor, shard) of the tensors a shard holds and the index does not list.
    unlisted: Vec<(String, String)>,
}

impl Checkpoint {
    fn single(path: PathBuf, file: WeightFile) -> Checkpoint {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let by_name = positions(0, &file);
        Checkpoint {
            path,
            kind: None,
            shards: vec![Shard { name, file }],
            by_name,
            metadata: None,
            unlisted: Vec::new(),
        }
    }

    /// The checkpoint of the index at `path` (parsed: `index`), whose shards (in the order of
    /// [`shard_names`]) were opened as `files`.
    fn from_index(
        path: PathBuf,
        index: IndexFile,
        files: Vec<Result<WeightFile>>,
    ) -> Result<Checkpoint> {
        let bad = |source| Error::checkpoint(&path, source);
        // Shard name -> its tensors, in index order; shards sorted by name.
        let mut listed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in &index.weight_map {
            listed.entry(shard).or_default().push(tensor);
        }
        let shard_of: HashMap<&str, &str> = index
            .weight_map
            .iter()
            .map(|(t, s)| (t.as_str(), s.as_str()))
            .collect();
        let mut shards = Vec::with_capacity(listed.len());
        // Unlisted tensor -> the shard that holds it.
        let mut unlisted: BTreeMap<String, String> = BTreeMap::new();
        let mut by_name = HashMap::with_capacity(index.weight_map.len());
        if files.len() != listed.len() {
            return Err(Error::Internal(format!(
                "{}: {} shard files opened for {} shards",
                path.display(),
                files.len(),
                listed.len()
            )));
        }
        for ((name, tensors), opened) in listed.iter().zip(files) {
            let first = tensors[0].to_string();
            let file = shard_error(opened, name, &first).map_err(bad)?;
            if index.kind == IndexKind::FlashPack {
                check_flashpack_shard(&file, name, &first, index.files.get(*name)).map_err(bad)?;
            }
            check_shard_tensors(name, tensors, &file, &shard_of, &mut unlisted).map_err(bad)?;
            by_name.extend(positions(shards.len(), &file));
            shards.push(Shard {
                name: name.to_string(),
                file,
            });
        }
        Ok(Checkpoint {
            kind: Some(index.kind),
            shards,
            by_name,
            metadata: index.metadata,
            path,
            unlisted: unlisted.into_iter().collect(),
        })
    }

    /// (tensor, shard), sorted by tensor, of the tensors that a shard holds but the index does
    /// not list; they are loaded like the listed ones. Empty for a single file.
    pub fn unlisted(&self) -> &[(String, String)] {
        &self.unlisted
    }

    /// The file that was resolved: the index json, or the single weight file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index json, when the checkpoint has one.
    pub fn index_path(&self) -> Option<&Path> {
        self.kind.map(|_| self.path.as_path())
    }

    /// The index's kind; `None` for a single weight file.
    pub fn index_kind(&self) -> Option<IndexKind> {
        self.kind
    }

    /// The shard files, sorted by name (one for a single weight file).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard files, to load them.
    pub fn into_shards(self) -> Vec<Shard> {
        self.shards
    }

    /// The shard that holds `tensor`.
    pub fn shard_of(&self, tensor: &str) -> Option<&Shard> {
        self.by_name.get(tensor).map(|&(s, _)| &self.shards[s])
    }

    /// `tensor`'s shard and place in it.
    pub fn tensor(&self, tensor: &str) -> Option<(&Shard, &TensorInfo)> {
        let &(s, i) = self.by_name.get(tensor)?;
        let shard = &self.shards[s];
        Some((shard, &shard.file.tensors()[i]))
    }

    /// Every tensor: shard by shard, each in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (&Shard, &TensorInfo)> {
        self.shards
            .iter()
            .flat_map(|s| s.file.tensors().iter().map(move |t| (s, t)))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when it holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The index's `metadata` object as stored (transformers writes `total_size`, which this
    /// does not trust: see [`total_size`](Self::total_size)); `None` for a single weight file
    /// or an index without one.
    pub fn metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.metadata.as_ref()
    }

    /// Bytes of tensor data over all shards, as the shards say.
    pub fn total_size(&self) -> u64 {
        self.shards.iter().map(Shard::tensor_bytes).sum()
    }

    /// True when every shard is a file of `format`.
    pub fn is_all(&self, format: Format) -> bool {
        self.shards.iter().all(|s| s.file.format() == format)
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.name)
            .field("path", &self.file.path())
            .field("format", &self.file.format())
            .field("tensors", &self.file.tensors().len())
            .finish()
    }
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("shards", &self.shards)
            .field("tensors", &self.by_name.len())
            .finish()
    }
}

fn positions(shard: usize, file: &WeightFile) -> HashMap<String, (usize, usize)> {
    file.tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), (shard, i)))
        .collect()
}

/// The shard names an index lists, sorted (the order [`Checkpoint::from_index`] takes their
/// files in).
fn shard_names(index: &IndexFile) -> Vec<String> {
    let names: std::collections::BTreeSet<&str> =
        index.weight_map.iter().map(|(_, s)| s.as_str()).collect();
    names.into_iter().map(str::to_string).collect()
}

/// A shard's open result as a checkpoint problem: a file (or object) that does not exist is
/// `ShardMissing`, anything else `BadShard`.
fn shard_error(
    opened: Result<WeightFile>,
    shard: &str,
    tensor: &str,
) -> std::result::Result<WeightFile, CheckpointError> {
    opened.map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CheckpointError::ShardMissing {
                shard: shard.to_string(),
                tensor: tensor.to_string(),
            }
        }
        #[cfg(feature = "remote")]
        Error::Remote { source, .. } if matches!(*source, crate::remote::RemoteError::NotFound) => {
            CheckpointError::ShardMissing {
                shard: shard.to_string(),
                tensor: tensor.to_string(),
            }
        }
        other => CheckpointError::BadShard {
            shard: shard.to_string(),
            tensor: tensor.to_string(),
            source: Box::new(other),
        },
    })
}

/// The footer digest a FlashPack index records for a shard.
pub(crate) fn footer_digest(footer_json: &[u8]) -> String {
    format!("{:016x}", digest(footer_json))
}

fn check_flashpack_shard(
    file: &WeightFile,
    shard: &str,
    tensor: &str,
    record: Option<&ShardRecord>,
) -> std::result::Result<(), CheckpointError> {
    let (Format::FlashPack, Some(footer_json)) = (file.format(), file.footer_json()) else {
        return Err(CheckpointError::NotAFlashPackShard {
            shard: shard.to_string(),
            tensor: tensor.to_string(),
        });
    };
    let Some(record) = record else {
        return Ok(());
    };
    let changed = |what: String| CheckpointError::ShardChanged {
        shard: shard.to_string(),
        tensor: tensor.to_string(),
        what,
    };
    if record.size != file.file_len() {
        return Err(changed(format!(
            "the index records {} bytes, the file has {}",
            record.size,
            file.file_len()
        )));
    }
    let found = footer_digest(footer_json);
    if !record.footer_xxh3_64.eq_ignore_ascii_case(&found) {
        return Err(changed(format!(
            "its footer's xxh3-64 is {found}, the index records {}",
            record.footer_xxh3_64
        )));
    }
    Ok(())
}

mod open;

/// Checks shard `shard`'s tensors against the index: every tensor the index lists in it
/// (`listed`) is there, and none it holds is listed in another shard or was already found,
/// unlisted, in an earlier shard. Tensors no shard is listed for are added to `unlisted`
/// (tensor -> shard).
fn check_shard_tensors(
    shard: &str,
    listed: &[&str],
    file: &WeightFile,
    shard_of: &HashMap<&str, &str>,
    unlisted: &mut BTreeMap<String, String>,
) -> std::result::Result<(), CheckpointError> {
    if let Some(t) = listed.iter().find(|t| !file.contains(t)) {
        return Err(CheckpointError::TensorNotInShard {
            tensor: t.to_string(),
            shard: shard.to_string(),
        });
    }
    for t in file.tensors() {
        let elsewhere = match shard_of.get(t.name.as_str()) {
            Some(&s) if s == shard => None,
            Some(&s) => Some(s.to_string()),
            None => unlisted.get(&t.name).cloned(),
        };
        if let Some(listed) = elsewhere {
            return Err(CheckpointError::TensorInTwoShards {
                tensor: t.name.clone(),
                listed,
                other: shard.to_string(),
            });
        }
        if !shard_of.contains_key(t.name.as_str()) {
            unlisted.insert(t.name.clone(), shard.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
