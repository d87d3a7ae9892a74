//! Hand-built files (payload + footer JSON + u64 LE length + "FLASHPK\0") that break one rule of
//! the format each. `FlashFile::open` and `load` (lazy and eager, every I/O mode) must return an
//! error, never panic, and the error must start with the file's path, name the problem and, where
//! a tensor is at fault, name the tensor. Valid hand-built files are loaded first, so every
//! rejection below is caused by the one rule it breaks.

use std::path::{Path, PathBuf};

use flashpack::read::{is_flashpack_file, load, FlashFile, IoMode, LoadOptions};
use flashpack::Error;
use serde_json::{json, Value};

const MAGIC: &[u8; 8] = b"FLASHPK\0";

struct Scratch {
    dir: tempfile::TempDir,
    n: std::cell::Cell<usize>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
            n: std::cell::Cell::new(0),
        }
    }

    fn raw(&self, bytes: &[u8]) -> PathBuf {
        let k = self.n.get();
        self.n.set(k + 1);
        let p = self.dir.path().join(format!("case{k}.flashpack"));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// `payload`, then `json`, then a u64 LE length (`json.len()` unless given) and the magic.
    fn file(&self, payload: &[u8], json: &[u8], json_len: Option<u64>) -> PathBuf {
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(json);
        bytes.extend_from_slice(&json_len.unwrap_or(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(MAGIC);
        self.raw(&bytes)
    }

    fn json_file(&self, payload: &[u8], footer: &Value) -> PathBuf {
        self.file(payload, &serde_json::to_vec(footer).unwrap(), None)
    }
}

fn load_modes() -> Vec<(&'static str, LoadOptions)> {
    let eager = |io| LoadOptions {
        eager: true,
        io,
        chunk_bytes: 4096,
        threads: 2,
        ..Default::default()
    };
    vec![
        ("lazy", LoadOptions::default()),
        ("eager buffered", eager(IoMode::Buffered)),
        ("eager direct", eager(IoMode::Direct)),
        ("eager auto", eager(IoMode::Auto)),
    ]
}

/// Every way of opening `path` fails with a message that starts with the path and contains every
/// needle (case-insensitive).
#[track_caller]
fn assert_rejected(path: &Path, needles: &[&str]) -> String {
    let check = |what: &str, e: Error| -> String {
        let msg = e.to_string();
        let prefix = format!("{}: ", path.display());
        assert!(
            msg.starts_with(&prefix),
            "{what}: error does not start with the path: {msg}"
        );
        assert!(
            e.is_data_error(),
            "{what}: a format problem is reported as an I/O error: {msg}"
        );
        let lower = msg.to_lowercase();
        for n in needles {
            assert!(
                lower.contains(&n.to_lowercase()),
                "{what}: error does not mention {n:?}: {msg}"
            );
        }
        msg
    };
    let msg = match FlashFile::open(path) {
        Ok(f) => panic!("open accepted a bad file: {:?}", f.footer()),
        Err(e) => check("open", e),
    };
    for (what, opts) in load_modes() {
        match load(path, &opts) {
            Ok(l) => panic!("{what} load accepted a bad file: {:?}", l.footer()),
            Err(e) => {
                check(what, e);
            }
        }
    }
    assert!(!is_flashpack_file(path));
    msg
}

// ---------------------------------------------------------------------------------------------
// Valid base files
// ---------------------------------------------------------------------------------------------

/// 152-byte v4 payload: "w" f32 [4,4] at 0 (64 bytes), "ids" i64 [3] in a block at 128 (24 bytes).
fn v4_payload() -> Vec<u8> {
    let mut p = vec![0u8; 152];
    for (i, b) in p[..64].iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    for (i, b) in p[128..152].iter_mut().enumerate() {
        *b = 200 + i as u8;
    }
    p
}

fn v4_footer() -> Value {
    json!({
        "format": "flashpack_v4",
        "align_bytes": 128,
        "total_payload_bytes": 152,
        "total_elems": 19,
        "macroblocks": [
            {"dtype": "float32", "offset_bytes": 0, "length_bytes": 64, "length_elems": 16},
            {"dtype": "int64", "offset_bytes": 128, "length_bytes": 24, "length_elems": 3}
        ],
        "index": [
            {"name": "w", "shape": [4, 4], "offset": 0, "length": 16, "macroblock": 0},
            {"name": "ids", "shape": [3], "offset": 0, "length": 3, "macroblock": 1}
        ]
    })
}

/// 140-byte v3 payload: "w" f32 [2,2] at element 0, "b" f32 [3] at element 32 (128 / 4).
fn v3_payload() -> Vec<u8> {
    let mut p = vec![0u8; 140];
    for (i, b) in p[..16].iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    for (i, b) in p[128..140].iter_mut().enumerate() {
        *b = 100 + i as u8;
    }
    p
}

fn v3_footer() -> Value {
    json!({
        "format": "flashpack_v3",
        "target_dtype": "float32",
        "align_bytes": 128,
        "total_elems": 35,
        "index": [
            {"name": "w", "shape": [2, 2], "offset": 0, "length": 4},
            {"name": "b", "shape": [3], "offset": 32, "length": 3}
        ]
    })
}

fn v4_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = v4_footer();
    edit(&mut v);
    v
}

fn v3_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = v3_footer();
    edit(&mut v);
    v
}

