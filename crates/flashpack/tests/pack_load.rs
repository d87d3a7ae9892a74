//! Pack then load: random tensors of every dtype go through `write::pack` and come back
//! byte-identical from every load path (lazy mapping; eager with buffered, `O_DIRECT` and automatic
//! I/O, small and odd chunk sizes, several thread counts). Also: lazy loads are copy-on-write,
//! failed packs leave an existing destination untouched and no temporary files, and tied tensors
//! are stored once.

use std::path::Path;

use flashpack::format::{Order, MAGIC};
use flashpack::read::{load, FlashFile, IoMode, LoadOptions, DEFAULT_READ_CHUNK_BYTES};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;
use serde_json::json;

#[cfg(target_os = "linux")]
mod residency;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// splitmix64: deterministic, dependency-free random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        // Random data never has long zero runs; make sure zero bytes appear too.
        if n > 16 {
            v[n / 2] = 0;
        }
        v
    }
}

/// One tensor we own the bytes of.
struct T {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    data: Vec<u8>,
    tied_to: Option<usize>,
}

impl T {
    fn new(rng: &mut Rng, name: impl Into<String>, dtype: Dtype, shape: Vec<u64>) -> T {
        let n: u64 = shape.iter().product();
        let data = rng.bytes(n as usize * dtype.size());
        T {
            name: name.into(),
            dtype,
            shape,
            data,
            tied_to: None,
        }
    }
}

fn entries(ts: &[T]) -> Vec<PackEntry<'_>> {
    ts.iter()
        .map(|t| {
            let mut e = PackEntry::new(t.name.clone(), t.dtype, t.shape.clone(), &t.data);
            e.spec.tied_to = t.tied_to;
            e
        })
        .collect()
}

/// The bytes a tensor should load as (a tied tensor has its target's bytes).
fn expected<'a>(ts: &'a [T], t: &'a T) -> &'a [u8] {
    match t.tied_to {
        Some(i) => &ts[i].data,
        None => &t.data,
    }
}

/// Tensors of every dtype: one large-ish with an odd element count, a 0-dim scalar, an empty one
/// and a small 3-d one; plus two big tensors so the payload spans several 1 MiB chunks.
fn every_dtype(seed: u64) -> Vec<T> {
    let mut rng = Rng(seed);
    let mut ts = Vec::new();
    for (i, &d) in Dtype::ALL.iter().enumerate() {
        let n = d.name();
        ts.push(T::new(
            &mut rng,
            format!("layers.{i}.{n}.weight"),
            d,
            vec![7, 331 + 3 * i as u64],
        ));
        ts.push(T::new(
            &mut rng,
            format!("layers.{i}.{n}.scalar"),
            d,
            vec![],
        ));
        ts.push(T::new(
            &mut rng,
            format!("layers.{i}.{n}.empty"),
            d,
            vec![3, 0],
        ));
        ts.push(T::new(
            &mut rng,
            format!("layers.{i}.{n}.cube"),
            d,
            vec![3, 5, 7],
        ));
    }
    ts.push(T::new(&mut rng, "embed.名前", Dtype::BF16, vec![513, 1029]));
    ts.push(T::new(&mut rng, "big.u8", Dtype::U8, vec![1_000_003]));
    ts
}

fn check_file_layout(path: &Path, ts: &[T]) {
    let bytes = std::fs::read(path).unwrap();
    let f = FlashFile::open(path).unwrap();
    assert_eq!(f.file_len(), bytes.len() as u64);
    // Trailer: JSON right after the payload, its u64 LE length, then the magic.
    let n = bytes.len();
    assert_eq!(&bytes[n - 8..], MAGIC);
    let json_len = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().unwrap()) as usize;
    assert_eq!(json_len, f.footer_json().len());
    assert_eq!(f.payload_len() as usize + json_len + 16, n);
    assert_eq!(&bytes[f.payload_len() as usize..n - 16], f.footer_json());
    assert_eq!(
        f.footer().encode().unwrap(),
        f.footer_json(),
        "the footer on disk is the canonical encoding"
    );
    // Every tensor where its record says, every other payload byte zero.
    let mut covered = vec![false; f.payload_len() as usize];
    for t in ts {
        let r = f
            .footer()
            .record(&t.name)
            .unwrap_or_else(|| panic!("no record for {}", t.name));
        assert_eq!(r.shape(), t.shape, "{}", t.name);
        assert_eq!(
            f.footer().blocks()[r.block()].dtype(),
            t.dtype,
            "{}",
            t.name
        );
        let (a, b) = f.footer().byte_range(r);
        assert_eq!(
            &bytes[a as usize..b as usize],
            expected(ts, t),
            "{} on disk",
            t.name
        );
        covered[a as usize..b as usize]
            .iter_mut()
            .for_each(|c| *c = true);
    }
    for (i, c) in covered.iter().enumerate() {
        if !c {
            assert_eq!(bytes[i], 0, "padding byte {i} is not zero");
        }
    }
}

