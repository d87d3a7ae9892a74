use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;
use crate::convert::write_index;
use crate::write::{pack, PackEntry, PackOptions};
use crate::Dtype;

/// Writes a safetensors file with the `safetensors` crate: `(name, bytes)` as u8 vectors.
fn st_file(path: &Path, tensors: &[(&str, &[u8])], meta: Option<HashMap<String, String>>) {
    use safetensors::tensor::TensorView;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, b)| {
            let v = TensorView::new(safetensors::Dtype::U8, vec![b.len()], b).unwrap();
            (n.to_string(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn write_json(path: &Path, value: serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// A two-shard transformers-style checkpoint: a, b in shard 1; c in shard 2.
fn sharded() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    st_file(
        &d.join("model-00001-of-00002.safetensors"),
        &[("a", &[1, 2, 3]), ("b", &[4])],
        Some(HashMap::from([("format".into(), "pt".into())])),
    );
    st_file(
        &d.join("model-00002-of-00002.safetensors"),
        &[("c", &[5, 6])],
        None,
    );
    let index = d.join("model.safetensors.index.json");
    write_json(
        &index,
        json!({"metadata": {"total_size": 6}, "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}}),
    );
    (dir, index)
}

fn kind_of(e: &Error) -> &CheckpointError {
    match e {
        Error::Checkpoint { source, .. } => source,
        other => panic!("not a checkpoint error: {other}"),
    }
}

fn edit_index(index: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(index).unwrap()).unwrap();
    edit(&mut v);
    write_json(index, v);
}

#[test]
fn a_sharded_folder_resolves_to_its_shards() {
    let (dir, index) = sharded();
    for path in [dir.path(), index.as_path()] {
        let c = Checkpoint::open(path).unwrap();
        assert_eq!(c.index_path(), Some(index.as_path()));
        assert_eq!(c.index_kind(), Some(IndexKind::Safetensors));
        let names: Vec<&str> = c.shards().iter().map(Shard::name).collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        assert_eq!(c.shard_of("c").unwrap().name(), names[1]);
        assert!(c.shard_of("nope").is_none());
        assert_eq!(c.len(), 3);
        assert_eq!(c.total_size(), 6);
        assert_eq!(c.metadata().unwrap()["total_size"], 6);
        assert!(c.is_all(Format::Safetensors));
        let (shard, info) = c.tensor("a").unwrap();
        assert_eq!(shard.path(), dir.path().join(names[0]));
        let bytes = std::fs::read(shard.path()).unwrap();
        assert_eq!(&bytes[info.start as usize..info.end as usize], &[1, 2, 3]);
        let all: Vec<&str> = c.tensors().map(|(_, t)| t.name.as_str()).collect();
        assert_eq!(all.len(), 3);
    }
}

#[test]
fn a_single_file_is_a_checkpoint_of_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    st_file(&path, &[("x", &[9, 9])], None);
    for p in [path.as_path(), dir.path()] {
        let c = Checkpoint::open(p).unwrap();
        assert_eq!(c.path(), path);
        assert!(c.index_path().is_none() && c.metadata().is_none());
        assert_eq!(c.shards()[0].name(), "w.safetensors");
        assert_eq!(c.total_size(), 2);
    }
}

#[test]
fn a_variant_is_chosen_in_a_folder() {
    let (dir, index) = sharded();
    let fp16 = dir.path().join("model.safetensors.index.fp16.json");
    std::fs::copy(&index, &fp16).unwrap();
    let opts = OpenOptions {
        variant: Some("fp16".into()),
    };
    assert_eq!(
        Checkpoint::open_with(dir.path(), &opts).unwrap().path(),
        fp16
    );
    assert_eq!(Checkpoint::open(dir.path()).unwrap().path(), index);
}

/// The error names the index file, the shard and the tensor.
fn assert_names(e: &Error, index: &Path, parts: &[&str]) {
    let text = e.to_string();
    assert!(text.starts_with(&index.display().to_string()), "{text}");
    for p in parts {
        assert!(text.contains(p), "{text} lacks {p}");
    }
}

#[test]
fn a_missing_shard_is_named() {
    let (dir, index) = sharded();
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::ShardMissing { .. }),
        "{e}"
    );
    assert_names(&e, &index, &["model-00002-of-00002.safetensors", "'c'"]);
    assert!(e.is_data_error());
}

#[test]
fn a_tensor_missing_from_its_shard_is_named() {
    let (_dir, index) = sharded();
    edit_index(&index, |v| {
        v["weight_map"]["d"] = json!("model-00002-of-00002.safetensors");
    });
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::TensorNotInShard { .. }),
        "{e}"
    );
    assert_names(&e, &index, &["'d'", "model-00002-of-00002.safetensors"]);
}