#[test]
fn hand_built_valid_files_load_in_every_mode() {
    let s = Scratch::new();
    let v4 = s.json_file(&v4_payload(), &v4_footer());
    let v3 = s.json_file(&v3_payload(), &v3_footer());
    for (path, payload, tensors) in [
        (&v4, v4_payload(), vec![("w", 0..64), ("ids", 128..152)]),
        (&v3, v3_payload(), vec![("w", 0..16), ("b", 128..140)]),
    ] {
        let f = FlashFile::open(path).unwrap();
        assert_eq!(f.payload_len(), payload.len() as u64);
        assert!(is_flashpack_file(path));
        for (what, opts) in load_modes() {
            let l = load(path, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(l.payload(), &payload[..], "{what}");
            for (name, range) in &tensors {
                assert_eq!(
                    l.tensor_bytes(name).unwrap(),
                    &payload[range.clone()],
                    "{what} {name}"
                );
            }
            assert!(l.tensor_bytes("missing").is_none());
        }
    }
}

#[test]
fn original_package_files_with_extra_keys_and_no_optional_keys_load() {
    let s = Scratch::new();
    // No total_payload_bytes / total_elems, unknown keys at every level (readers ignore them).
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            let m = v.as_object_mut().unwrap();
            m.remove("total_payload_bytes");
            m.remove("total_elems");
            m.insert(
                "x_integrity".into(),
                json!({"algorithm": "xxh64", "values": []}),
            );
            v["index"][0]["requires_grad"] = json!(true);
            v["macroblocks"][1]["note"] = json!("x");
        }),
    );
    let l = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(l.tensor_bytes("ids").unwrap(), &v4_payload()[128..152]);
    assert!(l.footer().extra().contains_key("x_integrity"));
    assert!(l.footer().checksums().is_none());
}

