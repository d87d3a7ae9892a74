//! The binary under interruption and odd files: SIGINT/SIGTERM stop `convert` cleanly (status
//! 128 + signal, destination as it was, nothing left beside it), SIGKILL at any point of a
//! conversion to safetensors leaves nothing behind, and a FIFO is refused at once by `verify`,
//! `inspect` and `convert` instead of blocking them.
//!
//! The conversions read a 256 MiB source evicted from the page cache, so they take a while; a
//! signal is sent once the child's own write counter (/proc/<pid>/io) shows it is writing. No time
//! is measured; the one assumption is that the rest of the conversion outlasts one 4 MiB write.
// Sends POSIX signals to the CLI and drops files from the page cache with posix_fadvise: Linux.
#![cfg(target_os = "linux")]
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;

const MIB: u64 = 1 << 20;
const SOURCE_BYTES: usize = 256 << 20;

fn start<I, S>(args: I) -> Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_flashpack"))
        .arg("--quiet")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the flashpack binary")
}

/// Bytes `pid` has passed to write calls so far, or None once it has exited.
fn written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))?
        .trim()
        .parse()
        .ok()
}

/// Waits until `child` has written `bytes` (true), or has exited first (false).
fn wait_until_written(child: &mut Child, bytes: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120); // a hang detector only
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        match written(child.id()) {
            Some(n) if n >= bytes => return true,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the conversion never got going");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Drops `path` from the page cache, so that reading it goes to the disk.
fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a plain advisory syscall on a descriptor `f` keeps open; it reads no memory of ours.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A folder with `src.flashpack` (256 MiB in three tensors) and its `src.safetensors`.
fn sources() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let block: Vec<u8> = (0..MIB as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let mut data = block.repeat(SOURCE_BYTES / MIB as usize);
    for (k, piece) in data.chunks_mut(MIB as usize).enumerate() {
        piece[..8].copy_from_slice(&(k as u64).to_le_bytes()); // every MiB differs
    }
    let (a, rest) = data.split_at(SOURCE_BYTES / 2);
    let (b, c) = rest.split_at(rest.len() / 2);
    let fp = dir.path().join("src.flashpack");
    pack(
        &fp,
        &[
            PackEntry::new("a", Dtype::U8, vec![a.len() as u64], a),
            PackEntry::new("b", Dtype::I32, vec![b.len() as u64 / 4], b),
            PackEntry::new("c", Dtype::F16, vec![c.len() as u64 / 2], c),
        ],
        &PackOptions::default(),
    )
    .unwrap();
    let st = dir.path().join("src.safetensors");
    flashpack::weights::WeightFile::open(&fp)
        .unwrap()
        .to_safetensors(&st)
        .unwrap();
    (dir, fp, st)
}

#[test]
fn sigint_and_sigterm_stop_a_conversion_and_leave_the_destination_as_it_was() {
    let (dir, fp, st) = sources();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (signal, name, src, dst) in [
        (libc::SIGINT, "SIGINT", &st, out.join("m.flashpack")),
        (libc::SIGTERM, "SIGTERM", &fp, out.join("m.safetensors")),
        (libc::SIGINT, "SIGINT", &fp, out.join("m.safetensors")),
        (libc::SIGTERM, "SIGTERM", &st, out.join("m.flashpack")),
    ] {
        let what = format!("{name}, {} -> {}", src.display(), dst.display());
        std::fs::write(&dst, b"the old file").unwrap();
        evict(src);
        let mut child = start(["convert".as_ref(), src.as_os_str(), dst.as_os_str()]);
        assert!(
            wait_until_written(&mut child, 4 * MIB),
            "{what}: finished before it could be interrupted"
        );
        // SAFETY: a plain syscall sending a signal to our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(128 + signal), "{what}: {err}");
        assert!(
            err.contains(&format!("{}: interrupted by {name}", dst.display())),
            "{what}: {err}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), b"the old file", "{what}");
        assert_eq!(
            names(&out).len(),
            1,
            "{what}: left behind: {:?}",
            names(&out)
        );
        std::fs::remove_file(&dst).unwrap();
    }
}

/// A folder of shards is one result: SIGINT after some shards are complete still stops the
/// conversion (a shard's own commit is not the folder's), and nothing is left at or beside the
/// destination.
#[test]
fn sigint_stops_a_sharded_conversion_after_its_first_shards_and_leaves_no_folder() {
    let (dir, fp, _) = sources();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dst = out.join("sharded");
    evict(&fp);
    let mut child = start([
        "revert".as_ref(),
        fp.as_os_str(),
        dst.as_os_str(),
        "--max-shard-size".as_ref(),
        "40MiB".as_ref(),
    ]);
    // Past the first shard (the largest tensor, 128 MiB, is a shard of its own).
    assert!(
        wait_until_written(&mut child, 160 * MIB),
        "finished before it could be interrupted"
    );
    // SAFETY: a plain syscall sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(128 + libc::SIGINT), "{err}");
    assert!(
        err.contains(&format!("{}: interrupted by SIGINT", dst.display())),
        "{err}"
    );
    assert!(names(&out).is_empty(), "left behind: {:?}", names(&out));
}

#[test]
fn sigkill_at_any_point_of_a_conversion_to_safetensors_leaves_nothing_behind() {
    let (dir, fp, _) = sources();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dst = out.join("m.safetensors");
    for at_mib in [0, 4, 64, 160] {
        evict(&fp);
        let mut child = start(["convert".as_ref(), fp.as_os_str(), dst.as_os_str()]);
        let mid_write = wait_until_written(&mut child, at_mib * MIB);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let left = names(&out);
        if mid_write && status.signal() == Some(libc::SIGKILL) {
            assert!(left.is_empty(), "killed after {at_mib} MiB: left {left:?}");
        } else {
            // It finished first: then the whole file is there, and nothing else.
            assert_eq!(left, ["m.safetensors"], "finished: {status:?}");
            std::fs::remove_file(&dst).unwrap();
        }
    }
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches no other memory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

#[test]
fn a_fifo_is_refused_at_once_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("weights.flashpack");
    mkfifo(&fifo);
    let out = dir.path().join("out.safetensors");
    let runs: [Vec<&std::ffi::OsStr>; 3] = [
        vec!["verify".as_ref(), fifo.as_os_str()],
        vec!["inspect".as_ref(), fifo.as_os_str()],
        vec!["convert".as_ref(), fifo.as_os_str(), out.as_os_str()],
    ];
    for args in runs {
        let mut child = start(&args);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?}: blocked on a FIFO for 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{}: is a FIFO", fifo.display()))
                && err.contains("not a regular file"),
            "{args:?}: {err}"
        );
    }
    assert!(!out.exists());
}
