//! Payload checksums: written while packing, checked by `verify` and by verified loads (lazy,
//! eager, every I/O mode), and a flipped byte is reported with the tensor it hits.
use flashpack::os::Positioned;
use std::path::{Path, PathBuf};

use flashpack::format::{Checksums, CHECKSUMS_KEY};
use flashpack::read::{load, verify, FlashFile, IoMode, LoadOptions};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};
use serde_json::{json, Value};

/// Three tensors over ~5 chunks of 64 KiB, sizes not multiples of the chunk.
fn make(dir: &Path, opts: &PackOptions) -> (PathBuf, Vec<Vec<u8>>) {
    let data: Vec<Vec<u8>> = [100_003usize * 2, 77_777 * 4, 5]
        .iter()
        .enumerate()
        .map(|(t, &n)| (0..n).map(|i| (i * 31 + t * 7 + i / 251) as u8).collect())
        .collect();
    let entries = [
        PackEntry::new("emb", Dtype::BF16, vec![100_003], &data[0]),
        PackEntry::new("proj", Dtype::F32, vec![77_777], &data[1]),
        PackEntry::new("flags", Dtype::U8, vec![5], &data[2]),
    ];
    let path = dir.join("m.flashpack");
    pack(&path, &entries, opts).unwrap();
    (path, data)
}

fn small_chunks() -> PackOptions {
    PackOptions {
        chunk_bytes: 64 << 10,
        ..Default::default()
    }
}

fn load_modes() -> Vec<(&'static str, LoadOptions)> {
    let eager = |io, threads| LoadOptions {
        eager: true,
        io,
        threads,
        verify: true,
        ..Default::default()
    };
    vec![
        (
            "lazy",
            LoadOptions {
                verify: true,
                ..Default::default()
            },
        ),
        ("eager buffered", eager(IoMode::Buffered, 1)),
        ("eager direct", eager(IoMode::Direct, 3)),
        ("eager auto", eager(IoMode::Auto, 0)),
    ]
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn pack_writes_digests_of_the_payload_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make(dir.path(), &small_chunks());
    let f = FlashFile::open(&path).unwrap();
    let cs = f
        .footer()
        .checksums()
        .expect("checksums are written by default");
    assert_eq!(cs.algorithm, "xxh3-64");
    assert_eq!(cs.chunk_bytes, 64 << 10);
    let raw = std::fs::read(&path).unwrap();
    let payload = &raw[..f.payload_len() as usize];
    // Recomputed from the file's bytes (padding included), they agree.
    assert_eq!(cs, &Checksums::compute(payload, 64 << 10));
    assert_eq!(cs.digests.len() as u64, f.payload_len().div_ceil(64 << 10));
    // Stored as 16 hex digits each, after every other key.
    let footer: Value = serde_json::from_slice(f.footer_json()).unwrap();
    let text = String::from_utf8(f.footer_json().to_vec()).unwrap();
    let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
    assert!(at(CHECKSUMS_KEY) > at("index"), "{text}");
    assert!(text.ends_with("]}}"), "checksums come last: {text}");
    assert!(footer[CHECKSUMS_KEY]["digests"][0].as_str().unwrap().len() == 16);
    // The same tensors with the default chunk give the same payload and other digests.
    let (path2, _) = make(&dir.path().join("b"), &PackOptions::default());
    let f2 = FlashFile::open(&path2).unwrap();
    assert_eq!(f2.footer().checksums().unwrap().chunk_bytes, 4 << 20);
    assert_eq!(
        &std::fs::read(&path2).unwrap()[..f2.payload_len() as usize],
        payload
    );
}

