//! `convert` and `revert` of checkpoints of several files: a sharded safetensors checkpoint (or a
//! multi-file FlashPack one) to one pack or one safetensors file, and any checkpoint to a folder
//! of shards with their index (`--sharded`: the source's own split; `--max-shard-size`: a new
//! one). Tensor bytes, names, dtypes and shapes are copied unchanged.
//!
//! What is kept: the shards' safetensors `__metadata__` (in a pack's footer key
//! `safetensors_metadata`, as for one file; shards whose metadata differ cannot be merged into
//! one file), and for a pack made from an index, the index's name, `metadata` and `weight_map`
//! (footer key `checkpoint_index`), so `revert --sharded` writes the same shard files again:
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
//! $ flashpack convert ./llama model.flashpack
//! ./llama/model.safetensors.index.json (safetensors, 2 shards) -> model.flashpack (FlashPack flashpack_v4): 291 tensors, 6,738,415,616 bytes, 4.1 s
//! $ flashpack revert model.flashpack ./llama-again --sharded
//! ```
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flashpack::checkpoint::index::check_shard_name;
use flashpack::checkpoint::shards::{plan, shard_file_name, write_safetensors, StagedFolder};
use flashpack::checkpoint::{locate, write_index, Checkpoint, IndexKind, CHECKPOINT_INDEX_KEY};
use flashpack::format::DEFAULT_ALIGN_BYTES;
use flashpack::read::LoadOptions;
use flashpack::weights::{Format, TensorView, Weights, SAFETENSORS_METADATA_KEY};
use flashpack::write::{pack, PackEntry, PackOptions};
use serde_json::{Map, Value};

use crate::convert::{format_name, Converted, Request, Target};
use crate::error::{CliError, Result};
use crate::format::grouped;

/// What a pack remembers of the index it was converted from (footer key
/// [`CHECKPOINT_INDEX_KEY`]).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RememberedIndex {
    /// The index's file name, e.g. `model.safetensors.index.json`.
    pub index: String,
    pub metadata: Option<Map<String, Value>>,
    /// Tensor -> shard file name.
    pub weight_map: BTreeMap<String, String>,
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
    /// "safetensors, 2 shards", for the report.
    label: String,
    format: Format,
    parts: Vec<Part>,
    /// The index's name, metadata and split (from the source's index, or remembered by a pack).
    index: Option<RememberedIndex>,
}

