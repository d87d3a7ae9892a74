//! A file that gets shorter between being opened (footer checked against its size) and being
//! loaded or converted is an error naming the file, never a panic (which Python would see as a
//! `PanicException` that `except Exception` misses) nor a view past the end of a mapping.
use std::path::{Path, PathBuf};

use flashpack::read::{load_open, FlashFile, IoMode, LoadOptions};
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;

fn make(dir: &Path) -> PathBuf {
    let w: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
    let path = dir.join("m.flashpack");
    pack(
        &path,
        &[
            PackEntry::new("w", Dtype::F32, vec![16 << 10], &w),
            PackEntry::new("b", Dtype::I16, vec![2048], &b),
        ],
        &PackOptions::default(),
    )
    .unwrap();
    path
}

fn shrink(path: &Path, to: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(to)
        .unwrap();
}

#[test]
fn lazy_and_eager_loads_of_a_file_that_shrank_after_open_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = make(dir.path());
    for eager in [false, true] {
        let f = FlashFile::open(&path).unwrap();
        shrink(&path, f.payload_len() / 2);
        let opts = LoadOptions {
            eager,
            io: IoMode::Buffered,
            ..Default::default()
        };
        // Before the fix the lazy load returned Ok and `payload()` panicked slicing the mapping.
        let err = load_open(f, &opts)
            .map(|l| l.payload().len())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.flashpack") && err.contains("got shorter"),
            "eager={eager}: {err}"
        );
        std::fs::remove_file(&path).unwrap();
        make(dir.path());
    }
}

#[test]
fn weight_files_that_shrank_after_open_are_errors_for_loads_and_conversions() {
    let dir = tempfile::tempdir().unwrap();
    let fp = make(dir.path());
    let st = dir.path().join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    for path in [&fp, &st] {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let keep = std::fs::read(path).unwrap();
        let restore = || std::fs::write(path, &keep).unwrap();
        let half = keep.len() as u64 / 2;

        // Conversions map the file and slice every tensor out of it.
        let file = WeightFile::open(path).unwrap();
        shrink(path, half);
        let out = dir.path().join("out");
        let err = file
            .to_flashpack(&out, &PackOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains(&name), "{err}");
        let err = file.to_safetensors(out.with_extension("st")).unwrap_err();
        assert!(err.to_string().contains("got shorter"), "{err}");
        restore();

        // Loads: lazy (mapping), eager (reader pool).
        for eager in [false, true] {
            let file = WeightFile::open(path).unwrap();
            shrink(path, half);
            let opts = LoadOptions {
                eager,
                io: IoMode::Buffered,
                ..Default::default()
            };
            match file.load(&opts) {
                Err(e) => assert!(e.to_string().contains(&name), "{e}"),
                // A lazy safetensors load maps what is there: tensors past the end are absent,
                // never views past the mapping.
                Ok(w) => {
                    assert!(!eager, "{name}: an eager load of a shrunk file succeeded");
                    assert!(w.iter().count() < w.tensors().len(), "{name}");
                }
            }
            restore();
        }
    }
}
