//! The reader against damaged files and files that change under it: truncated at random points,
//! replaced by rename or truncated in place while a load runs, and footers with huge sizes.
//!
//! Every case must end in a value: a load that succeeds with exactly one consistent version of the
//! file, or an error that starts with the file's path. Never a panic, a hang or an allocation sized
//! by an untrusted number. The one crash that is by design (a lazy load is a mapping: a file
//! truncated in place under it faults with SIGBUS) runs in a child process and is asserted as such.
//!
//! Cases that may crash or must be measured (memory) run in a child: this test binary re-executed
//! with `FLASHPACK_CRASH_CHILD` set, running only the test that spawned it.
// Unix process, signal and resource-limit machinery throughout (fork/wait4, SIGBUS,
// setrlimit, FIFOs, errno values); the portable cases live in pack_load.rs and checksums.rs.
#![cfg(unix)]

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashpack::read::{is_flashpack_file, load, FlashFile, IoMode, LoadOptions};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};

const MAGIC: &[u8; 8] = b"FLASHPK\0";
const CHILD_ENV: &str = "FLASHPACK_CRASH_CHILD";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic bytes and choices from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A packed file's bytes and where its payload ends.
struct Version {
    bytes: Vec<u8>,
    payload_len: usize,
}

impl Version {
    fn payload(&self) -> &[u8] {
        &self.bytes[..self.payload_len]
    }
    fn footer_json(&self) -> &[u8] {
        &self.bytes[self.payload_len..self.bytes.len() - 16]
    }
}

/// Packs four tensors of random bytes (f32, bf16, i64, u8: a v4 file of about `mib` MiB) with the
/// engine and returns the file's bytes. Different seeds give different content and shapes.
fn make_version(dir: &Path, seed: u64, mib: usize) -> Version {
    let mut rng = Rng::new(seed);
    let rows = (mib << 20) / (4 * 1024) + seed as usize % 7;
    let specs: [(&str, Dtype, Vec<u64>); 4] = [
        ("w", Dtype::F32, vec![rows as u64, 1024]),
        ("h", Dtype::BF16, vec![333 + seed % 5, 77]),
        ("ids", Dtype::I64, vec![1000 + seed % 3]),
        ("mask", Dtype::U8, vec![4097 + seed % 11]),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|(_, d, s)| rng.bytes(d.size() * s.iter().product::<u64>() as usize))
        .collect();
    let entries: Vec<PackEntry<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((n, d, s), b)| PackEntry::new(*n, *d, s.clone(), b))
        .collect();
    let path = dir.join(format!("version-{seed}.flashpack"));
    pack(&path, &entries, &PackOptions::default()).expect("pack a version");
    let bytes = std::fs::read(&path).unwrap();
    let f = FlashFile::open(&path).unwrap();
    Version {
        payload_len: f.payload_len() as usize,
        bytes,
    }
}

fn eager(io: IoMode) -> LoadOptions {
    LoadOptions {
        eager: true,
        io,
        threads: 2,
        chunk_bytes: 64 << 10,
        ..Default::default()
    }
}

fn load_modes() -> Vec<(&'static str, LoadOptions)> {
    vec![
        ("lazy", LoadOptions::default()),
        ("eager buffered", eager(IoMode::Buffered)),
        ("eager direct", eager(IoMode::Direct)),
        ("eager auto", eager(IoMode::Auto)),
    ]
}

/// The error's text must start with the file's path.
#[track_caller]
fn assert_names_file(what: &str, path: &Path, e: &Error) {
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}: ", path.display())),
        "{what}: the error does not start with the file's path: {msg}"
    );
}

/// Runs `f` on a thread and fails the test if it has not returned within `limit` (a hang).
fn with_deadline<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            worker.join().unwrap();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {limit:?} (a hang?)")
        }
        // The closure panicked: re-raise its panic with its message.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the worker neither sent nor panicked"),
        },
    }
}