#[test]
fn a_file_with_an_empty_payload_loads() {
    let s = Scratch::new();
    let footer = json!({
        "format": "flashpack_v3", "target_dtype": "float32", "align_bytes": 128, "total_elems": 0,
        "index": [{"name": "empty", "shape": [0, 5], "offset": 0, "length": 0}]
    });
    let p = s.json_file(&[], &footer);
    for (what, opts) in load_modes() {
        let l = load(&p, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(l.payload_len(), 0);
        assert_eq!(l.tensor_bytes("empty").unwrap(), &[] as &[u8], "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// The trailer: magic, size, JSON length
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_magic_is_rejected() {
    let s = Scratch::new();
    let good = std::fs::read(s.json_file(&v4_payload(), &v4_footer())).unwrap();
    for k in 1..=8 {
        let mut bytes = good.clone();
        let i = bytes.len() - k;
        bytes[i] ^= 0x20;
        assert_rejected(&s.raw(&bytes), &["bad magic", "not a FlashPack file"]);
    }
    assert_rejected(&s.raw(&[0u8; 16]), &["bad magic"]);
    assert_rejected(&s.raw(&[0u8; 4096]), &["bad magic"]);
    assert_rejected(&s.raw(b"FLASHPK\0FLASHPK\0FLASHPK"), &["bad magic"]);
    // Some other format entirely (a safetensors-like header).
    let mut st = 8u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}      ");
    assert_rejected(&s.raw(&st), &["bad magic"]);
}

#[test]
fn files_smaller_than_the_trailer_are_rejected() {
    let s = Scratch::new();
    for n in [0usize, 1, 7, 8, 15] {
        let mut bytes = vec![0u8; n];
        // Even when the file ends with the magic, it cannot hold a length too.
        if n >= 8 {
            bytes[n - 8..].copy_from_slice(MAGIC);
        }
        assert_rejected(&s.raw(&bytes), &["too small", &format!("({n} bytes)")]);
    }
}

#[test]
fn truncated_files_are_rejected() {
    let s = Scratch::new();
    let good = std::fs::read(s.json_file(&v4_payload(), &v4_footer())).unwrap();
    // Last bytes cut: the magic is gone (or the file is too small).
    for cut in [1, 2, 8, 9, 15, 16, 17, 100, good.len() - 16, good.len() - 1] {
        let p = s.raw(&good[..good.len() - cut]);
        let msg = assert_rejected(&p, &[]);
        let lower = msg.to_lowercase();
        assert!(
            lower.contains("bad magic") || lower.contains("too small"),
            "{msg}"
        );
    }
    // The start of the payload cut (e.g. a partial copy that kept the tail): blocks no longer fit.
    for cut in [1, 24, 64, 151] {
        let p = s.raw(&good[cut..]);
        assert_rejected(&p, &["macroblock", "past the end", "truncated"]);
    }
    // A v3 file whose payload lost its last bytes.
    let p = s.json_file(&v3_payload()[..139], &v3_footer());
    assert_rejected(&p, &["macroblock 0", "past the end", "139-byte payload"]);
}

#[test]
fn json_length_larger_than_the_file_is_rejected() {
    let s = Scratch::new();
    let json = serde_json::to_vec(&v4_footer()).unwrap();
    let room = (v4_payload().len() + json.len()) as u64;
    for len in [
        room + 1,
        room + 16,
        1 << 32,
        1 << 63,
        u64::MAX - 15,
        u64::MAX - 7,
        u64::MAX,
    ] {
        let p = s.file(&v4_payload(), &json, Some(len));
        assert_rejected(&p, &["footer JSON length", &len.to_string(), "larger than"]);
    }
    // A bare trailer claiming one byte of JSON.
    let mut bytes = 1u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(MAGIC);
    assert_rejected(&s.raw(&bytes), &["larger than the 0 bytes"]);
}

#[test]
fn wrong_json_length_within_the_file_is_rejected() {
    let s = Scratch::new();
    let json = serde_json::to_vec(&v4_footer()).unwrap();
    let n = json.len() as u64;
    // Too short: the JSON is cut; too long: payload bytes are read as JSON.
    for len in [0, 1, n - 1, n + 1, n + 152] {
        let p = s.file(&v4_payload(), &json, Some(len));
        assert_rejected(&p, &["JSON"]);
    }
}

// ---------------------------------------------------------------------------------------------
// The JSON itself
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_and_invalid_json_are_rejected() {
    let s = Scratch::new();
    let good = serde_json::to_vec(&v4_footer()).unwrap();
    // Invalid UTF-8 inside a name and as a bare byte.
    let mut bad = good.clone();
    let i = bad.windows(3).position(|w| w == b"ids").unwrap();
    bad[i] = 0xff;
    assert_rejected(
        &s.file(&v4_payload(), &bad, None),
        &["not valid UTF-8 JSON"],
    );
    let mut bad = good.clone();
    bad.insert(1, 0xc3);
    assert_rejected(
        &s.file(&v4_payload(), &bad, None),
        &["not valid UTF-8 JSON"],
    );
    // Invalid JSON of many kinds.
    let cases: &[&[u8]] = &[
        b"",
        b"{",
        b"}",
        b"{\"format\":\"flashpack_v4\"",
        b"{\"format\":\"flashpack_v4\",}",
        b"not json at all",
        b"{\"format\":\"flashpack_v3\"} trailing",
        b"{\"format\":\"flashpack_v3\",\"target_dtype\":\"float32\",\"total_elems\":1e400,\"index\":[]}",
        b"{\"format\":\"\\ud800\"}",
        b"\xef\xbb\xbf{}", // a byte-order mark
    ];
    for c in cases {
        assert_rejected(&s.file(&v4_payload(), c, None), &["not valid UTF-8 JSON"]);
    }
    // Valid JSON that is not an object.
    for c in [&b"[]"[..], b"null", b"42", b"\"flashpack_v4\""] {
        assert_rejected(&s.file(&v4_payload(), c, None), &["not a JSON object"]);
    }
}

#[test]
fn unknown_or_missing_format_is_rejected() {
    let s = Scratch::new();
    for f in [
        "flashpack_v5",
        "flashpack_v2",
        "FLASHPACK_V4",
        "",
        "safetensors",
    ] {
        let p = s.json_file(&v4_payload(), &v4_with(|v| v["format"] = json!(f)));
        assert_rejected(&p, &["unknown format", &format!("{f:?}")]);
    }
    let p = s.json_file(&v4_payload(), &v4_with(|v| v["format"] = json!(4)));
    assert_rejected(&p, &["unknown format"]);
    let p = s.json_file(&v4_payload(), &v4_with(|v| v["format"] = json!(null)));
    assert_rejected(&p, &["unknown format"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v.as_object_mut().unwrap().remove("format");
        }),
    );
    assert_rejected(&p, &["missing", "format"]);
}

#[test]
fn missing_or_malformed_keys_are_rejected() {
    let s = Scratch::new();
    let remove = |key: &'static str| {
        v4_with(move |v| {
            v.as_object_mut().unwrap().remove(key);
        })
    };
    assert_rejected(
        &s.json_file(&v4_payload(), &remove("macroblocks")),
        &["macroblocks"],
    );
    assert_rejected(&s.json_file(&v4_payload(), &remove("index")), &["index"]);
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| {
            v.as_object_mut().unwrap().remove("target_dtype");
        }),
    );
    assert_rejected(&p, &["target_dtype"]);
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| {
            v.as_object_mut().unwrap().remove("total_elems");
        }),
    );
    assert_rejected(&p, &["total_elems"]);
    assert_rejected(
        &s.json_file(&v4_payload(), &v4_with(|v| v["macroblocks"] = json!([]))),
        &["macroblocks", "empty"],
    );
    assert_rejected(
        &s.json_file(&v4_payload(), &v4_with(|v| v["macroblocks"] = json!({}))),
        &["macroblocks", "not a list"],
    );
    assert_rejected(
        &s.json_file(&v4_payload(), &v4_with(|v| v["macroblocks"][1] = json!(5))),
        &["macroblock 1"],
    );
    assert_rejected(
        &s.json_file(&v4_payload(), &v4_with(|v| v["index"] = json!({"w": 1}))),
        &["index", "not a list"],
    );
    assert_rejected(
        &s.json_file(&v4_payload(), &v4_with(|v| v["index"][1] = json!("ids"))),
        &["index entry 1"],
    );
    assert_rejected(
        &s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["name"] = json!(7)),
        ),
        &["index entry 1", "name"],
    );
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["index"][1].as_object_mut().unwrap().remove("name");
        }),
    );
    assert_rejected(&p, &["index entry 1", "name"]);
    for key in ["shape", "offset", "length"] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| {
                v["index"][1].as_object_mut().unwrap().remove(key);
            }),
        );
        assert_rejected(&p, &["'ids'", key]);
    }
    for key in ["dtype", "offset_bytes", "length_bytes", "length_elems"] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| {
                v["macroblocks"][1].as_object_mut().unwrap().remove(key);
            }),
        );
        assert_rejected(&p, &["macroblock 1", key]);
    }
    assert_rejected(
        &s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["shape"] = json!(3)),
        ),
        &["'ids'", "shape"],
    );
    assert_rejected(
        &s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["shape"] = json!(["3"])),
        ),
        &["'ids'", "shape"],
    );
    assert_rejected(
        &s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["offset"] = json!("0")),
        ),
        &["'ids'", "offset"],
    );
    assert_rejected(
        &s.json_file(&v4_payload(), &v4_with(|v| v["align_bytes"] = json!("128"))),
        &["align_bytes"],
    );
}

