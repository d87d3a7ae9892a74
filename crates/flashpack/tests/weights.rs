//! The format-neutral API: safetensors files through the engine (lazy, eager in every I/O mode,
//! device streaming) and conversions both ways, bit-exact, checked against the safetensors crate.
use std::path::Path;

use flashpack::read::{IoMode, LoadOptions};
use flashpack::weights::{safetensors_shape, to_safetensors_dtype, Format, WeightFile};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;
use safetensors::SafeTensors;

/// Every dtype both formats store, odd sizes, a 0-dim and an empty tensor.
fn tensors() -> Vec<(String, Dtype, Vec<u64>, Vec<u8>)> {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    let mut out: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = Dtype::ALL
        .iter()
        .filter(|d| to_safetensors_dtype(**d).is_some())
        .enumerate()
        .map(|(i, &d)| {
            let shape = vec![3 + i as u64, 1001];
            let n = shape.iter().product::<u64>() as usize * d.size();
            (
                format!("t.{}", d.name()),
                d,
                shape,
                (0..n).map(|_| next()).collect(),
            )
        })
        .collect();
    out.push((
        "scalar".into(),
        Dtype::F32,
        vec![],
        1.5f32.to_le_bytes().to_vec(),
    ));
    out.push(("empty".into(), Dtype::I64, vec![0, 4], vec![]));
    out.push((
        "big".into(),
        Dtype::BF16,
        vec![3_000_001],
        (0..6_000_002).map(|_| next()).collect(),
    ));
    out
}

fn write_flashpack(path: &Path, ts: &[(String, Dtype, Vec<u64>, Vec<u8>)]) {
    let entries: Vec<PackEntry<'_>> = ts
        .iter()
        .map(|(n, d, s, b)| PackEntry::new(n.clone(), *d, s.clone(), b))
        .collect();
    pack(path, &entries, &PackOptions::default()).unwrap();
}

fn check_st(path: &Path, ts: &[(String, Dtype, Vec<u64>, Vec<u8>)]) {
    let raw = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&raw).unwrap();
    assert_eq!(st.len(), ts.len());
    for (name, dtype, shape, bytes) in ts {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), to_safetensors_dtype(*dtype).unwrap(), "{name}");
        // fp4's header shape counts 4-bit values: our last dimension (bytes) doubled.
        assert_eq!(
            v.shape(),
            safetensors_shape(*dtype, shape).unwrap(),
            "{name}"
        );
        assert!(v.data() == &bytes[..], "{name}: bytes differ");
    }
}

/// A safetensors file written by hand: `(name, dtype, header shape, bytes)` back to back.
fn write_raw_safetensors(path: &Path, ts: &[(&str, &str, Vec<u64>, usize)]) {
    let mut header = serde_json::Map::new();
    let mut at = 0;
    for (name, dtype, shape, len) in ts {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + len]}),
        );
        at += len;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.extend((0..at).map(|i| i as u8));
    std::fs::write(path, file).unwrap();
}

#[test]
fn fp4_is_held_as_torch_holds_it_two_values_per_byte() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("fp4.safetensors");
    write_raw_safetensors(&st, &[("x", "F4", vec![2, 6], 6), ("v", "F4", vec![4], 2)]);
    let f = WeightFile::open(&st).unwrap();
    let x = f.tensor("x").unwrap();
    assert_eq!(
        (x.dtype, x.shape.clone(), x.end - x.start),
        (Dtype::F4E2M1X2, vec![2, 3], 6)
    );
    assert_eq!(f.tensor("v").unwrap().shape, vec![2]);
    assert!(f.unloadable().is_empty());
    // Through FlashPack and back: the same file, byte for byte.
    let fp = dir.path().join("fp4.flashpack");
    f.to_flashpack(&fp, &PackOptions::default()).unwrap();
    let packed = WeightFile::open(&fp).unwrap();
    assert_eq!(packed.tensor("x").unwrap().shape, vec![2, 3]);
    assert_eq!(
        packed.footer().unwrap().blocks()[0].dtype(),
        Dtype::F4E2M1X2
    );
    let back = dir.path().join("back.safetensors");
    packed.to_safetensors(&back).unwrap();
    let raw = std::fs::read(&back).unwrap();
    let v = SafeTensors::deserialize(&raw).unwrap();
    assert_eq!(v.tensor("x").unwrap().shape(), &[2, 6]);
    assert_eq!(v.tensor("x").unwrap().dtype(), safetensors::Dtype::F4);
    assert_eq!(
        v.tensor("x").unwrap().data(),
        &(0..6).collect::<Vec<u8>>()[..]
    );
    // A 0-dim fp4 pair has no safetensors shape: refused, naming the tensor.
    let zero = dir.path().join("zero.flashpack");
    write_flashpack(&zero, &[("z".into(), Dtype::F4E2M1X2, vec![], vec![7])]);
    let e = WeightFile::open(&zero)
        .unwrap()
        .to_safetensors(dir.path().join("z.safetensors"))
        .unwrap_err();
    assert!(e.to_string().contains("'z'"), "{e}");
}