/// This test binary, re-run for one test with `CHILD_ENV=case`.
fn child(test: &str, case: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case)
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// Waits for `child` (reaping it with `wait4`, so `Child::wait` must not follow) and returns its
/// wait status and its own peak resident memory in bytes.
fn wait_with_rusage(child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to pass to wait4, which only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on our own child's pid with valid pointers to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    drop(child); // already reaped above; dropping a Child neither waits nor kills
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64 * 1024,
    )
}

// ---------------------------------------------------------------------------------------------
// Truncated and cut files
// ---------------------------------------------------------------------------------------------

/// Every reader rejects `path` with an error that names it and is a data error.
#[track_caller]
fn assert_every_reader_rejects(path: &Path, case: &str) {
    match FlashFile::open(path) {
        Ok(f) => panic!("{case}: open accepted a damaged file: {:?}", f.footer()),
        Err(e) => {
            assert_names_file(case, path, &e);
            assert!(
                e.is_data_error(),
                "{case}: a damaged file is reported as an OS/device error: {e}"
            );
        }
    }
    for (what, opts) in load_modes() {
        match load(path, &opts) {
            Ok(_) => panic!("{case}: {what} load accepted a damaged file"),
            Err(e) => assert_names_file(&format!("{case}, {what}"), path, &e),
        }
    }
    assert!(!is_flashpack_file(path), "{case}: is_flashpack_file");
}

/// 50 seeded truncation points (plus the edges: empty, inside the trailer, at the payload end)
/// of a ~2 MiB v4 file; each truncated copy is rejected by open, the lazy load, and eager loads
/// with buffered, direct and automatic I/O.
#[test]
fn a_file_truncated_at_50_random_points_is_rejected_by_every_reader() {
    with_deadline("truncation", Duration::from_secs(120), || {
        let dir = tempfile::tempdir().unwrap();
        let v = make_version(dir.path(), 1, 2);
        let n = v.bytes.len() as u64;
        let mut rng = Rng::new(0x7e57_0001);
        let mut points: Vec<u64> = (0..50).map(|_| rng.below(n)).collect();
        let p = v.payload_len as u64;
        points.extend([
            0,
            1,
            8,
            15,
            16,
            p - 1,
            p,
            p + 1,
            n - 16,
            n - 9,
            n - 8,
            n - 1,
        ]);
        let path = dir.path().join("truncated.flashpack");
        for &cut in &points {
            std::fs::write(&path, &v.bytes[..cut as usize]).unwrap();
            let case = format!("truncated to {cut} of {n} bytes");
            assert_every_reader_rejects(&path, &case);
            let msg = FlashFile::open(&path).unwrap_err().to_string();
            assert!(
                msg.contains("bad magic") || msg.contains("too small"),
                "{case}: unexpected reason: {msg}"
            );
        }
    });
}

