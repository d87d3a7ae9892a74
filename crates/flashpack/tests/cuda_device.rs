//! The CUDA backend on whatever driver this process finds. Without one (CI machines) every entry
//! point is a typed [`Error::Device`], never a panic; with one, devices are counted and opened.
//! Loads themselves are tested with real driver calls against the CUDA stand-in
//! (`tests/cuda_standin.rs`, `make test-cuda-standin`) and on a GPU by `make gpu-check`.
#![cfg(feature = "cuda")]

use flashpack::read::LoadOptions;
use flashpack::sink::cuda::{
    device_count, driver_available, pinned_pool, release_pinned_pool, CudaDevice,
};
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};

#[test]
fn a_missing_driver_is_a_typed_error_everywhere_and_a_present_one_counts_devices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.flashpack");
    pack(
        &path,
        &[PackEntry::new("w", Dtype::U8, vec![3], &[1, 2, 3])],
        &PackOptions::default(),
    )
    .unwrap();
    let file = WeightFile::open(&path).unwrap();
    if driver_available() {
        let n = device_count().unwrap();
        assert!(n == 0 || CudaDevice::new(0).is_ok());
        let err = CudaDevice::new(n).expect_err("one past the last device");
        assert!(err.to_string().contains("no such device"), "{err}");
        return;
    }
    for err in [
        CudaDevice::new(0).expect_err("no device without a driver"),
        device_count().unwrap_err(),
        file.load_cuda(0, &LoadOptions::default()).err().unwrap(),
    ] {
        assert!(matches!(err, Error::Device(_)), "{err:?}");
        assert!(err.to_string().contains("CUDA driver not found"), "{err}");
    }
    assert_eq!(release_pinned_pool(), 0);
    assert_eq!(pinned_pool().unwrap().stats().allocated, 0);
}