#[test]
fn unknown_dtypes_are_rejected() {
    let s = Scratch::new();
    for d in [
        "float4_e2m1fn_x3",
        "float6_e2m3fn",
        "torch.float32",
        "Float32",
        "fp32",
        "",
    ] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| v["macroblocks"][1]["dtype"] = json!(d)),
        );
        assert_rejected(&p, &["unknown dtype", &format!("{d:?}")]);
        let p = s.json_file(&v3_payload(), &v3_with(|v| v["target_dtype"] = json!(d)));
        assert_rejected(&p, &["unknown dtype", &format!("{d:?}")]);
    }
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["macroblocks"][0]["dtype"] = json!(4)),
    );
    assert_rejected(&p, &["unknown dtype"]);
    let p = s.json_file(&v3_payload(), &v3_with(|v| v["target_dtype"] = json!(null)));
    assert_rejected(&p, &["dtype"]);
}

// ---------------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------------

#[test]
fn blocks_past_the_payload_end_are_rejected() {
    let s = Scratch::new();
    // Block 1 ends at 160 > 152.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["macroblocks"][1]["length_bytes"] = json!(32);
            v["macroblocks"][1]["length_elems"] = json!(4);
            v["total_elems"] = json!(20);
        }),
    );
    assert_rejected(&p, &["macroblock 1", "past the end", "152-byte payload"]);
    // Block 1 starts past the end.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["macroblocks"][1]["offset_bytes"] = json!(256)),
    );
    assert_rejected(&p, &["macroblock 1", "past the end"]);
    // v3: total_elems larger than the payload.
    let p = s.json_file(&v3_payload(), &v3_with(|v| v["total_elems"] = json!(36)));
    assert_rejected(&p, &["macroblock 0", "past the end"]);
}