impl Source {
    fn open(ckpt: Checkpoint) -> Result<Source> {
        let path = ckpt.path().to_path_buf();
        let label = match ckpt.shards().len() {
            1 => format_name(ckpt.shards()[0].file().format()).to_string(),
            n => format!(
                "{}, {n} shards",
                format_name(ckpt.shards()[0].file().format())
            ),
        };
        let format = if ckpt.is_all(Format::FlashPack) {
            Format::FlashPack
        } else {
            Format::Safetensors
        };
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
            label,
            format,
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
        for p in &self.parts[1..] {
            if p.st_metadata != first {
                return Err(CliError::Invalid(format!(
                    "{}: shard '{}' has other safetensors __metadata__ than shard '{}' ({:?} vs \
                     {:?}), and one file can keep only one; convert with --sharded to keep each",
                    self.path.display(),
                    p.name,
                    self.parts[0].name,
                    p.st_metadata,
                    first
                )));
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
    let bad = |why: String| {
        CliError::Invalid(format!(
            "{}: footer key '{CHECKPOINT_INDEX_KEY}' is not a remembered index: {why}",
            ckpt.path().display()
        ))
    };
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
fn stem_and_variant(src: &Source, path: &Path) -> (String, Option<String>) {
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
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    (stem, None)
}

/// Converts the checkpoint `ckpt` as `req` asks (see the module doc).
pub fn convert(req: &Request, ckpt: Checkpoint) -> Result<Converted> {
    let t = Instant::now();
    let src_path = ckpt.path().to_path_buf();
    let src = Source::open(ckpt)?;
    let target = req.to.unwrap_or(
        match (
            req.dst.as_deref().and_then(Target::by_extension),
            src.format,
        ) {
            (Some(ext), _) if !req.sharded_output() => ext,
            (_, Format::FlashPack) => Target::Safetensors,
            (_, Format::Safetensors) => Target::Flashpack,
        },
    );
    if target == Target::Safetensors
        && (!req.checksums || req.align_bytes.is_some() || !req.ignore.is_empty())
    {
        return Err(CliError::Invalid(format!(
            "{}: --no-checksums, --align-bytes and --ignore-* apply to FlashPack output only",
            src_path.display()
        )));
    }
    let (stem, variant) = stem_and_variant(&src, &src_path);
    let (written, details) = if req.sharded_output() {
        let dst = req.dst.clone().ok_or_else(|| {
            CliError::Invalid(format!(
                "{}: --sharded and --max-shard-size write a folder: give it as the destination",
                src_path.display()
            ))
        })?;
        let details = write_sharded(req, &src, target, &dst, &stem, variant.as_deref())?;
        (dst, details)
    } else {
        let dst = single_destination(req, &src_path, target, &stem, variant.as_deref())?;
        let details = write_single(req, &src, target, &dst)?;
        (dst, details)
    };
    let kind = match target {
        Target::Flashpack => "FlashPack",
        Target::Safetensors => "safetensors",
    };
    let shape = if req.sharded_output() {
        ", sharded"
    } else {
        ""
    };
    Ok(Converted {
        report: format!(
            "{} ({}) -> {} ({kind}{shape}): {details}, {:.2} s",
            src_path.display(),
            src.label,
            written.display(),
            t.elapsed().as_secs_f64()
        ),
        written,
    })
}

/// One output file: DST if it names a weight file, else `{stem}.{ext}` in DST (a folder,
/// created if missing) or beside the source.
fn single_destination(
    req: &Request,
    src_path: &Path,
    target: Target,
    stem: &str,
    variant: Option<&str>,
) -> Result<PathBuf> {
    let name = match variant {
        Some(v) => format!("{stem}.{v}.{}", target.extension()),
        None => format!("{stem}.{}", target.extension()),
    };
    let folder = match &req.dst {
        Some(dst) if !dst.is_dir() && Target::by_extension(dst).is_some() => {
            if Target::by_extension(dst) != Some(target) {
                return Err(CliError::Invalid(format!(
                    "{}: --to {} does not match the destination's extension",
                    dst.display(),
                    target.extension()
                )));
            }
            return Ok(dst.clone());
        }
        Some(dst) => dst.clone(),
        None => match src_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    Ok(folder.join(name))
}

fn pack_options(req: &Request) -> PackOptions {
    PackOptions {
        align_bytes: req.align_bytes.unwrap_or(DEFAULT_ALIGN_BYTES),
        checksums: req.checksums,
        progress: req.progress,
        cancel: req.cancel.clone(),
        ..PackOptions::default()
    }
}

fn insert_json(opts: &mut PackOptions, key: &str, value: &impl serde::Serialize) -> Result<()> {
    let value = serde_json::to_value(value)
        .map_err(|e| CliError::Invalid(format!("cannot encode footer key '{key}': {e}")))?;
    opts.extra.insert(key.into(), value);
    Ok(())
}

/// The source's tensors that the `--ignore-*` options keep (with their part), or an error when
/// they keep none.
fn kept_tensors<'s>(req: &Request, src: &'s Source) -> Result<Vec<(usize, TensorView<'s>)>> {
    let keep = |name: &str| !req.ignore.drops(name);
    let tensors = src.tensors(&keep);
    if tensors.is_empty() {
        return Err(CliError::Invalid(format!(
            "{}: every tensor was left out by --ignore-names/--ignore-prefixes/--ignore-suffixes",
            src.path.display()
        )));
    }
    Ok(tensors)
}

fn write_single(req: &Request, src: &Source, target: Target, dst: &Path) -> Result<String> {
    let tensors = kept_tensors(req, src)?;
    let metadata = src.common_metadata()?;
    let bytes: u64 = tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
    match target {
        Target::Flashpack => {
            let mut opts = pack_options(req);
            if let Some(meta) = &metadata {
                insert_json(&mut opts, SAFETENSORS_METADATA_KEY, meta)?;
            }
            if let Some(index) = &src.index {
                let mut kept = index.clone();
                kept.weight_map.retain(|name, _| !req.ignore.drops(name));
                insert_json(&mut opts, CHECKPOINT_INDEX_KEY, &kept)?;
            }
            let entries: Vec<PackEntry<'_>> = tensors
                .iter()
                .map(|(_, t)| PackEntry::new(t.name, t.dtype, t.shape.to_vec(), t.data))
                .collect();
            let report = pack(dst, &entries, &opts)?;
            Ok(format!(
                "{} tensors, {} bytes",
                report.footer.records().len(),
                grouped(report.file_len)
            ))
        }
        Target::Safetensors => {
            let views: Vec<TensorView<'_>> = tensors.into_iter().map(|(_, t)| t).collect();
            write_safetensors(dst, &views, metadata, req.cancel.as_ref())?;
            Ok(format!(
                "{} tensors, {} data bytes",
                views.len(),
                grouped(bytes)
            ))
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

/// The output shards: `--max-shard-size` splits the tensors anew; `--sharded` keeps the
/// source's shards (each with its own `__metadata__`) or the split a pack remembers.
fn out_shards<'a>(
    req: &Request,
    src: &'a Source,
    target: Target,
    stem: &str,
    variant: Option<&str>,
) -> Result<Vec<OutShard<'a>>> {
    let tensors = kept_tensors(req, src)?;
    let ext = target.extension();
    let stem = match variant {
        Some(v) => format!("{stem}.{v}"),
        None => stem.to_string(),
    };
    if let Some(max) = req.max_shard_size {
        let metadata = src.common_metadata()?;
        let sizes: Vec<u64> = tensors.iter().map(|(_, t)| t.data.len() as u64).collect();
        let groups = plan(&sizes, max);
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
            out[i].tensors.push(t);
        }
        out.retain(|s| !s.tensors.is_empty());
        return Ok(out);
    }
    let Some(index) = &src.index else {
        return Err(CliError::Invalid(format!(
            "{}: one file, and not converted from a sharded checkpoint, so it has no split to \
             keep: give --max-shard-size",
            src.path.display()
        )));
    };
    let metadata = src.common_metadata()?;
    let mut by_shard: BTreeMap<&str, Vec<TensorView<'a>>> = BTreeMap::new();
    for (_, t) in tensors {
        let shard = index.weight_map.get(t.name).ok_or_else(|| {
            CliError::Invalid(format!(
                "{}: tensor '{}' is not in the remembered shard split (footer key \
                 '{CHECKPOINT_INDEX_KEY}'): give --max-shard-size",
                src.path.display(),
                t.name
            ))
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
    req: &Request,
    src: &Source,
    target: Target,
    dst: &Path,
    stem: &str,
    variant: Option<&str>,
) -> Result<String> {
    let shards = out_shards(req, src, target, stem, variant)?;
    let staged = StagedFolder::create(dst)?;
    let step = || req.cancel.as_ref().map(|c| c.step());
    let mut files = Vec::with_capacity(shards.len());
    for shard in &shards {
        let path = inside(staged.path(), &shard.name, dst)?;
        match target {
            Target::Flashpack => {
                let mut opts = PackOptions {
                    cancel: step(),
                    ..pack_options(req)
                };
                if let Some(meta) = &shard.metadata {
                    insert_json(&mut opts, SAFETENSORS_METADATA_KEY, meta)?;
                }
                let entries: Vec<PackEntry<'_>> = shard
                    .tensors
                    .iter()
                    .map(|t| PackEntry::new(t.name, t.dtype, t.shape.to_vec(), t.data))
                    .collect();
                pack(&path, &entries, &opts).map_err(|e| in_dest(e, dst, &shard.name))?;
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
    let (count, bytes) = (written.len(), written.total_size());
    staged.commit(req.cancel.as_ref())?;
    Ok(format!(
        "{} shards and {index_name}, {count} tensors, {} data bytes",
        shards.len(),
        grouped(bytes)
    ))
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
        Err(CliError::Invalid(format!(
            "{}: refusing to write '{name}': not a file name inside the destination",
            dst.display()
        )))
    }
}

/// An error about a file in the staging folder, told as the destination's (the temporary
/// folder's name means nothing to the user and is gone once this returns).
fn in_dest(e: flashpack::Error, dst: &Path, name: &str) -> CliError {
    if let flashpack::Error::Cancelled { .. } = e {
        return CliError::Engine(flashpack::Error::Cancelled {
            path: dst.to_path_buf(),
        });
    }
    CliError::Invalid(format!(
        "{}: writing {name}: {}",
        dst.display(),
        one_line(&e)
    ))
}

fn one_line(e: &flashpack::Error) -> String {
    let text = e.to_string();
    // Drop the staging folder's path where the engine names the file it wrote.
    match text.split_once(": ") {
        Some((path, rest)) if path.contains(".packtmp_") => rest.to_string(),
        _ => text,
    }
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