#[test]
fn verified_loads_and_verify_pass_on_a_good_file_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = make(dir.path(), &small_chunks());
    for (what, opts) in load_modes() {
        let l = load(&path, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(l.tensor_bytes("emb").unwrap(), &data[0][..], "{what}");
        assert_eq!(l.tensor_bytes("flags").unwrap(), &data[2][..], "{what}");
        if opts.eager {
            // Reads went in whole checksum chunks.
            assert_eq!(
                l.report().io.direct_bytes + l.report().io.buffered_bytes,
                l.payload_len(),
                "{what}"
            );
        }
    }
    for io in [IoMode::Buffered, IoMode::Direct] {
        let r = verify(
            &path,
            &LoadOptions {
                io,
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.tensors, 3);
        assert_eq!(r.chunks_checked as u64, r.payload_len.div_ceil(64 << 10));
        assert_eq!(r.algorithm.as_deref(), Some("xxh3-64"));
    }
}

#[test]
fn a_flipped_byte_is_caught_and_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make(dir.path(), &small_chunks());
    let f = FlashFile::open(&path).unwrap();
    let proj = f.footer().record("proj").unwrap();
    let (start, end) = f.footer().byte_range(proj);
    drop(f);
    // In the middle of "proj", in a chunk that holds only "proj".
    let at = (start + end) / 2;
    flip_byte(&path, at);
    for (what, opts) in load_modes() {
        let err = load(&path, &opts).map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Format { .. }), "{what}: {err:?}");
        assert!(
            msg.contains("checksum mismatch") && msg.contains("'proj'"),
            "{what}: {msg}"
        );
        assert!(msg.contains("m.flashpack"), "{what}: {msg}");
        let chunk = at / (64 << 10) * (64 << 10);
        assert!(msg.contains(&format!("{chunk}..")), "{what}: {msg}");
    }
    let err = verify(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("'proj'"),
        "{err}"
    );
    // Without verification the load goes through: checking is opt-in.
    load(
        &path,
        &LoadOptions {
            eager: true,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn a_flip_in_padding_or_a_shared_chunk_is_caught_too() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make(dir.path(), &small_chunks());
    let f = FlashFile::open(&path).unwrap();
    let (_, emb_end) = f.footer().byte_range(f.footer().record("emb").unwrap());
    let (proj_start, _) = f.footer().byte_range(f.footer().record("proj").unwrap());
    drop(f);
    assert!(
        proj_start > emb_end,
        "there is alignment padding between the tensors"
    );
    flip_byte(&path, emb_end); // a padding byte
    let err = verify(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    // The chunk holds the end of "emb" and the start of "proj".
    assert!(err.contains("tensors 'emb', 'proj'"), "{err}");
}

#[test]
fn files_without_checksums_load_and_verify_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PackOptions {
        checksums: false,
        ..Default::default()
    };
    let (path, data) = make(dir.path(), &opts);
    let f = FlashFile::open(&path).unwrap();
    assert!(f.footer().checksums().is_none());
    assert!(!String::from_utf8_lossy(f.footer_json()).contains(CHECKSUMS_KEY));
    let r = verify(&path, &LoadOptions::default()).unwrap();
    assert_eq!((r.chunks_checked, r.algorithm), (0, None));
    let l = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(l.tensor_bytes("proj").unwrap(), &data[1][..]);
    for (what, opts) in load_modes() {
        let err = load(&path, &opts).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("no checksums to verify"), "{what}: {err}");
    }
}