fn check_loaded(what: &str, l: &flashpack::read::Loaded, ts: &[T], file: &[u8]) {
    for t in ts {
        let got = l
            .tensor_bytes(&t.name)
            .unwrap_or_else(|| panic!("{what}: no tensor {}", t.name));
        assert!(got == expected(ts, t), "{what}: tensor {} differs", t.name);
        assert_eq!(
            l.footer().record(&t.name).unwrap().shape(),
            t.shape,
            "{what}: {} shape",
            t.name
        );
    }
    assert!(
        l.payload() == &file[..l.payload_len() as usize],
        "{what}: payload differs from the file"
    );
}

/// Whether `path`'s filesystem accepts an aligned direct read (`O_DIRECT` on Linux,
/// `FILE_FLAG_NO_BUFFERING` on Windows; macOS's `F_NOCACHE` has no alignment rule to refuse).
fn supports_o_direct(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
    };
    #[cfg(windows)]
    let opened = {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_FLAG_NO_BUFFERING: u32 = 0x2000_0000;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(FILE_FLAG_NO_BUFFERING)
            .open(path)
    };
    #[cfg(not(any(target_os = "linux", windows)))]
    let opened = std::fs::File::open(path);
    let Ok(f) = opened else {
        return false;
    };
    let mut buf = memmap2::MmapMut::map_anon(4096).unwrap(); // page-aligned
    #[cfg(unix)]
    let read = std::os::unix::fs::FileExt::read_at(&f, &mut buf[..], 0);
    #[cfg(windows)]
    let read = std::os::windows::fs::FileExt::seek_read(&f, &mut buf[..], 0);
    read.is_ok()
}

fn tmp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".packtmp_"))
        .collect()
}

