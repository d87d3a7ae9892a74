//! The device-load path (pinned staging, double buffering, bounded pool, region mapping) against
//! a fake device whose "streams" are threads that copy after a random delay. A sink that reused a
//! staging buffer before its copy finished, or returned before every copy landed, would show up
//! here as wrong bytes; this runs on any machine, with or without a GPU.
mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::{FakeAlloc, FakeDevice};

use flashpack::read::{load_to_device, FlashFile, IoMode, LoadOptions};
use flashpack::sink::{DeviceRegion, PinnedPool};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};

/// Packs tensors of several dtypes with sizes that are not multiples of the chunk or of 4 KiB.
fn make_file(dir: &Path) -> (std::path::PathBuf, FlashFile) {
    let mut rng = 0x1234_5678_u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    let specs: Vec<(&str, Dtype, Vec<u64>)> = vec![
        ("a", Dtype::F32, vec![1000, 333]),
        ("b", Dtype::BF16, vec![70_001]),
        ("c", Dtype::I64, vec![5, 7]),
        ("d", Dtype::U8, vec![3]),
        ("e", Dtype::F64, vec![123_457]),
        ("f", Dtype::Bool, vec![]),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|(_, dt, shape)| bytes(shape.iter().product::<u64>() as usize * dt.size()))
        .collect();
    let entries: Vec<PackEntry<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((n, dt, shape), d)| PackEntry::new(*n, *dt, shape.clone(), d))
        .collect();
    let path = dir.join("m.flashpack");
    // Small checksum chunks, so that a verified load's error can name one tensor.
    let opts = PackOptions {
        chunk_bytes: 64 << 10,
        ..Default::default()
    };
    pack(&path, &entries, &opts).unwrap();
    let f = FlashFile::open(&path).unwrap();
    (path, f)
}

/// One destination buffer per macroblock, filled with a sentinel.
fn destinations(f: &FlashFile) -> (Vec<Vec<u8>>, Vec<DeviceRegion>) {
    let mut bufs: Vec<Vec<u8>> = f
        .footer
        .blocks
        .iter()
        .map(|b| vec![0xA5; b.length_bytes as usize])
        .collect();
    let regions = f
        .footer
        .blocks
        .iter()
        .zip(bufs.iter_mut())
        .map(|(b, buf)| DeviceRegion {
            offset: b.offset_bytes,
            len: b.length_bytes,
            dst: buf.as_mut_ptr() as u64,
        })
        .collect();
    (bufs, regions)
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn every_block_lands_bit_exact_for_all_io_modes_chunk_sizes_and_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = make_file(dir.path());
    let raw = file_bytes(&path);
    assert!(f.footer.blocks.len() >= 5);
    let dev = FakeDevice::new(64 << 20);
    for io in [IoMode::Buffered, IoMode::Direct, IoMode::Auto] {
        for chunk_bytes in [4096usize, 5000, 65536, 1 << 20] {
            for threads in [1usize, 3] {
                let what = format!("{io:?} chunk {chunk_bytes} threads {threads}");
                let (bufs, regions) = destinations(&f);
                let opts = LoadOptions {
                    io,
                    threads,
                    chunk_bytes,
                    ..Default::default()
                };
                let report = load_to_device(&f, &dev, regions, &opts)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                for (b, buf) in f.footer.blocks.iter().zip(&bufs) {
                    let want =
                        &raw[b.offset_bytes as usize..(b.offset_bytes + b.length_bytes) as usize];
                    assert!(buf == want, "{what}: block {:?} differs", b.dtype);
                }
                assert!(report.threads >= 1 && report.threads <= threads, "{what}");
                let moved = report.io.direct_bytes + report.io.buffered_bytes;
                assert!(
                    moved >= f.footer.blocks.iter().map(|b| b.length_bytes).sum::<u64>(),
                    "{what}"
                );
                // Every staging buffer came back to the pool, none is still in use.
                let st = dev.pool.stats();
                assert_eq!(st.allocated, st.idle, "{what}");
                assert!(st.peak <= st.limit, "{what}");
            }
        }
    }
    assert!(
        dev.copies.load(Ordering::SeqCst) > 100,
        "the delayed copies were exercised"
    );
}

#[test]
fn only_the_named_ranges_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = make_file(dir.path());
    let raw = file_bytes(&path);
    let dev = FakeDevice::new(64 << 20);
    // Part of the first block and all of the last non-empty one; gaps larger than a chunk.
    let first = &f.footer.blocks[0];
    let last = f
        .footer
        .blocks
        .iter()
        .rev()
        .find(|b| b.length_bytes > 0)
        .unwrap();
    let mut a = vec![0xA5u8; 10_000];
    let mut z = vec![0xA5u8; last.length_bytes as usize];
    let regions = vec![
        DeviceRegion {
            offset: last.offset_bytes,
            len: last.length_bytes,
            dst: z.as_mut_ptr() as u64,
        },
        DeviceRegion {
            offset: first.offset_bytes + 777,
            len: 10_000,
            dst: a.as_mut_ptr() as u64,
        },
    ];
    let opts = LoadOptions {
        threads: 2,
        chunk_bytes: 8192,
        ..Default::default()
    };
    let report = load_to_device(&f, &dev, regions, &opts).unwrap();
    let start = (first.offset_bytes + 777) as usize;
    assert_eq!(a, raw[start..start + 10_000]);
    let ls = last.offset_bytes as usize;
    assert_eq!(z, raw[ls..ls + last.length_bytes as usize]);
    // Far-apart ranges are read separately, not as the whole payload.
    let moved = report.io.direct_bytes + report.io.buffered_bytes;
    assert!(
        moved < f.payload_len / 2,
        "read {moved} of {}",
        f.payload_len
    );
}