#[test]
fn inconsistent_block_sizes_and_totals_are_rejected() {
    let s = Scratch::new();
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["macroblocks"][1]["length_bytes"] = json!(16)),
    );
    assert_rejected(&p, &["macroblock 1", "length_bytes 16", "int64"]);
    let p = s.json_file(&v4_payload(), &v4_with(|v| v["total_elems"] = json!(18)));
    assert_rejected(&p, &["total_elems 18"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["total_payload_bytes"] = json!(153)),
    );
    assert_rejected(&p, &["total_payload_bytes 153"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["total_payload_bytes"] = json!(100)),
    );
    assert_rejected(&p, &["total_payload_bytes 100"]);
}

#[test]
fn overlapping_blocks_are_rejected() {
    let s = Scratch::new();
    // An int8 block at byte 32 overlaps the float32 block [0, 64).
    let payload = vec![1u8; 152];
    let p = s.json_file(&payload, &v4_with(|v| {
        v["macroblocks"][1] = json!({"dtype": "int8", "offset_bytes": 32, "length_bytes": 24, "length_elems": 24});
        v["index"][1] = json!({"name": "ids", "shape": [24], "offset": 0, "length": 24, "macroblock": 1});
        v["total_elems"] = json!(40);
        v["align_bytes"] = json!(0);
    }));
    assert_rejected(&p, &["macroblocks 0 and 1 overlap"]);
    // Two blocks at the same offset, listed out of order.
    let p = s.json_file(
        &payload,
        &v4_with(|v| {
            v["macroblocks"][0]["offset_bytes"] = json!(128);
            v["macroblocks"][0]["length_bytes"] = json!(16);
            v["macroblocks"][0]["length_elems"] = json!(4);
            v["index"][0] =
                json!({"name": "w", "shape": [4], "offset": 0, "length": 4, "macroblock": 0});
            v["total_elems"] = json!(7);
        }),
    );
    assert_rejected(&p, &["overlap"]);
    // A block that ends exactly where the next begins is fine (and the payload ends with it).
    let p = s.json_file(&payload[..88], &v4_with(|v| {
        v["macroblocks"][1] = json!({"dtype": "int64", "offset_bytes": 64, "length_bytes": 24, "length_elems": 3});
        v["align_bytes"] = json!(64);
        v["total_payload_bytes"] = json!(88);
    }));
    FlashFile::open(&p).unwrap();
}

