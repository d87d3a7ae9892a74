//! Checkpoints of several files: a sharded safetensors checkpoint (or a
//! multi-file FlashPack one) to one pack or one safetensors file, and any checkpoint to a folder
//! of shards with their index ([`ConvertOptions::sharded`](super::ConvertOptions::sharded): the
//! source's own split; [`max_shard_size`](super::ConvertOptions::max_shard_size): a new one).
//! Tensor bytes, names, dtypes and shapes are copied unchanged.
//!
//! What is kept: the shards' safetensors `__metadata__` (in a pack's footer key
//! `safetensors_metadata`, as for one file; shards whose metadata differ cannot be merged into
//! one file), and for a pack made from an index, the index's name, `metadata` and `weight_map`
//! (footer key `checkpoint_index`), so a sharded conversion back writes the same shard files again:
//! byte for byte when the shards were written by the `safetensors` library with a
//! `__metadata__` of at most one key (transformers writes `{"format": "pt"}`). With several
//! keys the same keys, values and tensor bytes come back, but the library writes
//! `__metadata__` in an arbitrary (hash) order that a pack does not keep, so the header's
//! bytes may differ.
//!
//! Nothing partial is ever left at the destination: one output file is written like any pack;
//! a folder of shards is written beside the destination under a hidden name and renamed into
//! place once every shard and the index are complete and the result opens as a valid
//! checkpoint. A cancellation stops it between chunks and removes what was written.
//!
//! ```text
//! flashpack convert ./llama model.flashpack                 # this module, to one file
//! flashpack revert model.flashpack ./llama-again --sharded  # this module, to shards and index
//! ```
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::file::insert_json;
use super::shards::{plan_shards, shard_file_name, write_safetensors, StagedFolder};
use super::{write_index, ConvertError, ConvertOptions, Converted, Output, Target};
use crate::checkpoint::index::check_shard_name;
use crate::checkpoint::{locate, Checkpoint, IndexKind};
use crate::format::CHECKPOINT_INDEX_KEY;
use crate::format::DEFAULT_ALIGN_BYTES;
use crate::read::LoadOptions;
use crate::weights::{Format, TensorView, Weights, SAFETENSORS_METADATA_KEY};
use crate::write::{pack, PackEntry, PackOptions};
use crate::{Error, Result};

/// What a pack remembers of the index it was converted from (footer key
/// [`CHECKPOINT_INDEX_KEY`]).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct RememberedIndex {
    /// The index's file name, e.g. `model.safetensors.index.json`.
    index: String,
    /// The index's `metadata`.
    metadata: Option<Map<String, Value>>,
    /// Tensor -> shard file name.
    weight_map: BTreeMap<String, String>,
}

/// One source shard, loaded lazily (a mapping: only the pages written out are read).
struct Part {
    name: String,
    weights: Weights,
    st_metadata: Option<HashMap<String, String>>,
}

/// The source: its shards and how it was split.
struct Source {
    /// The index json or the single file, named in errors.
    path: PathBuf,
    /// The first shard's format.
    first_format: Format,
    /// FlashPack when every shard is; else safetensors.
    format: Format,
    indexed: bool,
    parts: Vec<Part>,
    /// The index's name, metadata and split (from the source's index, or remembered by a pack).
    index: Option<RememberedIndex>,
}

impl Source {
    fn open(ckpt: Checkpoint) -> Result<Source> {
        let path = ckpt.path().to_path_buf();
        let first_format = match ckpt.shards().first() {
            Some(s) => s.file().format(),
            None => return Err(Error::convert(&path, ConvertError::NoWeightFile)),
        };
        let format = if ckpt.is_all(Format::FlashPack) {
            Format::FlashPack
        } else {
            Format::Safetensors
        };
        let indexed = ckpt.index_path().is_some();
        let index = match ckpt.index_path() {
            Some(path) => Some(RememberedIndex {
                index: file_name(path),
                metadata: ckpt.metadata().cloned(),
                weight_map: ckpt
                    .tensors()
                    .map(|(s, t)| (t.name.clone(), s.name().to_string()))
                    .collect(),
            }),
            None => remembered(&ckpt)?,
        };
        let mut parts = Vec::new();
        for shard in ckpt.into_shards() {
            let name = shard.name().to_string();
            let file = shard.into_file();
            let st_metadata = file.safetensors_metadata();
            let weights = file.load(&LoadOptions::default())?;
            parts.push(Part {
                name,
                weights,
                st_metadata,
            });
        }
        Ok(Source {
            path,
            first_format,
            format,
            indexed,
            parts,
            index,
        })
    }