#[test]
fn pool_is_bounded_reused_across_loads_and_freeable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = make_file(dir.path());
    let raw = file_bytes(&path);
    // 4 threads x 2 slots x 16 MiB would need 128 MiB; the limit is 3 MiB.
    let dev = FakeDevice::new(3 << 20);
    let opts = LoadOptions {
        threads: 4,
        chunk_bytes: 16 << 20,
        ..Default::default()
    };
    for round in 0..3 {
        let (bufs, regions) = destinations(&f);
        load_to_device(&f, &dev, regions, &opts).unwrap();
        for (b, buf) in f.footer.blocks.iter().zip(&bufs) {
            assert_eq!(
                buf[..],
                raw[b.offset_bytes as usize..(b.offset_bytes + b.length_bytes) as usize]
            );
        }
        let st = dev.pool.stats();
        assert!(
            st.peak <= 3 << 20,
            "round {round}: peak {} over the limit",
            st.peak
        );
        assert!(
            st.allocated > 0 && st.allocated == st.idle,
            "round {round}: {st:?}"
        );
        assert_eq!(dev.pool.alloc_live(), st.allocated, "round {round}");
    }
    let peak = dev.pool.stats().peak;
    assert_eq!(dev.pool.release(), peak, "release frees every idle byte");
    let st = dev.pool.stats();
    assert_eq!((st.allocated, st.idle), (0, 0));
    assert_eq!(dev.pool.alloc_live(), 0);
    // A limit below two 4 KiB staging buffers cannot work: a clear error, not a hang.
    let tiny = FakeDevice::new(4096);
    let (_bufs, regions) = destinations(&f);
    let err = load_to_device(&f, &tiny, regions, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pinned pool limit"), "{err}");
}

#[test]
fn a_failed_copy_is_an_error_and_returns_every_staging_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, f) = make_file(dir.path());
    let mut dev = FakeDevice::new(64 << 20);
    let (_bufs, regions) = destinations(&f);
    dev.fail_at = Some(regions[1].dst as usize);
    let opts = LoadOptions {
        threads: 3,
        chunk_bytes: 8192,
        ..Default::default()
    };
    let err = load_to_device(&f, &dev, regions, &opts).unwrap_err();
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    assert!(err.to_string().contains("injected copy failure"), "{err}");
    let st = dev.pool.stats();
    assert_eq!(st.allocated, st.idle, "{st:?}");
}

#[test]
fn bad_regions_are_rejected_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, f) = make_file(dir.path());
    let dev = FakeDevice::new(64 << 20);
    let mut buf = vec![0u8; 64];
    let dst = buf.as_mut_ptr() as u64;
    let cases = [
        (
            vec![DeviceRegion {
                offset: f.payload_len - 8,
                len: 16,
                dst,
            }],
            "outside",
        ),
        (
            vec![DeviceRegion {
                offset: u64::MAX - 4,
                len: 16,
                dst,
            }],
            "outside",
        ),
        (
            vec![
                DeviceRegion {
                    offset: 0,
                    len: 32,
                    dst,
                },
                DeviceRegion {
                    offset: 16,
                    len: 32,
                    dst,
                },
            ],
            "overlap",
        ),
    ];
    for (regions, word) in cases {
        let err = load_to_device(&f, &dev, regions, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(word) && err.contains("m.flashpack"), "{err}");
    }
    assert_eq!(
        dev.streams_made.load(Ordering::SeqCst),
        0,
        "nothing was started"
    );
}

/// Live bytes according to the allocator itself (not the pool's own bookkeeping).
trait AllocLive {
    fn alloc_live(&self) -> usize;
}

impl AllocLive for PinnedPool<FakeAlloc> {
    fn alloc_live(&self) -> usize {
        self.allocator().live.load(Ordering::SeqCst)
    }
}

#[test]
fn verified_device_loads_check_every_chunk_before_copying() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = make_file(dir.path());
    let raw = file_bytes(&path);
    let dev = FakeDevice::new(64 << 20);
    for chunk_bytes in [4096usize, 1 << 20] {
        let (bufs, regions) = destinations(&f);
        let opts = LoadOptions {
            threads: 2,
            chunk_bytes,
            verify: true,
            ..Default::default()
        };
        load_to_device(&f, &dev, regions, &opts).unwrap();
        for (b, buf) in f.footer.blocks.iter().zip(&bufs) {
            assert_eq!(
                buf[..],
                raw[b.offset_bytes as usize..(b.offset_bytes + b.length_bytes) as usize]
            );
        }
    }
    // Corrupt one byte of block "e" (f64) on disk: the verified load fails and names it.
    let e = f.footer.record("e").unwrap();
    let (start, end) = f.footer.byte_range(e);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(
            &[raw[((start + end) / 2) as usize] ^ 0xFF],
            (start + end) / 2,
        )
        .unwrap();
    }
    let f = FlashFile::open(&path).unwrap();
    let (_bufs, regions) = destinations(&f);
    let opts = LoadOptions {
        threads: 3,
        verify: true,
        ..Default::default()
    };
    let err = load_to_device(&f, &dev, regions, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("'e'"),
        "{err}"
    );
    let st = dev.pool.stats();
    assert_eq!(st.allocated, st.idle, "{st:?}");
    // A pool too small for two checksum chunks cannot verify: a clear error.
    let tiny = FakeDevice::new(64 << 10);
    let (_bufs, regions) = destinations(&f);
    let err = load_to_device(&f, &tiny, regions, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum chunks"), "{err}");
}