/// The same 50 seeded points, but a run of bytes is cut out there and the tail kept (a copy that
/// lost a piece in the middle): the trailer is intact, so the footer's validation must notice that
/// the payload (or the JSON) no longer fits.
#[test]
fn a_file_with_bytes_cut_out_of_the_middle_is_rejected_by_every_reader() {
    with_deadline("cut", Duration::from_secs(120), || {
        let dir = tempfile::tempdir().unwrap();
        let v = make_version(dir.path(), 2, 2);
        let body = v.bytes.len() - 16; // the trailer stays
        let mut rng = Rng::new(0x7e57_0002);
        let path = dir.path().join("cut.flashpack");
        for _ in 0..50 {
            let at = rng.below(body as u64) as usize;
            let len = (1 + rng.below(8192) as usize).min(body - at);
            let mut bytes = v.bytes[..at].to_vec();
            bytes.extend_from_slice(&v.bytes[at + len..]);
            std::fs::write(&path, &bytes).unwrap();
            let case = format!(
                "bytes {at}..{} cut out (payload ends at {})",
                at + len,
                v.payload_len
            );
            assert_every_reader_rejects(&path, &case);
            let msg = FlashFile::open(&path).unwrap_err().to_string();
            let expected = if at + len <= v.payload_len {
                "past the end"
            } else {
                "JSON"
            };
            assert!(
                msg.contains(expected),
                "{case}: expected {expected:?}: {msg}"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Files that change while they are loaded
// ---------------------------------------------------------------------------------------------

/// What one load saw.
#[derive(Default, Debug)]
struct Outcomes {
    per_version: [usize; 2],
    errors: usize,
    /// Errors from reading the payload (the file changed after its footer was validated).
    read_errors: usize,
}

/// Loads `path` `rounds` times in every mode, checking each successful load is exactly one of
/// `versions` (footer and payload of the same version).
fn load_rounds(path: &Path, versions: &[&Version], rounds: usize) -> Outcomes {
    let mut out = Outcomes::default();
    for _ in 0..rounds {
        for (what, opts) in load_modes() {
            match load(path, &opts) {
                Ok(l) => {
                    let k = versions
                        .iter()
                        .position(|v| l.footer_json() == v.footer_json())
                        .unwrap_or_else(|| panic!("{what}: the footer is none of the versions"));
                    assert!(
                        l.payload() == versions[k].payload(),
                        "{what}: the footer of version {k} came with other payload bytes"
                    );
                    out.per_version[k] += 1;
                }
                Err(e) => {
                    assert_names_file(what, path, &e);
                    out.errors += 1;
                }
            }
        }
    }
    out
}

/// A writer keeps replacing the file by rename (as a packer does) with one of two versions while
/// loads run in every mode: each load gets one whole version (the open descriptor and the mapping
/// keep the inode they validated; the `O_DIRECT` handle is only used when it is the same inode).
#[test]
fn a_file_replaced_by_rename_while_loading_gives_one_whole_version() {
    with_deadline("rename", Duration::from_secs(120), || {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(make_version(dir.path(), 3, 4));
        let b = Arc::new(make_version(dir.path(), 4, 3));
        assert_ne!(a.footer_json(), b.footer_json());
        let path = dir.path().join("model.flashpack");
        std::fs::write(&path, &a.bytes).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (a, b, stop, path) = (a.clone(), b.clone(), stop.clone(), path.clone());
            let tmp = dir.path().join(".replace.tmp");
            std::thread::spawn(move || {
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let v = if k % 2 == 0 { &a } else { &b };
                    std::fs::write(&tmp, &v.bytes).unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                    std::thread::sleep(Duration::from_micros(500));
                }
                k
            })
        };
        let out = load_rounds(&path, &[&a, &b], 50);
        stop.store(true, Ordering::Relaxed);
        let renames = writer.join().unwrap();
        eprintln!("rename while loading: {out:?} over {renames} renames");
        assert!(
            out.per_version[0] > 0 && out.per_version[1] > 0,
            "the loads did not see both versions ({out:?}): the race was not exercised"
        );
        assert_eq!(
            out.errors, 0,
            "a rename over the file made loads fail ({out:?}); every load should get one version"
        );
    });
}

/// A writer keeps truncating the file in place (to a random length) and writing it back
/// sequentially, while eager loads and opens run: each either fails with an error naming the file
/// or returns exactly the file's content (never a mix, never stale zeros, never a crash).
#[test]
fn a_file_truncated_in_place_while_loading_eagerly_fails_cleanly_or_loads_intact() {
    with_deadline("truncate in place", Duration::from_secs(120), || {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(make_version(dir.path(), 5, 8));
        let path = dir.path().join("model.flashpack");
        std::fs::write(&path, &a.bytes).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (a, stop, path) = (a.clone(), stop.clone(), path.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x7e57_0005);
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    rounds += 1;
                    f.set_len(rng.below(a.bytes.len() as u64)).unwrap();
                    std::thread::sleep(Duration::from_micros(rng.below(2000)));
                    // Back to full size by writing (never by set_len, which would expose zeros).
                    for (k, piece) in a.bytes.chunks(1 << 20).enumerate() {
                        f.write_all_at(piece, (k << 20) as u64).unwrap();
                    }
                    std::thread::sleep(Duration::from_micros(rng.below(2000)));
                }
                rounds
            })
        };
        let mut out = Outcomes::default();
        let start = Instant::now();
        let modes = [
            ("eager buffered", eager(IoMode::Buffered)),
            ("eager direct", eager(IoMode::Direct)),
        ];
        let mut sample_read_error = String::new();
        // Until both outcomes, including a truncation that lands while the payload is read.
        while start.elapsed() < Duration::from_secs(3)
            || out.read_errors == 0
            || out.per_version[0] == 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no mix of intact loads and read errors after 60 s: {out:?}"
            );
            for (what, opts) in &modes {
                match load(&path, opts) {
                    Ok(l) => {
                        assert!(l.footer_json() == a.footer_json(), "{what}: footer changed");
                        assert!(l.payload() == a.payload(), "{what}: payload bytes differ");
                        out.per_version[0] += 1;
                    }
                    Err(e) => {
                        assert_names_file(what, &path, &e);
                        out.errors += 1;
                        if matches!(&e, Error::Io { op, .. } if op.starts_with("read")) {
                            out.read_errors += 1;
                            sample_read_error = e.to_string();
                        }
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().unwrap();
        eprintln!(
            "truncate in place while loading: {out:?} over {rounds} truncations; \
             a read error: {sample_read_error}"
        );
    });
}

/// A lazy load is a private mapping of the file: if another process truncates the file in place,
/// touching the pages past the new end raises SIGBUS. That is the documented contract of lazy
/// loading (use an eager load for files that may change); this test pins it down in a child
/// process so that a change in behaviour is noticed.
#[test]
fn a_lazy_load_of_a_file_truncated_in_place_dies_with_sigbus_by_design() {
    const TEST: &str = "a_lazy_load_of_a_file_truncated_in_place_dies_with_sigbus_by_design";
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        if let Some(dir) = dir.strip_prefix("sigbus:") {
            let path = Path::new(dir).join("model.flashpack");
            let l = load(&path, &LoadOptions::default()).unwrap();
            assert!(!l.is_eager());
            let sum_before: u64 = l.payload().iter().map(|&b| b as u64).sum();
            println!("CHILD: lazy load read {} payload bytes", l.payload().len());
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(4096)
                .unwrap();
            println!("CHILD: truncated to 4096 bytes; touching the mapping");
            let sum_after: u64 = l.payload().iter().map(|&b| b as u64).sum();
            println!("CHILD: SURVIVED sums {sum_before} {sum_after}");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let v = make_version(dir.path(), 6, 2);
    std::fs::write(dir.path().join("model.flashpack"), &v.bytes).unwrap();
    let out = child(TEST, &format!("sigbus:{}", dir.path().display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CHILD: truncated to 4096 bytes"),
        "the child did not get to the truncation: {out:?}"
    );
    assert!(
        !stdout.contains("SURVIVED"),
        "a lazy load survived reading a file truncated under it: the mapping semantics changed; \
         update the docs (and this test): {stdout}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "expected the child to die with SIGBUS: {:?}",
        out.status
    );
}

// ---------------------------------------------------------------------------------------------
// Huge sizes in crafted footers
// ---------------------------------------------------------------------------------------------

fn raw_file(payload: &[u8], json: &[u8], json_len: u64) -> Vec<u8> {
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(&json_len.to_le_bytes());
    bytes.extend_from_slice(MAGIC);
    bytes
}

fn huge_cases() -> Vec<(&'static str, Vec<u8>)> {
    let payload = vec![7u8; 4096];
    let v4 = |blocks: &str, index: &str| {
        format!(
            r#"{{"format":"flashpack_v4","align_bytes":128,"macroblocks":[{blocks}],"index":[{index}]}}"#
        )
        .into_bytes()
    };
    let v3 = |total: &str, index: &str| {
        format!(
            r#"{{"format":"flashpack_v3","target_dtype":"float32","align_bytes":128,"total_elems":{total},"index":[{index}]}}"#
        )
        .into_bytes()
    };
    let ok_block =
        r#"{"dtype":"float32","offset_bytes":0,"length_bytes":4096,"length_elems":1024}"#;
    let ok_rec = r#"{"name":"w","shape":[1024],"offset":0,"length":1024,"macroblock":0}"#;
    let with_len = |json: Vec<u8>, len: u64| raw_file(&payload, &json, len);
    let file = |json: Vec<u8>| {
        let n = json.len() as u64;
        raw_file(&payload, &json, n)
    };
    let mut cases = vec![
        ("json_len u64::MAX", with_len(v4(ok_block, ok_rec), u64::MAX)),
        ("json_len u64::MAX - 15", with_len(v4(ok_block, ok_rec), u64::MAX - 15)),
        ("json_len 2^63", with_len(v4(ok_block, ok_rec), 1 << 63)),
        ("json_len 2^40", with_len(v4(ok_block, ok_rec), 1 << 40)),
        ("json_len file size + 1", with_len(v4(ok_block, ok_rec), 4096 + 200)),
        ("v3 total_elems 2^60", file(v3("1152921504606846976", ok_rec))),
        ("v3 total_elems u64::MAX", file(v3("18446744073709551615", ok_rec))),
        (
            "block length 2^60",
            file(v4(
                r#"{"dtype":"uint8","offset_bytes":0,"length_bytes":1152921504606846976,"length_elems":1152921504606846976}"#,
                r#"{"name":"w","shape":[1152921504606846976],"offset":0,"length":1152921504606846976,"macroblock":0}"#,
            )),
        ),
        (
            "block at offset 2^62",
            file(v4(
                r#"{"dtype":"float32","offset_bytes":4611686018427387904,"length_bytes":4096,"length_elems":1024}"#,
                ok_rec,
            )),
        ),
        (
            "shape product overflows",
            file(v4(
                ok_block,
                r#"{"name":"w","shape":[4294967296,4294967296,4294967296],"offset":0,"length":1024,"macroblock":0}"#,
            )),
        ),
        (
            "record length 2^60",
            file(v4(
                ok_block,
                r#"{"name":"w","shape":[1152921504606846976],"offset":0,"length":1152921504606846976,"macroblock":0}"#,
            )),
        ),
        (
            "record offset near u64::MAX",
            file(v4(
                ok_block,
                r#"{"name":"w","shape":[1024],"offset":18446744073709551488,"length":1024,"macroblock":0}"#,
            )),
        ),
        (
            "macroblock index 2^60",
            file(v4(
                ok_block,
                r#"{"name":"w","shape":[1024],"offset":0,"length":1024,"macroblock":1152921504606846976}"#,
            )),
        ),
        (
            "total_payload_bytes and total_elems u64::MAX",
            file(
                br#"{"format":"flashpack_v4","align_bytes":128,"total_payload_bytes":18446744073709551615,"total_elems":18446744073709551615,"macroblocks":[{"dtype":"float32","offset_bytes":0,"length_bytes":4096,"length_elems":1024}],"index":[]}"#
                    .to_vec(),
            ),
        ),
        (
            "align_bytes 2^62",
            file(
                br#"{"format":"flashpack_v4","align_bytes":4611686018427387904,"macroblocks":[{"dtype":"float32","offset_bytes":128,"length_bytes":4,"length_elems":1}],"index":[]}"#
                    .to_vec(),
            ),
        ),
    ];
    // Many records pointing at one huge claimed block: counts that would multiply into a big
    // allocation if anything sized a buffer by them.
    let many: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"name":"t{i}","shape":[1099511627776],"offset":0,"length":1099511627776,"macroblock":0}}"#
            )
        })
        .collect();
    cases.push((
        "2000 records of 2^40 elements",
        file(v4(
            r#"{"dtype":"float64","offset_bytes":0,"length_bytes":8796093022208,"length_elems":1099511627776}"#,
            &many.join(","),
        )),
    ));
    cases
}

