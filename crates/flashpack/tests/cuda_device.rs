//! The CUDA backend itself. Without a driver (CI machines) every entry point must return a typed
//! error rather than panic; with a GPU, a load lands bit-exact in device memory.
#![cfg(feature = "cuda")]

use flashpack::read::{load_to_device, FlashFile, LoadOptions};
use flashpack::sink::cuda::{
    device_count, driver_available, pinned_pool, release_pinned_pool, CudaDevice,
};
use flashpack::sink::{Device, DeviceRegion};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};

#[test]
fn without_a_driver_every_entry_point_is_a_typed_error() {
    if driver_available() {
        eprintln!("skipped: the CUDA driver is present on this machine");
        return;
    }
    let err = CudaDevice::new(0)
        .err()
        .expect("no device without a driver");
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    assert!(err.to_string().contains("CUDA driver not found"), "{err}");
    assert!(device_count().is_err());
    assert_eq!(release_pinned_pool(), 0);
    assert_eq!(pinned_pool().stats().allocated, 0);
}

#[test]
fn with_a_gpu_a_load_lands_bit_exact_and_the_pool_is_reused() {
    use cudarc::driver::result as cu;
    if !driver_available() || device_count().unwrap_or(0) == 0 {
        eprintln!("skipped: no CUDA device on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.flashpack");
    let a: Vec<u8> = (0..(5 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let b: Vec<u8> = (0..4096 * 3 + 6).map(|i: u32| (i % 251) as u8).collect();
    pack(
        &path,
        &[
            PackEntry::new("a", Dtype::U8, vec![a.len() as u64], &a),
            PackEntry::new("b", Dtype::I16, vec![b.len() as u64 / 2], &b),
        ],
        &PackOptions::default(),
    )
    .unwrap();
    let f = FlashFile::open(&path).unwrap();
    let dev = CudaDevice::new(0).unwrap();
    dev.bind_thread().unwrap();
    for round in 0..2 {
        let mut dptrs = Vec::new();
        let mut regions = Vec::new();
        for blk in &f.footer.blocks {
            // SAFETY: plain device allocation in the bound context, freed below.
            let d = unsafe { cu::malloc_sync(blk.length_bytes as usize) }.unwrap();
            dptrs.push((d, blk.offset_bytes, blk.length_bytes));
            regions.push(DeviceRegion {
                offset: blk.offset_bytes,
                len: blk.length_bytes,
                dst: d,
            });
        }
        let opts = LoadOptions {
            threads: 3,
            chunk_bytes: 1 << 20,
            ..Default::default()
        };
        load_to_device(&f, &dev, regions, &opts).unwrap();
        dev.bind_thread().unwrap();
        let raw = std::fs::read(&path).unwrap();
        for (d, off, len) in dptrs {
            let mut host = vec![0u8; len as usize];
            // SAFETY: `d` holds `len` bytes written by the load, which has completed.
            unsafe { cu::memcpy_dtoh_sync(&mut host, d) }.unwrap();
            assert!(
                host[..] == raw[off as usize..(off + len) as usize],
                "round {round}"
            );
            // SAFETY: allocated above, freed once.
            unsafe { cu::free_sync(d) }.unwrap();
        }
        let st = pinned_pool().stats();
        assert!(st.allocated == st.idle && st.peak <= st.limit, "{st:?}");
    }
    assert!(release_pinned_pool() > 0);
}
