//! Checkpoints of several files through the `flashpack` binary: a sharded safetensors folder to
//! one pack and back to the same shards (byte for byte), to one safetensors file, to a
//! multi-file FlashPack checkpoint, re-split by size; `inspect` and `verify` per shard and in
//! total; bad checkpoints fail with one line naming the index, the shard and the tensor; a
//! failed or cancelled conversion leaves no destination. Tensors are compared with the
//! `safetensors` crate's own reader.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flashpack::checkpoint::Checkpoint;
use flashpack::weights::{safetensors_shape, to_safetensors_dtype, WeightFile};
use flashpack::Dtype;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use serde_json::{json, Value};

fn flashpack<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_flashpack"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run the flashpack binary")
}

fn ok(o: Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{:?}\n{out}\n{err}", o.status);
    out.into_owned()
}

/// Status 1 and one line on stderr containing every one of `parts`; returns the line.
fn fails(o: Output, parts: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    for p in parts {
        assert!(err.contains(p), "{err:?} lacks {p:?}");
    }
    err
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// name -> (dtype, shape, bytes)
type Tensors = BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// Every dtype both formats store, in three shapes (matrix, 0-dim, empty), and a larger tensor.
fn every_dtype() -> Tensors {
    let mut t = Tensors::new();
    for (i, &d) in Dtype::ALL.iter().enumerate() {
        let Some(sd) = to_safetensors_dtype(d) else {
            continue;
        };
        let seed = i as u64 + 1;
        // Header shapes: fp4's counts 4-bit values (our byte shape's last dimension doubled);
        // a 0-dim fp4 pair has none.
        let header = |shape: &[u64]| safetensors_shape(d, shape).unwrap();
        t.insert(
            format!("m.{d}"),
            (sd, header(&[3, 5]), bytes(15 * d.size(), seed)),
        );
        if d != Dtype::F4E2M1X2 {
            t.insert(format!("s.{d}"), (sd, vec![], bytes(d.size(), seed + 100)));
        }
        t.insert(format!("e.{d}"), (sd, header(&[2, 0]), vec![]));
    }
    t.insert(
        "big.weight".into(),
        (safetensors::Dtype::BF16, vec![300, 1000], bytes(600_000, 7)),
    );
    t
}

fn write_st(path: &Path, tensors: &Tensors, meta: Option<HashMap<String, String>>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn read_st(path: &Path) -> (Tensors, Option<HashMap<String, String>>) {
    let buf = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&buf).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    let t = st
        .iter()
        .map(|(n, v)| {
            let entry = (v.dtype(), v.shape().to_vec(), v.data().to_vec());
            (n.to_string(), entry)
        })
        .collect();
    (t, meta.metadata().clone())
}

/// Every tensor of a checkpoint (any format), through the engine, as safetensors sees them.
fn read_checkpoint(path: &Path) -> Tensors {
    let ckpt = Checkpoint::open(path).unwrap();
    let mut out = Tensors::new();
    for shard in ckpt.into_shards() {
        let w = shard
            .into_file()
            .load(&flashpack::read::LoadOptions::default())
            .unwrap();
        for t in w.iter() {
            let shape = safetensors_shape(t.dtype, t.shape).unwrap();
            let entry = (
                to_safetensors_dtype(t.dtype).unwrap(),
                shape,
                t.data.to_vec(),
            );
            assert!(out.insert(t.name.to_string(), entry).is_none());
        }
    }
    out
}

const SHARDS: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

fn pt() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".into(), "pt".into())]))
}