/// Crafted footers whose JSON length, block and record sizes, shapes, offsets and counts are huge
/// are rejected quickly, by every reader, in a child process whose address space is limited to
/// 1 GiB (so an allocation sized by any of those numbers fails loudly) and whose peak resident
/// memory is measured.
#[test]
fn huge_sizes_in_a_footer_fail_fast_with_bounded_memory() {
    const TEST: &str = "huge_sizes_in_a_footer_fail_fast_with_bounded_memory";
    const AS_LIMIT: u64 = 1 << 30;
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        if let Some(dir) = dir.strip_prefix("huge:") {
            limit_address_space(AS_LIMIT);
            for (k, (name, bytes)) in huge_cases().into_iter().enumerate() {
                let path = Path::new(dir).join(format!("huge-{k}.flashpack"));
                std::fs::write(&path, &bytes).unwrap();
                let t = Instant::now();
                assert_every_reader_rejects(&path, name);
                let took = t.elapsed();
                assert!(
                    took < Duration::from_secs(2),
                    "{name}: rejecting took {took:?}"
                );
                println!("CHILD: {name}: rejected in {took:?}");
            }
            println!("CHILD: done");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut cmd = child(TEST, &format!("huge:{}", dir.path().display()));
    let proc = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let (status, peak_rss) = wait_with_rusage(proc);
    let took = t.elapsed();
    assert!(
        status.success(),
        "the child failed ({status:?}): a crafted size crashed a reader or an allocation over \
         the 1 GiB address-space limit failed (see its stderr above)"
    );
    assert!(
        peak_rss < 128 << 20,
        "peak resident memory {} MiB while rejecting tiny crafted files",
        peak_rss >> 20
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    eprintln!(
        "huge sizes: {} cases rejected by every reader in {took:?}, peak RSS {} MiB",
        huge_cases().len(),
        peak_rss >> 20
    );
}

/// A sparse file is as long as it claims but costs nothing on disk: one whose trailer claims a
/// 1 TiB footer passes the "JSON length fits in the file" check. Opening it must still end in an
/// error (a footer that large is not believable), not in an abort on a failed 1 TiB allocation
/// or in reading a terabyte of zeros. Runs in a child with a 1 GiB address-space limit.
#[test]
fn a_sparse_file_claiming_a_terabyte_footer_is_rejected_without_allocating_it() {
    const TEST: &str = "a_sparse_file_claiming_a_terabyte_footer_is_rejected_without_allocating_it";
    const TIB: u64 = 1 << 40;
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        if let Some(dir) = dir.strip_prefix("sparse:") {
            limit_address_space(1 << 30);
            let path = Path::new(dir).join("sparse.flashpack");
            let t = Instant::now();
            match FlashFile::open(&path) {
                Ok(_) => panic!("a file of zeros with a 1 TiB footer was accepted"),
                Err(e) => assert_names_file("sparse", &path, &e),
            }
            for (what, opts) in load_modes() {
                assert!(load(&path, &opts).is_err(), "{what}");
            }
            println!("CHILD: rejected in {:?}", t.elapsed());
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.flashpack");
    let f = std::fs::File::create(&path).unwrap();
    if let Err(e) = f.set_len(TIB + 16) {
        eprintln!("SKIPPED: this filesystem cannot make a 1 TiB sparse file: {e}");
        return;
    }
    let mut trailer = (TIB - 4096).to_le_bytes().to_vec();
    trailer.extend_from_slice(MAGIC);
    f.write_all_at(&trailer, TIB).unwrap();
    drop(f);
    let t = Instant::now();
    let proc = child(TEST, &format!("sparse:{}", dir.path().display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak_rss) = wait_with_rusage(proc);
    assert!(
        status.success(),
        "opening a sparse file whose trailer claims a {} GiB footer crashed the reader \
         ({status:?}, signal {:?}): the footer buffer is allocated from the claimed length \
         (bounded only by the file's apparent size) and the allocation failure aborts",
        (TIB - 4096) >> 30,
        status.signal()
    );
    assert!(peak_rss < 128 << 20, "peak RSS {} MiB", peak_rss >> 20);
    assert!(t.elapsed() < Duration::from_secs(30));
}

fn limit_address_space(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass; it only lowers this (child) process's limit.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    assert_eq!(r, 0, "setrlimit(RLIMIT_AS) failed");
}
