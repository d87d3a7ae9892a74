//! Which file a checkpoint path means: a weight file, an index json, or a folder holding exactly
//! one index (of the requested variant) or, without an index, exactly one weight file.
//!
//! Index names: `<name>.safetensors.index.json` and `<name>.flashpack.index.json`, with a
//! variant `<name>.safetensors.index.<variant>.json` (transformers' and diffusers' form, e.g.
//! `model.safetensors.index.fp16.json`). Weight files: `*.safetensors` and `*.flashpack`, with a
//! variant `<name>.<variant>.safetensors`. A path given as a file is taken as it is: an index
//! when its name ends in `.json`, else a weight file (whose format is then read from its
//! content).
//!
//! ```
//! use flashpack::checkpoint::{locate, Located};
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("model.safetensors.index.json"), "{}").unwrap();
//! std::fs::write(dir.path().join("model.safetensors.index.fp16.json"), "{}").unwrap();
//! let found = locate(dir.path(), Some("fp16")).unwrap();
//! assert_eq!(found, Located::Index(dir.path().join("model.safetensors.index.fp16.json")));
//! ```
use std::path::{Path, PathBuf};

use crate::error::CheckpointError;
use crate::{Error, Result};

/// What a checkpoint path resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// One weight file (.safetensors or .flashpack, told apart by content).
    File(PathBuf),
    /// An index json (safetensors or FlashPack, told apart by content).
    Index(PathBuf),
}

const WEIGHT_SUFFIXES: [&str; 2] = [".safetensors", ".flashpack"];

/// Resolves `path` (see the module doc). `variant` only matters for a folder.
pub fn locate(path: &Path, variant: Option<&str>) -> Result<Located> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
    if !meta.is_dir() {
        let is_json = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.to_ascii_lowercase().ends_with(".json"));
        return Ok(if is_json {
            Located::Index(path.to_path_buf())
        } else {
            Located::File(path.to_path_buf())
        });
    }
    let (indexes, files) = candidates(path, variant)?;
    match (indexes.len(), files.len()) {
        (1, _) => Ok(Located::Index(path.join(&indexes[0]))),
        (0, 1) => Ok(Located::File(path.join(&files[0]))),
        (0, 0) => {
            let looked_for = match variant {
                None => "no *.safetensors.index.json, *.flashpack.index.json, *.safetensors or \
                         *.flashpack file"
                    .to_string(),
                Some(v) => format!(
                    "no *.safetensors.index.{v}.json, *.flashpack.index.{v}.json, \
                     *.{v}.safetensors or *.{v}.flashpack file"
                ),
            };
            Err(Error::checkpoint(
                path,
                CheckpointError::NothingFound { looked_for },
            ))
        }
        _ => {
            let mut candidates = if indexes.is_empty() { files } else { indexes };
            candidates.sort();
            Err(Error::checkpoint(
                path,
                CheckpointError::Ambiguous { candidates },
            ))
        }
    }
}

/// The names of the index jsons and of the weight files of `variant` in `folder` (regular
/// files, through symbolic links; names that are not UTF-8 are skipped).
fn candidates(folder: &Path, variant: Option<&str>) -> Result<(Vec<String>, Vec<String>)> {
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    let entries = std::fs::read_dir(folder).map_err(|e| Error::io(folder, "list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(folder, "list", e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: not a name any index or library writes
        };
        // Follows symbolic links (a Hugging Face cache snapshot is made of them).
        let is_file = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
        if !is_file {
            continue;
        }
        if let Some(v) = index_variant(&name) {
            if v == variant {
                indexes.push(name);
            }
        } else if is_weight_file(&name, variant) {
            files.push(name);
        }
    }
    Ok((indexes, files))
}

/// `Some(variant)` when `name` is an index json's name: `Some(None)` for
/// `x.safetensors.index.json`, `Some(Some("fp16"))` for `x.safetensors.index.fp16.json`.
pub fn index_variant(name: &str) -> Option<Option<&str>> {
    let stem = name.strip_suffix(".json")?;
    for base in [".safetensors.index", ".flashpack.index"] {
        if let Some(at) = stem.find(base) {
            let rest = &stem[at + base.len()..];
            if rest.is_empty() {
                return Some(None);
            }
            if let Some(v) = rest.strip_prefix('.') {
                if !v.is_empty() && !v.contains('.') {
                    return Some(Some(v));
                }
            }
        }
    }
    None
}

