//! Odd paths and files the way a careful user meets them: a FIFO or a directory where a file
//! should be (refused at once, never blocked on), bytes added to a payload (refused: the payload
//! must be exactly what the footer declares), and pack destinations that cannot work (refused
//! before any payload is written). OS errors keep their OS error code.
// Unix process, signal and resource-limit machinery throughout (fork/wait4, SIGBUS,
// setrlimit, FIFOs, errno values); the portable cases live in pack_load.rs and checksums.rs.
#![cfg(unix)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::Duration;

use flashpack::read::{self, is_flashpack_file, FlashFile, IoMode, LoadOptions};
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches no other memory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Runs `f` on a thread; if it has not returned after `limit` it is blocked on the FIFO at
/// `fifo`: open the FIFO's other end to release it, then fail.
fn refused_in_time<T: Send + 'static>(
    what: &str,
    fifo: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(v) => {
            worker.join().unwrap();
            v
        }
        Err(RecvTimeoutError::Timeout) => {
            // A writer on the FIFO lets the blocked open return (and the reader then sees EOF).
            let _w = std::fs::OpenOptions::new().write(true).open(fifo);
            panic!("{what}: blocked on the FIFO {} for 20 s", fifo.display())
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
    }
}

#[track_caller]
fn assert_not_a_regular_file(what: &str, path: &Path, e: &Error) {
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: ", path.display())),
        "{what}: {text}"
    );
    assert!(text.contains("not a regular file"), "{what}: {text}");
}

fn eager() -> LoadOptions {
    LoadOptions {
        eager: true,
        io: IoMode::Buffered,
        ..Default::default()
    }
}

#[test]
fn a_fifo_is_refused_by_every_reader_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("weights.flashpack");
    mkfifo(&fifo);
    type Attempt = fn(&Path) -> Option<Error>;
    let attempts: [(&str, Attempt); 6] = [
        ("FlashFile::open", |p| FlashFile::open(p).err()),
        ("lazy load", |p| {
            read::load(p, &LoadOptions::default()).err()
        }),
        ("eager load", |p| read::load(p, &eager()).err()),
        ("verify", |p| read::verify(p, &LoadOptions::default()).err()),
        ("WeightFile::open", |p| WeightFile::open(p).err()),
        ("is_flashpack_file", |p| {
            assert!(!is_flashpack_file(p));
            FlashFile::open(p).err()
        }),
    ];
    for (what, attempt) in attempts {
        let p = fifo.clone();
        let err = refused_in_time(what, &fifo, move || attempt(&p));
        let err = err.unwrap_or_else(|| panic!("{what}: a FIFO was accepted"));
        assert_not_a_regular_file(what, &fifo, &err);
        assert!(err.to_string().contains("FIFO"), "{what}: {err}");
    }
}

#[test]
fn a_directory_is_refused_with_eisdir() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("model.flashpack");
    std::fs::create_dir(&sub).unwrap();
    for (what, err) in [
        ("FlashFile::open", FlashFile::open(&sub).err()),
        ("WeightFile::open", WeightFile::open(&sub).err()),
        ("eager load", read::load(&sub, &eager()).err()),
    ] {
        let err = err.unwrap_or_else(|| panic!("{what}: a directory was accepted"));
        match &err {
            Error::Io { path, source, .. } => {
                assert_eq!(path, &sub, "{what}");
                assert_eq!(source.raw_os_error(), Some(libc::EISDIR), "{what}: {err}");
            }
            other => panic!("{what}: not an OS error: {other:?}"),
        }
    }
}