    /// Every tensor that `keep` keeps, shard by shard, each in file order.
    fn tensors(&self, keep: &dyn Fn(&str) -> bool) -> Vec<(usize, TensorView<'_>)> {
        self.parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.weights.iter().map(move |t| (i, t)))
            .filter(|(_, t)| keep(t.name))
            .collect()
    }

    /// The shards' `__metadata__` when they all agree (one file can hold only one).
    fn common_metadata(&self) -> Result<Option<HashMap<String, String>>> {
        let first = self.parts.first().and_then(|p| p.st_metadata.clone());
        for p in self.parts.iter().skip(1) {
            if p.st_metadata != first {
                return Err(Error::convert(
                    &self.path,
                    ConvertError::MixedMetadata {
                        shard: p.name.clone(),
                        first: self.parts[0].name.clone(),
                        metadata: p.st_metadata.clone(),
                        first_metadata: first,
                    },
                ));
            }
        }
        Ok(first)
    }
}

/// The index a single pack remembers, if it was converted from one.
fn remembered(ckpt: &Checkpoint) -> Result<Option<RememberedIndex>> {
    let Some(flash) = ckpt.shards().first().and_then(|s| s.file().flashpack()) else {
        return Ok(None);
    };
    let Some(value) = flash.footer().extra().get(CHECKPOINT_INDEX_KEY) else {
        return Ok(None);
    };
    let bad = |why: String| Error::convert(ckpt.path(), ConvertError::BadRememberedIndex { why });
    let index: RememberedIndex =
        serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    // The names become paths of the files written: validated like an index's own shard names,
    // and the index must be a plain `*.index[.variant].json` file name (its stem and variant
    // name every output file).
    let plain = |name: &str| !name.contains(['/', '\\']) && !matches!(name, "" | "." | "..");
    if !plain(&index.index) || locate::index_variant(&index.index).is_none() {
        return Err(bad(format!(
            "'{}' is not an index file name such as model.safetensors.index.json",
            index.index
        )));
    }
    for (tensor, shard) in &index.weight_map {
        check_shard_name(shard, tensor).map_err(|e| bad(e.to_string()))?;
    }
    Ok(Some(index))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `(stem, variant)` of the output's file names: from the index's name
/// (`model.safetensors.index.fp16.json` -> `model`, `fp16`) or the single file's stem.
fn stem_and_variant(src: &Source) -> (String, Option<String>) {
    if let Some(index) = &src.index {
        let variant = locate::index_variant(&index.index)
            .flatten()
            .map(str::to_string);
        for base in [".safetensors.index", ".flashpack.index"] {
            if let Some(at) = index.index.find(base) {
                return (index.index[..at].to_string(), variant);
            }
        }
    }
    let stem = src
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    (stem, None)
}

/// Converts the checkpoint `ckpt` as `opts` asks (see the module doc); `dest` as for
/// [`super::convert`].
pub(super) fn convert(
    ckpt: Checkpoint,
    dest: Option<&Path>,
    opts: &ConvertOptions,
) -> Result<Converted> {
    let source_shards = ckpt.shards().len();
    let src = Source::open(ckpt)?;
    let target = opts
        .to
        .unwrap_or(match (dest.and_then(Target::by_extension), src.format) {
            (Some(ext), _) if !opts.sharded_output() => ext,
            (_, format) => Target::other_than(format),
        });
    if target == Target::Safetensors
        && (!opts.checksums || opts.align_bytes.is_some() || !opts.ignore.is_empty())
    {
        return Err(Error::convert(
            &src.path,
            ConvertError::FlashPackOnlyOptions,
        ));
    }
    let (stem, variant) = stem_and_variant(&src);
    let (written, written_out) = if opts.sharded_output() {
        let dst =
            dest.ok_or_else(|| Error::convert(&src.path, ConvertError::NeedsDestinationFolder))?;
        let out = write_sharded(opts, &src, target, dst, &stem, variant.as_deref())?;
        (dst.to_path_buf(), out)
    } else {
        let dst = single_destination(dest, &src.path, target, &stem, variant.as_deref())?;
        let out = write_single(opts, &src, target, &dst)?;
        (dst, out)
    };
    Ok(Converted {
        source: src.path.clone(),
        source_format: src.first_format,
        source_shards,
        source_indexed: src.indexed,
        written,
        target,
        output: written_out.output,
        tensors: written_out.tensors,
        data_bytes: written_out.data_bytes,
        phases: Vec::new(),
        elapsed: Default::default(),
    })
}

/// What one of the writers wrote.
struct Written {
    output: Output,
    tensors: usize,
    data_bytes: u64,
}

/// One output file: `dest` if it names a weight file, else `{stem}.{ext}` in `dest` (a folder,
/// created if missing) or beside the source.
fn single_destination(
    dest: Option<&Path>,
    src_path: &Path,
    target: Target,
    stem: &str,
    variant: Option<&str>,
) -> Result<PathBuf> {
    let name = match variant {
        Some(v) => format!("{stem}.{v}.{}", target.extension()),
        None => format!("{stem}.{}", target.extension()),
    };
    let folder = match dest {
        Some(dst) if !dst.is_dir() && Target::by_extension(dst).is_some() => {
            match Target::by_extension(dst) {
                Some(extension) if extension != target => {
                    return Err(Error::convert(
                        dst,
                        ConvertError::TargetMismatch {
                            to: target,
                            extension,
                        },
                    ))
                }
                _ => return Ok(dst.to_path_buf()),
            }
        }
        Some(dst) => dst.to_path_buf(),
        None => match src_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    Ok(folder.join(name))
}

fn pack_options(opts: &ConvertOptions) -> PackOptions {
    PackOptions {
        align_bytes: opts.align_bytes.unwrap_or(DEFAULT_ALIGN_BYTES),
        checksums: opts.checksums,
        progress: opts.progress,
        cancel: opts.cancel.clone(),
        ..PackOptions::default()
    }
}

/// The source's tensors that the filter keeps (with their part), or an error when it keeps
/// none.
fn kept_tensors<'s>(
    opts: &ConvertOptions,
    src: &'s Source,
) -> Result<Vec<(usize, TensorView<'s>)>> {
    let keep = |name: &str| !opts.ignore.drops(name);
    let tensors = src.tensors(&keep);
    if tensors.is_empty() {
        return Err(Error::convert(&src.path, ConvertError::EverythingIgnored));
    }
    Ok(tensors)
}

fn write_single(
    opts: &ConvertOptions,
    src: &Source,
    target: Target,
    dst: &Path,
) -> Result<Written> {
    let tensors = kept_tensors(opts, src)?;
    let metadata = src.common_metadata()?;
    let data_bytes: u64 = tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
    match target {
        Target::Flashpack => {
            let mut pack_opts = pack_options(opts);
            if let Some(meta) = &metadata {
                insert_json(&mut pack_opts, &src.path, SAFETENSORS_METADATA_KEY, meta)?;
            }
            if let Some(index) = &src.index {
                let mut kept = index.clone();
                kept.weight_map.retain(|name, _| !opts.ignore.drops(name));
                insert_json(&mut pack_opts, &src.path, CHECKPOINT_INDEX_KEY, &kept)?;
            }
            let entries: Vec<PackEntry<'_>> = tensors
                .iter()
                .map(|(_, t)| PackEntry::new(t.name, t.dtype, t.shape.to_vec(), t.data))
                .collect();
            let report = pack(dst, &entries, &pack_opts)?;
            Ok(Written {
                tensors: report.footer.records().len(),
                output: Output::FlashPack {
                    footer: Box::new(report.footer),
                    file_len: report.file_len,
                },
                data_bytes,
            })
        }
        Target::Safetensors => {
            let views: Vec<TensorView<'_>> = tensors.into_iter().map(|(_, t)| t).collect();
            write_safetensors(dst, &views, metadata, opts.cancel.as_ref())?;
            let file_len = std::fs::metadata(dst)
                .map_err(|e| Error::io(dst, "stat", e))?
                .len();
            Ok(Written {
                output: Output::Safetensors { file_len },
                tensors: views.len(),
                data_bytes,
            })
        }
    }
}

/// One output shard: its file name, tensors and `__metadata__`.
struct OutShard<'a> {
    name: String,
    tensors: Vec<TensorView<'a>>,
    metadata: Option<HashMap<String, String>>,
}