#[test]
fn tensors_torch_cannot_hold_are_listed_and_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("f6.safetensors");
    write_raw_safetensors(
        &st,
        &[
            ("a", "F32", vec![1], 4),
            ("b", "F6_E2M3", vec![4], 3),
            ("odd", "F4", vec![2, 3], 3),
            ("c", "I8", vec![2], 2),
        ],
    );
    let f = WeightFile::open(&st).unwrap();
    let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    let bad: Vec<_> = f
        .unloadable()
        .iter()
        .map(|u| (u.name.as_str(), u.dtype.as_str()))
        .collect();
    assert_eq!(bad, [("b", "F6_E2M3"), ("odd", "F4")]);
    assert!(f.contains("b") && f.contains("a") && !f.contains("zz"));
    assert_eq!(f.unloadable()[1].shape, vec![2, 3]);
    let e = f.check_loadable().unwrap_err().to_string();
    assert!(
        e.contains("f6.safetensors") && e.contains("'b'") && e.contains("F6_E2M3"),
        "{e}"
    );
    let e = f.unloadable_error(&f.unloadable()[1]).to_string();
    assert!(e.contains("'odd'") && e.contains("even"), "{e}");
    // Loading or converting the whole file fails as safetensors' load_file does.
    let fp = dir.path().join("f6.flashpack");
    assert!(f.to_flashpack(&fp, &PackOptions::default()).is_err());
    assert!(!fp.exists());
    assert!(WeightFile::open(&st)
        .unwrap()
        .load(&LoadOptions::default())
        .is_err());
}

#[test]
fn flashpack_to_safetensors_and_back_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tensors();
    let fp = dir.path().join("a.flashpack");
    write_flashpack(&fp, &ts);
    let st = dir.path().join("b.safetensors");
    let f = WeightFile::open(&fp).unwrap();
    assert_eq!(f.format(), Format::FlashPack);
    f.to_safetensors(&st).unwrap();
    check_st(&st, &ts);

    let g = WeightFile::open(&st).unwrap();
    assert_eq!(g.format(), Format::Safetensors);
    assert_eq!(g.tensors().len(), ts.len());
    let fp2 = dir.path().join("c.flashpack");
    g.to_flashpack(&fp2, &PackOptions::default()).unwrap();
    let back = WeightFile::open(&fp2)
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap();
    for (name, dtype, shape, bytes) in &ts {
        let v = back.get(name).unwrap();
        assert_eq!((v.dtype, v.shape), (*dtype, &shape[..]), "{name}");
        assert!(v.data == &bytes[..], "{name}");
    }
    // The same tensors packed directly and through safetensors give the same file.
    assert_eq!(std::fs::read(&fp).unwrap(), std::fs::read(&fp2).unwrap());
}