fn pack_ts(path: &Path, ts: &[T], opts: &PackOptions) -> flashpack::write::PackReport {
    pack(path, &entries(ts), opts).unwrap_or_else(|e| panic!("pack failed: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn every_dtype_round_trips_through_every_load_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.flashpack");
    let ts = every_dtype(1);
    let report = pack_ts(&path, &ts, &PackOptions::default());
    let last = report.footer.blocks().last().unwrap();
    assert_ne!(
        report.payload_len % 4096,
        0,
        "the payload should not be a multiple of 4096: {} {last:?}",
        report.payload_len
    );
    assert!(
        report.payload_len > 2 << 20,
        "the payload should span several 1 MiB chunks"
    );
    assert_eq!(report.file_len, std::fs::metadata(&path).unwrap().len());
    assert_eq!(report.footer.blocks().len(), Dtype::ALL.len());
    check_file_layout(&path, &ts);
    assert_eq!(FlashFile::open(&path).unwrap().footer(), &report.footer);
    let file = std::fs::read(&path).unwrap();
    let direct_ok = supports_o_direct(&path);
    eprintln!(
        "O_DIRECT supported on {}: {direct_ok}",
        dir.path().display()
    );

    let lazy = load(&path, &LoadOptions::default()).unwrap();
    assert!(!lazy.is_eager());
    check_loaded("lazy", &lazy, &ts, &file);
    drop(lazy);

    for io in [IoMode::Buffered, IoMode::Direct, IoMode::Auto] {
        for chunk_bytes in [4096, 5000, 1 << 20, DEFAULT_READ_CHUNK_BYTES] {
            for threads in [1, 3, 0] {
                let what = format!("eager {io:?} chunk {chunk_bytes} threads {threads}");
                let opts = LoadOptions {
                    eager: true,
                    io,
                    threads,
                    chunk_bytes,
                    progress: false,
                    // Both kinds of host memory give the same bytes.
                    huge_pages: threads == 3,
                    // Verified loads read whole checksum chunks and must give the same bytes.
                    verify: threads == 0,
                    cancel: None,
                };
                let l = load(&path, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(l.is_eager(), "{what}");
                check_loaded(&what, &l, &ts, &file);
                let io_counts = l.report().io;
                assert_eq!(
                    io_counts.direct_bytes + io_counts.buffered_bytes,
                    report.payload_len,
                    "{what}: {io_counts:?}"
                );
                if threads != 0 {
                    // The threads used: as asked, or fewer when there are fewer chunks.
                    let chunks = report.payload_len.div_ceil(chunk_bytes.max(4096) as u64) as usize;
                    assert_eq!(l.report().threads, threads.min(chunks.max(1)), "{what}");
                }
                match io {
                    IoMode::Buffered => assert_eq!(io_counts.direct_bytes, 0, "{what}"),
                    IoMode::Direct if direct_ok => {
                        assert!(
                            io_counts.direct_bytes > 0,
                            "{what}: O_DIRECT works here but was not used"
                        );
                        assert_eq!(io_counts.direct_bytes % 4096, 0, "{what}");
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn alignments_and_orders_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(2);
    let ts = vec![
        T::new(&mut rng, "a", Dtype::F16, vec![3, 3]),
        T::new(&mut rng, "b", Dtype::F64, vec![5]),
        T::new(&mut rng, "c", Dtype::F16, vec![1001]),
        T::new(&mut rng, "d", Dtype::Bool, vec![]),
        T::new(&mut rng, "e", Dtype::C64, vec![2, 0, 2]),
        T::new(&mut rng, "f", Dtype::F64, vec![700]),
        T::new(&mut rng, "g", Dtype::I8, vec![4097]),
    ];
    for align in [0u64, 1, 2, 16, 64, 128, 256, 4096] {
        for order in [Order::LargestFirst, Order::AsGiven] {
            let path = dir.path().join(format!("m_{align}_{order:?}.flashpack"));
            let opts = PackOptions {
                align_bytes: align,
                order,
                threads: 2,
                ..Default::default()
            };
            let report = pack_ts(&path, &ts, &opts);
            assert_eq!(report.footer.align_bytes(), align);
            if order == Order::AsGiven {
                // Blocks in order of first appearance, each block's tensors in the given order.
                let dtypes: Vec<_> = report.footer.blocks().iter().map(|b| b.dtype()).collect();
                assert_eq!(
                    dtypes,
                    [Dtype::F16, Dtype::F64, Dtype::Bool, Dtype::C64, Dtype::I8]
                );
                let offsets =
                    |names: [&str; 2]| names.map(|n| report.footer.record(n).unwrap().offset());
                let [a, c] = offsets(["a", "c"]);
                let [b, f] = offsets(["b", "f"]);
                assert!(
                    a < c && b < f,
                    "tensors of a block must keep the given order"
                );
            }
            check_file_layout(&path, &ts);
            let file = std::fs::read(&path).unwrap();
            check_loaded(
                "lazy",
                &load(&path, &LoadOptions::default()).unwrap(),
                &ts,
                &file,
            );
            for io in [IoMode::Direct, IoMode::Buffered] {
                let opts = LoadOptions {
                    eager: true,
                    io,
                    chunk_bytes: 4096,
                    threads: 2,
                    ..Default::default()
                };
                check_loaded(
                    &format!("eager {io:?} align {align}"),
                    &load(&path, &opts).unwrap(),
                    &ts,
                    &file,
                );
            }
        }
    }
}

#[test]
fn tiny_and_page_multiple_payloads_load_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(3);
    let cases = vec![
        ("one_byte", vec![T::new(&mut rng, "x", Dtype::U8, vec![1])]),
        ("scalar", vec![T::new(&mut rng, "step", Dtype::I64, vec![])]),
        ("page", vec![T::new(&mut rng, "p", Dtype::F32, vec![1024])]),
        (
            "two_pages",
            vec![T::new(&mut rng, "p", Dtype::U8, vec![8192])],
        ),
        (
            "page_plus_one",
            vec![T::new(&mut rng, "p", Dtype::U8, vec![4097])],
        ),
        (
            "mixed",
            vec![
                T::new(&mut rng, "p", Dtype::U8, vec![4096]),
                T::new(&mut rng, "q", Dtype::F64, vec![512]),
            ],
        ),
    ];
    for (name, ts) in &cases {
        let path = dir.path().join(format!("{name}.flashpack"));
        let report = pack_ts(&path, ts, &PackOptions::default());
        check_file_layout(&path, ts);
        let file = std::fs::read(&path).unwrap();
        check_loaded(
            name,
            &load(&path, &LoadOptions::default()).unwrap(),
            ts,
            &file,
        );
        for io in [IoMode::Buffered, IoMode::Direct, IoMode::Auto] {
            for chunk_bytes in [1, 4096, 5000] {
                for threads in [1, 4] {
                    let opts = LoadOptions {
                        eager: true,
                        io,
                        threads,
                        chunk_bytes,
                        progress: false,
                        huge_pages: false,
                        verify: false,
                        cancel: None,
                    };
                    let l = load(&path, &opts).unwrap();
                    check_loaded(
                        &format!("{name} {io:?} {chunk_bytes} {threads}"),
                        &l,
                        ts,
                        &file,
                    );
                    assert_eq!(
                        l.report().io.direct_bytes + l.report().io.buffered_bytes,
                        report.payload_len
                    );
                }
            }
        }
    }
}

#[test]
fn zero_dim_tensors_and_unicode_names_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("names.flashpack");
    let mut rng = Rng(4);
    let ts = vec![
        T::new(&mut rng, "step", Dtype::I64, vec![]),
        T::new(&mut rng, "ünïcødé.权重", Dtype::F32, vec![2, 3]),
        T::new(
            &mut rng,
            "with \"quotes\" and \\ and\nnewline",
            Dtype::U8,
            vec![5],
        ),
        T::new(&mut rng, "", Dtype::U8, vec![1]),
    ];
    pack_ts(&path, &ts, &PackOptions::default());
    let l = load(
        &path,
        &LoadOptions {
            eager: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        l.footer().record("step").unwrap().shape(),
        Vec::<u64>::new()
    );
    assert_eq!(l.footer().record("step").unwrap().length(), 1);
    check_loaded("eager", &l, &ts, &std::fs::read(&path).unwrap());
    // Non-ASCII is stored raw in the footer, not \u-escaped.
    let raw = std::fs::read(&path).unwrap();
    let needle = "ünïcødé.权重".as_bytes();
    assert!(raw.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn packing_is_deterministic_across_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let ts = every_dtype(5);
    let mut files = Vec::new();
    for threads in [1, 2, 7, 0] {
        let path = dir.path().join(format!("t{threads}.flashpack"));
        pack_ts(
            &path,
            &ts,
            &PackOptions {
                threads,
                ..Default::default()
            },
        );
        files.push(std::fs::read(&path).unwrap());
    }
    for f in &files[1..] {
        assert!(
            f == &files[0],
            "different thread counts wrote different files"
        );
    }
}

#[test]
fn extra_footer_keys_are_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.flashpack");
    let mut rng = Rng(6);
    let ts = vec![T::new(&mut rng, "w", Dtype::F32, vec![4])];
    let mut extra = serde_json::Map::new();
    extra.insert(
        "x_provenance".into(),
        json!({"algorithm": "crc32c", "chunk_bytes": 1048576, "values": [1, 2]}),
    );
    pack_ts(
        &path,
        &ts,
        &PackOptions {
            extra: extra.clone(),
            ..Default::default()
        },
    );
    let f = FlashFile::open(&path).unwrap();
    assert_eq!(f.footer().extra(), &extra);
    check_loaded(
        "lazy",
        &load(&path, &LoadOptions::default()).unwrap(),
        &ts,
        &std::fs::read(&path).unwrap(),
    );
}

/// Regression: extra footer keys that collide with the format's own keys must be refused
/// (they used to produce a file that failed to open), leaving no destination behind.
#[test]
fn regression_pack_accepts_colliding_extra_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let ts = vec![T::new(&mut rng, "w", Dtype::F32, vec![4])];
    for key in [
        "format",
        "index",
        "align_bytes",
        "total_elems",
        "target_dtype",
        "macroblocks",
        "total_payload_bytes",
    ] {
        let path = dir.path().join(format!("{key}.flashpack"));
        let mut extra = serde_json::Map::new();
        extra.insert(key.into(), json!("oops"));
        match pack(
            &path,
            &entries(&ts),
            &PackOptions {
                extra,
                ..Default::default()
            },
        ) {
            Err(e) => {
                assert!(e.to_string().contains(key), "{e}");
                assert!(!path.exists());
            }
            Ok(_) => {
                let f = FlashFile::open(&path);
                assert!(
                    f.is_ok(),
                    "pack with extra key {key:?} returned Ok but wrote an unreadable file: {:?}",
                    f.err()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lazy loads are copy-on-write
// ---------------------------------------------------------------------------------------------

#[test]
fn writes_to_a_lazy_load_never_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cow.flashpack");
    let ts = every_dtype(8);
    pack_ts(&path, &ts, &PackOptions::default());
    let before = std::fs::read(&path).unwrap();

    let mut lazy = load(&path, &LoadOptions::default()).unwrap();
    assert!(!lazy.is_eager());
    let payload_len = lazy.payload_len() as usize;
    lazy.payload_mut().fill(0xa5);
    assert!(lazy.payload().iter().all(|&b| b == 0xa5));
    let w = &ts[0];
    assert!(lazy
        .tensor_bytes(&w.name)
        .unwrap()
        .iter()
        .all(|&b| b == 0xa5));
    // A second, concurrent mapping and the file itself still hold the original bytes.
    let other = load(&path, &LoadOptions::default()).unwrap();
    assert!(other.payload() == &before[..payload_len]);
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a write to a lazy load changed the file while mapped"
    );
    drop(other);
    drop(lazy);
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a write to a lazy load reached the file"
    );
    // Reading it with O_DIRECT (bypassing the page cache) agrees.
    let l = load(
        &path,
        &LoadOptions {
            eager: true,
            io: IoMode::Direct,
            ..Default::default()
        },
    )
    .unwrap();
    check_loaded("after cow", &l, &ts, &before);
}

#[test]
fn writes_to_an_eager_load_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eager.flashpack");
    let mut rng = Rng(9);
    let ts = vec![T::new(&mut rng, "w", Dtype::F32, vec![3000])];
    pack_ts(&path, &ts, &PackOptions::default());
    let before = std::fs::read(&path).unwrap();
    let mut l = load(
        &path,
        &LoadOptions {
            eager: true,
            io: IoMode::Buffered,
            ..Default::default()
        },
    )
    .unwrap();
    l.payload_mut()[..16].copy_from_slice(&[7; 16]);
    assert_eq!(&l.tensor_bytes("w").unwrap()[..16], &[7; 16]);
    drop(l);
    assert!(std::fs::read(&path).unwrap() == before);
}

// ---------------------------------------------------------------------------------------------
// Failed packs are atomic
// ---------------------------------------------------------------------------------------------

#[test]
fn failed_packs_leave_the_destination_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.flashpack");
    let mut rng = Rng(10);
    let good = vec![
        T::new(&mut rng, "w", Dtype::F32, vec![64, 3]),
        T::new(&mut rng, "b", Dtype::I64, vec![5]),
    ];
    pack_ts(&dest, &good, &PackOptions::default());
    let before = std::fs::read(&dest).unwrap();

    let short = rng.bytes(10);
    let long = rng.bytes(41);
    let fine = rng.bytes(40);
    let empty: &[u8] = &[];
    let e = |name: &str, dtype, shape: Vec<u64>, data| PackEntry::new(name, dtype, shape, data);
    let tied = |name: &str, shape: Vec<u64>, to| {
        let mut x = PackEntry::new(name, Dtype::F32, shape, empty);
        x.spec.tied_to = Some(to);
        x
    };
    let cases: Vec<(&str, Vec<PackEntry<'_>>, Vec<&str>)> = vec![
        (
            "data too short",
            vec![
                e("ok", Dtype::F32, vec![10], &fine),
                e("bad", Dtype::F32, vec![10], &short),
            ],
            vec!["'bad'", "10 bytes"],
        ),
        (
            "data too long",
            vec![e("bad", Dtype::F32, vec![10], &long)],
            vec!["'bad'", "41 bytes", "needs 40"],
        ),
        (
            "data for a 0-dim tensor",
            vec![e("step", Dtype::I64, vec![], &short)],
            vec!["'step'"],
        ),
        (
            "data for an empty tensor",
            vec![
                e("ok", Dtype::F32, vec![10], &fine),
                e("none", Dtype::F32, vec![0], &short),
            ],
            vec!["'none'"],
        ),
        (
            "duplicate names",
            vec![
                e("dup", Dtype::F32, vec![10], &fine),
                e("dup", Dtype::F32, vec![10], &fine),
            ],
            vec!["'dup'", "more than once"],
        ),
        ("no tensors", vec![], vec!["no tensors"]),
        (
            "only empty tensors",
            vec![e("z", Dtype::F32, vec![0, 4], empty)],
            vec!["empty"],
        ),
        (
            "tie to a missing tensor",
            vec![e("ok", Dtype::F32, vec![10], &fine), tied("t", vec![10], 9)],
            vec!["'t'"],
        ),
        (
            "tie with another shape",
            vec![
                e("ok", Dtype::F32, vec![10], &fine),
                tied("t", vec![5, 2], 0),
            ],
            vec!["'t'", "'ok'"],
        ),
        (
            "overflowing shape",
            vec![e("huge", Dtype::F32, vec![u64::MAX, 4], &fine)],
            vec!["'huge'", "overflow"],
        ),
    ];
    for (what, entries, needles) in cases {
        let err = match pack(&dest, &entries, &PackOptions::default()) {
            Ok(_) => panic!("{what}: pack accepted bad input"),
            Err(err) => err.to_string(),
        };
        assert!(
            err.starts_with(&format!("{}: ", dest.display())),
            "{what}: {err}"
        );
        for n in needles {
            assert!(
                err.contains(n),
                "{what}: error does not mention {n:?}: {err}"
            );
        }
        assert!(
            std::fs::read(&dest).unwrap() == before,
            "{what}: the destination changed"
        );
        assert_eq!(
            tmp_leftovers(dir.path()),
            Vec::<String>::new(),
            "{what}: temporary file left behind"
        );
    }
    // The original still loads.
    check_loaded(
        "after failures",
        &load(&dest, &LoadOptions::default()).unwrap(),
        &good,
        &before,
    );

    // Bad input aimed at a directory that does not exist creates nothing.
    let nested = dir.path().join("sub").join("dir").join("m.flashpack");
    assert!(pack(
        &nested,
        &[e("bad", Dtype::F32, vec![10], &short)],
        &PackOptions::default()
    )
    .is_err());
    assert!(!dir.path().join("sub").exists());

    // A destination whose parent is a file: an I/O error naming the path, nothing left behind.
    let under_file = dest.join("x.flashpack");
    let err = pack(
        &under_file,
        &[e("ok", Dtype::F32, vec![10], &fine)],
        &PackOptions::default(),
    )
    .unwrap_err();
    assert!(!err.is_data_error(), "{err}");
    assert!(std::fs::read(&dest).unwrap() == before);
    assert_eq!(tmp_leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn a_successful_pack_replaces_the_destination_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.flashpack");
    let mut rng = Rng(11);
    let v1 = vec![T::new(&mut rng, "w", Dtype::F32, vec![100])];
    let v2 = vec![
        T::new(&mut rng, "w", Dtype::F16, vec![7, 9]),
        T::new(&mut rng, "n", Dtype::I32, vec![]),
    ];
    pack_ts(&dest, &v1, &PackOptions::default());
    let first = load(&dest, &LoadOptions::default()).unwrap(); // keeps the old file mapped
                                                               // Windows refuses to replace a file that is mapped: the pack fails cleanly (the old file in
                                                               // place, no temporary file left), and succeeds once the lazy load is dropped.
    #[cfg(windows)]
    let first = {
        let before = std::fs::read(&dest).unwrap();
        let err = pack(&dest, &entries(&v2), &PackOptions::default()).unwrap_err();
        assert!(err.to_string().contains("rename into place"), "{err}");
        assert!(std::fs::read(&dest).unwrap() == before);
        assert_eq!(tmp_leftovers(dir.path()), Vec::<String>::new());
        let old = first.tensor_bytes("w").unwrap().to_vec();
        drop(first);
        old
    };
    pack_ts(&dest, &v2, &PackOptions::default());
    check_loaded(
        "new",
        &load(&dest, &LoadOptions::default()).unwrap(),
        &v2,
        &std::fs::read(&dest).unwrap(),
    );
    // The old mapping still sees the old bytes (the new file was renamed over, not rewritten).
    #[cfg(not(windows))]
    assert_eq!(first.tensor_bytes("w").unwrap(), &v1[0].data[..]);
    #[cfg(windows)]
    assert_eq!(&first[..], &v1[0].data[..]);
    assert_eq!(tmp_leftovers(dir.path()), Vec::<String>::new());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // The packed file gets 0644 (less the umask), not the 0600 of a temporary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.path().join("umask_probe");
        std::fs::write(&probe, b"").unwrap();
        let normal = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777; // 0666 & !umask
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644 & normal, "packed file mode {mode:o}");
    }
}

#[test]
#[cfg(target_os = "linux")]
fn auto_mode_follows_the_page_cache() {
    use residency::resident_fraction;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auto.flashpack");
    let ts = vec![T::new(&mut Rng(14), "w", Dtype::U8, vec![1 << 20])];
    pack_ts(&path, &ts, &PackOptions::default());
    let file = std::fs::read(&path).unwrap();
    let opts = LoadOptions {
        eager: true,
        io: IoMode::Auto,
        chunk_bytes: 1 << 18,
        ..Default::default()
    };
    let f = std::fs::File::open(&path).unwrap();
    let payload_len = FlashFile::open(&path).unwrap().payload_len();

    // Hot (just read): buffered reads.
    if resident_fraction(&f, payload_len).unwrap() >= 0.9 {
        let l = load(&path, &opts).unwrap();
        check_loaded("auto hot", &l, &ts, &file);
        assert_eq!(
            l.report().io.direct_bytes,
            0,
            "a cached file should be read buffered: {:?}",
            l.report().io
        );
    }
    // Cold (dropped from the page cache where the kernel allows): O_DIRECT.
    use std::os::fd::AsRawFd;
    // SAFETY: plain fadvise on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let cold = resident_fraction(&f, payload_len).unwrap();
    if cold < 0.5 && supports_o_direct(&path) {
        let l = load(&path, &opts).unwrap();
        check_loaded("auto cold", &l, &ts, &file);
        assert!(
            l.report().io.direct_bytes > 0,
            "a cold file should be read with O_DIRECT: {:?}",
            l.report().io
        );
    } else {
        eprintln!(
            "could not drop the file from the page cache (resident {cold}); cold case skipped"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tied tensors
// ---------------------------------------------------------------------------------------------

#[test]
fn tied_tensors_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(12);
    let untied = vec![
        T::new(&mut rng, "embed.weight", Dtype::F16, vec![64, 33]),
        T::new(&mut rng, "norm", Dtype::F32, vec![33]),
        T::new(&mut rng, "step", Dtype::I64, vec![]),
    ];
    let mut tied = untied
        .iter()
        .map(|t| T {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.data.clone(),
            tied_to: None,
        })
        .collect::<Vec<_>>();
    tied.push(T {
        name: "lm_head.weight".into(),
        dtype: Dtype::F16,
        shape: vec![64, 33],
        data: vec![],
        tied_to: Some(0),
    });
    tied.push(T {
        name: "step_alias".into(),
        dtype: Dtype::I64,
        shape: vec![],
        data: vec![],
        tied_to: Some(2),
    });

    let p_untied = dir.path().join("untied.flashpack");
    let p_tied = dir.path().join("tied.flashpack");
    let r_untied = pack_ts(&p_untied, &untied, &PackOptions::default());
    let r_tied = pack_ts(&p_tied, &tied, &PackOptions::default());
    assert_eq!(
        r_tied.payload_len, r_untied.payload_len,
        "tied tensors must not take payload space"
    );
    assert_eq!(r_tied.footer.blocks(), r_untied.footer.blocks());
    let f = FlashFile::open(&p_tied).unwrap();
    let (a, b) = (
        f.footer().record("embed.weight").unwrap(),
        f.footer().record("lm_head.weight").unwrap(),
    );
    assert_eq!(
        (a.block(), a.offset(), a.length()),
        (b.block(), b.offset(), b.length())
    );
    let (a, b) = (
        f.footer().record("step").unwrap(),
        f.footer().record("step_alias").unwrap(),
    );
    assert_eq!((a.block(), a.offset()), (b.block(), b.offset()));
    assert_eq!(b.shape(), Vec::<u64>::new());
    check_file_layout(&p_tied, &tied);
    let file = std::fs::read(&p_tied).unwrap();
    check_loaded(
        "lazy",
        &load(&p_tied, &LoadOptions::default()).unwrap(),
        &tied,
        &file,
    );
    let opts = LoadOptions {
        eager: true,
        io: IoMode::Direct,
        chunk_bytes: 4096,
        ..Default::default()
    };
    check_loaded("eager", &load(&p_tied, &opts).unwrap(), &tied, &file);

    // The data of a tied entry is ignored (documented: "may be empty").
    let mut junk = tied;
    junk[3].data = vec![1, 2, 3];
    let p_junk = dir.path().join("junk.flashpack");
    pack_ts(&p_junk, &junk, &PackOptions::default());
    assert!(std::fs::read(&p_junk).unwrap() == file);
}

#[test]
fn tie_targets_may_follow_the_tied_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.flashpack");
    let mut rng = Rng(13);
    let target = T::new(&mut rng, "embed", Dtype::BF16, vec![16, 8]);
    let ts = vec![
        T {
            name: "head".into(),
            dtype: Dtype::BF16,
            shape: vec![16, 8],
            data: vec![],
            tied_to: Some(1),
        },
        target,
    ];
    for order in [Order::LargestFirst, Order::AsGiven] {
        let report = pack_ts(
            &path,
            &ts,
            &PackOptions {
                order,
                ..Default::default()
            },
        );
        assert_eq!(report.payload_len, 256);
        check_loaded(
            &format!("{order:?}"),
            &load(&path, &LoadOptions::default()).unwrap(),
            &ts,
            &std::fs::read(&path).unwrap(),
        );
    }
}

/// Windows has no page-cache residency query: `Auto` reads buffered there (a repeated load comes
/// from the cache), while `Direct` still reads unbuffered.
#[test]
#[cfg(windows)]
fn auto_mode_reads_buffered_where_residency_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auto.flashpack");
    let ts = vec![T::new(&mut Rng(15), "w", Dtype::U8, vec![1 << 20])];
    pack_ts(&path, &ts, &PackOptions::default());
    let file = std::fs::read(&path).unwrap();
    // (That the residency query is Unsupported there: os/mod.rs's unit tests.)
    for (io, direct) in [(IoMode::Auto, false), (IoMode::Direct, true)] {
        let opts = LoadOptions {
            eager: true,
            io,
            chunk_bytes: 1 << 18,
            ..Default::default()
        };
        let l = load(&path, &opts).unwrap();
        check_loaded(&format!("{io:?}"), &l, &ts, &file);
        assert_eq!(
            l.report().io.direct_bytes > 0,
            direct,
            "{io:?}: {:?}",
            l.report().io
        );
    }
}

/// `pack_to_vec` (and so `pack_to_writer`) gives the very bytes `pack` puts in a file, with and
/// without checksums, over every dtype (several blocks, alignment gaps); `Footer::from_file_bytes`
/// reads the same footer from them as `FlashFile::open` does from the file.
#[test]
fn pack_to_vec_writes_the_bytes_pack_writes_to_a_file() {
    use flashpack::format::Footer;
    use flashpack::write::pack_to_vec;
    let dir = tempfile::tempdir().unwrap();
    let ts = every_dtype(7);
    for checksums in [true, false] {
        let opts = PackOptions {
            checksums,
            chunk_bytes: 64 << 10,
            ..PackOptions::default()
        };
        let path = dir.path().join(format!("m{checksums}.flashpack"));
        pack_ts(&path, &ts, &opts);
        let bytes = pack_to_vec(&entries(&ts), &opts).unwrap();
        assert!(
            bytes == std::fs::read(&path).unwrap(),
            "checksums {checksums}"
        );
        let footer = Footer::from_file_bytes(&bytes).unwrap();
        assert_eq!(&footer, FlashFile::open(&path).unwrap().footer());
        assert_eq!(footer.checksums().is_some(), checksums);
    }
}

/// A loaded file lists its tensors by name in footer order and hands each one's bytes out.
#[test]
fn loaded_names_and_iter_follow_the_footer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.flashpack");
    let ts = every_dtype(3);
    pack_ts(&path, &ts, &PackOptions::default());
    let l = load(&path, &LoadOptions::default()).unwrap();
    let order: Vec<&str> = l.footer().records().iter().map(|r| r.name()).collect();
    assert_eq!(l.names().collect::<Vec<_>>(), order);
    assert_eq!(l.iter().count(), ts.len());
    for (r, bytes) in l.iter() {
        let t = ts.iter().find(|t| t.name == r.name()).unwrap();
        assert_eq!(bytes, expected(&ts, t), "{}", r.name());
        assert_eq!(l.tensor_bytes(r.name()), Some(bytes));
    }
}