#[test]
fn a_tensor_in_two_shards_is_named() {
    let (dir, index) = sharded();
    st_file(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[("c", &[5, 6]), ("a", &[1, 2, 3])],
        None,
    );
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::TensorInTwoShards { tensor, .. } if tensor == "a"),
        "{e}"
    );
    assert_names(
        &e,
        &index,
        &[
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
}

/// A stale index (a shard holds a tensor it does not list) loads every tensor of its shards,
/// as transformers and diffusers do (they open each listed shard and take all its tensors);
/// the unlisted tensors are told by `unlisted()`.
#[test]
fn a_tensor_the_index_does_not_list_is_loaded_from_its_shard_and_told() {
    let (_dir, index) = sharded();
    edit_index(&index, |v| {
        v["weight_map"].as_object_mut().unwrap().remove("b");
    });
    let c = Checkpoint::open(&index).unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(
        c.shard_of("b").unwrap().name(),
        "model-00001-of-00002.safetensors"
    );
    assert_eq!(
        c.unlisted(),
        [(
            "b".to_string(),
            "model-00001-of-00002.safetensors".to_string()
        )]
    );
    assert!(Checkpoint::open(sharded().1).unwrap().unlisted().is_empty());
}

/// An unlisted tensor that another shard also holds is in two shards: refused, whichever
/// shard the index lists it in (or in neither).
#[test]
fn an_unlisted_tensor_in_two_shards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    st_file(&d.join("s1.safetensors"), &[("a", &[1]), ("x", &[2])], None);
    st_file(&d.join("s2.safetensors"), &[("b", &[3]), ("x", &[4])], None);
    let index = d.join("model.safetensors.index.json");
    for x in [
        json!("s1.safetensors"),
        json!("s2.safetensors"),
        json!(null),
    ] {
        let mut map = json!({"a": "s1.safetensors", "b": "s2.safetensors"});
        if !x.is_null() {
            map["x"] = x.clone();
        }
        write_json(&index, json!({"weight_map": map}));
        let e = Checkpoint::open(&index).unwrap_err();
        assert!(
            matches!(kind_of(&e), CheckpointError::TensorInTwoShards { tensor, .. } if tensor == "x"),
            "{x}: {e}"
        );
        assert_names(&e, &index, &["s1.safetensors", "s2.safetensors"]);
    }
}

#[test]
fn shard_names_cannot_leave_the_folder_even_when_the_file_exists() {
    let (dir, _) = sharded();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let index = inner.join("model.safetensors.index.json");
    write_json(
        &index,
        json!({"weight_map": {"c": "../model-00002-of-00002.safetensors"}}),
    );
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::ShardOutsideFolder { .. }),
        "{e}"
    );
    assert_names(&e, &index, &["../model-00002-of-00002.safetensors", "'c'"]);
}

#[test]
fn malformed_and_oversized_indexes_are_refused() {
    let (dir, index) = sharded();
    std::fs::write(&index, b"{\"weight_map\": ").unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::Malformed { .. }),
        "{e}"
    );
    assert_names(&e, &index, &[]);
    // A sparse file over the limit: refused from its size, never read.
    let f = std::fs::File::create(&index).unwrap();
    f.set_len(index::MAX_INDEX_BYTES + 1).unwrap();
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::IndexTooLarge { .. }),
        "{e}"
    );
}

