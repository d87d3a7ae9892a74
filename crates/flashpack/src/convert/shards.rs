//! Writing a checkpoint of many files: splitting tensors into shards of a bounded size, naming
//! them as transformers does (`model-00001-of-00003.safetensors`), writing a safetensors shard
//! from tensors in memory, and putting a whole folder in place at once ([`StagedFolder`]).
//!
//! ```
//! use flashpack::convert::{plan_shards, shard_file_name};
//! // a tensor larger than the limit gets a shard of its own; order is kept
//! assert_eq!(plan_shards(&[4, 4, 10, 1], 8), vec![0..2, 2..3, 3..4]);
//! assert_eq!(shard_file_name("model", 0, 3, "safetensors"), "model-00001-of-00003.safetensors");
//! ```
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::ConvertError;
use crate::cancel::Cancel;
use crate::weights::{write_safetensors_file, TensorView};
use crate::{Error, Result};

/// Splits tensors of byte sizes `sizes` (in order) into consecutive shards of at most
/// `max_bytes` each, as transformers' `save_pretrained` does: a tensor that does not fit in the
/// current shard starts the next one; a tensor larger than `max_bytes` is a shard of its own.
pub fn plan_shards(sizes: &[u64], max_bytes: u64) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut bytes) = (0usize, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && bytes.saturating_add(size) > max_bytes {
            shards.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(size);
    }
    if start < sizes.len() {
        shards.push(start..sizes.len());
    }
    shards
}

/// `{stem}-{i+1:05}-of-{n:05}.{ext}` (one shard: `{stem}.{ext}`), as transformers names shards.
pub fn shard_file_name(stem: &str, i: usize, n: usize, ext: &str) -> String {
    if n == 1 {
        format!("{stem}.{ext}")
    } else {
        format!("{stem}-{:05}-of-{n:05}.{ext}", i + 1)
    }
}

/// Writes `tensors` as the safetensors file `dest`, bytes unchanged, laid out as the
/// `safetensors` crate lays a file out (by dtype alignment, then name), with `metadata` as its
/// `__metadata__`. Atomic like a pack; `cancel` stops it between 4 MiB pieces with `dest` as it
/// was (its commit is this file's: pass a [`Cancel::step`] when the file is one of several).
pub(crate) fn write_safetensors(
    dest: &Path,
    tensors: &[TensorView<'_>],
    metadata: Option<HashMap<String, String>>,
    cancel: Option<&Cancel>,
) -> Result<()> {
    write_safetensors_file(dest, tensors, metadata, cancel, false)
}

/// A folder written beside its destination (`.packtmp_*`, hidden) and renamed into place when
/// complete, so the destination is never a partial checkpoint. Dropped without
/// [`commit`](Self::commit) (an error, a cancellation), it is removed; a process killed
/// outright can leave the hidden folder behind, never a partial destination.
#[derive(Debug)]
pub(crate) struct StagedFolder {
    dir: tempfile::TempDir,
    dest: PathBuf,
}

impl StagedFolder {
    /// Starts a folder that will become `dest`, which must not exist or be an empty folder.
    pub(crate) fn create(dest: &Path) -> Result<StagedFolder> {
        match std::fs::read_dir(dest) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::convert(dest, ConvertError::DestinationNotEmpty));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dest, "check the destination folder", e)),
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .map_err(|e| Error::io(dest, format!("create its folder {}", parent.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix(".packtmp_")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(dest, "create a temporary folder beside it", e))?;
        Ok(StagedFolder {
            dir,
            dest: dest.to_path_buf(),
        })
    }

    /// Where to write the files.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the folder into place (over an empty destination folder) unless `cancel` was
    /// cancelled first; afterwards the operation counts as done.
    pub(crate) fn commit(self, cancel: Option<&Cancel>) -> Result<()> {
        let dest = self.dest.clone();
        let rename = move || {
            let tmp = self.dir.keep();
            if dest.is_dir() {
                // Empty when created; anything put there since makes this fail, as it should.
                std::fs::remove_dir(&dest).map_err(|e| {
                    let _ = std::fs::remove_dir_all(&tmp);
                    Error::io(&dest, "replace the empty destination folder", e)
                })?;
            }
            std::fs::rename(&tmp, &dest).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                Error::io(&dest, "rename into place", e)
            })?;
            crate::os::sync_dir(dest.parent().unwrap_or(Path::new(".")));
            Ok(())
        };
        match cancel {
            Some(c) => c.commit(&self.dest.clone(), rename),
            None => rename(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    #[test]
    fn plans_keep_order_and_bound_sizes() {
        assert_eq!(plan_shards(&[], 8), Vec::<Range<usize>>::new());
        assert_eq!(plan_shards(&[1, 2, 3], 100), vec![0..3]);
        assert_eq!(plan_shards(&[9, 9], 8), vec![0..1, 1..2]);
        assert_eq!(plan_shards(&[0, 0, 8, 0], 8), vec![0..4]);
    }

    proptest::proptest! {
        #[test]
        fn plans_cover_every_tensor_once(sizes in proptest::collection::vec(0u64..100, 0..40),
                                         max in 1u64..200) {
            let shards = plan_shards(&sizes, max);
            let mut next = 0;
            for r in &shards {
                proptest::prop_assert_eq!(r.start, next);
                proptest::prop_assert!(r.end > r.start);
                let bytes: u64 = sizes[r.clone()].iter().sum();
                proptest::prop_assert!(bytes <= max || r.len() == 1);
                next = r.end;
            }
            proptest::prop_assert_eq!(next, sizes.len());
        }
    }

    #[test]
    fn a_safetensors_shard_reads_back_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("s.safetensors");
        let a: Vec<u8> = (0..12).collect();
        let views = [
            TensorView {
                name: "b",
                dtype: Dtype::U8,
                shape: &[2],
                data: &[7, 8],
            },
            TensorView {
                name: "a",
                dtype: Dtype::F32,
                shape: &[3],
                data: &a,
            },
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&dest, &views, Some(meta.clone()), None).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &a[..]);
        assert_eq!(st.tensor("b").unwrap().data(), &[7, 8]);
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(m.metadata().as_ref(), Some(&meta));

        let cancel = Cancel::new();
        cancel.cancel();
        let e = write_safetensors(&dest, &views[..1], None, Some(&cancel)).unwrap_err();
        assert!(matches!(e, Error::Cancelled { .. }), "{e}");
        assert_eq!(std::fs::read(&dest).unwrap(), bytes, "left as it was");
    }

    #[test]
    fn a_staged_folder_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let staged = StagedFolder::create(&dest).unwrap();
        std::fs::write(staged.path().join("x"), b"1").unwrap();
        assert!(!dest.exists());
        drop(staged);
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left"
        );

        std::fs::create_dir(&dest).unwrap(); // an empty folder may be replaced
        let staged = StagedFolder::create(&dest).unwrap();
        std::fs::write(staged.path().join("x"), b"1").unwrap();
        let cancel = Cancel::new();
        cancel.cancel();
        assert!(staged.commit(Some(&cancel)).is_err());
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let staged = StagedFolder::create(&dest).unwrap();
        std::fs::write(staged.path().join("x"), b"1").unwrap();
        staged.commit(None).unwrap();
        assert_eq!(std::fs::read(dest.join("x")).unwrap(), b"1");
        let e = StagedFolder::create(&dest).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
    }
}