/// True when `name` is a weight file's name of `variant` (any weight file without a variant).
fn is_weight_file(name: &str, variant: Option<&str>) -> bool {
    WEIGHT_SUFFIXES.iter().any(|suffix| {
        let Some(stem) = name.strip_suffix(suffix) else {
            return false;
        };
        match variant {
            None => !stem.is_empty(),
            Some(v) => stem
                .strip_suffix(v)
                .is_some_and(|s| s.len() > 1 && s.ends_with('.')),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        dir
    }

    fn kind(e: &Error) -> &CheckpointError {
        match e {
            Error::Checkpoint { source, .. } => source,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn index_names_and_variants() {
        assert_eq!(index_variant("model.safetensors.index.json"), Some(None));
        assert_eq!(
            index_variant("diffusion_pytorch_model.safetensors.index.fp16.json"),
            Some(Some("fp16"))
        );
        assert_eq!(index_variant("model.flashpack.index.json"), Some(None));
        assert_eq!(index_variant("config.json"), None);
        assert_eq!(index_variant("pytorch_model.bin.index.json"), None);
        assert_eq!(index_variant("model.safetensors.index.a.b.json"), None);
    }

    #[test]
    fn a_folder_with_one_index_uses_it_and_ignores_its_shards() {
        let d = folder(&[
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]);
        assert_eq!(
            locate(d.path(), None).unwrap(),
            Located::Index(d.path().join("model.safetensors.index.json"))
        );
    }

    #[test]
    fn a_folder_with_one_weight_file_uses_it() {
        let d = folder(&["config.json", "model.safetensors"]);
        assert_eq!(
            locate(d.path(), None).unwrap(),
            Located::File(d.path().join("model.safetensors"))
        );
        let d = folder(&["model.safetensors", "model.fp16.safetensors"]);
        assert_eq!(
            locate(d.path(), Some("fp16")).unwrap(),
            Located::File(d.path().join("model.fp16.safetensors"))
        );
    }

    #[test]
    fn ambiguous_folders_list_their_candidates() {
        let d = folder(&["model.safetensors", "model.fp16.safetensors"]);
        let e = locate(d.path(), None).unwrap_err();
        assert!(
            matches!(kind(&e), CheckpointError::Ambiguous { candidates }
                if candidates == &["model.fp16.safetensors", "model.safetensors"]),
            "{e}"
        );
        assert!(e.to_string().contains("variant"), "{e}");
        let d = folder(&["model.safetensors.index.json", "model.flashpack.index.json"]);
        let e = locate(d.path(), None).unwrap_err();
        assert!(matches!(kind(&e), CheckpointError::Ambiguous { .. }), "{e}");
        // a variant index does not make the plain one ambiguous
        let d = folder(&[
            "model.safetensors.index.json",
            "model.safetensors.index.fp16.json",
        ]);
        assert_eq!(
            locate(d.path(), None).unwrap(),
            Located::Index(d.path().join("model.safetensors.index.json"))
        );
    }

    #[test]
    fn empty_folders_and_missing_paths_are_errors() {
        let d = folder(&["config.json", "pytorch_model.bin"]);
        let e = locate(d.path(), None).unwrap_err();
        assert!(
            matches!(kind(&e), CheckpointError::NothingFound { .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with(&d.path().display().to_string()));
        let e = locate(d.path(), Some("fp16")).unwrap_err();
        assert!(e.to_string().contains("fp16"), "{e}");
        let e = locate(&d.path().join("nope"), None).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    #[test]
    fn files_are_taken_as_given() {
        let d = folder(&["x.bin", "i.JSON"]);
        assert_eq!(
            locate(&d.path().join("x.bin"), Some("fp16")).unwrap(),
            Located::File(d.path().join("x.bin"))
        );
        assert_eq!(
            locate(&d.path().join("i.JSON"), None).unwrap(),
            Located::Index(d.path().join("i.JSON"))
        );
    }
}
