//! The reader policy on cold files (Linux, where the page cache can be dropped per file): buffered
//! reads of cold data, in one file or a multi-file job, ask the kernel to read ahead
//! (`IoCounts::prefetched_bytes`); automatic I/O reads cold data with `O_DIRECT`.
#![cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::path::Path;

use flashpack::read::job::{read_host, JobPlan, Piece};
use flashpack::read::{load, IoMode, LoadOptions};
use residency::resident_fraction;

mod residency;
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
fn a_cold_buffered_job_over_many_files_reads_ahead_and_a_hot_one_does_not() {
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
        io: IoMode::Buffered,
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
fn auto_and_direct_read_a_cold_file_with_o_direct_and_buffered_reads_ahead() {
    let dir = disk_dir();
    let path = dir.path().join("d.flashpack");
    let bytes = payload(1 << 20, 9);
    let entry = PackEntry::new("w", Dtype::U8, vec![1 << 20], &bytes);
    pack(&path, &[entry], &PackOptions::default()).unwrap();
    for io in [IoMode::Auto, IoMode::Direct, IoMode::Buffered] {
        assert!(
            evict(&path),
            "{}: could not drop it from the page cache",
            path.display()
        );
        let opts = LoadOptions {
            eager: true,
            io,
            chunk_bytes: 1 << 16,
            ..Default::default()
        };
        let l = load(&path, &opts).unwrap();
        assert_eq!(l.tensor_bytes("w").unwrap(), &bytes[..], "{io:?}");
        let got = l.report().io;
        if io == IoMode::Buffered {
            assert_eq!(got.direct_bytes, 0, "{io:?}: {got:?}");
            assert!(got.prefetched_bytes > 0, "{io:?}: {got:?}");
        } else if supports_o_direct(dir.path()) {
            assert!(got.direct_bytes > 0, "{io:?}: {got:?}");
            assert_eq!(got.prefetched_bytes, 0, "{io:?}: {got:?}");
        }
    }
}

/// True when the filesystem under `dir` accepts `O_DIRECT` opens.
fn supports_o_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("odirect-probe");
    std::fs::write(&probe, [0u8; 4096]).unwrap();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok()
}
