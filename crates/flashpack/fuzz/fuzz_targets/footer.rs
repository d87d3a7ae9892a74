//! Fuzz target `footer`: arbitrary bytes are a whole FlashPack file (so its tail is the trailer:
//! JSON, u64 LE length, magic). They go through exactly the path a reader uses:
//! `FlashFile::open` (size check, trailer parse, JSON length check, `Footer::decode` with the
//! payload length derived from the file, which runs the layout validation), then a lazy and an
//! eager load.
//!
//! Must never panic, abort, hang or allocate from an untrusted size (run with
//! `-malloc_limit_mb`: inputs are a few KiB, so any big allocation is a bug). Errors must name the
//! file and be data errors. Any accepted footer must satisfy the format's invariants, and
//! re-encoding it must decode to the same footer.
//!
//! Inputs stay whole files, but a custom mutator keeps most mutants' trailers consistent: it
//! mutates the footer JSON (as bytes, or structurally: a number pushed to an edge, a key dropped,
//! a list entry duplicated...) and rewrites the length field, so the fuzzer spends its time in
//! the decoder and the validation instead of on length mismatches. One mutation in four is a plain
//! byte-level mutation of the whole file, which exercises the trailer itself.
#![no_main]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use flashpack::format::{Footer, FormatVersion};
use flashpack::fuzzing::{block_alignment, element_alignment, numel};
use flashpack::read::{load, FlashFile, IoMode, LoadOptions};
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use serde_json::Value;

const MAGIC: &[u8; 8] = b"FLASHPK\0";

/// The scratch file: created on tmpfs when there is one and unlinked at once, so nothing is left
/// behind even when an input crashes the process; the reader opens it through `/proc/self/fd`.
fn scratch() -> &'static (File, PathBuf) {
    static SCRATCH: OnceLock<(File, PathBuf)> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let name = dir.join(format!("flashpack-fuzz-footer-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&name)
            .expect("cannot create the scratch file");
        std::fs::remove_file(&name).expect("cannot unlink the scratch file");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, path)
    })
}

fuzz_target!(|data: &[u8]| {
    let (file, path) = scratch();
    file.set_len(0).expect("truncate the scratch file");
    file.write_all_at(data, 0).expect("write the scratch file");

    // What the trailer says, computed here independently of the reader.
    let expected_json = (data.len() >= 16 && &data[data.len() - 8..] == MAGIC)
        .then(|| {
            let json_len =
                u64::from_le_bytes(data[data.len() - 16..data.len() - 8].try_into().unwrap());
            let room = (data.len() - 16) as u64;
            (json_len <= room).then(|| {
                let payload_len = room - json_len;
                (payload_len, &data[payload_len as usize..data.len() - 16])
            })
        })
        .flatten();

    let f = match FlashFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{}: ", path.display())),
                "error does not name the file: {msg}"
            );
            assert!(
                e.is_data_error(),
                "a bad file is reported as an OS error: {msg}"
            );
            // The JSON itself was rejected: the pure decoder must agree.
            if let Some((payload_len, json)) = expected_json {
                assert!(
                    Footer::decode(json, payload_len).is_err(),
                    "open rejected a file whose footer decodes: {msg}"
                );
            }
            return;
        }
    };
    let (payload_len, json) = expected_json.expect("open accepted a file with a bad trailer");
    assert_eq!(f.payload_len(), payload_len, "payload length");
    assert_eq!(f.file_len(), data.len() as u64, "file length");
    assert_eq!(f.footer_json(), json, "footer bytes");
    check_invariants(f.footer(), payload_len);

    // Re-encoding round-trips (extra keys included).
    let again = f.footer().encode().expect("a decoded footer encodes");
    match Footer::decode(&again, payload_len) {
        Ok(back) => {
            // Extra keys included, exactly (serde_json's float_roundtrip; the regression is in
            // tests/fuzz_regressions.rs).
            let (a, b) = (back.clone(), f.footer().clone());
            assert_eq!(a, b, "re-encoded footer decodes differently");
        }
        Err(e) => panic!(
            "re-encoded footer is rejected: {e}\n{}",
            String::from_utf8_lossy(&again)
        ),
    }

    // Every record's bytes are reachable in a lazy and an eager (buffered) load.
    for opts in [
        LoadOptions::default(),
        LoadOptions {
            eager: true,
            io: IoMode::Buffered,
            threads: 1,
            chunk_bytes: 4096,
            ..Default::default()
        },
    ] {
        let l = load(path, &opts).expect("a file that opens must load");
        assert_eq!(l.payload(), &data[..payload_len as usize], "payload bytes");
        for r in l.footer().records() {
            let (start, end) = l.footer().byte_range(r);
            let bytes = l
                .tensor_bytes(r.name())
                .expect("record bytes outside the payload");
            assert_eq!(bytes, &data[start as usize..end as usize]);
        }
    }
});