#[test]
fn safetensors_load_through_the_engine_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tensors();
    let fp = dir.path().join("a.flashpack");
    write_flashpack(&fp, &ts);
    let st = dir.path().join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    let modes = [
        ("lazy", LoadOptions::default()),
        (
            "eager buffered",
            LoadOptions {
                eager: true,
                io: IoMode::Buffered,
                threads: 3,
                chunk_bytes: 5000,
                ..Default::default()
            },
        ),
        (
            "eager direct",
            LoadOptions {
                eager: true,
                io: IoMode::Direct,
                threads: 2,
                chunk_bytes: 1 << 20,
                ..Default::default()
            },
        ),
        (
            "eager auto",
            LoadOptions {
                eager: true,
                ..Default::default()
            },
        ),
    ];
    for (what, opts) in modes {
        let w = WeightFile::open(&st).unwrap().load(&opts).unwrap();
        assert_eq!(w.is_eager(), opts.eager, "{what}");
        assert_eq!(w.iter().count(), ts.len(), "{what}");
        for (name, dtype, shape, bytes) in &ts {
            let v = w
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {name} missing"));
            assert_eq!((v.dtype, v.shape), (*dtype, &shape[..]), "{what} {name}");
            assert!(v.data == &bytes[..], "{what} {name}");
        }
        if opts.eager {
            let (start, end) = (w.tensors()[0].start, std::fs::metadata(&st).unwrap().len());
            let io = w.report.io;
            assert_eq!(
                io.direct_bytes + io.buffered_bytes,
                end - start,
                "{what}: only the data is read"
            );
        }
    }
    let err = WeightFile::open(&st)
        .unwrap()
        .load(&LoadOptions {
            verify: true,
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no checksums"), "{err}");
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tensors();
    let fp = dir.path().join("a.flashpack");
    write_flashpack(&fp, &ts);
    let st = dir.path().join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    let raw = std::fs::read(&st).unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"hello, this is not a weight file at all".to_vec(),
        ),
        ("tiny", vec![1, 2, 3]),
        ("truncated", raw[..raw.len() - 100].to_vec()),
        ("header cut", raw[..40].to_vec()),
        ("huge header length", {
            let mut r = raw.clone();
            r[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
            r
        }),
    ];
    for (what, bytes) in cases {
        let p = dir
            .path()
            .join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&p, bytes).unwrap();
        let err = WeightFile::open(&p)
            .err()
            .unwrap_or_else(|| panic!("{what} opened"))
            .to_string();
        assert!(err.contains(&*p.to_string_lossy()), "{what}: {err}");
        assert!(
            err.contains("not a FlashPack file") || err.contains("safetensors"),
            "{what}: {err}"
        );
    }
    // A dtype safetensors cannot hold is refused by name, and no destination is written.
    let c = dir.path().join("c.flashpack");
    let z = [0u8; 32];
    pack(
        &c,
        &[PackEntry::new("z", Dtype::C128, vec![2], &z)],
        &PackOptions::default(),
    )
    .unwrap();
    let dest = dir.path().join("c.safetensors");
    let err = WeightFile::open(&c)
        .unwrap()
        .to_safetensors(&dest)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor 'z'") && err.contains("complex128"),
        "{err}"
    );
    assert!(!dest.exists());
}

/// A header whose shape and dtype disagree with a tensor's byte range names that tensor (the
/// `safetensors` crate's own error does not).
#[test]
fn a_shape_that_does_not_match_its_bytes_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"ok":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"wrong":{"dtype":"F32","shape":[3],"data_offsets":[8,16]}}"#;
    let mut json = header.to_vec();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut raw = (json.len() as u64).to_le_bytes().to_vec();
    raw.extend_from_slice(&json);
    raw.extend_from_slice(&[0u8; 16]);
    let p = dir.path().join("shape.safetensors");
    std::fs::write(&p, raw).unwrap();
    let err = WeightFile::open(&p).err().expect("opened").to_string();
    assert!(err.contains("tensor 'wrong'"), "{err}");
    assert!(err.contains(&*p.to_string_lossy()), "{err}");
}

/// Our safetensors writer lays the file out byte for byte as the `safetensors` crate does.
#[test]
fn safetensors_output_is_the_file_the_safetensors_crate_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tensors();
    let fp = dir.path().join("a.flashpack");
    write_flashpack(&fp, &ts);
    let ours = dir.path().join("ours.safetensors");
    WeightFile::open(&fp)
        .unwrap()
        .to_safetensors(&ours)
        .unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = ts
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let shape = safetensors_shape(*dtype, shape).unwrap();
            let view = safetensors::tensor::TensorView::new(
                to_safetensors_dtype(*dtype).unwrap(),
                shape,
                bytes,
            )
            .unwrap();
            (name.clone(), view)
        })
        .collect();
    let theirs = safetensors::serialize(views, None).unwrap();
    assert!(std::fs::read(&ours).unwrap() == theirs);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 2, "temporary files left behind");
}
