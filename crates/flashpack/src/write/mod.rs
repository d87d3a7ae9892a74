//! The packer: tensors in, a FlashPack file out, atomically.
//!
//! The payload is written by several threads with positioned writes into a temporary file beside
//! the destination; then the footer is appended, the file is fsynced and renamed over the
//! destination. On any error the temporary file is removed and an existing destination is
//! left untouched.
//!
//! ```
//! use flashpack::{write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! let ids = 7i64.to_le_bytes();
//! let report = pack(&path, &[PackEntry::new("step", Dtype::I64, vec![], &ids)], &PackOptions::default()).unwrap();
//! assert_eq!(report.payload_len, 8);
//! ```
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::format::{plan, Footer, FormatError, Order, TensorSpec, DEFAULT_ALIGN_BYTES, MAGIC};
use crate::{Dtype, Error, Result};

use crate::progress::progress_bar;

/// Footer keys the format itself writes; extra keys may not reuse them.
const RESERVED_KEYS: &[&str] = &[
    "format",
    "target_dtype",
    "align_bytes",
    "total_elems",
    "total_payload_bytes",
    "macroblocks",
    "index",
];

/// Largest single positioned write; keeps threads balanced on big tensors.
const WRITE_PIECE: usize = 16 << 20;

/// One tensor to pack: its spec and its bytes (contiguous, little-endian, in the stored dtype).
#[derive(Clone, Debug)]
pub struct PackEntry<'a> {
    pub spec: TensorSpec,
    /// Ignored (may be empty) when the tensor is tied to another.
    pub data: &'a [u8],
}

impl<'a> PackEntry<'a> {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<u64>, data: &'a [u8]) -> Self {
        PackEntry {
            spec: TensorSpec::new(name, dtype, shape),
            data,
        }
    }
}

/// How to pack.
#[derive(Clone, Debug)]
pub struct PackOptions {
    pub align_bytes: u64,
    pub order: Order,
    /// Writer threads (0 = one per core, at most 8).
    pub threads: usize,
    /// Show a progress bar on stderr for large payloads.
    pub progress: bool,
    /// Extra footer keys to write (e.g. for extensions); must not collide with the format's keys.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            align_bytes: DEFAULT_ALIGN_BYTES,
            order: Order::LargestFirst,
            threads: 0,
            progress: false,
            extra: serde_json::Map::new(),
        }
    }
}

/// What a pack did and how long each phase took.
#[derive(Clone, Debug)]
pub struct PackReport {
    pub footer: Footer,
    pub payload_len: u64,
    pub file_len: u64,
    pub phases: Vec<(&'static str, Duration)>,
}

/// Writes `entries` to `dest` as a FlashPack file.
pub fn pack(dest: &Path, entries: &[PackEntry<'_>], opts: &PackOptions) -> Result<PackReport> {
    let mut phases = Vec::new();
    let t = Instant::now();
    let specs: Vec<TensorSpec> = entries.iter().map(|e| e.spec.clone()).collect();
    let mut layout =
        plan(&specs, opts.align_bytes, opts.order).map_err(|e| Error::format(dest, e))?;
    for p in &layout.placements {
        let e = &entries[p.spec];
        if e.data.len() as u64 != p.nbytes {
            return Err(Error::format(
                dest,
                FormatError::tensor(
                    &e.spec.name,
                    format!(
                        "has {} bytes of data but shape {:?} of {} needs {}",
                        e.data.len(),
                        e.spec.shape,
                        e.spec.dtype,
                        p.nbytes
                    ),
                ),
            ));
        }
    }
    if let Some(key) = opts
        .extra
        .keys()
        .find(|k| RESERVED_KEYS.contains(&k.as_str()))
    {
        return Err(Error::Invalid(format!(
            "{}: extra footer key {key:?} is one of the format's own keys",
            dest.display()
        )));
    }
    layout.footer.extra = opts.extra.clone();
    let json = layout.footer.encode();
    phases.push(("build_index", t.elapsed()));

    let t = Instant::now();
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create directory", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".packtmp_")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, "create temporary file", e))?;
    let file = tmp.as_file();
    file.set_len(layout.payload_len)
        .map_err(|e| Error::io(tmp.path(), "set length", e))?;
    phases.push(("create_file", t.elapsed()));

    let t = Instant::now();
    write_payload(
        file,
        tmp.path(),
        entries,
        &layout.placements,
        layout.payload_len,
        opts,
    )?;
    phases.push(("write_payload", t.elapsed()));

    let t = Instant::now();
    let mut trailer = json;
    let json_len = trailer.len() as u64;
    trailer.extend_from_slice(&json_len.to_le_bytes());
    trailer.extend_from_slice(MAGIC);
    let mut f: &File = file;
    f.write_all_at(&trailer, layout.payload_len)
        .map_err(|e| Error::io(tmp.path(), "write footer", e))?;
    f.flush().map_err(|e| Error::io(tmp.path(), "flush", e))?;
    file.sync_all()
        .map_err(|e| Error::io(tmp.path(), "fsync", e))?;
    phases.push(("append_footer", t.elapsed()));

    let t = Instant::now();
    tmp.persist(dest)
        .map_err(|e| Error::io(dest, "rename into place", e.error))?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all(); // best effort: makes the rename durable where the filesystem allows
    }
    phases.push(("atomic_rename", t.elapsed()));

    let file_len = layout.payload_len + trailer.len() as u64;
    Ok(PackReport {
        footer: layout.footer,
        payload_len: layout.payload_len,
        file_len,
        phases,
    })
}

/// Starts writeback of a just-written range without waiting for it, so the disk writes while the
/// next pieces are copied and the final fsync only waits for the tail. Only a hint: errors
/// surface at the fsync, which is the durability point.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor that `file` keeps open for the whole call; it reads
    // no memory of ours. Its result is ignored on purpose (see above).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: usize) {}

fn write_payload(
    file: &File,
    tmp_path: &Path,
    entries: &[PackEntry<'_>],
    placements: &[crate::format::Placement],
    payload_len: u64,
    opts: &PackOptions,
) -> Result<()> {
    // Split every tensor into pieces so threads share big tensors evenly.
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    for p in placements {
        let data = entries[p.spec].data;
        for (k, piece) in data.chunks(WRITE_PIECE).enumerate() {
            pieces.push((p.byte_offset + (k * WRITE_PIECE) as u64, piece));
        }
    }
    let threads = match opts.threads {
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8),
        n => n,
    }
    .min(pieces.len().max(1));
    let bar = progress_bar(opts.progress, payload_len, "packing");
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors: Vec<Option<std::io::Error>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Option<std::io::Error> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pieces.len() || failed.load(Ordering::Relaxed) {
                            return None;
                        }
                        let (off, bytes) = pieces[i];
                        if let Err(e) = file.write_all_at(bytes, off) {
                            failed.store(true, Ordering::Relaxed);
                            return Some(e);
                        }
                        start_writeback(file, off, bytes.len());
                        if let Some(b) = &bar {
                            b.inc(bytes.len() as u64);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Some(std::io::Error::other("writer thread panicked")))
            })
            .collect()
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match errors.into_iter().flatten().next() {
        Some(e) => Err(Error::io(tmp_path, "write payload", e)),
        None => Ok(()),
    }
}
