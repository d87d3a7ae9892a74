//! The reader policy on cold files (Linux, where the page cache can be dropped per file): eager
//! loads of one file and multi-file jobs read buffered and ask the kernel to read ahead
//! (`IoCounts::prefetched_bytes`), with the same bytes as a hot load.
#![cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::path::Path;

use flashpack::read::job::{read_host, JobPlan, Piece};
use flashpack::read::{load, resident_fraction, IoMode, LoadOptions};
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A folder on the build's filesystem (not a tmpfs /tmp, whose pages cannot be dropped).
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Drops `path` from the page cache; false where the kernel keeps it.
fn evict(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain fadvise on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    resident_fraction(&f, std::fs::metadata(path).unwrap().len()).unwrap() < 0.5
}

#[test]
fn a_cold_job_over_many_files_reads_ahead_and_a_hot_one_does_not() {
    let dir = disk_dir();
    let mut files = Vec::new();
    let mut want = Vec::new();
    for k in 0..3u8 {
        let bytes = payload(1 << 20, k);
        let fp = dir.path().join(format!("s{k}.flashpack"));
        pack(
            &fp,
            &[PackEntry::new("w", Dtype::U8, vec![1 << 20], &bytes)],
            &PackOptions::default(),
        )
        .unwrap();
        let st = dir.path().join(format!("s{k}.safetensors"));
        WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
        files.push(WeightFile::open(&st).unwrap());
        want.push(bytes);
    }
    let files: Vec<&WeightFile> = files.iter().collect();
    let pieces: Vec<Piece> = files
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let t = f.tensor("w").unwrap();
            Piece {
                file: k,
                start: t.start,
                end: t.end,
            }
        })
        .collect();
    let plan = JobPlan::new(&files, &pieces).unwrap();
    let opts = LoadOptions {
        eager: true,
        chunk_bytes: 1 << 16,
        threads: 4,
        ..Default::default()
    };

    for f in &files {
        assert!(
            evict(f.path()),
            "{}: could not drop it from the page cache",
            f.path().display()
        );
    }
    let (mem, report) = read_host(&files, &plan, &opts).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(plan.bytes(&mem, i), &w[..], "file {i}");
    }
    let io = report.io;
    assert_eq!(io.direct_bytes, 0, "{io:?}");
    assert!(
        io.prefetched_bytes > 0,
        "a cold job should ask for readahead: {io:?}"
    );

    // Now hot: plain buffered reads, nothing asked ahead.
    let (mem, report) = read_host(&files, &plan, &opts).unwrap();
    assert_eq!(plan.bytes(&mem, 2), &want[2][..]);
    assert_eq!(report.io.prefetched_bytes, 0, "{:?}", report.io);
}

#[test]
fn io_direct_still_reads_a_cold_file_with_o_direct() {
    let dir = disk_dir();
    let path = dir.path().join("d.flashpack");
    let bytes = payload(1 << 20, 9);
    pack(
        &path,
        &[PackEntry::new("w", Dtype::U8, vec![1 << 20], &bytes)],
        &PackOptions::default(),
    )
    .unwrap();
    assert!(
        evict(&path),
        "{}: could not drop it from the page cache",
        path.display()
    );
    let opts = LoadOptions {
        eager: true,
        io: IoMode::Direct,
        chunk_bytes: 1 << 16,
        ..Default::default()
    };
    let l = load(&path, &opts).unwrap();
    assert_eq!(l.tensor_bytes("w").unwrap(), &bytes[..]);
    assert_eq!(l.report.io.prefetched_bytes, 0, "{:?}", l.report.io);
}