#[test]
fn a_missing_file_keeps_its_os_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.flashpack");
    for err in [
        FlashFile::open(&missing).unwrap_err(),
        WeightFile::open(&missing).err().unwrap(),
    ] {
        match &err {
            Error::Io { path, source, .. } => {
                assert_eq!(path, &missing);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{err}");
            }
            other => panic!("not an OS error: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The payload is exactly what the footer declares
// ---------------------------------------------------------------------------------------------

/// A packed file and its parts: (payload, trailer = footer JSON + length + magic).
fn packed(dir: &Path, name: &str, entries: &[PackEntry<'_>]) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let path = dir.join(name);
    let report = pack(&path, entries, &PackOptions::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (payload, trailer) = bytes.split_at(report.payload_len as usize);
    (path, payload.to_vec(), trailer.to_vec())
}

#[test]
fn a_payload_longer_than_the_footer_declares_is_refused_naming_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let ids: Vec<u8> = (0..64u8).collect();
    let v3 = packed(
        dir.path(),
        "v3.flashpack",
        &[PackEntry::new("w", Dtype::F32, vec![32, 32], &w)],
    );
    let v4 = packed(
        dir.path(),
        "v4.flashpack",
        &[
            PackEntry::new("w", Dtype::F32, vec![32, 32], &w),
            PackEntry::new("ids", Dtype::I64, vec![8], &ids),
        ],
    );
    for (version, (path, payload, trailer)) in [("v3", v3), ("v4", v4)] {
        let n = payload.len();
        let damaged: [(&str, Vec<u8>); 3] = [
            ("prepended", [&[0u8; 8][..], &payload, &trailer].concat()),
            (
                "inserted",
                [
                    &payload[..n / 2],
                    &[7u8; 64][..],
                    &payload[n / 2..],
                    &trailer,
                ]
                .concat(),
            ),
            (
                "appended",
                [&payload[..], &[0u8; 4096][..], &trailer].concat(),
            ),
        ];
        for (how, bytes) in damaged {
            let what = format!("{version}, {how}");
            std::fs::write(&path, &bytes).unwrap();
            let actual = (bytes.len() - trailer.len()) as u64;
            for (reader, err) in [
                ("open", FlashFile::open(&path).err()),
                ("lazy", read::load(&path, &LoadOptions::default()).err()),
                ("eager", read::load(&path, &eager()).err()),
            ] {
                let err =
                    err.unwrap_or_else(|| panic!("{what}: {reader} accepted a shifted payload"));
                let text = err.to_string();
                assert!(
                    text.starts_with(&format!("{}: ", path.display())),
                    "{what}, {reader}: {text}"
                );
                assert!(
                    text.contains(&actual.to_string()) && text.contains(&n.to_string()),
                    "{what}, {reader}: both sizes ({actual} found, {n} declared) must be named: {text}"
                );
                assert!(err.is_data_error(), "{what}, {reader}: {text}");
            }
        }
        // The untouched file still loads.
        std::fs::write(&path, [&payload[..], &trailer].concat()).unwrap();
        read::load(&path, &eager()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Pack destinations
// ---------------------------------------------------------------------------------------------

/// `/proc/self/io`'s count of bytes this process passed to write calls.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A destination that cannot be written is refused before the payload is: a test binary of its
/// own would be needed to count this process's writes exactly, so each case is run in a child
/// (this test, re-run with `ODD_FILES_CHILD` set) that packs 64 MiB and reports what it wrote.
#[test]
fn a_bad_pack_destination_is_refused_before_the_payload_is_written() {
    const CHILD: &str = "ODD_FILES_CHILD";
    const MIB: usize = 64;
    if let Ok(dest) = std::env::var(CHILD) {
        let data = vec![1u8; MIB << 20];
        let before = bytes_written();
        let entries = [PackEntry::new(
            "w",
            Dtype::U8,
            vec![data.len() as u64],
            &data,
        )];
        let err = pack(Path::new(&dest), &entries, &PackOptions::default()).unwrap_err();
        let code = match &err {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(-1),
            _ => -1,
        };
        println!(
            "RESULT {} {code} {}",
            bytes_written() - before,
            err.to_string().replace('\n', " ")
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("a-directory");
    std::fs::create_dir(&a_dir).unwrap();
    std::fs::write(a_dir.join("inside"), b"keep").unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"keep").unwrap();
    let cases = [
        ("a directory", a_dir.clone(), libc::EISDIR),
        (
            "a name too long",
            dir.path().join("x".repeat(300)),
            libc::ENAMETOOLONG,
        ),
        (
            "a parent that is a file",
            a_file.join("sub").join("m.flashpack"),
            libc::ENOTDIR,
        ),
    ];
    for (what, dest, errno) in cases {
        let (line, output) = run_child(
            "a_bad_pack_destination_is_refused_before_the_payload_is_written",
            CHILD,
            &dest,
        );
        let line = line.unwrap_or_else(|| panic!("{what}: the child printed no result\n{output}"));
        let line = line.as_str();
        let mut parts = line.splitn(3, ' ');
        let written: u64 = parts.next().unwrap().parse().unwrap();
        let code: i32 = parts.next().unwrap().parse().unwrap();
        let message = parts.next().unwrap_or("");
        assert_eq!(code, errno, "{what}: {message}");
        assert!(
            message.starts_with(&format!("{}: ", dest.display())),
            "{what}: the error must name the destination: {message}"
        );
        assert!(
            written < ((MIB as u64) << 20) / 4,
            "{what}: {written} bytes were written before the destination was refused"
        );
    }
    assert_eq!(std::fs::read(a_dir.join("inside")).unwrap(), b"keep");
    assert_eq!(std::fs::read(&a_file).unwrap(), b"keep");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "temporary files left behind: {left:?}");
}

#[test]
fn pack_errors_name_the_destination_not_the_temporary_file() {
    // RLIMIT_FSIZE makes the payload write fail with EFBIG (SIGXFSZ ignored): run in a child.
    const CHILD: &str = "ODD_FILES_FSIZE_CHILD";
    if let Ok(dest) = std::env::var(CHILD) {
        // SAFETY: plain syscalls on this (child) process's own signal disposition and limits.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
        let data = vec![3u8; 8 << 20];
        let entries = [PackEntry::new(
            "w",
            Dtype::U8,
            vec![data.len() as u64],
            &data,
        )];
        match pack(Path::new(&dest), &entries, &PackOptions::default()) {
            Err(Error::Io { path, source, .. }) => println!(
                "RESULT {} {}",
                source.raw_os_error().unwrap_or(-1),
                path.display()
            ),
            other => println!("RESULT unexpected {other:?}"),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.flashpack");
    let (line, output) = run_child(
        "pack_errors_name_the_destination_not_the_temporary_file",
        CHILD,
        &dest,
    );
    assert_eq!(
        line,
        Some(format!("{} {}", libc::EFBIG, dest.display())),
        "{output}"
    );
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Runs test `name` of this binary again in a child process with `env` set to `dest` (the
/// child's cue to do the work and print `RESULT <...>`); returns that result and the output.
fn run_child(name: &str, env: &str, dest: &Path) -> (Option<String>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, dest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()));
    let output = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (line, output)
}