#[test]
fn misaligned_blocks_are_rejected() {
    let s = Scratch::new();
    // int64 block at byte 136: a multiple of 8 but not of lcm(128, 8) = 128.
    let payload = vec![0u8; 160];
    let p = s.json_file(
        &payload,
        &v4_with(|v| {
            v["macroblocks"][1]["offset_bytes"] = json!(136);
            v["total_payload_bytes"] = json!(160);
        }),
    );
    assert_rejected(&p, &["macroblock 1", "offset 136", "alignment 128"]);
    // Without alignment, a block must still be element-aligned.
    let p = s.json_file(
        &payload,
        &v4_with(|v| {
            v["macroblocks"][1]["offset_bytes"] = json!(68);
            v["align_bytes"] = json!(0);
        }),
    );
    assert_rejected(&p, &["macroblock 1", "offset 68", "alignment 8"]);
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[test]
fn record_block_index_out_of_range_is_rejected() {
    let s = Scratch::new();
    for (b, needle) in [
        (json!(2), "macroblock 2 does not exist"),
        (json!(u64::MAX), "does not exist"),
    ] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["macroblock"] = b.clone()),
        );
        assert_rejected(&p, &["'ids'", needle]);
    }
    for b in [json!(-1), json!(1.0), json!("1"), json!([1])] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["macroblock"] = b.clone()),
        );
        assert_rejected(&p, &["'ids'", "macroblock"]);
    }
    // A v3 file has one block only.
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| v["index"][1]["macroblock"] = json!(1)),
    );
    assert_rejected(&p, &["'b'", "macroblock 1 does not exist"]);
}

#[test]
fn records_past_their_block_are_rejected() {
    let s = Scratch::new();
    // ids: elements 16..19 of a 3-element block (aligned, so only the bound is wrong).
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["index"][1]["offset"] = json!(16)),
    );
    assert_rejected(&p, &["'ids'", "outside macroblock 1"]);
    // w: shape [4,5] = 20 elements in a 16-element block.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["index"][0]["shape"] = json!([4, 5]);
            v["index"][0]["length"] = json!(20);
        }),
    );
    assert_rejected(&p, &["'w'", "outside macroblock 0"]);
    // A record pointing into another dtype's block past its end.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["index"][0]["macroblock"] = json!(1)),
    );
    assert_rejected(&p, &["'w'", "outside macroblock 1"]);
}

#[test]
fn shape_that_does_not_match_length_is_rejected() {
    let s = Scratch::new();
    for shape in [json!([4, 3]), json!([16, 0]), json!([]), json!([17])] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][0]["shape"] = shape.clone()),
        );
        assert_rejected(&p, &["'w'", "shape", "length 16"]);
    }
    // A 0-dim tensor holds exactly one element.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["index"][1]["shape"] = json!([]);
            v["index"][1]["length"] = json!(3);
        }),
    );
    assert_rejected(&p, &["'ids'", "shape []"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["index"][1]["shape"] = json!([]);
            v["index"][1]["length"] = json!(1);
        }),
    );
    let f = FlashFile::open(&p).unwrap();
    assert_eq!(f.footer().record("ids").unwrap().shape(), Vec::<u64>::new());
}

#[test]
fn duplicate_names_are_rejected() {
    let s = Scratch::new();
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["index"][1]["name"] = json!("w")),
    );
    assert_rejected(&p, &["'w'", "more than once"]);
    // Exact duplicate records (a tie written twice by mistake) too.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            let r = v["index"][0].clone();
            v["index"].as_array_mut().unwrap().push(r);
        }),
    );
    assert_rejected(&p, &["'w'", "more than once"]);
    // Unicode names are compared exactly.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["index"][0]["name"] = json!("名前");
            v["index"][1]["name"] = json!("名前");
        }),
    );
    assert_rejected(&p, &["'名前'", "more than once"]);
    // Two names sharing one offset (tied weights) are fine.
    let p = s.json_file(&v4_payload(), &v4_with(|v| {
        v["index"].as_array_mut().unwrap().push(json!({"name": "w_tied", "shape": [16], "offset": 0, "length": 16, "macroblock": 0}));
    }));
    let l = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(l.tensor_bytes("w_tied"), l.tensor_bytes("w"));
}

