//! Cancelling long operations through `Cancel`: loads, verification, packs and conversions stop
//! with `Error::Cancelled`, a pack or conversion leaves its destination as it was and no file
//! behind, and an operation whose result is already in place is never reported as cancelled.

use std::path::Path;
use std::sync::{Arc, Barrier};

use flashpack::cancel::{Cancel, Poll};
use flashpack::convert::SafetensorsOptions;
use flashpack::read::{self, IoMode, LoadOptions};
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};

fn cancelled() -> Option<Cancel> {
    let c = Cancel::new();
    c.cancel();
    Some(c)
}

#[track_caller]
fn assert_cancelled(what: &str, path: &Path, e: Error) {
    match e {
        Error::Cancelled { path: p } => assert_eq!(p, path, "{what}"),
        other => panic!("{what}: not a cancellation: {other}"),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_cancelled_load_or_verify_stops_with_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.flashpack");
    let w = data(1 << 20, 1);
    pack(
        &path,
        &[PackEntry::new("w", Dtype::U8, vec![w.len() as u64], &w)],
        &PackOptions::default(),
    )
    .unwrap();
    for io in [IoMode::Buffered, IoMode::Direct] {
        let opts = LoadOptions {
            eager: true,
            io,
            chunk_bytes: 4096,
            cancel: cancelled(),
            ..Default::default()
        };
        assert_cancelled("eager load", &path, read::load(&path, &opts).unwrap_err());
        let verified = LoadOptions {
            verify: true,
            ..opts.clone()
        };
        assert_cancelled(
            "eager verified load",
            &path,
            read::load(&path, &verified).unwrap_err(),
        );
        assert_cancelled("verify", &path, read::verify(&path, &opts).unwrap_err());
    }
    let lazy_verified = LoadOptions {
        verify: true,
        cancel: cancelled(),
        ..Default::default()
    };
    assert_cancelled(
        "lazy verified load",
        &path,
        read::load(&path, &lazy_verified).unwrap_err(),
    );
    // An uncancelled Cancel changes nothing.
    let opts = LoadOptions {
        eager: true,
        cancel: Some(Cancel::new()),
        ..Default::default()
    };
    assert_eq!(
        read::load(&path, &opts).unwrap().tensor_bytes("w").unwrap(),
        &w[..]
    );
}

#[test]
fn a_cancelled_pack_or_conversion_leaves_the_destination_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.flashpack");
    std::fs::write(&dest, b"the old file").unwrap();
    let w = data(3 << 20, 2);
    let entries = [PackEntry::new("w", Dtype::U8, vec![w.len() as u64], &w)];
    let opts = PackOptions {
        chunk_bytes: 4096,
        cancel: cancelled(),
        ..Default::default()
    };
    assert_cancelled("pack", &dest, pack(&dest, &entries, &opts).unwrap_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"the old file");
    assert_eq!(names(dir.path()), ["m.flashpack"]);

    let src = dir.path().join("src.flashpack");
    pack(&src, &entries, &PackOptions::default()).unwrap();
    let st = dir.path().join("m.safetensors");
    std::fs::write(&st, b"the old safetensors file").unwrap();
    let st_opts = SafetensorsOptions {
        cancel: cancelled(),
        ..Default::default()
    };
    let err = WeightFile::open(&src)
        .unwrap()
        .to_safetensors_with(&st, &st_opts)
        .unwrap_err();
    assert_cancelled("to_safetensors", &st, err);
    assert_eq!(std::fs::read(&st).unwrap(), b"the old safetensors file");
    let err = WeightFile::open(&src)
        .unwrap()
        .to_flashpack(&dest, &opts)
        .unwrap_err();
    assert_cancelled("to_flashpack", &dest, err);
    assert_eq!(
        names(dir.path()),
        ["m.flashpack", "m.safetensors", "src.flashpack"]
    );
}

/// A poller that decides to cancel at a random moment races each pack: the pack is reported
/// cancelled exactly when the poller's cancel took effect, and then the destination is the old
/// file; otherwise it is the new one.
#[test]
fn a_pack_is_cancelled_exactly_when_its_result_is_not_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.flashpack");
    let (mut cancelled_runs, mut completed_runs) = (0, 0);
    for round in 0..40u32 {
        std::fs::write(&dest, b"old").unwrap();
        let w = data(256 << 10, round as u8);
        let cancel = Cancel::new();
        let start = Arc::new(Barrier::new(2));
        let poller = {
            let (cancel, start) = (cancel.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                // Spin a round-dependent while, then ask to cancel (as a signal would).
                for _ in 0..(round * 4000) {
                    std::hint::spin_loop();
                }
                cancel.poll(|| true)
            })
        };
        let opts = PackOptions {
            chunk_bytes: 4096,
            threads: 2,
            cancel: Some(cancel),
            ..Default::default()
        };
        start.wait();
        let result = pack(
            &dest,
            &[PackEntry::new("w", Dtype::U8, vec![w.len() as u64], &w)],
            &opts,
        );
        let polled = poller.join().unwrap();
        let on_disk = std::fs::read(&dest).unwrap();
        match result {
            Err(Error::Cancelled { .. }) => {
                assert_eq!(polled, Poll::Cancelled, "round {round}");
                assert_eq!(
                    on_disk, b"old",
                    "round {round}: a cancelled pack replaced the file"
                );
                cancelled_runs += 1;
            }
            Ok(_) => {
                assert_eq!(polled, Poll::Committed, "round {round}");
                assert_ne!(on_disk, b"old", "round {round}");
                completed_runs += 1;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
        assert_eq!(names(dir.path()), ["m.flashpack"], "round {round}");
    }
    println!("{cancelled_runs} packs cancelled, {completed_runs} completed");
}

/// Bytes this process has read through read calls so far (`/proc/self/io`).
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One chunk of 64 MiB read by one thread: cancelled once the read is under way, the load stops
/// between the reads the chunk is made of instead of finishing it. Run in a child (this test with
/// `INTERRUPTION_CHILD` set) so that the read counter is this load's alone.
#[test]
fn a_load_stops_inside_a_large_chunk() {
    const CHILD: &str = "INTERRUPTION_CHILD";
    const SIZE: usize = 64 << 20;
    if let Ok(path) = std::env::var(CHILD) {
        let cancel = Cancel::new();
        let before = bytes_read();
        let watcher = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                while bytes_read() - before < (4 << 20) {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                cancel.cancel();
            })
        };
        let opts = LoadOptions {
            eager: true,
            io: IoMode::Buffered,
            threads: 1,
            chunk_bytes: SIZE * 2,
            cancel: Some(cancel),
            ..Default::default()
        };
        let result = read::load(Path::new(&path), &opts);
        let read = bytes_read() - before;
        watcher.join().unwrap();
        match result {
            Err(Error::Cancelled { .. }) => println!("RESULT cancelled {read}"),
            Err(e) => println!("RESULT error {e}"),
            Ok(_) => println!("RESULT loaded {read}"),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.flashpack");
    let w = data(SIZE, 3);
    pack(
        &path,
        &[PackEntry::new("w", Dtype::U8, vec![w.len() as u64], &w)],
        &PackOptions::default(),
    )
    .unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_load_stops_inside_a_large_chunk",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result: {stdout}"));
    let (what, read) = result.split_once(' ').unwrap();
    assert_eq!(what, "cancelled", "{result}");
    assert!(read.parse::<u64>().unwrap() < SIZE as u64, "{result}");
}
