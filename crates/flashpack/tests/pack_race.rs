//! A pack hashes exactly the bytes it writes. The Python binding packs straight from a tensor's
//! memory with the GIL released, so another thread may change that tensor while the pack runs:
//! the file then holds some mix of old and new bytes, but its checksums must describe those
//! bytes, or a later verify would call a sound file corrupt.
use std::sync::atomic::{AtomicBool, Ordering};

use flashpack::read::{verify, LoadOptions};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;

#[test]
fn a_tensor_changed_during_a_pack_still_gets_checksums_that_match_the_file() {
    const LEN: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut buf = vec![0u8; LEN];
    let ptr = buf.as_mut_ptr() as usize;
    let stop = AtomicBool::new(false);
    for round in 0..3 {
        let path = dir.path().join(format!("race{round}.flashpack"));
        std::thread::scope(|s| {
            // The other thread: rewrites every byte, over and over, until the pack is done.
            s.spawn(|| {
                let mut v = 1u8;
                while !stop.load(Ordering::Relaxed) {
                    for i in (0..LEN).step_by(64) {
                        // SAFETY: `buf` outlives the scope and `i < LEN`. This write races with
                        // the packer's reads on purpose: it models a Python thread writing to
                        // a tensor that `_core.pack` is reading through its raw buffer pointer.
                        unsafe { std::ptr::write_volatile((ptr as *mut u8).add(i), v) };
                    }
                    v = v.wrapping_add(1);
                }
            });
            // SAFETY: as above: the memory is live for the whole scope; the concurrent writes
            // are the point of the test (bytes are plain data, any value is valid).
            let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, LEN) };
            let opts = PackOptions {
                chunk_bytes: 64 << 10,
                threads: 2,
                ..Default::default()
            };
            let packed = pack(
                &path,
                &[PackEntry::new("w", Dtype::U8, vec![LEN as u64], data)],
                &opts,
            );
            stop.store(true, Ordering::Relaxed);
            packed.unwrap();
        });
        stop.store(false, Ordering::Relaxed);
        let report = verify(&path, &LoadOptions::default());
        assert!(report.is_ok(), "round {round}: {}", report.unwrap_err());
    }
    drop(buf);
}