/// A transformers-style sharded folder of every dtype; returns (folder, all tensors).
fn sharded(dir: &Path) -> (PathBuf, Tensors) {
    let folder = dir.join("model");
    std::fs::create_dir(&folder).unwrap();
    let all = every_dtype();
    let mut weight_map = serde_json::Map::new();
    let mut parts: Vec<Tensors> = vec![Tensors::new(); 3];
    for (i, (name, t)) in all.iter().enumerate() {
        let s = if name == "big.weight" { 2 } else { i % 2 };
        parts[s].insert(name.clone(), t.clone());
        weight_map.insert(name.clone(), json!(SHARDS[s]));
    }
    for (s, part) in parts.iter().enumerate() {
        write_st(&folder.join(SHARDS[s]), part, pt());
    }
    let total: usize = all.values().map(|t| t.2.len()).sum();
    let index = json!({"metadata": {"total_size": total, "total_parameters": 12345},
                       "weight_map": weight_map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(folder.join("config.json"), "{\"hidden\": 4}").unwrap();
    (folder, all)
}

fn index_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_sharded_folder_to_one_pack_and_back_to_the_same_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, all) = sharded(dir.path());
    let pack = dir.path().join("one.flashpack");
    let out = ok(flashpack([
        "convert".as_ref(),
        folder.as_os_str(),
        pack.as_os_str(),
    ]));
    assert!(out.contains("(safetensors, 3 shards) -> "), "{out}");
    assert_eq!(read_checkpoint(&pack), all, "bit-exact, every dtype");
    let wf = WeightFile::open(&pack).unwrap();
    let extra = &wf.flashpack().unwrap().footer().extra();
    assert_eq!(extra["safetensors_metadata"], json!({"format": "pt"}));
    assert_eq!(
        extra["checkpoint_index"]["metadata"]["total_parameters"],
        12345
    );
    assert_eq!(
        extra["checkpoint_index"]["index"],
        "model.safetensors.index.json"
    );

    let back = dir.path().join("back");
    ok(flashpack([
        "revert".as_ref(),
        pack.as_os_str(),
        back.as_os_str(),
        "--sharded".as_ref(),
    ]));
    for s in SHARDS {
        assert_eq!(
            std::fs::read(back.join(s)).unwrap(),
            std::fs::read(folder.join(s)).unwrap(),
            "{s}: the same bytes as the safetensors library wrote"
        );
    }
    assert_eq!(
        index_json(&back.join("model.safetensors.index.json")),
        index_json(&folder.join("model.safetensors.index.json")),
        "the index, metadata kept"
    );
}

#[test]
fn a_sharded_folder_to_one_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, all) = sharded(dir.path());
    let index = folder.join("model.safetensors.index.json");
    let one = dir.path().join("one.safetensors");
    ok(flashpack([
        "convert".as_ref(),
        index.as_os_str(),
        one.as_os_str(),
    ]));
    let (tensors, meta) = read_st(&one);
    assert_eq!(tensors, all);
    assert_eq!(meta, pt());
    // without a destination: beside the index, named after it
    ok(flashpack(["convert".as_ref(), folder.as_os_str()]));
    assert_eq!(read_checkpoint(&folder.join("model.flashpack")), all);
}

#[test]
fn a_multi_file_flashpack_checkpoint_verifies_inspects_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, all) = sharded(dir.path());
    let fp = dir.path().join("fp");
    let out = ok(flashpack([
        "convert".as_ref(),
        folder.as_os_str(),
        fp.as_os_str(),
        "--sharded".as_ref(),
    ]));
    assert!(
        out.contains("3 shards and model.flashpack.index.json"),
        "{out}"
    );
    assert_eq!(read_checkpoint(&fp), all);
    let index = fp.join("model.flashpack.index.json");
    assert_eq!(index_json(&index)["format"], "flashpack_index");
    assert_eq!(index_json(&index)["metadata"]["total_parameters"], 12345);

    let v = ok(flashpack(["verify".as_ref(), fp.as_os_str()]));
    assert_eq!(v.lines().count(), 5, "{v}");
    assert!(
        v.contains("index OK: 3 shards") && v.contains("OK: 3 shards, 3 with checksums"),
        "{v}"
    );
    let j: Value = serde_json::from_str(&ok(flashpack([
        "inspect".as_ref(),
        index.as_os_str(),
        "--json".as_ref(),
    ])))
    .unwrap();
    assert_eq!(j["shard_count"], 3);
    assert_eq!(j["index_format"], "flashpack");
    assert_eq!(j["shards"][2]["name"], "model-00003-of-00003.flashpack");
    assert_eq!(j["shards"][2]["tensor_count"], 1);
    let text = ok(flashpack([
        "inspect".as_ref(),
        fp.as_os_str(),
        "-i".as_ref(),
    ]));
    assert!(
        text.starts_with("checkpoint: ") && text.contains("big.weight"),
        "{text}"
    );

    let back = dir.path().join("back");
    ok(flashpack([
        "revert".as_ref(),
        fp.as_os_str(),
        back.as_os_str(),
        "--sharded".as_ref(),
    ]));
    for s in SHARDS {
        assert_eq!(
            std::fs::read(back.join(s)).unwrap(),
            std::fs::read(folder.join(s)).unwrap(),
            "{s}"
        );
    }

    // a flipped byte in a shard: verify names the shard file and the tensor
    let shard = fp.join("model-00003-of-00003.flashpack");
    let mut b = std::fs::read(&shard).unwrap();
    b[1000] ^= 1;
    std::fs::write(&shard, b).unwrap();
    fails(
        flashpack(["verify".as_ref(), fp.as_os_str()]),
        &[&shard.display().to_string(), "big.weight", "checksum"],
    );
}

