//! Inputs found by the fuzz targets (`make fuzz`, crates/flashpack/fuzz), kept as regression tests.
//!
//! Footer-target inputs are whole files under `tests/data/fuzz/footer/`; each goes through the
//! checks the target makes: opening never panics, an error names the file and is a data error, an
//! accepted footer re-encodes to itself and every record's bytes load. Planner-target inputs are
//! `arbitrary`-encoded, so they are written out here as the calls they decode to.
//!
//! Found so far:
//! - `extra-key-float-roundtrip.flashpack`: an extra footer key holding a number that is not a
//!   u64/i64 (here 92272036854771555807) comes back one ulp different after a re-encode, because
//!   serde_json parses floats approximately unless its `float_roundtrip` feature is enabled.
//! - `plan_chunks` overflows for a chunk size within 4 KiB of 2^64 (a panic that Python's
//!   `chunk_bytes` / `FLASHPACK_READ_CHUNK_BYTES` can trigger) and for ranges that end within one
//!   chunk of 2^64 (a panic in debug builds, an endless loop in release builds).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use flashpack::format::Footer;
use flashpack::read::{load, FlashFile, IoMode, LoadOptions};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;

fn footer_inputs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz/footer");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// The footer target's checks for one file; `Err` describes the first one that fails.
fn check_footer_input(path: &Path) -> Result<(), String> {
    let opened = catch_unwind(AssertUnwindSafe(|| FlashFile::open(path)))
        .map_err(|_| "FlashFile::open panicked".to_string())?;
    let f = match opened {
        Err(e) => {
            let msg = e.to_string();
            if !msg.starts_with(&format!("{}: ", path.display())) {
                return Err(format!("the error does not name the file: {msg}"));
            }
            if !e.is_data_error() {
                return Err(format!("a bad file is reported as an OS error: {msg}"));
            }
            return Ok(());
        }
        Ok(f) => f,
    };
    let again = f.footer().encode().unwrap();
    match Footer::decode(&again, f.payload_len()) {
        Ok(back) if &back == f.footer() => {}
        Ok(back) => {
            return Err(format!(
                "the re-encoded footer decodes differently:\n  read:    {:?}\n  re-read: {:?}",
                f.footer().extra(),
                back.extra()
            ))
        }
        Err(e) => return Err(format!("the re-encoded footer is rejected: {e}")),
    }
    for opts in [
        LoadOptions::default(),
        LoadOptions {
            eager: true,
            io: IoMode::Buffered,
            ..Default::default()
        },
    ] {
        let l = load(path, &opts).map_err(|e| format!("opens but does not load: {e}"))?;
        for r in l.footer().records() {
            if l.tensor_bytes(r.name()).is_none() {
                return Err(format!("record {:?} lies outside the payload", r.name()));
            }
        }
    }
    Ok(())
}

#[test]
fn footer_inputs_found_by_fuzzing() {
    let failures: Vec<String> = footer_inputs()
        .iter()
        .filter_map(|p| {
            check_footer_input(p)
                .err()
                .map(|e| format!("{}: {e}", p.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Found by the planner target: `Input { chunking: Chunking { chunk: Any(u64::MAX), .. }, .. }`.
/// Rounding the chunk size up to 4 KiB overflows for sizes within 4 KiB of 2^64 (a multiply
/// overflow in debug builds, a zero step and a division by zero in release builds). The size comes
/// from the caller: Python's `chunk_bytes` and `FLASHPACK_READ_CHUNK_BYTES` reach it.
#[test]
fn regression_plan_chunks_with_a_chunk_size_near_2_pow_64_does_not_panic() {
    // Through an eager load (plan_chunks itself: its unit tests in read/mod.rs).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.flashpack");
    let bytes = [1u8; 64];
    pack(
        &path,
        &[PackEntry::new("w", Dtype::F32, vec![16], &bytes)],
        &PackOptions::default(),
    )
    .unwrap();
    let opts = LoadOptions {
        eager: true,
        io: IoMode::Buffered,
        chunk_bytes: usize::MAX,
        ..Default::default()
    };
    let r = catch_unwind(|| load(&path, &opts).map(|l| l.tensor_bytes("w").map(<[u8]>::to_vec)));
    match r {
        Ok(Ok(w)) => assert_eq!(w.as_deref(), Some(&bytes[..])),
        Ok(Err(e)) => assert!(e.to_string().contains("chunk"), "{e}"),
        Err(_) => panic!("an eager load with chunk_bytes = usize::MAX panicked"),
    }
}