#[test]
fn a_shard_that_is_not_a_weight_file_is_named_with_why() {
    let (dir, index) = sharded();
    std::fs::write(
        dir.path().join("model-00002-of-00002.safetensors"),
        b"garbage!",
    )
    .unwrap();
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::BadShard { .. }),
        "{e}"
    );
    assert_names(
        &e,
        &index,
        &["model-00002-of-00002.safetensors", "'c'", "safetensors"],
    );
    assert!(e.is_data_error());
    assert!(std::error::Error::source(&e).is_some());
}

/// Two FlashPack shards in `dir`: x in the first; y, z in the second (also used by `convert`'s tests).
pub(crate) fn packs(dir: &Path) -> Vec<PathBuf> {
    let opts = PackOptions::default();
    let a = dir.join("m-00001-of-00002.flashpack");
    let b = dir.join("m-00002-of-00002.flashpack");
    pack(
        &a,
        &[PackEntry::new("x", Dtype::F32, vec![2], &[0; 8])],
        &opts,
    )
    .unwrap();
    pack(
        &b,
        &[
            PackEntry::new("y", Dtype::U8, vec![3], &[1, 2, 3]),
            PackEntry::new("z", Dtype::I64, vec![], &[7; 8]),
        ],
        &opts,
    )
    .unwrap();
    vec![a, b]
}

#[test]
fn a_flashpack_index_round_trips_and_notices_a_replaced_shard() {
    let dir = tempfile::tempdir().unwrap();
    let files = packs(dir.path());
    let index = dir.path().join("m.flashpack.index.json");
    let meta = serde_json::Map::from_iter([("source".to_string(), json!("test"))]);
    write_index(&index, IndexKind::FlashPack, &files, meta).unwrap();
    let c = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(c.index_kind(), Some(IndexKind::FlashPack));
    assert_eq!(c.metadata().unwrap()["source"], "test");
    assert_eq!(c.metadata().unwrap()["total_size"], 8 + 3 + 8);
    assert_eq!(
        c.shard_of("z").unwrap().name(),
        "m-00002-of-00002.flashpack"
    );
    assert!(c.is_all(Format::FlashPack));
    // The checkpoint holds its shards open; Windows refuses to replace an open file.
    drop(c);

    // Same tensors, other bytes: the footer (its checksums) differs.
    pack(
        &files[1],
        &[
            PackEntry::new("y", Dtype::U8, vec![3], &[1, 2, 4]),
            PackEntry::new("z", Dtype::I64, vec![], &[7; 8]),
        ],
        &PackOptions::default(),
    )
    .unwrap();
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::ShardChanged { .. }),
        "{e}"
    );
    assert_names(&e, &index, &["m-00002-of-00002.flashpack", "xxh3"]);
}

#[test]
fn a_flashpack_index_refuses_safetensors_shards() {
    let (dir, _) = sharded();
    let index = dir.path().join("m.flashpack.index.json");
    let e = write_index(
        &index,
        IndexKind::FlashPack,
        &[dir.path().join("model-00002-of-00002.safetensors")],
        serde_json::Map::new(),
    )
    .unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::NotAFlashPackShard { .. }),
        "{e}"
    );
    write_json(
        &index,
        json!({"format": "flashpack_index", "version": 1,
               "weight_map": {"c": "model-00002-of-00002.safetensors"}}),
    );
    let e = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::NotAFlashPackShard { .. }),
        "{e}"
    );
}

