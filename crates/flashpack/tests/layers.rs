//! The engine's layers run one way, and no two of its files import each other in a circle
//! (the checker: `tests/layers/checker.rs`, shared with the CLI's `tests/layers.rs`).
//!
//! The layers, lowest first (a module may import only modules in the rows above its own):
//!
//! | layer | modules | what it is |
//! |---|---|---|
//! | 0 format | `format` | the file formats as values: footer, layout, dtypes, checksums, safetensors header entries, `TensorInfo`; no I/O |
//! | 1 error | `error` | the one `Error` enum, and `RemoteError` (`error/remote.rs`) |
//! | 2 leaves | `os`, `cancel`, `progress`, `warning` | OS calls, cancellation, progress bars, warnings; independent of each other |
//! | 3 settings | `settings`, `remote` | environment settings and the reader policy (`IoMode`, hot/cold, threads, the pinned pool's bound); remote objects (HTTP(S), S3, Hub), pinned at open |
//! | 4 source | `source` | where every read's bytes come from: one `Source` over a local file or a remote object, opened once from a location; a weight file's index read through it |
//! | 5 sink | `sink` | where bytes go: host memory, pinned staging, a device |
//! | 6 read | `read` | plans and jobs: the reader pool from sources into sinks (a job reads any `read::job::JobFile`) |
//! | 7 write | `write` | the FlashPack writer |
//! | 8 weights | `weights` | one weight file (FlashPack or safetensors), local or remote |
//! | 9 checkpoint | `checkpoint` | a sharded checkpoint: its index and shards |
//! | 10 top | `convert`, `candle` | conversion between formats; the candle integration |
//!
use std::path::{Path, PathBuf};

#[path = "layers/checker.rs"]
mod checker;
use checker::{cycles, layer_violations, read_crate};

/// Top-level modules and their layer, lowest first (see the table above).
const LAYERS: &[(&str, u32)] = &[
    ("format", 0),
    ("error", 1),
    ("os", 2),
    ("cancel", 2),
    ("progress", 2),
    ("warning", 2),
    ("settings", 3),
    ("remote", 3),
    ("source", 4),
    ("sink", 5),
    ("read", 6),
    ("write", 7),
    ("weights", 8),
    ("checkpoint", 9),
    ("convert", 10),
    ("candle", 10),
];

fn main_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn engine_imports_run_down_the_layers() {
    let c = read_crate(&main_src());
    // The scan must see the crate, or the checks below pass on nothing.
    assert!(
        c.files.len() > 40,
        "only {} files found under src",
        c.files.len()
    );
    assert!(
        c.edges().len() > 100,
        "only {} imports found",
        c.edges().len()
    );
    let bad = layer_violations(&c, LAYERS);
    assert!(
        bad.is_empty(),
        "{} imports against the layer order:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn engine_has_no_import_circle() {
    let c = read_crate(&main_src());
    assert!(
        c.files.len() > 40,
        "only {} files found under src",
        c.files.len()
    );
    let circles = cycles(&c);
    assert!(
        circles.is_empty(),
        "{} import circles:\n{}",
        circles.len(),
        circles.join("\n")
    );
}

/// The checker itself finds an upward edge and a circle in a small crate written to disk.
#[test]
fn checker_finds_an_upward_import_and_a_circle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "pub mod format;\npub mod read;\n");
    write("format/mod.rs", "//! f\nmod a;\nmod b;\npub use a::A;\n");
    // format/a.rs and format/b.rs import each other; format/b.rs also reaches up into read.
    write("format/a.rs", "use super::b::B;\npub struct A;\n");
    write(
        "format/b.rs",
        "pub struct B;\nfn f() { let _ = crate::format::A; }\n// crate::read::Comment is not code\nfn g() { crate::read::load(); }\n#[cfg(test)]\nmod tests {\n    use crate::read::load;\n}\n",
    );
    write("read/mod.rs", "pub fn load() {}\n");
    let c = read_crate(src);
    let bad = layer_violations(&c, LAYERS);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("format/b.rs:4: `crate::read::load` -> read/mod.rs runs upwards"),
        "{}",
        bad[0]
    );
    let circles = cycles(&c);
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(
        circles[0].starts_with("circle of 2 files: format/a.rs, format/b.rs"),
        "{}",
        circles[0]
    );
}
