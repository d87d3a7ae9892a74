//! The CLI's modules import each other one way only: every `crate::` edge in the code (not the
//! comments) of `src/*.rs` runs from a higher layer to a lower one of the table below, so there
//! is no import circle (as the Python package's import-graph test holds for the package). A new
//! module must be given a layer here; an edge against the table, or any circle, fails with the
//! edges named.
use std::path::Path;

// The engine's import checker, shared (one scanner for both crates).
#[path = "../../flashpack/tests/layers/checker.rs"]
#[allow(dead_code)]
mod checker;
use checker::{cycles, layer_violations, read_crate};

/// Each module of `src/` and its layer: a module may use only modules of lower layers.
const LAYERS: &[(&str, u32)] = &[
    // Leaves: the error type, number/table formatting, byte sums, signals.
    ("error", 0),
    ("format", 1),
    ("touch", 1),
    ("interrupt", 1),
    // What the commands read: a local path or a URL.
    ("location", 2),
    // The parser (argument types come from the commands' modules below it).
    ("convert", 3),
    ("args", 4),
    // One module per subcommand.
    ("inspect", 3),
    ("metadata", 3),
    ("verify", 3),
    ("bench", 3),
    // Runs a parsed command line.
    ("run", 5),
    // The binary (the crate root, lib.rs, may name anything).
    ("main", 7),
];

#[test]
fn modules_import_one_way() {
    let c = read_crate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The scan must see the crate, or the checks below pass on nothing.
    assert!(c.files.len() > 10, "only {} files found", c.files.len());
    assert!(
        c.edges().len() > 20,
        "only {} imports found",
        c.edges().len()
    );
    let bad = layer_violations(&c, LAYERS);
    assert!(
        bad.is_empty(),
        "imports against the layer order:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_circle() {
    let c = read_crate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let circles = cycles(&c);
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}