#[test]
fn max_shard_size_splits_in_order_and_keeps_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, all) = sharded(dir.path());
    let out = dir.path().join("split");
    ok(flashpack([
        "convert".as_ref(),
        folder.as_os_str(),
        out.as_os_str(),
        "--to".as_ref(),
        "safetensors".as_ref(),
        "--max-shard-size".as_ref(),
        "0.1KB".as_ref(),
    ]));
    let ckpt = Checkpoint::open(&out).unwrap();
    assert!(ckpt.shards().len() > 3);
    for s in ckpt.shards() {
        assert!(
            s.tensor_bytes() <= 100 || s.file().tensors().len() == 1,
            "{s:?}"
        );
        let (_, meta) = read_st(s.path());
        assert_eq!(meta, pt(), "{}", s.name());
    }
    let mut seen = Tensors::new();
    for s in ckpt.shards() {
        seen.extend(read_st(s.path()).0);
    }
    assert_eq!(seen, all);
}

#[test]
fn bad_checkpoints_fail_with_one_line_naming_index_shard_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, _) = sharded(dir.path());
    let index = folder.join("model.safetensors.index.json");
    let out = dir.path().join("out.flashpack");
    std::fs::remove_file(folder.join(SHARDS[2])).unwrap();
    for cmd in ["convert", "verify", "inspect"] {
        let mut args = vec![cmd.as_ref(), folder.as_os_str()];
        if cmd == "convert" {
            args.push(out.as_os_str());
        }
        fails(
            flashpack(&args),
            &[
                &index.display().to_string(),
                SHARDS[2],
                "'big.weight'",
                "does not exist",
            ],
        );
    }
    assert!(!out.exists());

    // an ambiguous folder lists its candidates
    let two = dir.path().join("two");
    std::fs::create_dir(&two).unwrap();
    write_st(&two.join("a.safetensors"), &every_dtype(), None);
    write_st(&two.join("b.safetensors"), &every_dtype(), None);
    fails(
        flashpack(["verify".as_ref(), two.as_os_str()]),
        &["a.safetensors, b.safetensors", "ambiguous"],
    );
}

#[test]
fn sharded_outputs_never_leave_a_partial_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, _) = sharded(dir.path());
    // a destination folder that is not empty is refused, untouched
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"x").unwrap();
    fails(
        flashpack([
            "convert".as_ref(),
            folder.as_os_str(),
            full.as_os_str(),
            "--sharded".as_ref(),
        ]),
        &["not empty"],
    );
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);

    // a tensor safetensors cannot store fails the conversion after earlier shards were written:
    // nothing at the destination, no temporary folder beside it
    let fp = dir.path().join("odd.flashpack");
    flashpack::write::pack(
        &fp,
        &[
            flashpack::write::PackEntry::new("a", Dtype::F32, vec![300], &[0; 1200]),
            flashpack::write::PackEntry::new("z", Dtype::C32, vec![1], &[0; 4]),
        ],
        &flashpack::write::PackOptions::default(),
    )
    .unwrap();
    let dest = dir.path().join("odd");
    fails(
        flashpack([
            "revert".as_ref(),
            fp.as_os_str(),
            dest.as_os_str(),
            "--max-shard-size".as_ref(),
            "1000".as_ref(),
        ]),
        &["'z'", "cannot be stored in safetensors"],
    );
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".packtmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // a cancelled conversion (SIGINT's path) stops with the destination absent
    let cancel = flashpack::cancel::Cancel::new();
    cancel.cancel();
    let dest = dir.path().join("cancelled");
    let req = flashpack_cli::convert::Request {
        src: folder.clone(),
        dst: Some(dest.clone()),
        to: None,
        checksums: true,
        align_bytes: None,
        ignore: Default::default(),
        progress: false,
        verbose: false,
        cancel: Some(cancel),
        sharded: true,
        max_shard_size: None,
        variant: None,
    };
    let e = flashpack_cli::convert::convert(&req).unwrap_err();
    assert!(
        matches!(e, flashpack_cli::error::CliError::Engine(flashpack::Error::Cancelled { ref path }) if *path == dest),
        "{e}"
    );
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "model, full, odd.flashpack and nothing else"
    );
}