fn check_invariants(footer: &Footer, payload_len: u64) {
    assert!(!footer.blocks().is_empty(), "a footer with no blocks");
    if footer.version() == FormatVersion::V3 {
        assert_eq!(footer.blocks().len(), 1, "v3 has one block");
        assert_eq!(footer.blocks()[0].offset_bytes(), 0, "v3 block starts at 0");
    }
    let mut spans = Vec::new();
    for (i, b) in footer.blocks().iter().enumerate() {
        let size = b.dtype().size() as u64;
        assert_eq!(
            b.length_elems().checked_mul(size),
            Some(b.length_bytes()),
            "block {i}: bytes != elems x size"
        );
        let end = b
            .offset_bytes()
            .checked_add(b.length_bytes())
            .expect("block end overflows");
        assert!(
            end <= payload_len,
            "block {i} ends at {end} past the {payload_len}-byte payload"
        );
        let align = block_alignment(footer.align_bytes(), size).expect("block alignment overflows");
        assert_eq!(b.offset_bytes() % align, 0, "block {i} misaligned");
        if b.length_bytes() > 0 {
            spans.push((b.offset_bytes(), end, i));
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "blocks {} and {} overlap", w[0].2, w[1].2);
    }
    assert!(footer.payload_end() <= payload_len);
    let total: u64 = footer.blocks().iter().map(|b| b.length_elems()).sum();
    assert_eq!(footer.total_elems(), total);

    let mut names = std::collections::HashSet::new();
    for r in footer.records() {
        assert!(names.insert(r.name()), "duplicate name {:?}", r.name());
        let b = footer
            .blocks()
            .get(r.block())
            .expect("record names a missing block");
        assert_eq!(
            numel(r.shape()),
            Some(r.length()),
            "{:?}: shape/length",
            r.name()
        );
        let end = r
            .offset()
            .checked_add(r.length())
            .expect("record end overflows");
        assert!(
            end <= b.length_elems(),
            "{:?} lies outside its block",
            r.name()
        );
        let align = element_alignment(footer.align_bytes(), b.dtype().size() as u64);
        if align != 0 {
            assert_eq!(r.offset() % align, 0, "{:?} misaligned", r.name());
        }
        let (start, stop) = footer.byte_range(r);
        assert!(start >= b.offset_bytes() && stop <= b.end_bytes() && stop <= payload_len);
        assert!(footer.record(r.name()).is_some());
    }
}

// ---------------------------------------------------------------------------------------------
// The mutator
// ---------------------------------------------------------------------------------------------

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut rng = Rng(seed as u64 ^ 0x9e37_79b9_7f4a_7c15);
    let choice = rng.below(8);
    if choice >= 2 {
        if let Some(n) = mutate_footer(data, size, max_size, &mut rng, choice >= 5) {
            return n;
        }
    }
    fuzzer_mutate(data, size, max_size)
});