/// Swaps a shard name's weight-file extension for `ext`.
fn with_extension(name: &str, ext: &str) -> String {
    let stem = [".safetensors", ".flashpack"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    format!("{stem}.{ext}")
}

/// The output shards: `max_shard_size` splits the tensors anew; `sharded` keeps the source's
/// shards (each with its own `__metadata__`) or the split a pack remembers.
fn out_shards<'a>(
    opts: &ConvertOptions,
    src: &'a Source,
    target: Target,
    stem: &str,
    variant: Option<&str>,
) -> Result<Vec<OutShard<'a>>> {
    let tensors = kept_tensors(opts, src)?;
    let ext = target.extension();
    let stem = match variant {
        Some(v) => format!("{stem}.{v}"),
        None => stem.to_string(),
    };
    if let Some(max) = opts.max_shard_size {
        let metadata = src.common_metadata()?;
        let sizes: Vec<u64> = tensors.iter().map(|(_, t)| t.data.len() as u64).collect();
        let groups = plan_shards(&sizes, max);
        let n = groups.len();
        return Ok(groups
            .into_iter()
            .enumerate()
            .map(|(i, range)| OutShard {
                name: shard_file_name(&stem, i, n, ext),
                tensors: tensors[range].iter().map(|(_, t)| *t).collect(),
                metadata: metadata.clone(),
            })
            .collect());
    }
    if src.parts.len() > 1 {
        let mut out: Vec<OutShard<'a>> = src
            .parts
            .iter()
            .map(|p| OutShard {
                name: with_extension(&p.name, ext),
                tensors: Vec::new(),
                metadata: p.st_metadata.clone(),
            })
            .collect();
        for (i, t) in tensors {
            if let Some(shard) = out.get_mut(i) {
                shard.tensors.push(t);
            }
        }
        out.retain(|s| !s.tensors.is_empty());
        return Ok(out);
    }
    let Some(index) = &src.index else {
        return Err(Error::convert(&src.path, ConvertError::NoSplitToKeep));
    };
    let metadata = src.common_metadata()?;
    let mut by_shard: BTreeMap<&str, Vec<TensorView<'a>>> = BTreeMap::new();
    for (_, t) in tensors {
        let shard = index.weight_map.get(t.name).ok_or_else(|| {
            Error::convert(
                &src.path,
                ConvertError::NotInRememberedSplit {
                    tensor: t.name.to_string(),
                },
            )
        })?;
        by_shard.entry(shard).or_default().push(t);
    }
    Ok(by_shard
        .into_iter()
        .map(|(name, tensors)| OutShard {
            name: with_extension(name, ext),
            tensors,
            metadata: metadata.clone(),
        })
        .collect())
}