#[test]
fn a_plain_file_has_no_split_to_keep_and_library_folders_stay_with_python() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("w.safetensors");
    write_st(&st, &every_dtype(), None);
    fails(
        flashpack([
            "convert".as_ref(),
            st.as_os_str(),
            dir.path().join("o").as_os_str(),
            "--sharded".as_ref(),
        ]),
        &[&st.display().to_string(), "--max-shard-size"],
    );
    // a transformers folder: the Python command (the library saves it) unless weight files
    // are asked for
    let (folder, all) = sharded(dir.path());
    std::fs::write(folder.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    fails(
        flashpack(["convert".as_ref(), folder.as_os_str()]),
        &["this needs Python"],
    );
    let out = dir.path().join("w2.flashpack");
    ok(flashpack([
        "convert".as_ref(),
        folder.as_os_str(),
        out.as_os_str(),
    ]));
    assert_eq!(read_checkpoint(&out), all);
    // a folder of torch files only: Python
    let torch = dir.path().join("torch");
    std::fs::create_dir(&torch).unwrap();
    std::fs::write(torch.join("pytorch_model.bin"), b"x").unwrap();
    fails(
        flashpack(["convert".as_ref(), torch.as_os_str()]),
        &["so torch files", "this needs Python"],
    );
}

/// A pack whose footer remembers `index` as its checkpoint index (as a crafted, downloaded
/// pack could): two tensors, mapped to shards `shard_a` and `shard_b`.
fn crafted_pack(path: &Path, index: &str, shard_a: &str, shard_b: &str) {
    use flashpack::write::{pack, PackEntry, PackOptions};
    let (a, b) = (bytes(16, 1), bytes(16, 2));
    let entries = [
        PackEntry::new("a", Dtype::F32, vec![4], &a),
        PackEntry::new("b", Dtype::F32, vec![4], &b),
    ];
    let mut opts = PackOptions::default();
    opts.extra.insert(
        "checkpoint_index".into(),
        json!({"index": index, "metadata": null,
               "weight_map": {"a": shard_a, "b": shard_b}}),
    );
    pack(path, &entries, &opts).unwrap();
}

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn a_crafted_remembered_index_cannot_write_outside_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil");
    let abs = evil.join("x.safetensors");
    let abs_index = evil.join("m.safetensors.index.json");
    let ok_shard = "model-00001-of-00002.safetensors";
    let cases: [(&str, String, String); 5] = [
        (
            "absolute shard",
            "model.safetensors.index.json".into(),
            abs.display().to_string(),
        ),
        (
            "../ shard",
            "model.safetensors.index.json".into(),
            "../evil/x.safetensors".into(),
        ),
        (
            "absolute index",
            abs_index.display().to_string(),
            ok_shard.into(),
        ),
        (
            "index with a separator",
            "../evil/m.safetensors.index.json".into(),
            ok_shard.into(),
        ),
        (
            "variant with a separator",
            "m.safetensors.index.a/b.json".into(),
            ok_shard.into(),
        ),
    ];
    for (i, (what, index, shard)) in cases.iter().enumerate() {
        let work = dir.path().join(format!("case{i}"));
        std::fs::create_dir(&work).unwrap();
        let pack = work.join("p.flashpack");
        crafted_pack(&pack, index, shard, "model-00002-of-00002.safetensors");
        let before = tree(dir.path());
        let out = work.join("out");
        let o = flashpack([
            "revert".as_ref(),
            pack.as_os_str(),
            out.as_os_str(),
            "--sharded".as_ref(),
        ]);
        fails(o, &["p.flashpack", "checkpoint_index"]);
        assert_eq!(tree(dir.path()), before, "{what}: nothing created anywhere");
        assert!(!evil.exists(), "{what}");
    }
}

/// A stale index (a shard holds a tensor it does not list): a conversion takes every tensor of
/// the shards (as transformers and diffusers load them), `verify` says the index is incomplete.
#[test]
fn a_stale_index_converts_every_tensor_and_verify_names_the_unlisted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, all) = sharded(dir.path());
    let index = folder.join("model.safetensors.index.json");
    let mut doc = index_json(&index);
    let shard = doc["weight_map"]["s.float32"].as_str().unwrap().to_string();
    doc["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("s.float32");
    std::fs::write(&index, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let pack = dir.path().join("one.flashpack");
    ok(flashpack([
        "convert".as_ref(),
        folder.as_os_str(),
        pack.as_os_str(),
    ]));
    let got = read_checkpoint(&pack);
    assert!(got.contains_key("s.float32"), "the unlisted tensor is kept");
    assert!(got == all, "every tensor bit-exact");
    fails(
        flashpack(["verify".as_ref(), folder.as_os_str()]),
        &[
            &index.display().to_string(),
            &shard,
            "'s.float32'",
            "does not list",
        ],
    );
}