/// Rewrites the footer of `path` with `edit` applied to its JSON.
fn rewrite_footer(path: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let f = FlashFile::open(path).unwrap();
    let raw = std::fs::read(path).unwrap();
    let mut footer: Value = serde_json::from_slice(f.footer_json()).unwrap();
    edit(&mut footer);
    let json = serde_json::to_vec(&footer).unwrap();
    let mut out = raw[..f.payload_len() as usize].to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(b"FLASHPK\0");
    let p = path.with_extension("edited");
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn malformed_checksum_keys_are_clear_errors_and_unknown_algorithms_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make(dir.path(), &small_chunks());
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                v[CHECKSUMS_KEY]["digests"]
                    .as_array_mut()
                    .unwrap()
                    .pop()
                    .map(|_| ())
                    .unwrap()
            }),
            "digests for a",
        ),
        (
            Box::new(|v| v[CHECKSUMS_KEY]["digests"][0] = json!("xyz")),
            "not 16 hex digits",
        ),
        (
            Box::new(|v| v[CHECKSUMS_KEY]["digests"][1] = json!(12345)),
            "not 16 hex digits",
        ),
        (
            Box::new(|v| v[CHECKSUMS_KEY]["chunk_bytes"] = json!(0)),
            "positive multiple of 4096",
        ),
        (
            Box::new(|v| v[CHECKSUMS_KEY]["chunk_bytes"] = json!(5000)),
            "positive multiple of 4096",
        ),
        (
            Box::new(|v| v[CHECKSUMS_KEY]["chunk_bytes"] = json!(-1)),
            "positive multiple of 4096",
        ),
        (
            Box::new(|v| v[CHECKSUMS_KEY] = json!([1, 2])),
            "not a JSON object",
        ),
        (
            Box::new(|v| {
                v[CHECKSUMS_KEY]
                    .as_object_mut()
                    .unwrap()
                    .remove("algorithm");
            }),
            "missing \"algorithm\"",
        ),
        // A crafted count far beyond the payload is refused before anything is allocated for it.
        (
            Box::new(|v| v[CHECKSUMS_KEY]["chunk_bytes"] = json!(4096u64 << 40)),
            "digests for a",
        ),
    ];
    for (i, (edit, want)) in cases.into_iter().enumerate() {
        let p = rewrite_footer(&path, edit);
        let err = FlashFile::open(&p).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("\"checksums\"") && err.contains(want),
            "case {i}: {err}"
        );
        assert!(err.contains("m.edited"), "case {i}: {err}");
    }
    let p = rewrite_footer(&path, |v| v[CHECKSUMS_KEY]["algorithm"] = json!("sha-512"));
    load(
        &p,
        &LoadOptions {
            eager: true,
            ..Default::default()
        },
    )
    .unwrap();
    let err = verify(&p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("\"sha-512\" is not supported"), "{err}");
}

#[test]
fn extra_keys_cannot_shadow_the_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PackOptions::default();
    opts.extra.insert(CHECKSUMS_KEY.into(), json!({}));
    let data = [0u8; 4];
    let err = pack(
        &dir.path().join("x.flashpack"),
        &[PackEntry::new("w", Dtype::F32, vec![1], &data)],
        &opts,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("checksums"), "{err}");
    let bad = PackOptions {
        chunk_bytes: 1000,
        ..Default::default()
    };
    let err = pack(
        &dir.path().join("y.flashpack"),
        &[PackEntry::new("w", Dtype::F32, vec![1], &data)],
        &bad,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("multiple of 4096"), "{err}");
    assert!(!dir.path().join("y.flashpack").exists());
}

#[test]
fn read_range_reads_any_part_and_verifies_grid_aligned_parts() {
    use flashpack::read::read_range;
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make(dir.path(), &small_chunks());
    let raw = std::fs::read(&path).unwrap();
    let f = FlashFile::open(&path).unwrap();
    let n = f.payload_len();
    for (start, len) in [
        (0u64, n),
        (1, 5000),
        (4096, 65536 * 2 + 3),
        (n - 7, 7),
        (n, 0),
    ] {
        for io in [IoMode::Buffered, IoMode::Direct] {
            let mut dst = vec![0u8; len as usize];
            let opts = LoadOptions {
                io,
                threads: 2,
                chunk_bytes: 8192,
                ..Default::default()
            };
            let r = read_range(&f, start, &mut dst, &opts).unwrap();
            assert_eq!(
                dst,
                raw[start as usize..(start + len) as usize],
                "{start}+{len} {io:?}"
            );
            assert_eq!(
                r.io.direct_bytes + r.io.buffered_bytes,
                len,
                "exactly the range is read"
            );
        }
    }
    let mut dst = vec![0u8; 16];
    let err = read_range(&f, n - 8, &mut dst, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside") && err.contains("m.flashpack"),
        "{err}"
    );
    // Verified: whole checksum chunks (the last one ends at the payload's end).
    let verified = LoadOptions {
        verify: true,
        ..Default::default()
    };
    let mut dst = vec![0u8; (n - 65536) as usize];
    read_range(&f, 65536, &mut dst, &verified).unwrap();
    let mut dst = vec![0u8; 1000];
    let err = read_range(&f, 65536, &mut dst, &verified)
        .unwrap_err()
        .to_string();
    assert!(err.contains("whole 65536-byte checksum chunks"), "{err}");
}