fn write_sharded(
    opts: &ConvertOptions,
    src: &Source,
    target: Target,
    dst: &Path,
    stem: &str,
    variant: Option<&str>,
) -> Result<Written> {
    let shards = out_shards(opts, src, target, stem, variant)?;
    let staged = StagedFolder::create(dst)?;
    let step = || opts.cancel.as_ref().map(|c| c.step());
    let mut files = Vec::with_capacity(shards.len());
    for shard in &shards {
        let path = inside(staged.path(), &shard.name, dst)?;
        match target {
            Target::Flashpack => {
                let mut pack_opts = PackOptions {
                    cancel: step(),
                    ..pack_options(opts)
                };
                if let Some(meta) = &shard.metadata {
                    insert_json(&mut pack_opts, &src.path, SAFETENSORS_METADATA_KEY, meta)?;
                }
                let entries: Vec<PackEntry<'_>> = shard
                    .tensors
                    .iter()
                    .map(|t| PackEntry::new(t.name, t.dtype, t.shape.to_vec(), t.data))
                    .collect();
                pack(&path, &entries, &pack_opts).map_err(|e| in_dest(e, dst, &shard.name))?;
            }
            Target::Safetensors => {
                write_safetensors(
                    &path,
                    &shard.tensors,
                    shard.metadata.clone(),
                    step().as_ref(),
                )
                .map_err(|e| in_dest(e, dst, &shard.name))?;
            }
        }
        files.push(path);
    }
    let (kind, ext) = match target {
        Target::Flashpack => (IndexKind::FlashPack, "flashpack"),
        Target::Safetensors => (IndexKind::Safetensors, "safetensors"),
    };
    let index_name = match variant {
        Some(v) => format!("{stem}.{ext}.index.{v}.json"),
        None => format!("{stem}.{ext}.index.json"),
    };
    let mut metadata = src
        .index
        .as_ref()
        .and_then(|i| i.metadata.clone())
        .unwrap_or_default();
    metadata.remove("total_size"); // recomputed from what is written
    let index = inside(staged.path(), &index_name, dst)?;
    write_index(&index, kind, &files, metadata).map_err(|e| in_dest(e, dst, &index_name))?;
    // The result must open as a checkpoint before it is put in place.
    let written = Checkpoint::open(&index).map_err(|e| in_dest(e, dst, &index_name))?;
    let (tensors, data_bytes) = (written.len(), written.total_size());
    staged.commit(opts.cancel.as_ref())?;
    Ok(Written {
        output: Output::Sharded {
            shards: shards.len(),
            index: index_name,
        },
        tensors,
        data_bytes,
    })
}