/// A tiny deterministic generator (the mutator must be reproducible from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutates the JSON of a file with a valid trailer and rewrites the trailer; `None` when the input
/// has no valid trailer or the mutant would not fit.
fn mutate_footer(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    rng: &mut Rng,
    structural: bool,
) -> Option<usize> {
    let file = &data[..size];
    if size < 16 || &file[size - 8..] != MAGIC {
        return None;
    }
    let json_len = u64::from_le_bytes(file[size - 16..size - 8].try_into().ok()?);
    let room = (size - 16) as u64;
    if json_len > room {
        return None;
    }
    let payload_len = (room - json_len) as usize;
    let max_json = max_size.checked_sub(payload_len + 16)?;
    let old = &file[payload_len..size - 16];
    let new = if structural {
        let mut v: Value = serde_json::from_slice(old).ok()?;
        mutate_value(&mut v, rng);
        serde_json::to_vec(&v).ok()?
    } else {
        let mut buf = old.to_vec();
        buf.resize(max_json.max(old.len()), 0);
        let n = fuzzer_mutate(&mut buf, old.len(), max_json);
        buf.truncate(n);
        buf
    };
    if new.len() > max_json {
        return None;
    }
    let end = payload_len + new.len();
    data[payload_len..end].copy_from_slice(&new);
    data[end..end + 8].copy_from_slice(&(new.len() as u64).to_le_bytes());
    data[end + 8..end + 16].copy_from_slice(MAGIC);
    Some(end + 16)
}

const EDGE_NUMBERS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    127,
    128,
    4095,
    4096,
    1 << 31,
    1 << 32,
    (1 << 32) + 1,
    1 << 60,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 16,
    u64::MAX - 1,
    u64::MAX,
];

const STRINGS: &[&str] = &[
    "flashpack_v3",
    "flashpack_v4",
    "float32",
    "bfloat16",
    "float8_e4m3fn",
    "int64",
    "bool",
    "complex128",
    "complex32",
    "uint8",
    "float4_e2m1fn_x2",
    "",
    "w",
    "xxh64",
];

/// Picks one node of the JSON tree (pre-order index) and changes it.
fn mutate_value(root: &mut Value, rng: &mut Rng) {
    let count = count_nodes(root);
    let target = rng.below(count);
    let mut seen = 0;
    visit(root, target, &mut seen, rng);
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn visit(v: &mut Value, target: usize, seen: &mut usize, rng: &mut Rng) -> bool {
    if *seen == target {
        change(v, rng);
        return true;
    }
    *seen += 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|c| visit(c, target, seen, rng)),
        Value::Object(o) => o.values_mut().any(|c| visit(c, target, seen, rng)),
        _ => false,
    }
}

fn change(v: &mut Value, rng: &mut Rng) {
    match v {
        Value::Number(n) => {
            let x = n.as_u64().unwrap_or(0);
            *v = match rng.below(6) {
                0 | 1 => Value::from(EDGE_NUMBERS[rng.below(EDGE_NUMBERS.len())]),
                2 => Value::from(x.wrapping_add(1 + rng.below(8) as u64)),
                3 => Value::from(x.wrapping_sub(1 + rng.below(8) as u64)),
                4 => Value::from(x.wrapping_mul(2 + rng.below(4) as u64)),
                _ => Value::from(-(rng.below(3) as i64) - 1),
            };
        }
        Value::String(_) => *v = Value::from(STRINGS[rng.below(STRINGS.len())]),
        Value::Array(a) => match rng.below(4) {
            0 if !a.is_empty() => {
                let i = rng.below(a.len());
                a.insert(i, a[i].clone());
            }
            1 if !a.is_empty() => {
                let i = rng.below(a.len());
                a.remove(i);
            }
            2 if a.len() > 1 => {
                let (i, j) = (rng.below(a.len()), rng.below(a.len()));
                a.swap(i, j);
            }
            _ => a.push(Value::from(EDGE_NUMBERS[rng.below(EDGE_NUMBERS.len())])),
        },
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            if keys.is_empty() {
                o.insert("format".into(), Value::from("flashpack_v4"));
                return;
            }
            let k = keys[rng.below(keys.len())].clone();
            match rng.below(3) {
                0 => {
                    o.remove(&k);
                }
                1 => {
                    o.insert(k, Value::Null);
                }
                _ => {
                    // Move a value under another key of the same object.
                    let other = keys[rng.below(keys.len())].clone();
                    if let Some(val) = o.get(&k).cloned() {
                        o.insert(other, val);
                    }
                }
            }
        }
        Value::Bool(b) => *b = !*b,
        Value::Null => *v = Value::from(0),
    }
}