#[test]
fn misaligned_record_offsets_are_rejected() {
    let s = Scratch::new();
    // float32 with align_bytes 128: element offsets must be multiples of 32.
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| v["index"][1]["offset"] = json!(31)),
    );
    assert_rejected(&p, &["'b'", "offset 31", "32 elements"]);
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| {
            v["index"][1]["offset"] = json!(4);
            v["total_elems"] = json!(35);
        }),
    );
    assert_rejected(&p, &["'b'", "not aligned"]);
    // int64 with align_bytes 128: multiples of 16.
    let payload = vec![0u8; 128 + 8 * 20];
    let p = s.json_file(
        &payload,
        &v4_with(|v| {
            v["macroblocks"][1]["length_bytes"] = json!(160);
            v["macroblocks"][1]["length_elems"] = json!(20);
            v["total_elems"] = json!(36);
            v["total_payload_bytes"] = json!(288);
            v["index"][1]["offset"] = json!(8);
        }),
    );
    assert_rejected(&p, &["'ids'", "not aligned to 16"]);
    // The same file with offset 16 is valid.
    let p = s.json_file(
        &payload,
        &v4_with(|v| {
            v["macroblocks"][1]["length_bytes"] = json!(160);
            v["macroblocks"][1]["length_elems"] = json!(20);
            v["total_elems"] = json!(36);
            v["total_payload_bytes"] = json!(288);
            v["index"][1]["offset"] = json!(16);
        }),
    );
    FlashFile::open(&p).unwrap();
    // align_bytes 0 means no alignment at all.
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| {
            v["align_bytes"] = json!(0);
            v["index"][1]["offset"] = json!(31);
        }),
    );
    FlashFile::open(&p).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Numbers that overflow
// ---------------------------------------------------------------------------------------------

#[test]
fn overflowing_numbers_are_rejected() {
    let s = Scratch::new();
    let max = u64::MAX;
    // Record offset + length overflows.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["index"][1]["offset"] = json!(max)),
    );
    assert_rejected(&p, &["'ids'", "outside macroblock 1"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["index"][1]["offset"] = json!(max - 15)),
    );
    assert_rejected(&p, &["'ids'"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["index"][1]["shape"] = json!([max]);
            v["index"][1]["length"] = json!(max);
            v["index"][1]["offset"] = json!(16);
        }),
    );
    assert_rejected(&p, &["'ids'", "outside macroblock 1"]);
    // Shape product overflows.
    for shape in [
        json!([max, 2]),
        json!([1u64 << 32, 1u64 << 32]),
        json!([max, max, 0]),
    ] {
        let p = s.json_file(
            &v4_payload(),
            &v4_with(|v| v["index"][1]["shape"] = shape.clone()),
        );
        assert_rejected(&p, &["'ids'", "shape"]);
    }
    // v3 total_elems x element size overflows.
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| v["total_elems"] = json!(max / 2)),
    );
    assert_rejected(&p, &["macroblock 0", "overflows"]);
    let p = s.json_file(
        &v3_payload(),
        &v3_with(|v| v["total_elems"] = json!(max / 4)),
    );
    assert_rejected(&p, &["macroblock 0"]);
    // Block offset + length overflows, length_elems x size overflows.
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["macroblocks"][1]["offset_bytes"] = json!(max - 7)),
    );
    assert_rejected(&p, &["macroblock 1", "past the end"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["macroblocks"][1]["length_elems"] = json!(max);
            v["macroblocks"][1]["length_bytes"] = json!(max);
        }),
    );
    assert_rejected(&p, &["macroblock 1"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| {
            v["macroblocks"][1]["length_elems"] = json!(max / 8);
            v["macroblocks"][1]["length_bytes"] = json!(max / 8 * 8);
            v["macroblocks"][1]["offset_bytes"] = json!(128);
        }),
    );
    assert_rejected(&p, &["macroblock 1", "past the end"]);
    // Totals at the limit.
    let p = s.json_file(&v4_payload(), &v4_with(|v| v["total_elems"] = json!(max)));
    assert_rejected(&p, &["total_elems"]);
    let p = s.json_file(
        &v4_payload(),
        &v4_with(|v| v["total_payload_bytes"] = json!(max)),
    );
    assert_rejected(&p, &["total_payload_bytes"]);
}