/// `folder/name`, refused unless `name` is relative and made of plain components only (so the
/// path stays inside the staging folder whatever a remembered index said).
fn inside(folder: &Path, name: &str, dst: &Path) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && !name.contains('\\')
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(folder.join(rel))
    } else {
        Err(Error::convert(
            dst,
            ConvertError::NotInsideDestination {
                name: name.to_string(),
            },
        ))
    }
}

/// An error about a file in the staging folder, told as the destination's (the temporary
/// folder's name means nothing to the user and is gone once this returns).
fn in_dest(e: Error, dst: &Path, name: &str) -> Error {
    if let Error::Cancelled { .. } = e {
        return Error::Cancelled {
            path: dst.to_path_buf(),
        };
    }
    Error::convert(
        dst,
        ConvertError::Writing {
            file: name.to_string(),
            source: Box::new(e),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_must_stay_inside_the_staging_folder() {
        let (folder, dst) = (Path::new("/stage"), Path::new("/out"));
        for name in ["a.safetensors", "sub/a.safetensors"] {
            assert_eq!(inside(folder, name, dst).unwrap(), folder.join(name));
        }
        for name in [
            "",
            "/abs/x.safetensors",
            "../x.safetensors",
            "a/../../x",
            ".",
            "a\\b",
        ] {
            let e = inside(folder, name, dst).unwrap_err().to_string();
            assert!(
                e.contains("/out") && e.contains("not a file name inside"),
                "{name}: {e}"
            );
        }
    }
}
