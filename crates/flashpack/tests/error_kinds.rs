//! Each kind of failure a caller acts on is its own error variant, naming the file (and the
//! tensor), with the error of the library underneath kept as its `source()`.
use std::error::Error as _;
use std::path::Path;

use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error, SafetensorsError};

/// A safetensors file: `header` as its JSON header, then `data`.
fn safetensors_file(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupt_safetensors_header_names_the_file_and_tensor_and_keeps_the_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    // 'w' says F32 [4] (16 bytes) over an 8-byte range.
    safetensors_file(
        &path,
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    let Err(e) = WeightFile::open(&path) else {
        panic!("a corrupt header opened")
    };
    let text = e.to_string();
    assert!(
        text.contains("bad.safetensors") && text.contains("tensor 'w'"),
        "{text}"
    );
    let Error::Safetensors { path: p, source } = &e else {
        panic!("not a safetensors error: {e:?}")
    };
    assert_eq!(p, &path);
    assert!(
        matches!(source.as_ref(), SafetensorsError::Header { tensor: Some(t), .. } if t == "w"),
        "{source:?}"
    );
    // Error -> SafetensorsError -> the safetensors crate's error.
    let inner = e.source().and_then(|s| s.source()).expect("a source");
    assert!(
        inner
            .downcast_ref::<safetensors::SafeTensorError>()
            .is_some(),
        "{inner:?}"
    );
    assert!(e.is_data_error());
}

#[test]
fn a_safetensors_file_too_short_for_a_header_is_a_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.safetensors");
    std::fs::write(&path, [1, 2, 3]).unwrap();
    let e = WeightFile::open(&path).err().expect("an error");
    assert!(
        matches!(&e, Error::Safetensors { source, .. }
            if matches!(source.as_ref(), SafetensorsError::TooSmall { len: 3 })),
        "{e:?}"
    );
}

#[test]
fn a_dtype_torch_lacks_is_unsupported_naming_file_and_tensor_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f6.safetensors");
    // F6_E2M3 (6-bit MXFP6) is valid safetensors but torch has no dtype for it: the file opens
    // (its other tensors load); loading the whole file is the error.
    safetensors_file(
        &path,
        r#"{"q":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}"#,
        &[0; 3],
    );
    let f = WeightFile::open(&path).unwrap();
    assert_eq!(f.unloadable().len(), 1);
    let e = f.load(&Default::default()).err().expect("an error");
    let text = e.to_string();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert!(
        text.contains("f6.safetensors") && text.contains("tensor 'q'") && text.contains("F6_E2M3"),
        "{text}"
    );
}

#[test]
fn a_tensor_safetensors_cannot_store_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let fp = dir.path().join("c.flashpack");
    let data = [0u8; 32];
    let entries = [PackEntry::new("z", Dtype::C128, vec![2], &data)];
    pack(&fp, &entries, &PackOptions::default()).unwrap();
    let dest = dir.path().join("c.safetensors");
    let e = WeightFile::open(&fp)
        .unwrap()
        .to_safetensors(&dest)
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("tensor 'z'"), "{e}");
    assert!(!dest.exists());
}

#[test]
fn a_verified_load_of_a_safetensors_file_stays_a_caller_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    safetensors_file(
        &path,
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    let opts = flashpack::read::LoadOptions {
        verify: true,
        ..Default::default()
    };
    let e = WeightFile::open(&path).unwrap().load(&opts).err().unwrap();
    assert!(
        matches!(
            e,
            Error::NoChecksums {
                safetensors: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );
}