#[test]
fn numbers_outside_u64_are_rejected() {
    let s = Scratch::new();
    let good = String::from_utf8(serde_json::to_vec(&v4_footer()).unwrap()).unwrap();
    // serde_json writes keys sorted here; replace the ids record's offset text.
    let rec = r#"{"length":3,"macroblock":1,"name":"ids","offset":0,"shape":[3]}"#;
    assert!(good.contains(rec), "{good}");
    for bad in [
        "18446744073709551616",
        "-1",
        "-0.5",
        "1.0",
        "1e3",
        "340282366920938463463374607431768211456",
        "1e400",
    ] {
        let json = good.replace(
            rec,
            &rec.replace(r#""offset":0"#, &format!(r#""offset":{bad}"#)),
        );
        let p = s.file(&v4_payload(), json.as_bytes(), None);
        // 1e400 fails in the JSON parser, the others as a non-integer offset of 'ids'.
        let msg = assert_rejected(&p, &[]);
        assert!(msg.contains("'ids'") || msg.contains("JSON"), "{msg}");
        let json = good.replace(r#""align_bytes":128"#, &format!(r#""align_bytes":{bad}"#));
        assert_rejected(&s.file(&v4_payload(), json.as_bytes(), None), &[]);
        let json = good.replace(r#""macroblock":1"#, &format!(r#""macroblock":{bad}"#));
        assert_rejected(&s.file(&v4_payload(), json.as_bytes(), None), &[]);
        let json = good.replace(r#""shape":[3]"#, &format!(r#""shape":[{bad}]"#));
        assert_rejected(&s.file(&v4_payload(), json.as_bytes(), None), &[]);
    }
}

/// Regression: a footer with a huge odd `align_bytes` used to overflow the block alignment and
/// crash the reader; it must be rejected with an error naming the alignment.
#[test]
fn regression_huge_align_bytes_crashes_the_reader() {
    let s = Scratch::new();
    for align in [u64::MAX, u64::MAX - 2, (1u64 << 63) + 1] {
        let p = s.json_file(&v4_payload(), &v4_with(|v| v["align_bytes"] = json!(align)));
        let path = p.clone();
        let r = std::panic::catch_unwind(move || FlashFile::open(&path).map(|_| ()));
        assert!(
            matches!(r, Ok(Err(_))),
            "align_bytes {align}: open must return an error, got {r:?}"
        );
        assert_rejected(&p, &["align"]);
    }
}

#[test]
fn io_errors_start_with_the_path_too() {
    let s = Scratch::new();
    let missing = s.dir.path().join("does-not-exist.flashpack");
    let e = FlashFile::open(&missing).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
    assert!(!e.is_data_error());
    let e = load(
        &missing,
        &LoadOptions {
            eager: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
    // A directory is not a FlashPack file.
    assert!(FlashFile::open(s.dir.path()).is_err());
    assert!(load(s.dir.path(), &LoadOptions::default()).is_err());
}

/// `Footer::byte_range` takes any `Record`: one from another footer (with more blocks than this
/// one) gets the range its own footer gave it, never an index out of bounds.
#[test]
fn byte_range_of_a_record_from_another_footer_does_not_panic() {
    use flashpack::format::{plan, Order, TensorSpec};
    use flashpack::Dtype;
    let one = plan(
        &[TensorSpec::new("a", Dtype::F32, vec![4])],
        128,
        Order::AsGiven,
    )
    .unwrap()
    .footer;
    let two = plan(
        &[
            TensorSpec::new("a", Dtype::F32, vec![4]),
            TensorSpec::new("b", Dtype::I64, vec![2]),
        ],
        128,
        Order::AsGiven,
    )
    .unwrap()
    .footer;
    let b = two.record("b").unwrap();
    assert_eq!(two.byte_range(b), (128, 144));
    assert_eq!(one.byte_range(b), (128, 144));
}