#[test]
fn a_safetensors_index_can_be_written_for_any_weight_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = packs(dir.path());
    let index = dir.path().join("m.safetensors.index.json");
    write_index(
        &index,
        IndexKind::Safetensors,
        &files,
        serde_json::Map::new(),
    )
    .unwrap();
    let c = Checkpoint::open(&index).unwrap();
    assert_eq!(c.index_kind(), Some(IndexKind::Safetensors));
    assert_eq!(c.len(), 3);
    // a tensor in two files is refused when writing too
    let e = write_index(
        &index,
        IndexKind::Safetensors,
        &[files[0].clone(), files[0].clone()],
        serde_json::Map::new(),
    )
    .unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::TensorInTwoShards { .. }),
        "{e}"
    );
    // and a file outside the index's folder
    let other = tempfile::tempdir().unwrap();
    let e = write_index(
        &other.path().join("i.safetensors.index.json"),
        IndexKind::Safetensors,
        &files,
        serde_json::Map::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not inside the index's folder"),
        "{e}"
    );
}

/// A Hugging Face cache snapshot: the index and shards are links into a blob store outside the
/// snapshot folder. Links are followed (the names stay inside the folder).
#[cfg(unix)]
#[test]
fn shards_linked_from_a_hub_cache_snapshot_open() {
    let (dir, _) = sharded();
    let blobs = dir.path().join("blobs");
    let snapshot = dir.path().join("snapshots").join("abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir(&blobs).unwrap();
    for name in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let blob = blobs.join(format!("blob-{name}"));
        std::fs::rename(dir.path().join(name), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snapshot.join(name))
            .unwrap();
    }
    let c = Checkpoint::open(&snapshot).unwrap();
    assert_eq!(c.shards().len(), 2);
    assert_eq!(c.total_size(), 6);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any split of tensors into shards, written by `write_index` (either kind) or by hand as
    /// transformers writes it, opens with every tensor in its shard and the sizes summed.
    #[test]
    fn any_split_opens_as_written(
        sizes in proptest::collection::vec(0usize..64, 1..12),
        shard_of in proptest::collection::vec(0usize..4, 12),
        flash in proptest::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut parts: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); 4];
        for (i, &n) in sizes.iter().enumerate() {
            parts[shard_of[i]].push((format!("t{i}"), vec![i as u8; n]));
        }
        // A FlashPack file needs at least one non-empty tensor ("nothing to pack" otherwise).
        proptest::prop_assume!(
            !flash || parts.iter().all(|p| p.is_empty() || p.iter().any(|(_, b)| !b.is_empty()))
        );
        let mut files = Vec::new();
        let mut want = HashMap::new();
        for (s, part) in parts.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
            let (name, path) = if flash {
                let name = format!("m-{s}.flashpack");
                let entries: Vec<PackEntry<'_>> = part
                    .iter()
                    .map(|(t, b)| PackEntry::new(t.clone(), Dtype::U8, vec![b.len() as u64], b))
                    .collect();
                let path = dir.path().join(&name);
                pack(&path, &entries, &PackOptions::default()).unwrap();
                (name, path)
            } else {
                let name = format!("m-{s}.safetensors");
                let path = dir.path().join(&name);
                let views: Vec<(&str, &[u8])> =
                    part.iter().map(|(t, b)| (t.as_str(), b.as_slice())).collect();
                st_file(&path, &views, None);
                (name, path)
            };
            for (t, _) in part {
                want.insert(t.clone(), name.clone());
            }
            files.push(path);
        }
        let kind = if flash { IndexKind::FlashPack } else { IndexKind::Safetensors };
        let ext = if flash { "flashpack" } else { "safetensors" };
        let index = dir.path().join(format!("m.{ext}.index.json"));
        write_index(&index, kind, &files, serde_json::Map::new()).unwrap();
        let c = Checkpoint::open(dir.path()).unwrap();
        proptest::prop_assert_eq!(c.len(), sizes.len());
        proptest::prop_assert_eq!(c.total_size(), sizes.iter().sum::<usize>() as u64);
        for (t, shard) in &want {
            proptest::prop_assert_eq!(c.shard_of(t).unwrap().name(), shard.as_str());
        }
        let names: Vec<&str> = c.shards().iter().map(Shard::name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        proptest::prop_assert_eq!(names, sorted);
    }
}
